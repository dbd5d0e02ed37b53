// The input projection W x formed inside the time loop, for layers with few input features (the
// pixel tasks: C = 1). z = W x is linear in the inputs, so the statistics its normalizations need
// follow from the inputs' moments without a pass over z: BN_t's column mean and variance from the
// step's input moments, LN's row mean and variance from the moments of W's rows.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <omp.h>

#include "cells/kernels.hpp"

namespace rbn::cells {

// W x of one step for the columns [j0, j0 + w) of every row: out [N,G] (stride G), Xt [N,C],
// Wt = W^T [C,G].
template <class T>
void input_projection(const T* Xt, const T* Wt, int N, int C, int G, int j0, int w, T* out) {
  for (int n = 0; n < N; ++n) {
    T* o = out + static_cast<int64_t>(n) * G + j0;
    const T* xr = Xt + static_cast<int64_t>(n) * C;
    const T x0 = xr[0];
    const T* w0 = Wt + j0;
#pragma omp simd
    for (int j = 0; j < w; ++j) o[j] = x0 * w0[j];
    for (int c = 1; c < C; ++c) {
      const T xc = xr[c];
      const T* wc = Wt + static_cast<int64_t>(c) * G + j0;
#pragma omp simd
      for (int j = 0; j < w; ++j) o[j] += xc * wc[j];
    }
  }
}

// Sums over the valid rows of x_t [N,C]: mom[c] = sum x_c, mom[C + c*C + e] = sum x_c x_e.
template <class T>
void input_moments(const T* Xt, const uint8_t* valid, int N, int C, double* mom) {
  std::fill_n(mom, C + C * C, 0.0);
  for (int n = 0; n < N; ++n) {
    if (!valid[n]) continue;
    const T* xr = Xt + static_cast<int64_t>(n) * C;
    for (int c = 0; c < C; ++c) {
      mom[c] += xr[c];
      for (int e = 0; e < C; ++e) mom[C + c * C + e] += static_cast<double>(xr[c]) * xr[e];
    }
  }
}

// z = w . x over cnt rows with input sums mom (input_moments): mean and biased variance, the
// latter as w^T Cov(x) w from centred moments (no cancellation against mean^2). No rows:
// mean 0, var 1 (as stats_from_sums).
template <class T>
void linear_stats(const T* w, int C, const double* mom, int64_t cnt, double* mean, double* var) {
  if (cnt <= 0) {
    *mean = 0.0;
    *var = 1.0;
    return;
  }
  const double inv = 1.0 / static_cast<double>(cnt);
  double s = 0, v = 0;
  for (int c = 0; c < C; ++c) s += w[c] * mom[c];
  for (int c = 0; c < C; ++c)
    for (int e = 0; e < C; ++e)
      v += static_cast<double>(w[c]) * w[e] * (mom[C + c * C + e] - mom[c] * mom[e] * inv);
  *mean = s * inv;
  *var = std::max(0.0, v * inv);
}

// Moments of W's G rows [C + C*C] in double, for LN of an inline W x: the mean over the G features
// of a row is x . wbar and its variance x^T Cov(W) x. W [G,C].
template <class T>
void weight_row_moments(const T* W, int G, int C, std::vector<double>& wmom) {
  wmom.assign(static_cast<size_t>(C) + C * C, 0.0);
  for (int j = 0; j < G; ++j)
    for (int c = 0; c < C; ++c) {
      const double wc = W[static_cast<size_t>(j) * C + c];
      wmom[c] += wc / G;
      for (int e = 0; e < C; ++e) wmom[C + c * C + e] += wc * W[static_cast<size_t>(j) * C + e] / G;
    }
  for (int c = 0; c < C; ++c)
    for (int e = 0; e < C; ++e) wmom[C + c * C + e] -= wmom[c] * wmom[e];
}

// LN statistics of one row of z = W x from the input row x [C] and W's moments (no rows: use the
// padded values mean 0, rstd 1). Returns the row's mean and the variance before eps.
template <class T>
void linear_row_moments(const T* x, int C, const std::vector<double>& wmom, double& mean,
                        double& var) {
  double m = 0, v = 0;
  for (int c = 0; c < C; ++c) {
    m += wmom[c] * x[c];
    for (int e = 0; e < C; ++e) v += wmom[C + c * C + e] * x[c] * x[e];
  }
  mean = m;
  var = v;
}

// ---- sparse input rows (one-hot symbols) -----------------------------------------------------
// A language model's one-hot characters make X [T*N, C] all zeros but one value per row: W x is
// then a column of W, and the hoisted product over all steps writes [T,N,G] to memory only for the
// gate pass to read it back. Such inputs are kept as their nonzeros by row, W x is gathered per
// step inside the time loop (from W^T, in cache), and dW is scattered from d(W x) after it.

// The nonzeros of X by row (compressed rows): row r's are col/val[ptr[r] .. ptr[r+1]).
template <class T>
struct SparseRows {
  std::vector<int64_t> ptr;
  std::vector<int32_t> col;
  std::vector<T> val;
};

// Fills `out` with X's nonzeros [rows, C] and returns true when no row has more than max_nnz;
// returns false (out unspecified) at the first row that has more, so a dense input costs one row.
template <class T>
bool sparse_rows(const T* X, int64_t rows, int C, int max_nnz, SparseRows<T>& out) {
  out.ptr.assign(1, 0);
  out.col.clear();
  out.val.clear();
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = X + r * C;
    int nnz = 0;
    for (int c = 0; c < C; ++c)
      if (x[c] != T(0)) {
        if (++nnz > max_nnz) return false;
        out.col.push_back(c);
        out.val.push_back(x[c]);
      }
    out.ptr.push_back(static_cast<int64_t>(out.col.size()));
  }
  return true;
}

