// flush_denormals_unless_kept (util/platform.hpp): by default the calling thread and the threads it
// starts afterwards read and write subnormals as zero; RBN_DENORMALS=keep leaves the processor's
// IEEE subnormals; another value is refused naming the variable. Each test restores MXCSR.
#include <gtest/gtest.h>

#include <cstdlib>
#include <thread>

#include "util/error.hpp"
#include "util/platform.hpp"

#if defined(__x86_64__)
#include <xmmintrin.h>

namespace {

// Restores the calling thread's MXCSR and RBN_DENORMALS.
struct FpStateGuard {
  unsigned csr = _mm_getcsr();
  ~FpStateGuard() {
    _mm_setcsr(csr);
    unsetenv("RBN_DENORMALS");
  }
};

// 1e-39f (subnormal) times 1: itself with IEEE subnormals, 0 under DAZ.
float subnormal_product() {
  volatile float tiny = 1e-39f, one = 1.0f;
  return tiny * one;
}

TEST(Platform, DenormalsAreFlushedByDefaultAndInheritedByNewThreads) {
  FpStateGuard guard;
  unsetenv("RBN_DENORMALS");
  ASSERT_GT(subnormal_product(), 0.0f);  // the processor's default: IEEE subnormals
  EXPECT_TRUE(rbn::flush_denormals_unless_kept());
  EXPECT_TRUE(rbn::denormals_flushed());
  EXPECT_EQ(subnormal_product(), 0.0f);
  bool thread_flushed = false;
  float thread_product = 1.0f;
  std::thread([&] {
    thread_flushed = rbn::denormals_flushed();
    thread_product = subnormal_product();
  }).join();
  EXPECT_TRUE(thread_flushed);
  EXPECT_EQ(thread_product, 0.0f);
  setenv("RBN_DENORMALS", "flush", 1);  // the default, spelled out
  EXPECT_TRUE(rbn::flush_denormals_unless_kept());
}

TEST(Platform, DenormalsKeptWhenAsked) {
  FpStateGuard guard;
  setenv("RBN_DENORMALS", "keep", 1);
  EXPECT_FALSE(rbn::flush_denormals_unless_kept());
  EXPECT_FALSE(rbn::denormals_flushed());
  EXPECT_FLOAT_EQ(subnormal_product(), 1e-39f);
}

TEST(Platform, UnknownDenormalModeIsRefused) {
  FpStateGuard guard;
  setenv("RBN_DENORMALS", "fast", 1);
  try {
    rbn::flush_denormals_unless_kept();
    FAIL() << "RBN_DENORMALS=fast was accepted";
  } catch (const rbn::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("RBN_DENORMALS=fast"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(rbn::denormals_flushed());  // nothing changed
}

}  // namespace
#endif
