// Building blocks of the fused cells: vectorized activations, and batch normalization over the
// columns of row-major [rows, F] blocks with a validity mask over rows, forward and backward
// (the row statistics of LN need the time loop's threads and live in stack.cpp).
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

// ---- serial column kernels over a column block [rows, w] with row stride ld ----------------
// Used inside the time loop's parallel region, where each thread owns a block of hidden units.

// Sums and sums of squares in double over the valid rows of a column block (the raw material of
// the batch statistics; data-parallel training adds them up over the ranks before dividing).
template <class T>
void col_sums_serial(const T* z, int64_t rows, int ld, int w, const uint8_t* valid, double* sum,
                     double* sq) {
  for (int j = 0; j < w; ++j) sum[j] = sq[j] = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    if (!valid[r]) continue;
    const T* zr = z + r * ld;
#pragma omp simd
    for (int j = 0; j < w; ++j) {
      const double v = zr[j];
      sum[j] += v;
      sq[j] += v * v;
    }
  }
}

// mean and biased variance from the sums over `count` rows, in place (sum -> mean, sq -> var).
// var = E[z^2] - mean^2 in double keeps ~6 significant digits even when mean^2 / var reaches 1e10,
// far beyond what activations show. No rows: mean 0, var 1.
inline void stats_from_sums(int w, int64_t count, double* sum_mean, double* sq_var) {
  for (int j = 0; j < w; ++j) {
    if (count == 0) {
      sum_mean[j] = 0.0;
      sq_var[j] = 1.0;
      continue;
    }
    sum_mean[j] /= count;
    sq_var[j] = std::max(0.0, sq_var[j] / count - sum_mean[j] * sum_mean[j]);
  }
}

template <class T>
void col_stats_serial(const T* z, int64_t rows, int ld, int w, const uint8_t* valid, double* mean,
                      double* var) {
  col_sums_serial(z, rows, ld, w, valid, mean, var);
  int64_t count = 0;
  for (int64_t r = 0; r < rows; ++r) count += valid[r] != 0;
  stats_from_sums(w, count, mean, var);
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


// ---- the same over all columns, column blocks in parallel (bnx-seq's statistics over all T*N
// rows, outside the time loop) ------------------------------------------------------------------

template <class F>
void for_column_blocks(int64_t rows, int cols, F&& fn) {
  const int nblk = (cols + 63) / 64;
#pragma omp parallel for schedule(static) if (rows * cols > kParallelWork)
  for (int blk = 0; blk < nblk; ++blk) {
    const int j0 = blk * 64;
    fn(j0, std::min(cols, j0 + 64) - j0);
  }
}

template <class T>
void column_stats(const T* z, int64_t rows, int F, const uint8_t* valid, double* mean, double* var) {
  for_column_blocks(rows, F, [&](int j0, int w) {
    col_stats_serial(z + j0, rows, F, w, valid, mean + j0, var + j0);
  });
}

template <class T>
void column_sums(const T* z, int64_t rows, int F, const uint8_t* valid, double* sum, double* sq) {
  for_column_blocks(rows, F, [&](int j0, int w) {
    col_sums_serial(z + j0, rows, F, w, valid, sum + j0, sq + j0);
  });
}

template <class T>
void column_normalize(const T* z, int64_t rows, int F, const uint8_t* valid, const T* mean,
                      const T* rstd, T* xh) {
  for_column_blocks(rows, F, [&](int j0, int w) {
    col_normalize_serial(z + j0, rows, F, w, valid, mean + j0, rstd + j0, xh + j0, F);
  });
}

template <class T>
void column_grad_sums(const T* dy, const T* xh, int64_t rows, int F, const uint8_t* valid,
                      double* s1, double* s2) {
  for_column_blocks(rows, F, [&](int j0, int w) {
    col_grad_sums_serial(dy + j0, xh + j0, rows, F, w, valid, s1 + j0, s2 + j0);
  });
}

template <class T>
void column_norm_backward(const T* dy, const T* xh, int64_t rows, int F, const uint8_t* valid,
                          const T* gamma, const T* rstd, const double* s1, const double* s2,
                          int64_t count, bool batch_stats, T* dz) {
  for_column_blocks(rows, F, [&](int j0, int w) {
    col_norm_backward_serial(dy + j0, xh + j0, rows, F, w, valid, gamma + j0, rstd + j0, s1 + j0,
                             s2 + j0, count, batch_stats, dz + j0);
  });
}

}  // namespace rbn::kern
