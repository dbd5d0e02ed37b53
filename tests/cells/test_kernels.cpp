// The engine's kernels and normalization units on their own, against plain loops, in float and
// double: a kernel bug shows here by name instead of as a whole-stack mismatch.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <numeric>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "cell_cases.hpp"
#include "cells/engine.hpp"
#include "cells/init.hpp"
#include "cells/input_projection.hpp"
#include "cells/kernels.hpp"
#include "cells/norms.hpp"
#include "util/blas.hpp"
#include "util/line_vector.hpp"
#include "util/rng.hpp"

namespace rbn::testing {
namespace {

using cells::Norm;

template <class T>
std::vector<T> randn(size_t n, uint64_t seed, double scale = 1.0, double shift = 0.0) {
  Rng rng(seed);
  std::vector<T> v(n);
  for (auto& e : v) e = static_cast<T>(shift + scale * rng.normal());
  return v;
}

// Validity masks with padded rows in the middle and at the end.
std::vector<uint8_t> mask(int64_t rows) {
  std::vector<uint8_t> m(rows);
  for (int64_t r = 0; r < rows; ++r) m[r] = (r % 5 != 2) && r != rows - 1;
  return m;
}

template <class T>
double tol() {
  return std::is_same_v<T, float> ? 2e-5 : 1e-12;
}

template <class T>
class Kernels : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(Kernels, Types);

// Plain column statistics over the valid rows of z [rows, ld], columns [0, w).
struct PlainStats {
  std::vector<double> sum, sq, mean, var;
  int64_t count = 0;
};
template <class T>
PlainStats plain_stats(const std::vector<T>& z, int64_t rows, int ld, int w,
                       const std::vector<uint8_t>& valid) {
  PlainStats p;
  p.sum.assign(w, 0);
  p.sq.assign(w, 0);
  for (int64_t r = 0; r < rows; ++r) {
    if (!valid[r]) continue;
    ++p.count;
    for (int j = 0; j < w; ++j) {
      p.sum[j] += z[r * ld + j];
      p.sq[j] += double(z[r * ld + j]) * z[r * ld + j];
    }
  }
  for (int j = 0; j < w; ++j) {
    p.mean.push_back(p.sum[j] / p.count);
    p.var.push_back(p.sq[j] / p.count - p.mean[j] * p.mean[j]);
  }
  return p;
}

TYPED_TEST(Kernels, TransposeMatchesPlainLoop) {
  using T = TypeParam;
  // blas::transpose (OpenBLAS's ?omatcopy): odd and vector-sized shapes, padded leading
  // dimensions whose padding stays untouched, and empty matrices
  for (auto [rows, cols] : {std::pair{1, 1}, {3, 70}, {33, 31}, {64, 64}, {100, 17}, {496, 40},
                            {0, 4}, {4, 0}}) {
    const int64_t lda = cols + 3, ldo = rows + 5;
    std::vector<T> A(static_cast<size_t>(rows) * lda);
    std::iota(A.begin(), A.end(), T(1));
    std::vector<T> out(static_cast<size_t>(cols) * ldo, T(-1)), want = out;
    blas::transpose(rows, cols, A.data(), lda, out.data(), ldo);
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) want[c * ldo + r] = A[r * lda + c];
    EXPECT_EQ(out, want) << rows << " x " << cols;
  }
}

TYPED_TEST(Kernels, AddTransposedRowsMatchesPlainLoop) {
  using T = TypeParam;
  // A [rows, cols] += B^T over a row range, across and off the 32 x 32 tiles, padded leading
  // dimensions; rows outside the range and the padding stay as they were
  for (auto [rows, cols, j0, j1] : {std::tuple{1, 1, 0, 1}, {70, 3, 0, 70}, {100, 33, 31, 97},
                                    {64, 64, 32, 64}, {17, 50, 5, 5}}) {
    const int64_t lda = cols + 2, ldb = rows + 7;
    std::vector<T> A(static_cast<size_t>(rows) * lda), B(static_cast<size_t>(cols) * ldb);
    std::iota(A.begin(), A.end(), T(1));
    std::iota(B.begin(), B.end(), T(-500));
    std::vector<T> want = A;
    kern::add_transposed_rows(B.data(), ldb, cols, j0, j1, A.data(), lda);
    for (int r = j0; r < j1; ++r)
      for (int c = 0; c < cols; ++c) want[r * lda + c] += B[c * ldb + r];
    EXPECT_EQ(A, want) << rows << " x " << cols << ", rows " << j0 << ".." << j1;
  }
}

// The engine's streamed caches and packed right operands: every row of [rows, line_ld(cols)]
// starts on a 64-byte line, through growth too.
TYPED_TEST(Kernels, LineVectorRowsStartOnLines) {
  using T = TypeParam;
  constexpr int per_line = 64 / sizeof(T);
  for (int cols : {1, per_line - 1, per_line, per_line + 1, 1000, 4000}) {
    const int ld = line_ld<T>(cols);
    EXPECT_EQ(ld % per_line, 0) << cols;
    EXPECT_GE(ld, cols);
    EXPECT_LT(ld, cols + per_line);
  }
  LineVector<T> v;
  for (size_t n : {size_t(1), size_t(17), size_t(1000), size_t(1) << 20, size_t(3) << 20}) {
    cells::ensure_size(v, n);
    ASSERT_EQ(v.size(), n);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data()) % 64, 0u) << n;
    LineVector<T> w(n + 3);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(w.data()) % 64, 0u) << n;
  }
}

