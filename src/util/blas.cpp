#include "util/blas.hpp"

#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "util/error.hpp"

namespace rbn::blas {

namespace detail {
std::atomic<int> g_backend{-1};

int init_backend() {
  static std::once_flag once;
  static int from_env = 0;
  static std::string bad;
  std::call_once(once, [] {
    const char* v = std::getenv("RBN_GEMM");
    if (!v || !*v || std::string_view(v) == "auto") return;  // auto: the tool calibrates
    if (auto b = parse_backend(v))
      from_env = static_cast<int>(*b);
    else
      bad = v;
  });
  if (!bad.empty())
    throw UsageError(fmt::format("RBN_GEMM={}: unknown GEMM backend (openblas, onednn or auto)", bad));
  int expected = -1;  // a set_backend() that came first wins
  g_backend.compare_exchange_strong(expected, from_env);
  return g_backend.load();
}
}  // namespace detail

const char* backend_name(Backend b) { return b == Backend::onednn ? "onednn" : "openblas"; }

std::optional<Backend> parse_backend(std::string_view name) {
  if (name == "openblas") return Backend::openblas;
  if (name == "onednn") return Backend::onednn;
  return std::nullopt;
}

const std::vector<Backend>& all_backends() {
  static const std::vector<Backend> all{Backend::openblas, Backend::onednn};
  return all;
}

namespace {
const char* isa_name(dnnl_cpu_isa_t isa) {
  switch (isa) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    default: return "cpu";
  }
}
}  // namespace

std::string backend_description(Backend b) {
  if (b == Backend::onednn) {
    const dnnl_version_t* v = dnnl_version();
    return fmt::format("oneDNN {}.{}.{} ({})", v->major, v->minor, v->patch,
                       isa_name(dnnl_get_effective_cpu_isa()));
  }
  const char* core = openblas_get_corename();
  return fmt::format("OpenBLAS {}", core ? core : "?");
}

void set_backend(Backend b) { detail::g_backend.store(static_cast<int>(b)); }

namespace detail {

int onednn_k_panel(int M, int N, int K) {
  // oneDNN 2.6's rule for its copy-based (packing) sgemm path on AVX-512 is 1/m + 1/n < 0.00196;
  // the slow band was seen only there (64 or 256 rows, which it runs without packing, are fast)
  const bool packs = 1.0 / M + 1.0 / N < 0.00196;
  return packs && K >= 48 && K <= 96 ? 32 : K;
}

bool onednn_has_k_band() {
  static const bool amx = dnnl_get_effective_cpu_isa() == dnnl_cpu_isa_avx512_core_amx;
  return amx;
}

void onednn_sgemm(bool in_panels, bool ta, bool tb, int M, int N, int K, float alpha,
                  const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  for (int k0 = 0; k0 < K;) {
    const int kp = in_panels ? onednn_k_panel(M, N, K - k0) : K;
    // the panel's columns of op(A) and rows of op(B)
    const float* Ap = A + (ta ? size_t(k0) * lda : size_t(k0));
    const float* Bp = B + (tb ? size_t(k0) : size_t(k0) * ldb);
    const dnnl_status_t st = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, kp, alpha, Ap, lda,
                                        Bp, ldb, k0 == 0 ? beta : 1.0f, C, ldc);
    if (st != dnnl_success) {
      // only malformed arguments fail: a defect of rbn, not of the input
      std::fprintf(stderr, "rbn: error: dnnl_sgemm(%c%c, %d, %d, %d, lda %d, ldb %d, ldc %d) failed "
                   "(status %d; a defect of rbn: please report the command)\n", ta ? 'T' : 'N',
                   tb ? 'T' : 'N', M, N, kp, lda, ldb, ldc, static_cast<int>(st));
      std::abort();
    }
    k0 += kp;
  }
}

}  // namespace detail

void sgemm(Backend b, bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc) {
  // empty products (a rank with no rows, K = 0) keep cblas's meaning: C = beta C
  if (b == Backend::onednn && M > 0 && N > 0 && K > 0) {
    detail::onednn_sgemm(detail::onednn_has_k_band(), ta, tb, M, N, K, alpha, A, lda, B, ldb, beta,
                         C, ldc);
    return;
  }
  if (M == 1 && N > 0 && K > 0) {
    // One row (a stream's step at batch 1): a matrix-vector product. OpenBLAS 0.3.21's sgemm
    // packs op(B) first, which for one row is a second pass over the weights (measured 4x slower
    // per step on PTB's h·Rᵀ); sgemv streams B once. c = alpha op(B)ᵀ a + beta c, a's
    // elements lda apart when A is transposed.
    cblas_sgemv(CblasRowMajor, tb ? CblasNoTrans : CblasTrans, tb ? N : K, tb ? K : N, alpha, B, ldb, A,
                ta ? lda : 1, beta, C, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
              K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// LAPACK's Householder QR, which OpenBLAS ships (Debian's libopenblas exports the Fortran names;
// there is no LAPACKE header to include).
extern "C" {
void dgeqrf_(const blasint* m, const blasint* n, double* a, const blasint* lda, double* tau,
             double* work, const blasint* lwork, blasint* info);
void dorgqr_(const blasint* m, const blasint* n, const blasint* k, double* a, const blasint* lda,
             const double* tau, double* work, const blasint* lwork, blasint* info);
}

void orthonormal_columns(int m, int n, double* a) {
  if (m <= 0 || n <= 0) return;
  if (m < n) throw std::invalid_argument("orthonormal_columns: fewer rows than columns");
  // On one thread: OpenBLAS's QR gives other bits on two threads than on one, and a seed must give
  // the same weights at any thread count. OpenBLAS's OpenMP build (rbn's) takes its thread count
  // from OpenMP's, per call; another build (libopenblas.so.0 switched to it) keeps its own.
  struct OneThread {
    bool omp_build = openblas_get_parallel() == 2;
    int before = omp_build ? omp_get_max_threads() : openblas_get_num_threads();
    OneThread() { omp_build ? omp_set_num_threads(1) : openblas_set_num_threads(1); }
    ~OneThread() { omp_build ? omp_set_num_threads(before) : openblas_set_num_threads(before); }
  } one_thread;
  const blasint M = m, N = n, lda = m;
  std::vector<double> tau(n);
  blasint info = 0, query = -1;
  double size = 0;
  dgeqrf_(&M, &N, a, &lda, tau.data(), &size, &query, &info);
  blasint lwork = std::max<blasint>(static_cast<blasint>(size), N);
  std::vector<double> work(lwork);
  dgeqrf_(&M, &N, a, &lda, tau.data(), work.data(), &lwork, &info);
  if (info != 0) throw std::runtime_error(fmt::format("LAPACK dgeqrf failed (info {})", info));
  // R sits on and above the diagonal: keep the signs of its diagonal before Q replaces it
  std::vector<double> sign(n);
  for (int j = 0; j < n; ++j) sign[j] = a[static_cast<size_t>(j) * m + j] < 0 ? -1.0 : 1.0;
  dorgqr_(&M, &N, &N, a, &lda, tau.data(), &size, &query, &info);
  lwork = std::max<blasint>(static_cast<blasint>(size), N);
  work.resize(lwork);
  dorgqr_(&M, &N, &N, a, &lda, tau.data(), work.data(), &lwork, &info);
  if (info != 0) throw std::runtime_error(fmt::format("LAPACK dorgqr failed (info {})", info));
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) a[static_cast<size_t>(j) * m + i] *= sign[j];
}

}  // namespace rbn::blas
