// Every matrix product of rbn goes through blas::gemm (row-major, cblas argument order), float and
// double, so kernels are templated on T. Float products run on the process's GEMM backend
// (OpenBLAS or oneDNN's dnnl_sgemm, chosen by set_backend / RBN_GEMM / `rbn train --gemm`);
// double products always run on OpenBLAS (oneDNN has no double GEMM). With the process's
// precision set to bf16 (set_precision, `--precision bf16`), float products take bfloat16 inputs
// instead: both factors rounded to bf16 (round to nearest even), multiplied and accumulated in
// fp32 by oneDNN's matmul primitive, the result fp32 (its BLAS-like API has no bf16 GEMM).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <cblas.h>

namespace rbn::blas {

enum class Backend : int { openblas = 0, onednn = 1 };

// "openblas" / "onednn".
const char* backend_name(Backend b);
// nullopt for anything else (callers name their flag or variable in the error).
std::optional<Backend> parse_backend(std::string_view name);
// Every backend this build has, in a fixed order (OpenBLAS first).
const std::vector<Backend>& all_backends();
// "OpenBLAS 0.3.21 SkylakeX" / "oneDNN 2.6.3 (avx2)": for logs and benchmark reports.
std::string backend_description(Backend b);

namespace detail {
// -1 until first use, then the Backend of every float product of the process.
extern std::atomic<int> g_backend;
int init_backend();  // from RBN_GEMM (openblas | onednn; unset or auto: openblas)
}  // namespace detail

// The process's float backend. The first call reads RBN_GEMM and throws UsageError naming it for
// an unknown value; the rbn tool and the test main call it first thing, outside parallel regions.
inline Backend backend() {
  int b = detail::g_backend.load(std::memory_order_relaxed);
  if (b < 0) b = detail::init_backend();
  return static_cast<Backend>(b);
}
// Process-wide: every thread's products (the time loop calls gemm inside OpenMP regions).
void set_backend(Backend b);

// C[M,N] = alpha * op(A) op(B) + beta * C on the given backend (calibration, benchmarks).
// On oneDNN, a product in its slow K band (detail::onednn_k_panel) is issued in K panels.
void sgemm(Backend b, bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc);

namespace detail {
// oneDNN 2.6.3's sgemm on avx512_core_amx has a slow band: a product with K in [48, 96] that it
// packs (1/M + 1/N < 0.00196) runs at a third of its rate, a cost per element of C that does not
// grow with K (X[6400,K]·W[4000,K]ᵀ, the hoisted input product of PTB's layer with K features:
// about 41 ms on two threads for every K in the band; K = 44-47 at 173-207 GFLOP/s, K = 48 at 57;
// docs/performance.md, "GEMM backends"). The same product in K panels, the first 32 columns wide
// and the rest added with beta = 1, runs at 160-180. The width of the first panel of a product of
// K columns: 32 in the band, else K (issued whole). Only the summation order changes.
int onednn_k_panel(int M, int N, int K);
// Whether this process's oneDNN has the band: its ISA is avx512_core_amx (the AVX-512 EPYC of
// issue 18, avx512_core_bf16, ran K = 50 whole at 341 GFLOP/s).
bool onednn_has_k_band();
// dnnl_sgemm, in the panels of onednn_k_panel when in_panels, else whole.
void onednn_sgemm(bool in_panels, bool ta, bool tb, int M, int N, int K, float alpha,
                  const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc);
}  // namespace detail

// ---- precision of the float products --------------------------------------------------------

enum class Precision : int { fp32 = 0, bf16 = 1 };
const char* precision_name(Precision p);                  // "fp32" / "bf16"
std::optional<Precision> parse_precision(std::string_view name);

// Whether this CPU multiplies bf16 natively: oneDNN's effective ISA is avx512_core_bf16 or above
// (AVX512_BF16 or AMX). Without it oneDNN's matmul refuses bf16 inputs.
bool cpu_has_bf16();
// The test override (RBN_TEST_BF16=emulate, for tests only): bf16 is accepted on any CPU, and
// products whose bf16 matmul oneDNN refuses here round both factors to bf16 and multiply them with
// the fp32 GEMM instead (bf16 x bf16 products are exact in fp32, so only the summation order can
// differ from oneDNN's). Read at each call; throws UsageError naming the variable for another value.
bool bf16_emulation_override();

// Sets the precision of every float product of the process (every thread). bf16 on a CPU without
// bf16 throws UsageError "<what>: bf16 needs a CPU with AVX512_BF16 or AMX ..." (what names the
// flag or keyword), unless the test override is set.
void set_precision(Precision p, const std::string& what);
namespace detail {
extern std::atomic<int> g_precision;
}
inline Precision precision() {
  return static_cast<Precision>(detail::g_precision.load(std::memory_order_relaxed));
}

// C[M,N] = alpha * op(A) op(B) + beta * C with both factors rounded to bf16, fp32 accumulation
// (oneDNN's matmul; the emulation under the test override). Row-major, cblas argument order.
void sgemm_bf16(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                const float* B, int ldb, float beta, float* C, int ldc);
// x rounded to the nearest bfloat16 (ties to even; NaN stays NaN), as 16 bits / back as float.
uint16_t to_bf16(float x);
float from_bf16(uint16_t b);

// C[M,N] = alpha * op(A) op(B) + beta * C, row-major, on the process's backend and precision.
inline void gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc) {
  if (precision() == Precision::bf16)
    sgemm_bf16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else
    sgemm(backend(), ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
inline void gemm(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda,
                 const double* B, int ldb, double beta, double* C, int ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
              K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// ---- transposition ------------------------------------------------------------------------------

// out[c * ldo + r] = A[r * lda + c] for A [rows, cols]: OpenBLAS's ?omatcopy (single-threaded,
// safe inside the time loop's parallel region), on either float backend. Its kernels ran the
// forward's per-call transpose of R 3.5x faster than a scalar 32x32 tiled loop from memory
// (docs/performance.md, "Packing `R` once per call").
inline void transpose(int rows, int cols, const float* A, int64_t lda, float* out, int64_t ldo) {
  if (rows <= 0 || cols <= 0) return;
  cblas_somatcopy(CblasRowMajor, CblasTrans, rows, cols, 1.0f, A, static_cast<blasint>(lda), out,
                  static_cast<blasint>(ldo));
}
inline void transpose(int rows, int cols, const double* A, int64_t lda, double* out, int64_t ldo) {
  if (rows <= 0 || cols <= 0) return;
  cblas_domatcopy(CblasRowMajor, CblasTrans, rows, cols, 1.0, A, static_cast<blasint>(lda), out,
                  static_cast<blasint>(ldo));
}

// ---- orthonormal columns -------------------------------------------------------------------------

// a [m, n] column-major (m >= n), in place: the Q of its QR (LAPACK's Householder dgeqrf and
// dorgqr, from OpenBLAS), each column signed so that R's diagonal is positive, as
// torch.nn.init.orthogonal_ signs it. For the weights' orthogonal initialization (init.hpp).
void orthonormal_columns(int m, int n, double* a);

// ---- a right operand fixed across many products ------------------------------------------------

// B [K,N] (row-major, leading dimension ldb), the right operand of many products of M rows in one
// call (a time loop's slice of R, unchanged while the loop runs):
//   multiply(A, lda, beta, C, ldc):  C[M,N] = A[M,K] B + beta C
// which is gemm(false, false, M, N, K, 1, A, lda, B, ldb, beta, C, ldc) on the process's backend and
// precision as they were at prepare(). Under bf16 precision prepare() rounds B to bf16 in the
// blocked layout of oneDNN's matmul, once, instead of at every product (per product, that
// conversion cost as much as PTB's product itself). Otherwise (fp32, double, the test emulation)
// B is used in place: the caller keeps it alive and unchanged until the last product. (fp32 on
// oneDNN was tried through the same blocked matmul: one thread's product ran at dnnl_sgemm's rate,
// docs/performance-history.md.) One per thread: the products run single-threaded inside the time loop's
// parallel region, concurrently across objects.
template <class T>
class FixedRightOperand {
 public:
  void prepare(const T* B, int K, int N, int ldb, int M) { B_ = B, K_ = K, N_ = N, ldb_ = ldb, M_ = M; }
  void multiply(const T* A, int lda, T beta, T* C, int ldc) {
    gemm(false, false, M_, N_, K_, T(1), A, lda, B_, ldb_, beta, C, ldc);
  }

 private:
  const T* B_ = nullptr;
  int K_ = 0, N_ = 0, ldb_ = 0, M_ = 0;
};

template <>
class FixedRightOperand<float> {
 public:
  FixedRightOperand();
  FixedRightOperand(FixedRightOperand&&) noexcept;
  FixedRightOperand& operator=(FixedRightOperand&&) noexcept;
  ~FixedRightOperand();
  void prepare(const float* B, int K, int N, int ldb, int M);
  void multiply(const float* A, int lda, float beta, float* C, int ldc);
  // Whether the last prepare() rounded B into oneDNN's layout (else products read B in place).
  bool blocked() const { return blocked_on_; }

 private:
  struct Blocked;  // B in bf16 in the layout of oneDNN's matmul, its matmuls (bf16_gemm.cpp)
  std::unique_ptr<Blocked> blocked_;
  bool blocked_on_ = false;  // prepare() put B there: bf16 precision on a CPU with bf16
  const float* B_ = nullptr;
  int K_ = 0, N_ = 0, ldb_ = 0, M_ = 0;
};

}  // namespace rbn::blas