// Blocks of two huge pages or more start on one and are advised as huge-page memory (the VMA's
// "hg" flag in /proc/self/smaps), where the kernel offers transparent huge pages (unless
// RBN_HUGE_PAGES=off, which the test suite does not set); smaller blocks stay on lines.
TEST(LineBlocks, LargeBlocksLieOnAdvisedHugePages) {
  const size_t hp = huge_page_size();
#if defined(__linux__)
  std::ifstream enabled("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string modes;
  if (std::getline(enabled, modes) && modes.find("[never]") == std::string::npos &&
      !std::getenv("RBN_HUGE_PAGES")) {
    ASSERT_GT(hp, 0u) << "this kernel offers transparent huge pages (" << modes << ")";
  }
#endif
  EXPECT_EQ(line_block_alignment(1000), kCacheLine);
  if (hp == 0) {
    EXPECT_EQ(line_block_alignment(size_t(1) << 30), kCacheLine);
    return;
  }
  EXPECT_EQ(line_block_alignment(2 * hp - 1), kCacheLine);
  EXPECT_EQ(line_block_alignment(2 * hp), hp);
  LineVector<float> big(3 * hp / sizeof(float) + 5, 1.0f), small(1000, 1.0f);
  const auto at = reinterpret_cast<uintptr_t>(big.data());
  EXPECT_EQ(at % hp, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(small.data()) % kCacheLine, 0u);
#if defined(__linux__)
  // The mapping that holds big's first huge page, and its flags.
  std::ifstream smaps("/proc/self/smaps");
  std::string line, flags;
  bool inside = false;
  while (std::getline(smaps, line)) {
    uintptr_t lo = 0, hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> lo >> dash >> hi && dash == '-') {  // a mapping's first line
      inside = lo <= at && at + hp <= hi;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      flags = line;
      break;
    }
  }
  EXPECT_NE(flags.find(" hg"), std::string::npos) << "no MADV_HUGEPAGE on the block: " << flags;
#endif
}

TYPED_TEST(Kernels, Activations) {
  using T = TypeParam;
  for (int n : {1, 7, 16, 37}) {
    auto x = randn<T>(n, 1, 4.0);
    auto t = x, s = x;
    kern::tanh_inplace(t.data(), n);
    kern::sigmoid_inplace(s.data(), n);
    for (int i = 0; i < n; ++i) {
      EXPECT_NEAR(t[i], std::tanh(double(x[i])), 4 * tol<T>()) << n << " " << i;
      EXPECT_NEAR(s[i], 1.0 / (1.0 + std::exp(-double(x[i]))), 4 * tol<T>()) << n << " " << i;
    }
  }
}

TYPED_TEST(Kernels, ColumnSumsAndStatistics) {
  using T = TypeParam;
  const int64_t rows = 23;
  const int ld = 45;
  for (int w : {5, 16, 37}) {  // below, at and past the 16-column register blocks
    auto z = randn<T>(rows * ld, 2, 2.0, 0.5);
    auto valid = mask(rows);
    PlainStats want = plain_stats(z, rows, ld, w, valid);
    std::vector<double> sum(w), sq(w), mean(w), var(w);
    kern::col_sums_serial<T>({z.data(), rows, ld, w, valid.data()}, sum.data(), sq.data());
    kern::col_stats_serial<T>({z.data(), rows, ld, w, valid.data()}, mean.data(), var.data());
    EXPECT_EQ(kern::count_valid(valid.data(), rows), want.count);
    for (int j = 0; j < w; ++j) {
      EXPECT_NEAR(sum[j], want.sum[j], 1e-9 * (1 + std::abs(want.sum[j]))) << w << " " << j;
      EXPECT_NEAR(sq[j], want.sq[j], 1e-9 * (1 + want.sq[j])) << w << " " << j;
      EXPECT_NEAR(mean[j], want.mean[j], 1e-12) << w << " " << j;
      EXPECT_NEAR(var[j], want.var[j], 1e-12) << w << " " << j;
    }
  }
  std::vector<double> m{3.0}, v{9.0};  // no rows: mean 0, var 1
  kern::stats_from_sums(1, 0, m.data(), v.data());
  EXPECT_EQ(m[0], 0.0);
  EXPECT_EQ(v[0], 1.0);
}

TYPED_TEST(Kernels, ColumnNormalize) {
  using T = TypeParam;
  const int64_t rows = 11;
  const int w = 21, ld = 30, ldo = 25;
  auto z = randn<T>(rows * ld, 3);
  auto mean = randn<T>(w, 4), rstd = randn<T>(w, 5, 0.2, 1.0);
  auto valid = mask(rows);
  std::vector<T> out(rows * ldo, T(9));
  kern::col_normalize_serial<T>({z.data(), rows, ld, w, valid.data()}, mean.data(), rstd.data(),
                                out.data(), ldo);
  for (int64_t r = 0; r < rows; ++r)
    for (int j = 0; j < w; ++j) {
      const double want = valid[r] ? (double(z[r * ld + j]) - mean[j]) * rstd[j] : 0.0;
      EXPECT_NEAR(out[r * ldo + j], want, tol<T>()) << r << " " << j;
    }
}

// sum dy, sum dy*x-hat, then the BN backward, with x-hat given and formed from raw values; batch
// and population statistics; against dz = gamma*rstd*(dy - s1/M - x-hat*s2/M).
TYPED_TEST(Kernels, BatchNormBackward) {
  using T = TypeParam;
  const int64_t rows = 140;  // past one 128-row accumulation block
  const int w = 70, ld = 75;  // past one 64-column coefficient block
  auto dy = randn<T>(rows * ld, 6), raw = randn<T>(rows * ld, 7, 1.5, 0.3);
  auto mean = randn<T>(w, 8), rstd = randn<T>(w, 9, 0.1, 0.8), gamma = randn<T>(w, 10);
  auto valid = mask(rows);
  std::vector<T> xh(rows * ld);
  for (int64_t r = 0; r < rows; ++r)
    for (int j = 0; j < w; ++j) xh[r * ld + j] = (raw[r * ld + j] - mean[j]) * rstd[j];
  std::vector<double> s1(w), s2(w), r1(w), r2(w), p1(w, 0), p2(w, 0);
  int64_t count = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (!valid[r]) continue;
    ++count;
    for (int j = 0; j < w; ++j) {
      p1[j] += dy[r * ld + j];
      p2[j] += double(dy[r * ld + j]) * xh[r * ld + j];
    }
  }
  kern::col_grad_sums_serial<T>({dy.data(), rows, ld, w, valid.data()}, {xh.data()}, s1.data(),
                                s2.data());
  kern::col_grad_sums_serial<T>({dy.data(), rows, ld, w, valid.data()},
                                {raw.data(), mean.data(), rstd.data()}, r1.data(), r2.data());
  for (int j = 0; j < w; ++j) {
    EXPECT_NEAR(s1[j], p1[j], 1e3 * tol<T>()) << j;
    EXPECT_NEAR(s2[j], p2[j], 1e3 * tol<T>()) << j;
    EXPECT_NEAR(r2[j], p2[j], 1e3 * tol<T>()) << j;
  }
  for (bool batch : {true, false}) {
    std::vector<T> dz(rows * ld), dz_raw(rows * ld);
    const kern::BnBackwardArgs<T> bn{gamma.data(), rstd.data(), p1.data(), p2.data(), count, batch};
    kern::col_norm_backward_serial<T>({dy.data(), rows, ld, w, valid.data()}, {xh.data()}, bn,
                                      dz.data());
    kern::col_norm_backward_serial<T>({dy.data(), rows, ld, w, valid.data()},
                                      {raw.data(), mean.data(), rstd.data()}, bn, dz_raw.data());
    for (int64_t r = 0; r < rows; ++r)
      for (int j = 0; j < w; ++j) {
        const double g = double(gamma[j]) * rstd[j];
        const double want =
            !valid[r] ? 0.0
            : batch   ? g * (dy[r * ld + j] - p1[j] / count - xh[r * ld + j] * p2[j] / count)
                      : g * dy[r * ld + j];
        EXPECT_NEAR(dz[r * ld + j], want, 10 * tol<T>()) << batch << " " << r << " " << j;
        EXPECT_NEAR(dz_raw[r * ld + j], want, 10 * tol<T>()) << batch << " " << r << " " << j;
      }
  }
}