// W x of rows [r0, r0 + N) for the columns [j0, j0 + w): out [N,G] (stride G), Wt = W^T [C,G].
// A row without nonzeros gets 0.
template <class T>
void sparse_projection(const SparseRows<T>& xs, int64_t r0, int N, const T* Wt, int G, int j0,
                       int w, T* out) {
  for (int n = 0; n < N; ++n) {
    T* o = out + static_cast<int64_t>(n) * G + j0;
    const int64_t e0 = xs.ptr[r0 + n], e1 = xs.ptr[r0 + n + 1];
    if (e0 == e1) {
      std::fill_n(o, w, T(0));
      continue;
    }
    const T v0 = xs.val[e0];
    const T* w0 = Wt + static_cast<int64_t>(xs.col[e0]) * G + j0;
#pragma omp simd
    for (int j = 0; j < w; ++j) o[j] = v0 * w0[j];
    for (int64_t e = e0 + 1; e < e1; ++e) {
      const T v = xs.val[e];
      const T* wc = Wt + static_cast<int64_t>(xs.col[e]) * G + j0;
#pragma omp simd
      for (int j = 0; j < w; ++j) o[j] += v * wc[j];
    }
  }
}

// dW [G,C] += d(W x)^T X over `rows` rows, X given by its nonzeros: dZ [rows,G]. Threads split
// the G rows of dW; each sum runs over the rows in order whatever the thread count. dWt: scratch
// of C*G values (dW transposed, so that a row's nonzero adds a contiguous run).
template <class T>
void sparse_weight_grad(const SparseRows<T>& xs, const T* dZ, int64_t rows, int G, int C, T* dWt,
                        T* dW) {
#pragma omp parallel if (rows * G > (int64_t{1} << 18))
  {
    const int P = omp_get_num_threads(), p = omp_get_thread_num();
    const int j0 = static_cast<int>(static_cast<int64_t>(G) * p / P);
    const int j1 = static_cast<int>(static_cast<int64_t>(G) * (p + 1) / P), w = j1 - j0;
    for (int c = 0; c < C; ++c) std::fill_n(dWt + static_cast<int64_t>(c) * G + j0, w, T(0));
    for (int64_t r = 0; r < rows; ++r) {
      const T* d = dZ + r * G + j0;
      for (int64_t e = xs.ptr[r]; e < xs.ptr[r + 1]; ++e) {
        const T v = xs.val[e];
        T* acc = dWt + static_cast<int64_t>(xs.col[e]) * G + j0;
#pragma omp simd
        for (int j = 0; j < w; ++j) acc[j] += v * d[j];
      }
    }
    kern::add_transposed_rows(dWt, G, C, j0, j1, dW, C);
  }
}

}  // namespace rbn::cells
