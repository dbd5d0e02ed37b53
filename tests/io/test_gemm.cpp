// The GEMM layer: every backend against a plain triple loop on every transpose, leading dimension
// and beta; the process's backend selection; the calibration's cache (written, reused, rewritten
// when corrupt, harmless when unwritable).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "util/blas.hpp"
#include "util/gemm_calibration.hpp"

namespace rbn::blas {
namespace {

namespace fs = std::filesystem;

// C = alpha op(A) op(B) + beta C in double, row-major.
void naive(bool ta, bool tb, int M, int N, int K, float alpha, const std::vector<float>& A, int lda,
           const std::vector<float>& B, int ldb, float beta, std::vector<float>& C, int ldc) {
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double s = 0;
      for (int k = 0; k < K; ++k)
        s += double(ta ? A[size_t(k) * lda + i] : A[size_t(i) * lda + k]) *
             double(tb ? B[size_t(j) * ldb + k] : B[size_t(k) * ldb + j]);
      float& c = C[size_t(i) * ldc + j];
      c = static_cast<float>(alpha * s + (beta == 0.f ? 0.0 : double(beta) * c));
    }
}

TEST(Gemm, EveryBackendMatchesTheDefinition) {
  const int M = 37, N = 29, K = 53, pad = 3;
  for (Backend be : all_backends())
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (float beta : {0.f, 1.f, -0.5f}) {
          const int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
          std::vector<float> A(size_t(ta ? K : M) * lda), B(size_t(tb ? N : K) * ldb),
              C(size_t(M) * ldc);
          for (size_t i = 0; i < A.size(); ++i) A[i] = std::sin(0.37f * float(i));
          for (size_t i = 0; i < B.size(); ++i) B[i] = std::cos(0.11f * float(i));
          for (size_t i = 0; i < C.size(); ++i) C[i] = 0.25f * std::sin(float(i));
          std::vector<float> want = C;
          naive(ta, tb, M, N, K, 0.75f, A, lda, B, ldb, beta, want, ldc);
          sgemm(be, ta, tb, M, N, K, 0.75f, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
          for (int i = 0; i < M; ++i)
            for (int j = 0; j < ldc; ++j) {
              const size_t at = size_t(i) * ldc + j;
              if (j >= N) {  // padding untouched
                EXPECT_EQ(C[at], 0.25f * std::sin(float(at)));
              } else {
                ASSERT_NEAR(C[at], want[at], 2e-5f * (1 + std::fabs(want[at])))
                    << backend_name(be) << " ta=" << ta << " tb=" << tb << " beta=" << beta;
              }
            }
        }
}

// oneDNN's slow K band (blas.hpp): which products are issued in panels, and how wide.
TEST(Gemm, OnednnKPanelsOnlyInTheBand) {
  using detail::onednn_k_panel;
  EXPECT_EQ(onednn_k_panel(6400, 4000, 50), 32);  // PTB's hoisted input product, 50 features
  EXPECT_EQ(onednn_k_panel(6400, 4000, 48), 32);
  EXPECT_EQ(onednn_k_panel(6400, 4000, 96), 32);
  EXPECT_EQ(onednn_k_panel(6400, 4000, 47), 47);  // below the band: whole
  EXPECT_EQ(onednn_k_panel(6400, 4000, 97), 97);  // above it
  EXPECT_EQ(onednn_k_panel(64, 4000, 64), 64);    // a time step's rows: not packed, whole
  EXPECT_EQ(onednn_k_panel(256, 4000, 64), 64);
  EXPECT_EQ(onednn_k_panel(1000, 1100, 64), 32);  // 1/1000 + 1/1100 < 0.00196: packed
}

// The panels against the definition on every transpose and beta, with padded leading dimensions
// (K = 50: 32 + 18; 80: 32 + 32 + 16; 96: three of 32), on any CPU; and the oneDNN backend at such
// a shape, panelled or not as this CPU has it.
TEST(Gemm, OnednnKPanelsMatchTheDefinition) {
  const int M = 1000, N = 1100, pad = 5;
  struct Case { int K; bool ta, tb; float beta; bool panels; };
  std::vector<Case> cases;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) cases.push_back({50, ta, tb, ta ? 1.f : 0.f, true});
  cases.push_back({80, false, true, -0.5f, true});
  cases.push_back({96, true, false, 0.f, true});
  cases.push_back({50, false, true, -0.5f, false});  // through sgemm: as this CPU runs it
  for (const Case& c : cases) {
    const int lda = (c.ta ? M : c.K) + pad, ldb = (c.tb ? c.K : N) + pad, ldc = N + pad;
    std::vector<float> A(size_t(c.ta ? c.K : M) * lda), B(size_t(c.tb ? N : c.K) * ldb),
        C(size_t(M) * ldc);
    for (size_t i = 0; i < A.size(); ++i) A[i] = std::sin(0.37f * float(i % 4099));
    for (size_t i = 0; i < B.size(); ++i) B[i] = std::cos(0.11f * float(i % 3001));
    for (size_t i = 0; i < C.size(); ++i) C[i] = 0.25f * std::sin(float(i % 997));
    std::vector<float> want = C;
    naive(c.ta, c.tb, M, N, c.K, 0.75f, A, lda, B, ldb, c.beta, want, ldc);
    if (c.panels)
      detail::onednn_sgemm(true, c.ta, c.tb, M, N, c.K, 0.75f, A.data(), lda, B.data(), ldb, c.beta,
                           C.data(), ldc);
    else
      sgemm(Backend::onednn, c.ta, c.tb, M, N, c.K, 0.75f, A.data(), lda, B.data(), ldb, c.beta,
            C.data(), ldc);
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < ldc; ++j) {
        const size_t at = size_t(i) * ldc + j;
        if (j >= N)
          ASSERT_EQ(C[at], 0.25f * std::sin(float(at % 997)));
        else
          ASSERT_NEAR(C[at], want[at], 2e-5f * (1 + std::fabs(want[at])))
              << "K=" << c.K << " ta=" << c.ta << " tb=" << c.tb << " beta=" << c.beta;
      }
  }
}