// The whole-table versions (sequence BN) agree with the serial kernels' plain loops.
TYPED_TEST(Kernels, WholeTableColumns) {
  using T = TypeParam;
  const int64_t rows = 300;
  const int F = 130;
  auto z = randn<T>(rows * F, 11, 1.0, 2.0), dy = randn<T>(rows * F, 12);
  auto valid = mask(rows);
  PlainStats want = plain_stats(z, rows, F, F, valid);
  std::vector<double> mean(F), var(F), sum(F), sq(F), s1(F), s2(F);
  kern::column_stats(z.data(), rows, F, valid.data(), mean.data(), var.data());
  kern::column_sums(z.data(), rows, F, valid.data(), sum.data(), sq.data());
  std::vector<T> m(F), r(F), xh(rows * F), gamma = randn<T>(F, 13), dz(rows * F);
  for (int j = 0; j < F; ++j) {
    EXPECT_NEAR(mean[j], want.mean[j], 1e-11);
    EXPECT_NEAR(var[j], want.var[j], 1e-10);
    EXPECT_NEAR(sum[j], want.sum[j], 1e-9 * (1 + std::abs(want.sum[j])));
    m[j] = static_cast<T>(mean[j]);
    r[j] = static_cast<T>(1.0 / std::sqrt(var[j] + 1e-5));
  }
  kern::column_normalize(z.data(), rows, F, valid.data(), m.data(), r.data(), xh.data());
  kern::column_grad_sums(dy.data(), xh.data(), rows, F, valid.data(), s1.data(), s2.data());
  const int64_t count = want.count;
  kern::column_norm_backward<T>(dy.data(), xh.data(), rows, F, valid.data(),
                                {gamma.data(), r.data(), s1.data(), s2.data(), count, true},
                                dz.data());
  for (int64_t i = 0; i < rows; ++i)
    for (int j = 0; j < F; j += 7) {
      const double x = valid[i] ? (double(z[i * F + j]) - m[j]) * r[j] : 0.0;
      EXPECT_NEAR(xh[i * F + j], x, 10 * tol<T>());
      const double want_dz =
          valid[i] ? double(gamma[j]) * r[j] *
                         (dy[i * F + j] - s1[j] / count - xh[i * F + j] * s2[j] / count)
                   : 0.0;
      EXPECT_NEAR(dz[i * F + j], want_dz, 10 * tol<T>());
    }
}

TYPED_TEST(Kernels, SharedFormulas) {
  using T = TypeParam;
  T scale = T(0.7), shift = T(0.2);
  kern::fold_norm(scale, shift, T(2), T(0.5));  // 0.7 * ((z - 0.5) * 2) + 0.2
  for (double z : {-1.0, 0.0, 3.0})
    EXPECT_NEAR(scale * T(z) + shift, 0.7 * ((z - 0.5) * 2) + 0.2, tol<T>());
  const auto c = kern::bn_grad_coef(T(0.5), T(4), 6.0, -3.0, kern::bn_grad_scale(true, 3));
  EXPECT_NEAR(c.a, 2.0, tol<T>());
  EXPECT_NEAR(c.m1, 2.0 * 6 / 3, tol<T>());
  EXPECT_NEAR(c.m2, 2.0 * -3 / 3, tol<T>());
  const auto p = kern::bn_grad_coef(T(0.5), T(4), 6.0, -3.0, kern::bn_grad_scale(false, 3));
  EXPECT_EQ(p.m1, T(0));
  EXPECT_EQ(p.m2, T(0));
  EXPECT_NEAR(kern::ln_grad(T(2), T(3), T(1.5), T(0.5), T(2), T(0.25), T(0.5)),
              2 * (2 * 3 - 0.25 - ((1.5 - 0.5) * 2) * 0.5), tol<T>());
  EXPECT_NEAR(kern::inv_std(3.0, 1.0), 0.5, 1e-15);
}

