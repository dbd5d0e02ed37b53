// Process set-up shared by every executable: the OpenBLAS kernel, the thread count, subnormals.
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

// Subnormal floats and doubles (below 1.2e-38 and 2.2e-308 in magnitude) read and written as
// zero (MXCSR's DAZ and FTZ bits), as TensorFlow runs on CPUs: on Intel cores every operation on
// a subnormal takes a microcode assist of about a hundred cycles, and gradients that vanish
// through hundreds of steps pass through that range (a sequential-MNIST GRU training step ran
// 4.7x slower without this; docs/performance-history.md, "Subnormals"). Sets the calling thread; threads it creates
// afterwards inherit it (the OpenMP and OpenBLAS pools start at their first use), so the rbn tool
// calls it first thing. RBN_DENORMALS=keep leaves the processor's default (IEEE subnormals);
// another value throws UsageError naming the variable. Returns whether they are now flushed.
// (Library users choose for their own process: rbn.torch leaves it to torch.set_flush_denormal.)
// Off x86-64 it changes nothing and returns false: the processor's default stays.
bool flush_denormals_unless_kept();
// Whether the calling thread flushes subnormals (both bits set); false off x86-64.
bool denormals_flushed();
// "flush" or "keep": the calling thread's mode as RBN_DENORMALS names it (checkpoints record it).
const char* denormal_mode();

// "SkylakeX (OpenBLAS 0.3.21 ...)": for logs and benchmark reports.
std::string blas_description();

}  // namespace rbn
