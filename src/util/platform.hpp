// Process set-up shared by every executable: the OpenBLAS kernel and the thread count.
#pragma once

#include <string>

namespace rbn {

// OpenBLAS 0.3.21 (Debian 12) does not recognize recent Xeons and falls back to its "Prescott"
// (SSE3) kernels, 3-4x slower than the AVX-512 ones these CPUs run. OpenBLAS reads
// OPENBLAS_CORETYPE only when it loads, so when the variable is unset and the detected core is
// such a fallback, this sets it from the CPU's own feature flags (SkylakeX for AVX-512, Haswell
// for AVX2+FMA) and re-executes the program once. A user's OPENBLAS_CORETYPE is always kept.
// Call first thing in main(); returns normally when nothing needs changing.
void select_blas_kernel(char** argv);

// OpenMP and OpenBLAS threads (one pool: the OpenMP build of OpenBLAS). n <= 0 keeps the default.
void set_threads(int n);
int num_threads();

// "SkylakeX (OpenBLAS 0.3.21 ...)": for logs and benchmark reports.
std::string blas_description();

}  // namespace rbn