// The LSTM's and the tanh RNN's pointwise steps against their formulas.
TYPED_TEST(Kernels, PointwiseSteps) {
  using T = TypeParam;
  const int H = 37, k0 = 3, k1 = 30;
  auto pre = randn<T>(4 * H, 14, 2.0), c_prev = randn<T>(H, 15);
  auto g = pre;
  std::vector<T> c(H, T(0));
  kern::lstm_gates_forward(g.data(), H, k0, k1, c_prev.data(), c.data());
  auto sig = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
  for (int j = k0; j < k1; ++j) {
    const double i = sig(pre[j]), f = sig(pre[H + j]), gg = std::tanh(double(pre[2 * H + j])),
                 o = sig(pre[3 * H + j]);
    EXPECT_NEAR(g[j], i, 4 * tol<T>());
    EXPECT_NEAR(g[3 * H + j], o, 4 * tol<T>());
    EXPECT_NEAR(c[j], f * c_prev[j] + i * gg, 10 * tol<T>()) << j;
  }
  EXPECT_EQ(c[0], T(0));  // outside [k0, k1): untouched
  // backward of h = o * tanh(c~)
  auto dh = randn<T>(H, 16), tc = randn<T>(H, 17, 0.3), o = g;
  auto dc_out = tc;
  kern::lstm_output_backward(dh.data(), k0, k1, o.data() + 3 * H, dc_out.data());
  for (int j = k0; j < k1; ++j) {
    const double ov = g[3 * H + j];
    EXPECT_NEAR(dc_out[j], dh[j] * ov * (1 - double(tc[j]) * tc[j]), 10 * tol<T>());
    EXPECT_NEAR(o[3 * H + j], dh[j] * tc[j] * ov * (1 - ov), 10 * tol<T>());
  }
  // backward of c = f c_prev + i g
  auto dc_next = randn<T>(H, 18), gates = g;
  auto carry = dc_next;
  kern::lstm_cell_backward(dc_out.data(), c_prev.data(), H, k0, k1, gates.data(), carry.data());
  for (int j = k0; j < k1; ++j) {
    const double dc = double(dc_next[j]) + dc_out[j];
    const double i = g[j], f = g[H + j], gg = g[2 * H + j];
    EXPECT_NEAR(gates[j], dc * gg * i * (1 - i), 10 * tol<T>());
    EXPECT_NEAR(gates[H + j], dc * c_prev[j] * f * (1 - f), 10 * tol<T>());
    EXPECT_NEAR(gates[2 * H + j], dc * i * (1 - gg * gg), 10 * tol<T>());
    EXPECT_NEAR(carry[j], dc * f, 10 * tol<T>());
  }
  auto h = randn<T>(H, 19, 0.5), drnn = h;
  kern::tanh_rnn_backward(dh.data(), k0, k1, drnn.data());
  for (int j = k0; j < k1; ++j)
    EXPECT_NEAR(drnn[j], dh[j] * (1 - double(h[j]) * h[j]), 10 * tol<T>());
}

// The fused LSTM rows against the separate passes they replace (lstm_gates_forward, tanh and
// the product with o; lstm_output_backward, lstm_cell_backward and the column sums), over blocks
// of units off and on the vector width, starting off a vector boundary; outside the block nothing
// is written.
TYPED_TEST(Kernels, FusedLstmRowsMatchTheSeparatePasses) {
  using T = TypeParam;
  const int H = 41;
  for (auto [k0, k1] : {std::pair{3, 30}, {0, 16}, {5, 6}, {0, H}, {7, 7}}) {
    const int w = k1 - k0, ld = w + 2;
    auto x = randn<T>(4 * H, 20), kx = randn<T>(4 * H, 21, 0.5, 1.0), kh = randn<T>(4 * H, 22),
         shift = randn<T>(4 * H, 23), rh = randn<T>(4 * ld, 24), c_prev = randn<T>(H, 25);
    // forward: the separate passes
    std::vector<T> want_g(4 * H, T(7)), want_c(H, T(7)), want_h(H, T(7));
    for (int q = 0; q < 4; ++q)
      for (int k = k0; k < k1; ++k) {
        const int j = q * H + k;
        want_g[j] = kx[j] * x[j] + kh[j] * rh[q * ld + k - k0] + shift[j];
      }
    kern::lstm_gates_forward(want_g.data(), H, k0, k1, c_prev.data(), want_c.data());
    for (int k = k0; k < k1; ++k) want_h[k] = want_c[k];
    kern::tanh_inplace(want_h.data() + k0, w);
    for (int k = k0; k < k1; ++k) want_h[k] *= want_g[3 * H + k];
    std::vector<T> g(4 * H, T(7)), c(H, T(7)), h(H, T(7));
    kern::lstm_row_forward(kern::LstmRowForward<T>{x.data(), rh.data(), ld, kx.data(), kh.data(),
                                                   shift.data(), c_prev.data(), g.data(), c.data(),
                                                   h.data()},
                           H, k0, k1);
    for (int j = 0; j < 4 * H; ++j) EXPECT_NEAR(g[j], want_g[j], 4 * tol<T>()) << k0 << " " << j;
    for (int k = 0; k < H; ++k) {
      EXPECT_NEAR(c[k], want_c[k], 10 * tol<T>()) << k0 << " " << k;
      EXPECT_NEAR(h[k], want_h[k], 10 * tol<T>()) << k0 << " " << k;
    }
    // backward, through h (c given) and from a given dL/dc, with both terms' BN sums
    auto dh = randn<T>(H, 26), dc_out = randn<T>(H, 27), dc0 = randn<T>(H, 28);
    auto mean_h = randn<T>(4 * H, 29), rstd_h = randn<T>(4 * H, 30, 0.2, 1.0);
    auto mean_x = randn<T>(4 * H, 31), rstd_x = randn<T>(4 * H, 32, 0.2, 1.0);
    for (bool through_h : {true, false}) {
      auto want_d = g, want_dc = dc0, want_dco = dc_out;
      if (through_h) {
        for (int k = k0; k < k1; ++k) want_dco[k] = c[k];
        kern::tanh_inplace(want_dco.data() + k0, w);
        kern::lstm_output_backward(dh.data(), k0, k1, want_d.data() + 3 * H, want_dco.data());
      }
      kern::lstm_cell_backward(want_dco.data(), c_prev.data(), H, k0, k1, want_d.data(), want_dc.data());
      std::vector<T> want_s1(4 * w, T(1)), want_s2 = want_s1, want_s3 = want_s1;
      for (int q = 0; q < 4; ++q)
        for (int k = k0; k < k1; ++k) {
          const int j = q * H + k, i = q * w + k - k0;
          want_s1[i] += want_d[j];
          want_s2[i] += want_d[j] * ((rh[q * ld + k - k0] - mean_h[j]) * rstd_h[j]);
          want_s3[i] += want_d[j] * ((x[j] - mean_x[j]) * rstd_x[j]);
        }
      auto d = g, dc = dc0;
      std::vector<T> s1(4 * w, T(1)), s2 = s1, s3 = s1;
      kern::LstmRowBackward<T> r;
      if (through_h)
        r.dh = dh.data(), r.c = c.data();
      else
        r.dc_out = dc_out.data();
      r.c_prev = c_prev.data(), r.gates = d.data(), r.dc = dc.data(), r.sum_d = s1.data();
      r.rh = rh.data(), r.ld = ld, r.mean_h = mean_h.data(), r.rstd_h = rstd_h.data(), r.sum_dxh_h = s2.data();
      r.x = x.data(), r.mean_x = mean_x.data(), r.rstd_x = rstd_x.data(), r.sum_dxh_x = s3.data();
      kern::lstm_row_backward(r, H, k0, k1);
      for (int j = 0; j < 4 * H; ++j) EXPECT_NEAR(d[j], want_d[j], 10 * tol<T>()) << through_h << " " << j;
      for (int k = 0; k < H; ++k) EXPECT_NEAR(dc[k], want_dc[k], 10 * tol<T>()) << through_h << " " << k;
      for (int i = 0; i < 4 * w; ++i) {
        EXPECT_NEAR(s1[i], want_s1[i], 10 * tol<T>()) << through_h << " " << i;
        EXPECT_NEAR(s2[i], want_s2[i], 20 * tol<T>()) << through_h << " " << i;
        EXPECT_NEAR(s3[i], want_s3[i], 20 * tol<T>()) << through_h << " " << i;
      }
    }
  }
}

