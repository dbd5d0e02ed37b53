// Test main: the same process set-up as the rbn tool (OpenBLAS kernel selection), then gtest.
// ctest runs several test processes at once on a 2-core machine: OpenMP threads that spin at the
// time loop's barriers would then wait for descheduled peers, so the tests use the passive wait
// policy (read by libgomp when it loads: set, then re-execute once).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "util/blas.hpp"
#include "util/error.hpp"
#include "util/platform.hpp"

int main(int argc, char** argv) {
  if (!std::getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);
  }
  rbn::select_blas_kernel(argv);
  // The float GEMM backend is pinned by RBN_GEMM (ctest sets it: each backend has its runs).
  try {
    (void)rbn::blas::backend();  // (nothing printed: ctest discovers the tests from stdout)
  } catch (const rbn::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
