// Test main: the same process set-up as the rbn tool (OpenBLAS kernel selection), then gtest.
// ctest runs several test processes at once on a 2-core machine: OpenMP threads that spin at the
// time loop's barriers would then wait for descheduled peers, so the tests use the passive wait
// policy (read by libgomp when it loads: set, then re-execute once).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>

#include "util/platform.hpp"

int main(int argc, char** argv) {
  if (!std::getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);
  }
  rbn::select_blas_kernel(argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
