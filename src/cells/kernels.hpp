// Building blocks of the fused cells: activations and the three normalizations, forward and
// backward, over row-major [rows, F] blocks with a validity mask over rows.
//
// Conventions: z [rows,F] pre-normalization values; xh [rows,F] normalized values before the
// affine ("x hat"); out = gamma * xh + beta. Invalid (padded) rows are written as 0 and never enter
// a statistic. Parameter gradients are accumulated (+=), activation gradients written (=).
#pragma once

#include <immintrin.h>
#include <omp.h>
#include <sleef.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace rbn::kern {

// Parallelize a loop only when it has enough work to pay for the fork/join.
constexpr int64_t kParallelWork = 1 << 14;

template <class T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// In-place tanh and logistic sigmoid over an array: SLEEF's vector tanh (3.5 ulp) for float,
// std:: for double (the double build serves the reference checks, not speed).
inline void tanh_inplace(double* p, int n) {
  for (int i = 0; i < n; ++i) p[i] = std::tanh(p[i]);
}
inline void sigmoid_inplace(double* p, int n) {
  for (int i = 0; i < n; ++i) p[i] = sigmoid(p[i]);
}
inline void tanh_inplace(float* p, int n) {
  int i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(p + i, Sleef_tanhf16_u35(_mm512_loadu_ps(p + i)));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(p + i, m, Sleef_tanhf16_u35(_mm512_maskz_loadu_ps(m, p + i)));
    i = n;
  }
#elif defined(__AVX2__) && defined(__FMA__)
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(p + i, Sleef_tanhf8_u35(_mm256_loadu_ps(p + i)));
#endif
  for (; i < n; ++i) p[i] = std::tanh(p[i]);
}
// sigmoid(x) = (1 + tanh(x/2)) / 2: one vector transcendental, no overflow for large |x|.
inline void sigmoid_inplace(float* p, int n) {
  for (int i = 0; i < n; ++i) p[i] *= 0.5f;
  tanh_inplace(p, n);
  for (int i = 0; i < n; ++i) p[i] = 0.5f + 0.5f * p[i];
}

// Column statistics over the valid rows of z [rows,F]: mean and biased variance (accumulated in
// double: a pixel-task batch gives 784*100 rows for bnx-seq).
template <class T>
void column_stats(const T* z, int64_t rows, int F, const uint8_t* valid, double* mean,
                  double* var) {
  int64_t count = 0;
  for (int64_t r = 0; r < rows; ++r) count += valid[r];
  const int nblk = (F + 63) / 64;
#pragma omp parallel for schedule(static) if (rows * F > kParallelWork)
  for (int blk = 0; blk < nblk; ++blk) {
    const int j0 = blk * 64, j1 = std::min(F, j0 + 64);
    double s[64] = {0};
    for (int64_t r = 0; r < rows; ++r) {
      if (!valid[r]) continue;
      const T* zr = z + r * F;
#pragma omp simd
      for (int j = j0; j < j1; ++j) s[j - j0] += zr[j];
    }
    for (int j = j0; j < j1; ++j) mean[j] = count ? s[j - j0] / count : 0.0;
    double q[64] = {0};
    for (int64_t r = 0; r < rows; ++r) {
      if (!valid[r]) continue;
      const T* zr = z + r * F;
#pragma omp simd
      for (int j = j0; j < j1; ++j) {
        const double d = zr[j] - mean[j];
        q[j - j0] += d * d;
      }
    }
    for (int j = j0; j < j1; ++j) var[j] = count ? q[j - j0] / count : 1.0;
  }
}

// xh = (z - mean) * rstd per column, in place allowed (xh may equal z); invalid rows -> 0.
template <class T>
void column_normalize(const T* z, int64_t rows, int F, const uint8_t* valid, const T* mean,
                      const T* rstd, T* xh) {
#pragma omp parallel for schedule(static) if (rows * F > kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    T* o = xh + r * F;
    if (!valid[r]) {
      std::fill(o, o + F, T(0));
      continue;
    }
    const T* zr = z + r * F;
#pragma omp simd
    for (int j = 0; j < F; ++j) o[j] = (zr[j] - mean[j]) * rstd[j];
  }
}