// The time loop's fixed right operand on every backend, fp32: prepared once, several products
// (beta 0, 1, -0.5; padded leading dimensions; shapes of the PTB step's slices, scaled down, and
// odd ones) against the definition and exactly blas::gemm; prepared again with new values of B,
// their product. (bf16: tests/io/test_bf16.cpp.)
TEST(Gemm, FixedRightOperandMatchesTheDefinition) {
  struct Case {
    int M, N, K, pad;
  };
  const Backend before = backend();
  for (Backend be : all_backends()) {
    set_backend(be);
    for (const Case& c : {Case{64, 200, 100, 0}, Case{64, 100, 400, 5}, Case{8, 48, 48, 1}, Case{3, 17, 29, 2}}) {
      const int lda = c.K + c.pad, ldb = c.N + c.pad, ldc = c.N + 2 * c.pad;
      std::vector<float> B(size_t(c.K) * ldb);
      FixedRightOperand<float> op;
      for (int version = 0; version < 2; ++version) {
        for (size_t i = 0; i < B.size(); ++i) B[i] = std::cos(0.11f * float(i) + float(version));
        op.prepare(B.data(), c.K, c.N, ldb, c.M);
        EXPECT_FALSE(op.blocked());  // fp32: B in place
        for (float beta : {0.f, 1.f, -0.5f}) {
          std::vector<float> A(size_t(c.M) * lda), C(size_t(c.M) * ldc);
          for (size_t i = 0; i < A.size(); ++i) A[i] = std::sin(0.37f * float(i) + beta);
          for (size_t i = 0; i < C.size(); ++i) C[i] = 0.25f * std::sin(float(i));
          std::vector<float> want = C, plain = C;
          naive(false, false, c.M, c.N, c.K, 1.f, A, lda, B, ldb, beta, want, ldc);
          op.multiply(A.data(), lda, beta, C.data(), ldc);
          const std::string what = std::string(backend_name(be)) + " " + std::to_string(c.M) + "x" +
                                   std::to_string(c.N) + "x" + std::to_string(c.K) + " version " +
                                   std::to_string(version) + " beta " + std::to_string(beta);
          for (int i = 0; i < c.M; ++i)
            for (int j = 0; j < ldc; ++j) {
              const size_t at = size_t(i) * ldc + j;
              if (j >= c.N)  // padding untouched
                EXPECT_EQ(C[at], 0.25f * std::sin(float(at))) << what;
              else
                ASSERT_NEAR(C[at], want[at], 2e-5f * std::sqrt(float(c.K)) * (1 + std::fabs(want[at]))) << what;
            }
          sgemm(be, false, false, c.M, c.N, c.K, 1.f, A.data(), lda, B.data(), ldb, beta, plain.data(), ldc);
          EXPECT_EQ(C, plain) << what;
        }
      }
    }
  }
  set_backend(before);
}

TEST(Gemm, EmptyProductsScaleC) {  // K = 0: C = beta C; M or N = 0: nothing
  for (Backend be : all_backends()) {
    std::vector<float> C{1.f, 2.f, 3.f, 4.f};
    float a = 0, b = 0;
    sgemm(be, false, false, 2, 2, 0, 1.f, &a, 1, &b, 2, 0.5f, C.data(), 2);
    EXPECT_EQ(C, (std::vector<float>{0.5f, 1.f, 1.5f, 2.f})) << backend_name(be);
    sgemm(be, false, false, 0, 2, 3, 1.f, &a, 3, &b, 2, 0.f, C.data(), 2);
    EXPECT_EQ(C, (std::vector<float>{0.5f, 1.f, 1.5f, 2.f})) << backend_name(be);
  }
}

