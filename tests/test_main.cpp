// Test main: the same process set-up as the rbn tool (OpenBLAS kernel selection), then gtest.
// ctest runs several test processes at once on a 2-core machine: OpenMP threads that spin at the
// time loop's barriers would then wait for descheduled peers, so the tests use the passive wait
// policy (read by libgomp when it loads: set, then re-execute once).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "util/blas.hpp"
#include "util/error.hpp"
#include "util/platform.hpp"

int main(int argc, char** argv) {
  // --rbn-gemm=NAME (ctest passes it: each backend has its runs) pins the float GEMM backend of
  // this process and of the rbn commands it starts, through RBN_GEMM.
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], "--rbn-gemm=", 11) == 0) {
      setenv("RBN_GEMM", argv[i] + 11, 1);
      for (int j = i; j < argc; ++j) argv[j] = argv[j + 1];  // argv[argc] is the null pointer
      --argc;
      break;
    }
  if (!std::getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);
  }
  rbn::select_blas_kernel(argv);
  // An unknown RBN_GEMM: one line, before any test.
  try {
    (void)rbn::blas::backend();  // (nothing printed: ctest discovers the tests from stdout)
  } catch (const rbn::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