// Row statistics (layer normalization): per valid row, mean/rstd over its F features; xh written
// (in place allowed). mean/rstd [rows].
template <class T>
void row_normalize(const T* z, int64_t rows, int F, const uint8_t* valid, double eps, T* mean,
                   T* rstd, T* xh) {
#pragma omp parallel for schedule(static) if (rows * F > kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    T* o = xh + r * F;
    if (!valid[r]) {
      std::fill(o, o + F, T(0));
      mean[r] = 0;
      rstd[r] = 1;
      continue;
    }
    const T* zr = z + r * F;
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int j = 0; j < F; ++j) s += zr[j];
    const double m = s / F;
    double q = 0;
#pragma omp simd reduction(+ : q)
    for (int j = 0; j < F; ++j) {
      const double d = zr[j] - m;
      q += d * d;
    }
    const T rs = static_cast<T>(1.0 / std::sqrt(q / F + eps));
    const T mt = static_cast<T>(m);
#pragma omp simd
    for (int j = 0; j < F; ++j) o[j] = (zr[j] - mt) * rs;
    mean[r] = mt;
    rstd[r] = rs;
  }
}

// Column sums over valid rows of dy and dy*xh (double): s1 = sum dy, s2 = sum dy*xh.
template <class T>
void column_grad_sums(const T* dy, const T* xh, int64_t rows, int F, const uint8_t* valid,
                      double* s1, double* s2) {
  const int nblk = (F + 63) / 64;
#pragma omp parallel for schedule(static) if (rows * F > kParallelWork)
  for (int blk = 0; blk < nblk; ++blk) {
    const int j0 = blk * 64, j1 = std::min(F, j0 + 64);
    double a[64] = {0}, b[64] = {0};
    for (int64_t r = 0; r < rows; ++r) {
      if (!valid[r]) continue;
      const T* d = dy + r * F;
      const T* x = xh + r * F;
#pragma omp simd
      for (int j = j0; j < j1; ++j) {
        a[j - j0] += d[j];
        b[j - j0] += static_cast<double>(d[j]) * x[j];
      }
    }
    for (int j = j0; j < j1; ++j) {
      s1[j] = a[j - j0];
      s2[j] = b[j - j0];
    }
  }
}

// Batch-norm backward over the valid rows (one statistic group): given dy = dL/d(out) and the
// column sums s1, s2 from column_grad_sums, dz = gamma*rstd*(dy - s1/M - xh*s2/M). With
// batch_stats false (population statistics) the statistics are constants: dz = gamma*rstd*dy.
// dz may alias dy. Invalid rows -> 0.
template <class T>
void column_norm_backward(const T* dy, const T* xh, int64_t rows, int F, const uint8_t* valid,
                          const T* gamma, const T* rstd, const double* s1, const double* s2,
                          int64_t count, bool batch_stats, T* dz, std::vector<T>& tmp) {
  tmp.resize(3 * static_cast<size_t>(F));
  T* k = tmp.data();          // gamma * rstd
  T* a = k + F;               // s1 / M
  T* b = a + F;               // s2 / M
  for (int j = 0; j < F; ++j) {
    k[j] = gamma[j] * rstd[j];
    a[j] = batch_stats && count ? static_cast<T>(s1[j] / count) : T(0);
    b[j] = batch_stats && count ? static_cast<T>(s2[j] / count) : T(0);
  }
#pragma omp parallel for schedule(static) if (rows * F > kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    T* o = dz + r * F;
    if (!valid[r]) {
      std::fill(o, o + F, T(0));
      continue;
    }
    const T* d = dy + r * F;
    const T* x = xh + r * F;
#pragma omp simd
    for (int j = 0; j < F; ++j) o[j] = k[j] * (d[j] - a[j] - x[j] * b[j]);
  }
}