TEST(Gemm, ProcessBackendFollowsSetBackend) {
  const Backend before = backend();
  for (Backend be : all_backends()) {
    set_backend(be);
    EXPECT_EQ(backend(), be);
    EXPECT_EQ(parse_backend(backend_name(be)), be);
  }
  EXPECT_FALSE(parse_backend("mkl"));
  EXPECT_FALSE(parse_backend("auto"));
  set_backend(before);
  // the test run pins the backend through RBN_GEMM (ctest sets it)
  if (const char* env = std::getenv("RBN_GEMM")) {
    EXPECT_EQ(backend_name(backend()), std::string(env));
  }
}

TEST(GemmCalibration, ChoosesOpenBlasUnlessClearlyFaster) {
  EXPECT_EQ(choose({10.0, 9.6}), Backend::openblas);  // 4 % is noise
  EXPECT_EQ(choose({10.0, 9.4}), Backend::onednn);
  EXPECT_EQ(choose({10.0, 12.0}), Backend::openblas);
}

// Sets an environment variable for one scope.
struct ScopedEnv {
  std::string name, old;
  bool had;
  ScopedEnv(const char* n, const std::string& v) : name(n) {
    const char* o = std::getenv(n);
    had = o != nullptr;
    if (had) old = o;
    setenv(n, v.c_str(), 1);
  }
  ~ScopedEnv() {
    if (had)
      setenv(name.c_str(), old.c_str(), 1);
    else
      unsetenv(name.c_str());
  }
};

std::vector<GemmShape> small_step() {
  return {{false, true, 64, 256, 50, 1, false}, {false, true, 16, 128, 64, 20, true},
          {true, false, 256, 64, 640, 1, false}};
}

TEST(GemmCalibration, CachedInXdgCacheHomeAndReused) {
  const fs::path dir = fs::temp_directory_path() / ("rbn-gemm-" + std::to_string(getpid()));
  fs::remove_all(dir);
  ScopedEnv xdg("XDG_CACHE_HOME", dir.string());
  EXPECT_EQ(calibration_cache_path(), (dir / "rbn" / "gemm-backend.json").string());
  const Calibration first = calibrate(small_step());
  EXPECT_FALSE(first.from_cache);
  EXPECT_TRUE(first.cache_note.empty()) << first.cache_note;
  ASSERT_EQ(first.step_ms.size(), all_backends().size());
  for (double ms : first.step_ms) EXPECT_GT(ms, 0.0);
  EXPECT_EQ(first.choice, choose(first.step_ms));
  ASSERT_TRUE(fs::exists(first.cache_path));
  for (int i = 0; i < 3; ++i) {  // the same choice every time, without timing again
    const Calibration again = calibrate(small_step());
    EXPECT_TRUE(again.from_cache);
    EXPECT_EQ(again.choice, first.choice);
    EXPECT_EQ(again.step_ms, first.step_ms);
  }
  // other shapes: a second entry beside the first
  auto other = small_step();
  other[0].M = 128;
  EXPECT_FALSE(calibrate(other).from_cache);
  EXPECT_TRUE(calibrate(small_step()).from_cache);
  // a corrupt file is timed again and rewritten
  std::ofstream(first.cache_path) << "{not json";
  const Calibration fresh = calibrate(small_step());
  EXPECT_FALSE(fresh.from_cache);
  EXPECT_TRUE(calibrate(small_step()).from_cache);
  fs::remove_all(dir);
}

TEST(GemmCalibration, UnwritableCacheStillChooses) {
  const fs::path file = fs::temp_directory_path() / ("rbn-gemm-file-" + std::to_string(getpid()));
  std::ofstream(file) << "a file, not a directory";
  ScopedEnv xdg("XDG_CACHE_HOME", (file / "sub").string());
  const Calibration c = calibrate(small_step());
  EXPECT_FALSE(c.from_cache);
  EXPECT_FALSE(c.cache_note.empty());
  EXPECT_EQ(c.choice, choose(c.step_ms));
  fs::remove(file);
}

TEST(GemmCalibration, KeyNamesMachineLibrariesThreadsAndShapes) {
  const std::string key = calibration_key(small_step());
  EXPECT_NE(key.find("threads"), std::string::npos);
  EXPECT_NE(key.find("OpenBLAS"), std::string::npos);
  EXPECT_NE(key.find("oneDNN"), std::string::npos);
  EXPECT_NE(key.find("NT16x128x64*20/thread"), std::string::npos) << key;
}

}  // namespace
}  // namespace rbn::blas