// The LSTM's output through BN of c in one pass, forward and backward, against
// cell_output_tanh's formula and lstm_output_backward.
TYPED_TEST(Kernels, FusedBnOutputMatchesTheSeparatePasses) {
  using T = TypeParam;
  const int H = 41;
  for (auto [k0, k1] : {std::pair{3, 30}, {0, 16}, {0, H}, {7, 7}}) {
    auto c = randn<T>(H, 50), scale = randn<T>(H, 51, 0.3, 1.0), shift = randn<T>(H, 52),
         o = randn<T>(H, 53, 0.2, 0.5), dh = randn<T>(H, 54);
    std::vector<T> tc(H, T(7)), want_h(H, T(7)), h(H, T(7));
    for (int k = k0; k < k1; ++k) tc[k] = scale[k] * c[k] + shift[k];
    kern::tanh_inplace(tc.data() + k0, k1 - k0);
    for (int k = k0; k < k1; ++k) want_h[k] = tc[k] * o[k];
    kern::lstm_bn_output(c.data(), scale.data(), shift.data(), o.data(), k0, k1, h.data());
    for (int k = 0; k < H; ++k) EXPECT_NEAR(h[k], want_h[k], 4 * tol<T>()) << k0 << " " << k;
    auto want_do = o, want_dc = tc, d_o = o;
    kern::lstm_output_backward(dh.data(), k0, k1, want_do.data(), want_dc.data());
    std::vector<T> dc(H, T(7));
    kern::lstm_bn_output_backward(dh.data(), c.data(), scale.data(), shift.data(), k0, k1, d_o.data(), dc.data());
    for (int k = 0; k < H; ++k) {
      EXPECT_NEAR(d_o[k], want_do[k], 10 * tol<T>()) << k0 << " " << k;
      EXPECT_NEAR(dc[k], want_dc[k], 10 * tol<T>()) << k0 << " " << k;
    }
  }
}

// The GRU's one-pass row against the coefficient loops and gru_gates_forward it replaces.
TYPED_TEST(Kernels, FusedGruRowMatchesTheSeparatePasses) {
  using T = TypeParam;
  const int H = 41;
  for (int w : {27, 16, 1, 0}) {
    const int k0 = 3, ld = w + 2;
    auto x = randn<T>(3 * H, 40), kx = randn<T>(3 * H, 41, 0.5, 1.0), sx = randn<T>(3 * H, 42),
         kh = randn<T>(3 * H, 43, 0.5, 1.0), sh = randn<T>(3 * H, 44), rh = randn<T>(3 * ld, 45),
         h_prev = randn<T>(H, 46);
    std::vector<T> want_g(3 * H, T(7)), ht = rh, want_h(H, T(7));
    for (int q = 0; q < 3; ++q)
      for (int k = 0; k < w; ++k) {
        const int j = q * H + k0 + k;
        want_g[j] = kx[j] * x[j] + sx[j];
        ht[q * ld + k] = kh[j] * rh[q * ld + k] + sh[j];
      }
    kern::gru_gates_forward(want_g.data() + k0, H, ht.data(), ld, w, h_prev.data() + k0, want_h.data() + k0);
    std::vector<T> g(3 * H, T(7)), h(H, T(7));
    kern::gru_row_forward(kern::GruRowForward<T>{x.data() + k0, rh.data(), ld, kx.data() + k0, sx.data() + k0,
                                                 kh.data() + k0, sh.data() + k0, h_prev.data() + k0,
                                                 g.data() + k0, h.data() + k0},
                          H, w);
    for (int j = 0; j < 3 * H; ++j) EXPECT_NEAR(g[j], want_g[j], 4 * tol<T>()) << w << " " << j;
    for (int k = 0; k < H; ++k) EXPECT_NEAR(h[k], want_h[k], 10 * tol<T>()) << w << " " << k;
  }
}

