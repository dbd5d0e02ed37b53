#include "util/blas.hpp"

#include <oneapi/dnnl/dnnl.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>

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

void sgemm(Backend b, bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc) {
  // empty products (a rank with no rows, K = 0) keep cblas's meaning: C = beta C
  if (b == Backend::onednn && M > 0 && N > 0 && K > 0) {
    const dnnl_status_t st = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, alpha, A, lda, B,
                                        ldb, beta, C, ldc);
    if (st == dnnl_success) return;
    // only malformed arguments fail: a defect of rbn, not of the input
    std::fprintf(stderr, "rbn: error: dnnl_sgemm(%c%c, %d, %d, %d, lda %d, ldb %d, ldc %d) failed "
                 "(status %d; a defect of rbn: please report the command)\n", ta ? 'T' : 'N',
                 tb ? 'T' : 'N', M, N, K, lda, ldb, ldc, static_cast<int>(st));
    std::abort();
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

}  // namespace rbn::blas
