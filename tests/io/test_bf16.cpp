// The bf16 precision of the float products: rounding to bfloat16, the refusal on a CPU without
// bf16, and (on such a CPU through the test override RBN_TEST_BF16=emulate) products whose
// error against fp32 stays within bf16's bound while matching the rounded factors multiplied
// in high precision.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "util/blas.hpp"
#include "util/error.hpp"
#include "util/rng.hpp"

namespace rbn {
namespace {

using blas::Precision;

float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Restores fp32 and the override variable however the test ends.
struct PrecisionGuard {
  explicit PrecisionGuard(bool override_on) {
    if (override_on)
      setenv("RBN_TEST_BF16", "emulate", 1);
    else
      unsetenv("RBN_TEST_BF16");
  }
  ~PrecisionGuard() {
    blas::set_precision(Precision::fp32, "test");
    unsetenv("RBN_TEST_BF16");
  }
};

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(blas::to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(blas::to_bf16(bits_to_float(0x3f808000)), 0x3f80);  // tie: down to the even 0x3f80
  EXPECT_EQ(blas::to_bf16(bits_to_float(0x3f818000)), 0x3f82);  // tie: up to the even 0x3f82
  EXPECT_EQ(blas::to_bf16(bits_to_float(0x3f808001)), 0x3f81);  // above the tie: up
  EXPECT_EQ(blas::to_bf16(-2.5f), 0xc020);                      // exact
  EXPECT_EQ(blas::to_bf16(INFINITY), 0x7f80);
  EXPECT_EQ(blas::to_bf16(3.4e38f), 0x7f80);  // past bf16's largest finite value: infinity
  EXPECT_TRUE(std::isnan(blas::from_bf16(blas::to_bf16(NAN))));
  EXPECT_EQ(blas::from_bf16(blas::to_bf16(0.1f)), bits_to_float(0x3dcd0000));
}

TEST(Bf16, NamesParse) {
  EXPECT_EQ(blas::parse_precision("bf16"), Precision::bf16);
  EXPECT_EQ(blas::parse_precision("fp32"), Precision::fp32);
  EXPECT_FALSE(blas::parse_precision("fp16").has_value());
  EXPECT_STREQ(blas::precision_name(Precision::bf16), "bf16");
}

// Without the override: refused in one line naming the flag on a CPU without bf16 (this CI's
// AVX2 machines), accepted on one with it.
TEST(Bf16, RefusedOnACpuWithoutBf16) {
  PrecisionGuard guard(false);
  if (blas::cpu_has_bf16()) {
    EXPECT_NO_THROW(blas::set_precision(Precision::bf16, "--precision"));
    EXPECT_EQ(blas::precision(), Precision::bf16);
    return;
  }
  try {
    blas::set_precision(Precision::bf16, "--precision");
    FAIL() << "bf16 accepted on a CPU without it";
  } catch (const UsageError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("--precision: bf16 needs a CPU with AVX512_BF16 or AMX", 0), 0u) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
  EXPECT_EQ(blas::precision(), Precision::fp32);  // unchanged
}

TEST(Bf16, OverrideTakesOnlyEmulate) {
  setenv("RBN_TEST_BF16", "yes", 1);
  EXPECT_THROW(blas::set_precision(Precision::bf16, "--precision"), UsageError);
  unsetenv("RBN_TEST_BF16");
  EXPECT_EQ(blas::precision(), Precision::fp32);
}

// One product under bf16 against (a) the bf16-rounded factors multiplied in double: the fp32
// accumulation's error only, |d| <= 1e-5 * sum_k |a b|; (b) the fp32 product: within bf16's
// bound, |d| <= 2^-7 * sum_k |a b| (each factor off by at most 2^-9 relative), and not equal to it
// (the factors were rounded).
void check_product(bool ta, bool tb, int M, int N, int K, float alpha, float beta, int pad) {
  const int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
  Rng rng(static_cast<uint64_t>(M * 131 + N * 17 + K) + ta * 2 + tb);
  std::vector<float> A(static_cast<size_t>(ta ? K : M) * lda), B(static_cast<size_t>(tb ? N : K) * ldb),
      C0(static_cast<size_t>(M) * ldc);
  for (auto* v : {&A, &B, &C0})
    for (auto& x : *v) x = static_cast<float>(rng.normal());
  auto a = [&](int i, int k) { return ta ? A[static_cast<size_t>(k) * lda + i] : A[static_cast<size_t>(i) * lda + k]; };
  auto b = [&](int k, int j) { return tb ? B[static_cast<size_t>(j) * ldb + k] : B[static_cast<size_t>(k) * ldb + j]; };
  std::vector<float> C16 = C0, C32 = C0;
  blas::gemm(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C16.data(), ldc);
  blas::set_precision(Precision::fp32, "test");  // the reference product
  blas::gemm(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C32.data(), ldc);
  double worst_acc = 0, worst_bf16 = 0, max_diff = 0;
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double exact = 0, mag = 0;
      for (int k = 0; k < K; ++k) {
        const double pa = blas::from_bf16(blas::to_bf16(a(i, k))), pb = blas::from_bf16(blas::to_bf16(b(k, j)));
        exact += pa * pb;
        mag += std::fabs(static_cast<double>(a(i, k)) * b(k, j));
      }
      const size_t o = static_cast<size_t>(i) * ldc + j;
      const double want = alpha * exact + beta * static_cast<double>(C0[o]);
      const double scale = std::fabs(alpha) * mag + std::fabs(beta * C0[o]) + 1e-30;
      worst_acc = std::max(worst_acc, std::fabs(C16[o] - want) / scale);
      worst_bf16 = std::max(worst_bf16, std::fabs(static_cast<double>(C16[o]) - C32[o]) / scale);
      max_diff = std::max(max_diff, std::fabs(static_cast<double>(C16[o]) - C32[o]));
    }
  const std::string what = std::string(ta ? "T" : "N") + (tb ? "T" : "N") + " " + std::to_string(M) + "x" +
                           std::to_string(N) + "x" + std::to_string(K);
  EXPECT_LE(worst_acc, 1e-5) << what;
  EXPECT_LE(worst_bf16, 0x1.0p-7) << what;
  EXPECT_GT(max_diff, 0.0) << what << ": identical to fp32: the factors were not rounded";
  for (int i = 0; i < M; ++i)  // the padding between rows is untouched
    for (int j = N; j < ldc; ++j) EXPECT_EQ(C16[static_cast<size_t>(i) * ldc + j], C0[static_cast<size_t>(i) * ldc + j]);
}

// The products the engine and the heads issue (h R^T per step, x W^T over all steps, the deferred
// dR = dpre^T h and dW, dh = dpre R, the head), with alpha, beta and padded leading dimensions.
TEST(Bf16, ProductsWithinToleranceOfFp32) {
  PrecisionGuard guard(true);
  blas::set_precision(Precision::bf16, "--precision");
  ASSERT_EQ(blas::precision(), Precision::bf16);
  struct Case {
    bool ta, tb;
    int M, N, K;
    float alpha, beta;
    int pad;
  };
  const Case cases[] = {{false, true, 8, 64, 48, 1, 0, 0},   {false, true, 1, 96, 40, 1, 0, 3},
                        {true, false, 64, 48, 30, 1, 1, 0},  {false, false, 8, 48, 64, 1, 0, 2},
                        {true, false, 11, 5, 70, 0.5f, 1, 1}, {false, false, 3, 7, 9, -2, 0.25f, 0}};
  for (const Case& c : cases) {
    blas::set_precision(Precision::bf16, "--precision");
    check_product(c.ta, c.tb, c.M, c.N, c.K, c.alpha, c.beta, c.pad);
  }
}

// The time loop's fixed right operand (a thread's slice of R, multiplied by every step's rows):
// under bf16, prepared once and multiplied many times, each product within the fp32
// accumulation's error of the bf16-rounded factors multiplied in double (beta 0 and 1, padded
// leading dimensions); preparing it again with new values of B gives their product (nothing is
// kept from the B before). (fp32: tests/io/test_gemm.cpp.)
TEST(Bf16, FixedRightOperandMatchesTheRoundedProduct) {
  PrecisionGuard guard(true);
  struct Case {
    int M, N, K, pad;
  };
  for (const Case& c : {Case{8, 96, 48, 0}, Case{64, 40, 100, 3}, Case{1, 32, 17, 1}}) {
    const int lda = c.K + c.pad, ldb = c.N + c.pad, ldc = c.N + 2 * c.pad;
    Rng rng(static_cast<uint64_t>(c.M * 7 + c.N));
    auto fill = [&](size_t n) {
      std::vector<float> v(n);
      for (auto& x : v) x = static_cast<float>(rng.normal());
      return v;
    };
    std::vector<float> B = fill(static_cast<size_t>(c.K) * ldb);
    blas::set_precision(Precision::bf16, "--precision");
    blas::FixedRightOperand<float> op;
    for (int version = 0; version < 2; ++version) {
      if (version == 1) B = fill(B.size());  // the weights after an update
      op.prepare(B.data(), c.K, c.N, ldb, c.M);
      EXPECT_EQ(op.blocked(), blas::cpu_has_bf16());  // oneDNN's bf16 matmul where the CPU has one
      for (float beta : {0.0f, 1.0f}) {
        const std::vector<float> A = fill(static_cast<size_t>(c.M) * lda), C0 = fill(static_cast<size_t>(c.M) * ldc);
        std::vector<float> C = C0;
        op.multiply(A.data(), lda, beta, C.data(), ldc);
        double worst = 0;
        for (int i = 0; i < c.M; ++i)
          for (int j = 0; j < c.N; ++j) {
            double exact = 0, mag = 0;
            for (int k = 0; k < c.K; ++k) {
              const float a = A[static_cast<size_t>(i) * lda + k], b = B[static_cast<size_t>(k) * ldb + j];
              exact += static_cast<double>(blas::from_bf16(blas::to_bf16(a))) * blas::from_bf16(blas::to_bf16(b));
              mag += std::fabs(static_cast<double>(a) * b);
            }
            const size_t o = static_cast<size_t>(i) * ldc + j;
            worst = std::max(worst, std::fabs(C[o] - (exact + beta * static_cast<double>(C0[o]))) /
                                        (mag + std::fabs(beta * C0[o]) + 1e-30));
          }
        EXPECT_LE(worst, 1e-5) << c.M << "x" << c.N << "x" << c.K << " version " << version << " beta " << beta;
        for (int i = 0; i < c.M; ++i)  // the padding between rows is untouched
          for (int j = c.N; j < ldc; ++j)
            EXPECT_EQ(C[static_cast<size_t>(i) * ldc + j], C0[static_cast<size_t>(i) * ldc + j]);
      }
    }
  }
}

}  // namespace
}  // namespace rbn