// The GRU's pointwise steps on a block of w units inside a row of 3H gates (the input terms in
// the gates at stride H, the recurrent terms in a thread's [3][hs] scratch), against nn.GRU's
// formulas; backward against central differences of the forward in double.
TYPED_TEST(Kernels, GruPointwiseSteps) {
  using T = TypeParam;
  const int H = 37, k0 = 5, w = 21, hs = 24;
  auto xt = randn<T>(3 * H, 21, 1.5), ht = randn<T>(3 * hs, 22, 1.5), hp = randn<T>(H, 23);
  auto g = xt;
  std::vector<T> h(H, T(-9));
  kern::gru_gates_forward(g.data() + k0, H, ht.data(), hs, w, hp.data() + k0, h.data() + k0);
  auto sig = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
  struct Out {
    double r, z, n, h;
  };
  auto gru = [&](double xr, double xz, double xn, double hr, double hz, double hn, double hprev) {
    const double r = sig(xr + hr), z = sig(xz + hz), n = std::tanh(xn + r * hn);
    return Out{r, z, n, (1 - z) * n + z * hprev};
  };
  for (int j = 0; j < w; ++j) {
    const int c = k0 + j;
    const Out o = gru(xt[c], xt[H + c], xt[2 * H + c], ht[j], ht[hs + j], ht[2 * hs + j], hp[c]);
    EXPECT_NEAR(g[c], o.r, 4 * tol<T>()) << j;
    EXPECT_NEAR(g[H + c], o.z, 4 * tol<T>()) << j;
    EXPECT_NEAR(g[2 * H + c], o.n, 4 * tol<T>()) << j;
    EXPECT_NEAR(h[c], o.h, 10 * tol<T>()) << j;
  }
  EXPECT_EQ(h[k0 - 1], T(-9));  // outside the block: untouched
  EXPECT_EQ(h[k0 + w], T(-9));
  EXPECT_EQ(g[k0 - 1], xt[k0 - 1]);
  // backward: the recurrent terms' gradients in gate order at stride H
  auto dh = randn<T>(H, 24);
  std::vector<T> hn_term(w), d_rec(3 * H, T(-9)), dh_prev(H, T(-9));
  for (int j = 0; j < w; ++j) hn_term[j] = ht[2 * hs + j];
  auto dg = g;
  kern::gru_gates_backward<T>({dh.data() + k0, hp.data() + k0, hn_term.data()}, H, w, dg.data() + k0,
                              d_rec.data() + k0, dh_prev.data() + k0);
  const double e = 1e-6;
  for (int j = 0; j < w; ++j) {
    const int c = k0 + j;
    double in[7] = {double(xt[c]), double(xt[H + c]), double(xt[2 * H + c]), double(ht[j]),
                    double(ht[hs + j]), double(ht[2 * hs + j]), double(hp[c])};
    double num[7];
    for (int a = 0; a < 7; ++a) {
      double p[7], m[7];
      std::copy(in, in + 7, p);
      std::copy(in, in + 7, m);
      p[a] += e;
      m[a] -= e;
      num[a] = double(dh[c]) * (gru(p[0], p[1], p[2], p[3], p[4], p[5], p[6]).h -
                                gru(m[0], m[1], m[2], m[3], m[4], m[5], m[6]).h) / (2 * e);
    }
    const double t = std::is_same_v<T, float> ? 1e-4 : 1e-8;
    EXPECT_NEAR(dg[c], num[0], t) << "dr_pre " << j;
    EXPECT_NEAR(dg[H + c], num[1], t) << "dz_pre " << j;
    EXPECT_NEAR(dg[2 * H + c], num[2], t) << "dn_pre " << j;
    EXPECT_NEAR(d_rec[c], num[3], t) << "d h~_r " << j;
    EXPECT_NEAR(d_rec[H + c], num[4], t) << "d h~_z " << j;
    EXPECT_NEAR(d_rec[2 * H + c], num[5], t) << "d h~_n = dn_pre * r " << j;
    EXPECT_NEAR(dh_prev[c], num[6], t) << "dh * z " << j;
  }
  EXPECT_EQ(d_rec[k0 - 1], T(-9));
  EXPECT_EQ(dh_prev[k0 + w], T(-9));
}

// LN over rows from two threads' partial sums, forward statistics and backward (with an input
// term of its own gradient, as a GRU's, and a recurrent term in the thread-blocked layout),
// against plain loops.
TYPED_TEST(Kernels, LayerNormRows) {
  using T = TypeParam;
  const int N = 6, H = 20, gates = 4, G = gates * H, P = 2;
  const int k0s[P] = {0, 16}, ws[P] = {16, 4};
  auto z = randn<T>(N * G, 20, 1.3, 0.4), zx = randn<T>(N * G, 21), dy = randn<T>(N * G, 22);
  auto dyx = randn<T>(N * G, 25);
  auto gh = randn<T>(G, 23, 0.3, 1.0), gx = randn<T>(G, 24, 0.3, 1.0);
  auto valid = mask(N);
  std::vector<double> part(P * N * 2), part_x(P * N * 2);
  const cells::RowPartials rp{part.data(), N}, rpx{part_x.data(), N};
  for (int p = 0; p < P; ++p) {
    cells::ln_partial(z.data(), G, {k0s[p], ws[p], gates, H}, valid.data(), rp, p);
    cells::ln_partial(zx.data(), G, {k0s[p], ws[p], gates, H}, valid.data(), rpx, p);
  }
  std::vector<T> mean(N), rstd(N), mean_x(N), rstd_x(N);
  cells::ln_row_stats(G, valid.data(), rp, P, 1e-5, mean.data(), rstd.data());
  cells::ln_row_stats(G, valid.data(), rpx, P, 1e-5, mean_x.data(), rstd_x.data());
  auto plain_row = [&](const std::vector<T>& v, int n, double& m, double& r) {
    double s = 0, q = 0;
    for (int j = 0; j < G; ++j) s += v[n * G + j];
    m = s / G;
    for (int j = 0; j < G; ++j) q += (v[n * G + j] - m) * (v[n * G + j] - m);
    r = 1.0 / std::sqrt(q / G + 1e-5);
  };
  for (int n = 0; n < N; ++n) {
    double m, r;
    plain_row(z, n, m, r);
    EXPECT_NEAR(mean[n], valid[n] ? m : 0.0, 10 * tol<T>()) << n;
    EXPECT_NEAR(rstd[n], valid[n] ? r : 1.0, 100 * tol<T>()) << n;
  }
  // the recurrent term in Hh's thread-blocked layout: gate q of thread p's units at 4*k0 + q*w
  std::vector<T> zb(N * G);
  for (int n = 0; n < N; ++n)
    for (int p = 0; p < P; ++p)
      for (int q = 0; q < gates; ++q)
        for (int j = 0; j < ws[p]; ++j)
          zb[n * G + gates * k0s[p] + q * ws[p] + j] = z[n * G + q * H + k0s[p] + j];
  // backward partial sums: sum dy*g, sum dy*g*x-hat per thread
  for (int p = 0; p < P; ++p)
    for (int n = 0; n < N; ++n) {
      double a = 0, b = 0, ax = 0, bx = 0;
      for (int q = 0; q < gates; ++q)
        for (int j = q * H + k0s[p]; j < q * H + k0s[p] + ws[p]; ++j) {
          const double xh = (z[n * G + j] - double(mean[n])) * rstd[n];
          const double xx = (zx[n * G + j] - double(mean_x[n])) * rstd_x[n];
          a += double(dy[n * G + j]) * gh[j];
          b += double(dy[n * G + j]) * gh[j] * xh;
          ax += double(dyx[n * G + j]) * gx[j];
          bx += double(dyx[n * G + j]) * gx[j] * xx;
        }
      rp.at(p, n)[0] = a, rp.at(p, n)[1] = b, rpx.at(p, n)[0] = ax, rpx.at(p, n)[1] = bx;
    }
  std::vector<T> dzh(N * G), dzx(N * G);
  std::vector<T> a_h(N), b_h(N), a_x(N), b_x(N);
  cells::ln_grad_row_means(rp, P, G, valid.data(), a_h.data(), b_h.data());
  cells::ln_grad_row_means(rpx, P, G, valid.data(), a_x.data(), b_x.data());
  const cells::LnTerm<T> h_term{dy.data(), zb.data(), true, gh.data(), mean.data(), rstd.data(), a_h.data(), b_h.data()};
  const cells::LnTerm<T> x_term{dyx.data(), zx.data(), false, gx.data(), mean_x.data(), rstd_x.data(), a_x.data(),
                                b_x.data()};
  for (int p = 0; p < P; ++p)
    cells::ln_backward<T>({N, G, {k0s[p], ws[p], gates, H}, valid.data()}, h_term, dzh.data(), &x_term,
                          dzx.data());
  for (int n = 0; n < N; ++n) {
    double a = 0, b = 0, ax = 0, bx = 0;
    for (int j = 0; j < G; ++j) {
      const double xh = (z[n * G + j] - double(mean[n])) * rstd[n];
      const double xx = (zx[n * G + j] - double(mean_x[n])) * rstd_x[n];
      a += double(dy[n * G + j]) * gh[j] / G, b += double(dy[n * G + j]) * gh[j] * xh / G;
      ax += double(dyx[n * G + j]) * gx[j] / G, bx += double(dyx[n * G + j]) * gx[j] * xx / G;
    }
    for (int j = 0; j < G; ++j) {
      const double xh = (z[n * G + j] - double(mean[n])) * rstd[n];
      const double xx = (zx[n * G + j] - double(mean_x[n])) * rstd_x[n];
      const double want_h = valid[n] ? rstd[n] * (dy[n * G + j] * gh[j] - a - xh * b) : 0.0;
      const double want_x = valid[n] ? rstd_x[n] * (dyx[n * G + j] * gx[j] - ax - xx * bx) : 0.0;
      EXPECT_NEAR(dzh[n * G + j], want_h, 100 * tol<T>()) << n << " " << j;
      EXPECT_NEAR(dzx[n * G + j], want_x, 100 * tol<T>()) << n << " " << j;
    }
  }
}

