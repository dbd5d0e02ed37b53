// Every matrix product of rbn goes through blas::gemm (row-major, cblas argument order), float and
// double, so kernels are templated on T. Float products run on the process's GEMM backend
// (OpenBLAS or oneDNN's dnnl_sgemm, chosen by set_backend / RBN_GEMM / `rbn train --gemm`);
// double products always run on OpenBLAS (oneDNN has no double GEMM).
#pragma once

#include <atomic>
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
void sgemm(Backend b, bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc);

// C[M,N] = alpha * op(A) op(B) + beta * C, row-major, on the process's backend.
inline void gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc) {
  sgemm(backend(), ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
inline void gemm(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda,
                 const double* B, int ldb, double beta, double* C, int ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
              K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace rbn::blas
