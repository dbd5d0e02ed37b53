// Test main: the same process set-up as the rbn tool (OpenBLAS kernel selection), then gtest.
#include <gtest/gtest.h>

#include "util/platform.hpp"

int main(int argc, char** argv) {
  rbn::select_blas_kernel(argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