// W x inside the loop and the statistics that follow from the inputs' moments.
TYPED_TEST(Kernels, InputProjection) {
  using T = TypeParam;
  const int N = 9, C = 3, G = 24;
  auto X = randn<T>(N * C, 25), W = randn<T>(G * C, 26);
  std::vector<T> Wt(C * G), out(N * G, T(0));
  for (int j = 0; j < G; ++j)
    for (int c = 0; c < C; ++c) Wt[c * G + j] = W[j * C + c];
  cells::input_projection(X.data(), Wt.data(), N, C, G, 5, 11, out.data());
  std::vector<double> z(N * G);
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < G; ++j)
      for (int c = 0; c < C; ++c) z[n * G + j] += double(X[n * C + c]) * W[j * C + c];
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < G; ++j)
      EXPECT_NEAR(out[n * G + j], j >= 5 && j < 16 ? z[n * G + j] : 0.0, 10 * tol<T>());
  auto valid = mask(N);
  std::vector<double> mom(C + C * C);
  cells::input_moments(X.data(), valid.data(), N, C, mom.data());
  const int64_t cnt = kern::count_valid(valid.data(), N);
  for (int j = 0; j < G; ++j) {
    double mean, var, pm = 0, pv = 0;
    cells::linear_stats(W.data() + j * C, C, mom.data(), cnt, &mean, &var);
    for (int n = 0; n < N; ++n) pm += valid[n] ? z[n * G + j] / cnt : 0.0;
    for (int n = 0; n < N; ++n) pv += valid[n] ? (z[n * G + j] - pm) * (z[n * G + j] - pm) / cnt : 0;
    EXPECT_NEAR(mean, pm, 1e3 * tol<T>()) << j;
    EXPECT_NEAR(var, pv, 1e3 * tol<T>()) << j;
  }
  std::vector<double> wmom;
  cells::weight_row_moments(W.data(), G, C, wmom);
  for (int n = 0; n < N; ++n) {
    double m, v, pm = 0, pv = 0;
    cells::linear_row_moments(X.data() + n * C, C, wmom, m, v);
    for (int j = 0; j < G; ++j) pm += z[n * G + j] / G;
    for (int j = 0; j < G; ++j) pv += (z[n * G + j] - pm) * (z[n * G + j] - pm) / G;
    EXPECT_NEAR(m, pm, 1e3 * tol<T>()) << n;
    EXPECT_NEAR(v, pv, 1e3 * tol<T>()) << n;
  }
}

// The per-step BN unit with an engine's tables: batch statistics recorded into the running
// averages, the population row clamped to the table's last row, the group's sums.
TYPED_TEST(Kernels, BatchNormStatisticsUnit) {
  using T = TypeParam;
  StackConfig cfg;
  cfg.cell = Cell::bnlstm;
  cfg.input_size = 2;
  cfg.hidden_size = 5;
  cfg.t_max = 3;
  cfg.momentum = 0.25;
  cells::Engine<T> e(cfg);
  const cells::StatTable& tab = e.layers[0].stats_h;  // [3, 20]
  ASSERT_EQ(tab.rows, 3);
  ASSERT_EQ(tab.F, 20);
  const int64_t rows = 8;
  const int w = 6, j0 = 4;
  auto z = randn<T>(rows * w, 27, 2.0, 1.0);
  auto valid = mask(rows);
  const int64_t cnt = kern::count_valid(valid.data(), rows);
  PlainStats want = plain_stats(z, rows, w, w, valid);
  cells::BlockStatScratch scratch(w);
  std::vector<T> mean(w), rstd(w);
  e.bn_stats_block({z.data(), rows, w, w, valid.data()}, {&tab, 1, j0, w}, cnt, {true, true},
                   scratch, mean.data(), rstd.data());
  for (int j = 0; j < w; ++j) {
    EXPECT_NEAR(mean[j], want.mean[j], 10 * tol<T>());
    EXPECT_NEAR(rstd[j], 1.0 / std::sqrt(want.var[j] + cfg.eps), 10 * tol<T>());
    // running: (1 - m) * initial + m * batch (initial mean 0, var 1)
    EXPECT_NEAR(e.buffers[tab.mean + 1 * 20 + j0 + j], 0.25 * want.mean[j], 10 * tol<T>());
    EXPECT_NEAR(e.buffers[tab.var + 1 * 20 + j0 + j], 0.75 + 0.25 * want.var[j], 10 * tol<T>());
  }
  // population: step 7 reads the table's last row (2)
  for (int j = 0; j < w; ++j) e.buffers[tab.var + 2 * 20 + j0 + j] = T(4 + j);
  e.bn_stats_block({z.data(), rows, w, w, valid.data()}, {&tab, 7, j0, w}, cnt, {false, false},
                   scratch, mean.data(), rstd.data());
  for (int j = 0; j < w; ++j) EXPECT_NEAR(rstd[j], 1.0 / std::sqrt(4 + j + cfg.eps), tol<T>());
  // from sums (as after the group's exchange)
  e.bn_stats_from_sums(want.sum.data(), want.sq.data(), {&tab, 0, j0, w}, cnt, false, scratch,
                       mean.data(), rstd.data());
  for (int j = 0; j < w; ++j) EXPECT_NEAR(mean[j], want.mean[j], 10 * tol<T>());
}

