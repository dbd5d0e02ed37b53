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
  // Blocks of 16 columns with the accumulators in registers: a loop over all w columns per row
  // would load and store each sum once per row.
  constexpr int B = 16;
  int j0 = 0;
  for (; j0 + B <= w; j0 += B) {
    double s[B] = {}, q[B] = {};
    for (int64_t r = 0; r < rows; ++r) {
      if (!valid[r]) continue;
      const T* zr = z + r * ld + j0;
#pragma omp simd
      for (int j = 0; j < B; ++j) {
        const double v = zr[j];
        s[j] += v;
        q[j] += v * v;
      }
    }
    for (int j = 0; j < B; ++j) {
      sum[j0 + j] = s[j];
      sq[j0 + j] = q[j];
    }
  }
  if (j0 == w) return;
  for (int j = j0; j < w; ++j) sum[j] = sq[j] = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    if (!valid[r]) continue;
    const T* zr = z + r * ld;
#pragma omp simd
    for (int j = j0; j < w; ++j) {
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

// s1 = sum dy, s2 = sum dy * x-hat over the valid rows. x-hat is xh itself, or, with a mean
// given, (xh - mean) * rstd from raw values. Accumulated in T over blocks of up to 128 rows (16
// float lanes), the blocks added in double: a batch's rows cost little, and all T*N rows of
// bnx-seq keep double's precision across blocks.
template <class T>
void col_grad_sums_serial(const T* dy, const T* xh, int64_t rows, int ld, int w,
                          const uint8_t* valid, double* s1, double* s2, const T* mean = nullptr,
                          const T* rstd = nullptr) {
  constexpr int B = 64;
  constexpr int64_t RB = 128;
  for (int j = 0; j < w; ++j) s1[j] = s2[j] = 0.0;
  for (int j0 = 0; j0 < w; j0 += B) {
    const int wb = std::min(B, w - j0);
    for (int64_t r0 = 0; r0 < rows; r0 += RB) {
      T u1[B] = {}, u2[B] = {};
      for (int64_t r = r0; r < std::min(rows, r0 + RB); ++r) {
        if (!valid[r]) continue;
        const T* d = dy + r * ld + j0;
        const T* x = xh + r * ld + j0;
        if (mean) {
          const T* mu = mean + j0;
          const T* rs = rstd + j0;
#pragma omp simd
          for (int j = 0; j < wb; ++j) {
            u1[j] += d[j];
            u2[j] += d[j] * ((x[j] - mu[j]) * rs[j]);
          }
        } else {
#pragma omp simd
          for (int j = 0; j < wb; ++j) {
            u1[j] += d[j];
            u2[j] += d[j] * x[j];
          }
        }
      }
      for (int j = 0; j < wb; ++j) {
        s1[j0 + j] += u1[j];
        s2[j0 + j] += u2[j];
      }
    }
  }
}

// dz = gamma*rstd*(dy - s1/M - xh*s2/M) (batch statistics) or gamma*rstd*dy; dz may alias dy
// or xh. With a mean given, xh holds the raw values and x-hat = (xh - mean) * rstd. Per column the
// coefficients are formed once (a block of columns at a time), so the row loop is a few
// multiply-adds in T.
template <class T>
void col_norm_backward_serial(const T* dy, const T* xh, int64_t rows, int ld, int w,
                              const uint8_t* valid, const T* gamma, const T* rstd,
                              const double* s1, const double* s2, int64_t count, bool batch,
                              T* dz, const T* mean = nullptr) {
  constexpr int B = 64;
  T a[B], m1[B], m2[B];  // dz = a*dy - m1 - xh*m2
  const bool centred = batch && count;
  const double inv = centred ? 1.0 / static_cast<double>(count) : 0.0;
  for (int j0 = 0; j0 < w; j0 += B) {
    const int wb = std::min(B, w - j0);
    for (int j = 0; j < wb; ++j) {
      const T gr = gamma[j0 + j] * rstd[j0 + j];
      a[j] = gr;
      m1[j] = centred ? gr * static_cast<T>(s1[j0 + j] * inv) : T(0);
      m2[j] = centred ? gr * static_cast<T>(s2[j0 + j] * inv) : T(0);
    }
    for (int64_t r = 0; r < rows; ++r) {
      T* o = dz + r * ld + j0;
      if (!valid[r]) {
        std::fill(o, o + wb, T(0));
        continue;
      }
      const T* d = dy + r * ld + j0;
      const T* x = xh + r * ld + j0;
      if (mean) {
        const T* mu = mean + j0;
        const T* rs = rstd + j0;
#pragma omp simd
        for (int j = 0; j < wb; ++j) o[j] = a[j] * d[j] - m1[j] - ((x[j] - mu[j]) * rs[j]) * m2[j];
      } else {
#pragma omp simd
        for (int j = 0; j < wb; ++j) o[j] = a[j] * d[j] - m1[j] - x[j] * m2[j];
      }
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