// Layer-norm backward per valid row: dxh = dy*gamma; dz = rstd*(dxh - mean(dxh) - xh*mean(dxh*xh)).
// dz may alias dy. Parameter gradients are not touched here (see column_grad_sums).
template <class T>
void row_norm_backward(const T* dy, const T* xh, int64_t rows, int F, const uint8_t* valid,
                       const T* gamma, const T* rstd, T* dz) {
#pragma omp parallel for schedule(static) if (rows * F > kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    T* o = dz + r * F;
    if (!valid[r]) {
      std::fill(o, o + F, T(0));
      continue;
    }
    const T* d = dy + r * F;
    const T* x = xh + r * F;
    double s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
    for (int j = 0; j < F; ++j) {
      const double g = static_cast<double>(d[j]) * gamma[j];
      s1 += g;
      s2 += g * x[j];
    }
    const T a = static_cast<T>(s1 / F), b = static_cast<T>(s2 / F), rs = rstd[r];
#pragma omp simd
    for (int j = 0; j < F; ++j) o[j] = rs * (d[j] * gamma[j] - a - x[j] * b);
  }
}

}  // namespace rbn::kern

namespace rbn::kern {

// ---- serial column kernels over a column block [rows, w] with row stride ld ----------------
// Used inside the time loop's parallel region, where each thread owns a block of hidden units.

// One pass: sums and sums of squares in double (var = E[z^2] - mean^2 keeps ~6 significant digits
// even when mean^2 / var reaches 1e10, far beyond what activations show).
template <class T>
void col_stats_serial(const T* z, int64_t rows, int ld, int w, const uint8_t* valid, double* mean,
                      double* var) {
  int64_t count = 0;
  for (int j = 0; j < w; ++j) mean[j] = var[j] = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    if (!valid[r]) continue;
    ++count;
    const T* zr = z + r * ld;
#pragma omp simd
    for (int j = 0; j < w; ++j) {
      const double v = zr[j];
      mean[j] += v;
      var[j] += v * v;
    }
  }
  for (int j = 0; j < w; ++j) {
    if (count == 0) {
      mean[j] = 0.0;
      var[j] = 1.0;
      continue;
    }
    mean[j] /= count;
    var[j] = std::max(0.0, var[j] / count - mean[j] * mean[j]);
  }
}

template <class T>
void col_normalize_serial(const T* z, int64_t rows, int ld, int w, const uint8_t* valid,
                          const T* mean, const T* rstd, T* out, int ldo) {
  for (int64_t r = 0; r < rows; ++r) {
    T* o = out + r * ldo;
    if (!valid[r]) {
      std::fill(o, o + w, T(0));
      continue;
    }
    const T* zr = z + r * ld;
#pragma omp simd
    for (int j = 0; j < w; ++j) o[j] = (zr[j] - mean[j]) * rstd[j];
  }
}

template <class T>
void col_grad_sums_serial(const T* dy, const T* xh, int64_t rows, int ld, int w,
                          const uint8_t* valid, double* s1, double* s2) {
  for (int j = 0; j < w; ++j) s1[j] = s2[j] = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    if (!valid[r]) continue;
    const T* d = dy + r * ld;
    const T* x = xh + r * ld;
#pragma omp simd
    for (int j = 0; j < w; ++j) {
      s1[j] += d[j];
      s2[j] += static_cast<double>(d[j]) * x[j];
    }
  }
}

// dz = gamma*rstd*(dy - s1/M - xh*s2/M) (batch statistics) or gamma*rstd*dy; dz may alias dy.
template <class T>
void col_norm_backward_serial(const T* dy, const T* xh, int64_t rows, int ld, int w,
                              const uint8_t* valid, const T* gamma, const T* rstd,
                              const double* s1, const double* s2, int64_t count, bool batch,
                              T* dz) {
  for (int64_t r = 0; r < rows; ++r) {
    T* o = dz + r * ld;
    if (!valid[r]) {
      std::fill(o, o + w, T(0));
      continue;
    }
    const T* d = dy + r * ld;
    const T* x = xh + r * ld;
    if (batch && count) {
      const double inv = 1.0 / count;
#pragma omp simd
      for (int j = 0; j < w; ++j)
        o[j] = gamma[j] * rstd[j] *
               (d[j] - static_cast<T>(s1[j] * inv) - x[j] * static_cast<T>(s2[j] * inv));
    } else {
#pragma omp simd
      for (int j = 0; j < w; ++j) o[j] = gamma[j] * rstd[j] * d[j];
    }
  }
}

}  // namespace rbn::kern