// ---- orthogonal initialization ---------------------------------------------------------------

// The modified Gram-Schmidt QR rbn used before LAPACK, as the plain reference: out [rows, cols]
// from the same Gaussian draws, R's diagonal positive by construction.
std::vector<double> gram_schmidt_orthogonal(int rows, int cols, uint64_t seed) {
  Rng rng(seed);
  const bool transpose = rows < cols;
  const int m = transpose ? cols : rows, n = transpose ? rows : cols;
  std::vector<double> a(static_cast<size_t>(m) * n);
  for (auto& v : a) v = rng.normal();
  for (int j = 0; j < n; ++j) {
    double* qj = &a[static_cast<size_t>(j) * m];
    for (int pass = 0; pass < 2; ++pass)
      for (int k = 0; k < j; ++k) {
        const double* qk = &a[static_cast<size_t>(k) * m];
        double dot = 0;
        for (int i = 0; i < m; ++i) dot += qk[i] * qj[i];
        for (int i = 0; i < m; ++i) qj[i] -= dot * qk[i];
      }
    double norm = 0;
    for (int i = 0; i < m; ++i) norm += qj[i] * qj[i];
    for (int i = 0; i < m; ++i) qj[i] /= std::sqrt(norm);
  }
  std::vector<double> out(static_cast<size_t>(rows) * cols);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c)
      out[static_cast<size_t>(r) * cols + c] =
          transpose ? a[static_cast<size_t>(r) * m + c] : a[static_cast<size_t>(c) * m + r];
  return out;
}

TEST(OrthogonalInit, MatchesGramSchmidtAndIsOrthonormal) {
  // tall, square, wide (transposed QR), one element, and a block large enough to be blocked
  for (auto [rows, cols] : {std::pair{40, 40}, {64, 16}, {16, 64}, {1, 1}, {7, 1}, {300, 300}}) {
    Rng rng(91);
    std::vector<double> q(static_cast<size_t>(rows) * cols);
    orthogonal_init(q.data(), rows, cols, rng);
    const auto want = gram_schmidt_orthogonal(rows, cols, 91);
    double worst = 0;
    for (size_t i = 0; i < q.size(); ++i) worst = std::max(worst, std::abs(q[i] - want[i]));
    EXPECT_LT(worst, 1e-10) << rows << " x " << cols;  // same Q, same column signs
    // the shorter side's vectors orthonormal: Q Q^T = I (wide) or Q^T Q = I (tall)
    const bool wide = rows < cols;
    const int k = wide ? rows : cols, len = wide ? cols : rows;
    auto at = [&](int v, int i) { return wide ? q[static_cast<size_t>(v) * cols + i] : q[static_cast<size_t>(i) * cols + v]; };
    double off = 0;
    for (int u = 0; u < k; ++u)
      for (int v = 0; v < k; ++v) {
        double dot = 0;
        for (int i = 0; i < len; ++i) dot += at(u, i) * at(v, i);
        off = std::max(off, std::abs(dot - (u == v ? 1.0 : 0.0)));
      }
    EXPECT_LT(off, 1e-12) << rows << " x " << cols;
  }
}

TEST(OrthogonalInit, SameBitsOnAnyThreadCount) {
  // Every MPI rank initializes its own copy from the seed: LAPACK's blocked QR must give the same
  // bits whatever OpenBLAS's thread count (OpenMP's) is.
  const auto q = on_one_and_two_threads([](std::vector<double>& out) {
    Rng rng(92);
    out.resize(600 * 600);
    orthogonal_init(out.data(), 600, 600, rng);
  });
  EXPECT_EQ(q[0], q[1]);
}

TEST(TimeLoop, RowAheadFollowsTheLoopOrder) {
  // The pointwise passes prefetch the row `ahead` rows on in the order the loop visits them: rows
  // 0..N-1 of each step, steps ascending (forward) or descending (backward). Checked against that
  // order written out, for rows ahead within the step, in the next step and several steps on.
  for (const int dir : {+1, -1})
    for (const int N : {1, 3, 5})
      for (const int ahead : {1, 2, 7}) {
        const int T = 4;
        std::vector<int64_t> order;  // flat [T,N] index of each visited row
        for (int i = 0; i < T; ++i) {
          const int t = dir > 0 ? i : T - 1 - i;
          for (int n = 0; n < N; ++n) order.push_back(static_cast<int64_t>(t) * N + n);
        }
        for (size_t i = 0; i < order.size(); ++i) {
          const int t = static_cast<int>(order[i] / N), n = static_cast<int>(order[i] % N);
          int64_t rows = -999;
          const bool inside = cells::row_ahead(n, ahead, N, t, dir, dir > 0 ? T : -1, rows);
          const std::string at = "dir " + std::to_string(dir) + " N " + std::to_string(N) +
                                 " ahead " + std::to_string(ahead) + " t " + std::to_string(t) +
                                 " n " + std::to_string(n);
          ASSERT_EQ(inside, i + ahead < order.size()) << at;
          if (inside) {
            EXPECT_EQ(static_cast<int64_t>(t) * N + rows, order[i + ahead]) << at;
          }
        }
      }
}

}  // namespace
}  // namespace rbn::testing
