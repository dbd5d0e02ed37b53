// Building blocks of the fused cells: vectorized activations, the pointwise steps of the cells,
// and batch normalization over the columns of row-major [rows, F] blocks with a validity mask over
// rows, forward and backward (the row statistics of LN need the time loop's threads and live in
// norms.hpp). Each kernel is tested on its own against plain loops (tests/cells/test_kernels.cpp).
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
#include <type_traits>
#include <vector>

namespace rbn::kern {

// Parallelize a loop only when it has enough work to pay for the fork/join.
constexpr int64_t kParallelWork = 1 << 14;

// A [j0..j1) rows of [rows, cols] (leading dimension lda) += B^T, B [cols, rows] (ldb): a
// gradient formed transposed added to its own layout, in tiles of 32 so that the column reads of
// B stay on cache lines. Each element is one addition, whatever the row range.
template <class T>
void add_transposed_rows(const T* B, int64_t ldb, int cols, int j0, int j1, T* A, int64_t lda) {
  constexpr int Bt = 32;
  for (int r0 = j0; r0 < j1; r0 += Bt)
    for (int c0 = 0; c0 < cols; c0 += Bt)
      for (int r = r0; r < std::min(r0 + Bt, j1); ++r)
        for (int c = c0; c < std::min(c0 + Bt, cols); ++c) A[r * lda + c] += B[c * ldb + r];
}

template <class T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// ---- float vectors: the activations and the fused row kernels -----------------------------------

// The build's float vector (AVX-512: 16 lanes, AVX2: 8) with the few operations the activations
// and the fused row kernels need. A row's units run in full vectors and one masked tail, so a
// unit's value never depends on where the threads split the units, and every intermediate stays
// in a register (separate passes over the row stall on reloading what the previous pass stored).
#if defined(__AVX512F__)
#define RBN_FLOAT_LANES 1
struct FloatLanes {
  static constexpr int n = 16;
  using V = __m512;
  using M = __mmask16;
  static M first(int k) { return static_cast<M>(k >= n ? 0xFFFFu : (1u << k) - 1); }
  template <bool tail>
  static V load(const float* p, M m) {
    if constexpr (tail) return _mm512_maskz_loadu_ps(m, p);
    return _mm512_loadu_ps(p);
  }
  template <bool tail>
  static void store(float* p, V v, M m) {
    if constexpr (tail) _mm512_mask_storeu_ps(p, m, v);
    else _mm512_storeu_ps(p, v);
  }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }  // a * b + c
  static V tanh(V v) { return Sleef_tanhf16_u35(v); }
};
#elif defined(__AVX2__) && defined(__FMA__)
#define RBN_FLOAT_LANES 1
struct FloatLanes {
  static constexpr int n = 8;
  using V = __m256;
  using M = __m256i;
  static M first(int k) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  template <bool tail>
  static V load(const float* p, M m) {
    if constexpr (tail) return _mm256_maskload_ps(p, m);
    return _mm256_loadu_ps(p);
  }
  template <bool tail>
  static void store(float* p, V v, M m) {
    if constexpr (tail) _mm256_maskstore_ps(p, m, v);
    else _mm256_storeu_ps(p, v);
  }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V tanh(V v) { return Sleef_tanhf8_u35(v); }
};
#endif

// A row's units k0..k1 in float vectors: body.template operator()<tail>(k, mask) for each vector
// of units starting at k, the last one masked.
template <class L, class Body>
inline void for_lanes(int k0, int k1, Body&& body) {
  int k = k0;
  for (; k + L::n <= k1; k += L::n) body.template operator()<false>(k, L::first(L::n));
  if (k < k1) body.template operator()<true>(k, L::first(k1 - k));
}

// sigmoid(v) = (1 + tanh(v/2)) / 2 in a vector (sigmoid_inplace's formula, one value at a time:
// the row kernels' gates), and the same per value for their plain loops (double: sigmoid).
template <class L>
inline typename L::V sigmoid_lanes(typename L::V v) {
  const typename L::V half = L::set1(0.5f);
  return L::fmadd(L::tanh(L::mul(v, half)), half, half);
}
template <class T>
inline T sigmoid_value(T v) {
  if constexpr (std::is_same_v<T, float>) return 0.5f + 0.5f * std::tanh(0.5f * v);
  return sigmoid(v);
}

// In-place tanh and logistic sigmoid over an array: SLEEF's vector tanh (3.5 ulp) for float, the
// tail too (masked), so that a value's result never depends on where the threads split the columns;
// std:: for double (the double build serves the reference checks, not speed).
inline void tanh_inplace(double* p, int n) {
  for (int i = 0; i < n; ++i) p[i] = std::tanh(p[i]);
}
inline void sigmoid_inplace(double* p, int n) {
  for (int i = 0; i < n; ++i) p[i] = sigmoid(p[i]);
}
inline void tanh_inplace(float* p, int n) {
#ifdef RBN_FLOAT_LANES
  // the tail masked, not scalar: std::tanh costs more than a vector call per value
  using L = FloatLanes;
  for_lanes<L>(0, n, [&]<bool tail>(int i, L::M m) {
    L::store<tail>(p + i, L::tanh(L::load<tail>(p + i, m)), m);
  });
#else
  for (int i = 0; i < n; ++i) p[i] = std::tanh(p[i]);
#endif
}
// sigmoid(x) = (1 + tanh(x/2)) / 2: one vector transcendental, no overflow for large |x|.
inline void sigmoid_inplace(float* p, int n) {
  for (int i = 0; i < n; ++i) p[i] *= 0.5f;
  tanh_inplace(p, n);
  for (int i = 0; i < n; ++i) p[i] = 0.5f + 0.5f * p[i];
}

// ---- shared formulas ------------------------------------------------------------------------

// 1 / sqrt(var + eps): every normalization's reciprocal standard deviation.
inline double inv_std(double var, double eps) { return 1.0 / std::sqrt(var + eps); }

// A normalization followed by its affine, folded into scale * z + shift: scale = gamma * rstd and
// shift -= scale * mean (shift may already hold a bias, or another folded term).
template <class T>
inline void fold_norm(T& scale, T& shift, T rstd, T mean) {
  scale *= rstd;
  shift -= scale * mean;
}

// BN backward as dz = a*dy - m1 - x-hat*m2 per column: a = gamma*rstd; with batch statistics over
// `count` rows m1 = a*sum(dy)/count and m2 = a*sum(dy*x-hat)/count, with population statistics
// (or no rows) m1 = m2 = 0.
template <class T>
struct BnGradCoef {
  T a, m1, m2;
};
struct BnGradScale {  // 1/count where the backward centres, else 0
  bool centred;
  double inv;
};
inline BnGradScale bn_grad_scale(bool batch, int64_t count) {
  const bool centred = batch && count;
  return {centred, centred ? 1.0 / static_cast<double>(count) : 0.0};
}
template <class T>
inline BnGradCoef<T> bn_grad_coef(T gamma, T rstd, double sum_dy, double sum_dy_xhat,
                                  BnGradScale sc) {
  const T gr = gamma * rstd;
  return {gr, sc.centred ? gr * static_cast<T>(sum_dy * sc.inv) : T(0),
          sc.centred ? gr * static_cast<T>(sum_dy_xhat * sc.inv) : T(0)};
}

// LN backward of one value: dz = rstd*(dy*gamma - a - x-hat*b), x-hat = (z - mean)*rstd, where a
// and b are the row's means of dy*gamma and dy*gamma*x-hat.
template <class T>
inline T ln_grad(T dy, T gamma, T z, T mean, T rstd, T a, T b) {
  return rstd * (dy * gamma - a - ((z - mean) * rstd) * b);
}

// ---- pointwise steps of the cells (one row, the columns [k0, k1) of each gate block) --------

// LSTM forward: gates g [4H] hold the pre-activations (i, f, g, o) and become the activations;
// c_t = f * c_{t-1} + i * g.
template <class T>
inline void lstm_gates_forward(T* g, int H, int k0, int k1, const T* c_prev, T* c) {
  const int w = k1 - k0;
  sigmoid_inplace(g + k0, w);          // i
  sigmoid_inplace(g + H + k0, w);      // f
  tanh_inplace(g + 2 * H + k0, w);     // g
  sigmoid_inplace(g + 3 * H + k0, w);  // o
#pragma omp simd
  for (int j = k0; j < k1; ++j) c[j] = g[H + j] * c_prev[j] + g[j] * g[2 * H + j];
}

// The LSTM step of one row over the units k0..k1, in one pass from the step's folded
// coefficients (BN_t or no normalization of the terms; term_coefficients):
//   pre_q = kx_q * x_q + kh_q * rh_q + shift_q     (gate q = i, f, g, o; its column q*H + k)
//   i, f, o = sigmoid(pre), g = tanh(pre)  -> gates (kept for backward)
//   c = f * c_prev + i * g                 -> c
//   h = o * tanh(c)                        -> h, when h is given (no normalization of c)
// The values are lstm_gates_forward's and hidden_output's, formed without storing in between.
template <class T>
struct LstmRowForward {
  const T* x = nullptr;      // [4H] the row's input term W x
  const T* rh = nullptr;     // [4][ld] the row's R h of units k0.. (gate q's at q*ld)
  int ld = 0;
  const T* kx = nullptr;     // [4H] the step's coefficients: scale of W x,
  const T* kh = nullptr;     //      scale of R h,
  const T* shift = nullptr;  //      shift (bias and folded means)
  const T* c_prev = nullptr; // [H]
  T* gates = nullptr;        // [4H] the activations
  T* c = nullptr;            // [H]
  T* h = nullptr;            // [H] or nullptr
};

template <class T>
inline void lstm_row_forward(const LstmRowForward<T>& r, int H, int k0, int k1) {
  for (int k = k0; k < k1; ++k) {
    T a[4];
    for (int q = 0; q < 4; ++q) {
      const int j = q * H + k;
      a[q] = r.kx[j] * r.x[j] + r.kh[j] * r.rh[q * r.ld + k - k0] + r.shift[j];
    }
    const T i = sigmoid_value(a[0]), f = sigmoid_value(a[1]), g = std::tanh(a[2]),
            o = sigmoid_value(a[3]);
    r.gates[k] = i, r.gates[H + k] = f, r.gates[2 * H + k] = g, r.gates[3 * H + k] = o;
    r.c[k] = f * r.c_prev[k] + i * g;
    if (r.h) r.h[k] = o * std::tanh(r.c[k]);
  }
}

#ifdef RBN_FLOAT_LANES
inline void lstm_row_forward(const LstmRowForward<float>& r, int H, int k0, int k1) {
  using L = FloatLanes;
  for_lanes<L>(k0, k1, [&]<bool tail>(int k, L::M m) {
    L::V a[4];
    for (int q = 0; q < 4; ++q) {
      const int j = q * H + k;
      const L::V p = L::mul(L::load<tail>(r.kx + j, m), L::load<tail>(r.x + j, m));
      const L::V rh = L::load<tail>(r.rh + q * r.ld + k - k0, m);
      a[q] = L::add(L::fmadd(L::load<tail>(r.kh + j, m), rh, p), L::load<tail>(r.shift + j, m));
      a[q] = q == 2 ? L::tanh(a[q]) : sigmoid_lanes<L>(a[q]);
      L::store<tail>(r.gates + j, a[q], m);
    }
    const L::V c = L::fmadd(a[1], L::load<tail>(r.c_prev + k, m), L::mul(a[0], a[2]));
    L::store<tail>(r.c + k, c, m);
    if (r.h) L::store<tail>(r.h + k, L::mul(a[3], L::tanh(c)), m);
  });
}
#endif

// h = o * tanh(scale * c + shift) over the units k0..k1 of a row in one pass: the LSTM's output
// through BN of c folded into per-unit coefficients (scale, shift [H]; o the row's gate [H]).
template <class T>
inline void lstm_bn_output(const T* c, const T* scale, const T* shift, const T* o, int k0, int k1,
                           T* h) {
  for (int k = k0; k < k1; ++k) h[k] = std::tanh(scale[k] * c[k] + shift[k]) * o[k];
}
#ifdef RBN_FLOAT_LANES
inline void lstm_bn_output(const float* c, const float* scale, const float* shift, const float* o,
                           int k0, int k1, float* h) {
  using L = FloatLanes;
  for_lanes<L>(k0, k1, [&]<bool tail>(int k, L::M m) {
    const L::V z =
        L::fmadd(L::load<tail>(scale + k, m), L::load<tail>(c + k, m), L::load<tail>(shift + k, m));
    L::store<tail>(h + k, L::mul(L::tanh(z), L::load<tail>(o + k, m)), m);
  });
}
#endif

// Its backward in one pass, as cell_output_tanh then lstm_output_backward: dc_out = dL/dc~
// through h (before c's normalization), o (the gate) becomes dL/d(o's pre-activation).
template <class T>
inline void lstm_bn_output_backward(const T* dh, const T* c, const T* scale, const T* shift,
                                    int k0, int k1, T* o, T* dc_out) {
  for (int k = k0; k < k1; ++k) {
    const T tc = std::tanh(scale[k] * c[k] + shift[k]), ov = o[k];
    dc_out[k] = dh[k] * ov * (T(1) - tc * tc);
    o[k] = dh[k] * tc * ov * (T(1) - ov);
  }
}
#ifdef RBN_FLOAT_LANES
inline void lstm_bn_output_backward(const float* dh, const float* c, const float* scale,
                                    const float* shift, int k0, int k1, float* o, float* dc_out) {
  using L = FloatLanes;
  const L::V one = L::set1(1.0f);
  for_lanes<L>(k0, k1, [&]<bool tail>(int k, L::M m) {
    const L::V tc = L::tanh(L::fmadd(L::load<tail>(scale + k, m), L::load<tail>(c + k, m),
                                     L::load<tail>(shift + k, m)));
    const L::V d = L::load<tail>(dh + k, m), ov = L::load<tail>(o + k, m);
    L::store<tail>(dc_out + k, L::mul(L::mul(d, ov), L::sub(one, L::mul(tc, tc))), m);
    L::store<tail>(o + k, L::mul(L::mul(L::mul(d, tc), ov), L::sub(one, ov)), m);
  });
}
#endif

// LSTM backward of h = o * tanh(c~): tanh_c holds tanh(c~) on entry and dL/dc~ on exit; o (the
// gate) becomes dL/d(o's pre-activation).
template <class T>
inline void lstm_output_backward(const T* dh, int k0, int k1, T* o, T* tanh_c) {
#pragma omp simd
  for (int j = k0; j < k1; ++j) {
    const T tc = tanh_c[j];
    const T ov = o[j];
    tanh_c[j] = dh[j] * ov * (T(1) - tc * tc);
    o[j] = dh[j] * tc * ov * (T(1) - ov);
  }
}

// LSTM backward of c_t = f c_{t-1} + i g: dc = dc_next (from step t+1) + dc_out (through h_t);
// the gates i, f, g in g [4H] become the gradients of their pre-activations; dc_next becomes
// dL/dc_{t-1}.
template <class T>
inline void lstm_cell_backward(const T* dc_out, const T* c_prev, int H, int k0, int k1, T* g,
                               T* dc_next) {
#pragma omp simd
  for (int j = k0; j < k1; ++j) {
    const T dc = dc_next[j] + dc_out[j];
    const T i = g[j], f = g[H + j], gg = g[2 * H + j];
    g[j] = dc * gg * i * (T(1) - i);
    g[H + j] = dc * c_prev[j] * f * (T(1) - f);
    g[2 * H + j] = dc * i * (T(1) - gg * gg);
    dc_next[j] = dc * f;
  }
}

// The LSTM backward of one row over the units k0..k1 in one pass, and the row's share of the
// step's column sums (BN_t or no normalization of the terms):
//   with c given (no normalization of c; c~ = c): h = o * tanh(c) backward first, as
//   lstm_output_backward: dL/dc through h and o's gradient from dh; else dc_out holds the
//   former and gates' o block the latter already;
//   then c = f c_prev + i g backward, as lstm_cell_backward: dpre over gates, dc carried;
//   sum_d_q += dpre_q, and for a BN_t term also += dpre_q * x-hat of its raw values.
template <class T>
struct LstmRowBackward {
  const T* dh = nullptr;      // [H] dL/dh_t (dy added), with c
  const T* c = nullptr;       // [H] c_t, or nullptr: dc_out given
  const T* dc_out = nullptr;  // [H] dL/dc_t through h_t (without c)
  const T* c_prev = nullptr;  // [H]
  T* gates = nullptr;         // [4H] the activations in, dpre out
  T* dc = nullptr;            // [H] dL/dc_t from step t+1 in, dL/dc_{t-1} out
  T* sum_d = nullptr;         // [4][w] += dpre (w = k1 - k0)
  // A BN_t term's raw values z, its step's statistics [4H], its sums [4][w] += dpre * x-hat:
  // R h's (z [4][ld] at unit k0) and W x's (z [4H]); nullptr where the term is not BN_t.
  const T *rh = nullptr, *mean_h = nullptr, *rstd_h = nullptr;
  int ld = 0;
  T* sum_dxh_h = nullptr;
  const T *x = nullptr, *mean_x = nullptr, *rstd_x = nullptr;
  T* sum_dxh_x = nullptr;
};

template <class T>
inline void lstm_row_backward(const LstmRowBackward<T>& r, int H, int k0, int k1) {
  const int w = k1 - k0;
  for (int k = k0; k < k1; ++k) {
    T* g = r.gates;
    T dco;
    if (r.c) {
      const T tc = std::tanh(r.c[k]), o = g[3 * H + k];
      dco = r.dh[k] * o * (T(1) - tc * tc);
      g[3 * H + k] = r.dh[k] * tc * o * (T(1) - o);
    } else {
      dco = r.dc_out[k];
    }
    const T dc = r.dc[k] + dco, i = g[k], f = g[H + k], gg = g[2 * H + k];
    g[k] = dc * gg * i * (T(1) - i);
    g[H + k] = dc * r.c_prev[k] * f * (T(1) - f);
    g[2 * H + k] = dc * i * (T(1) - gg * gg);
    r.dc[k] = dc * f;
    for (int q = 0; q < 4; ++q) {
      const int j = q * H + k, s = q * w + k - k0;
      r.sum_d[s] += g[j];
      if (r.rh) r.sum_dxh_h[s] += g[j] * ((r.rh[q * r.ld + k - k0] - r.mean_h[j]) * r.rstd_h[j]);
      if (r.x) r.sum_dxh_x[s] += g[j] * ((r.x[j] - r.mean_x[j]) * r.rstd_x[j]);
    }
  }
}

#ifdef RBN_FLOAT_LANES
inline void lstm_row_backward(const LstmRowBackward<float>& r, int H, int k0, int k1) {
  using L = FloatLanes;
  const int w = k1 - k0;
  const L::V one = L::set1(1.0f);
  for_lanes<L>(k0, k1, [&]<bool tail>(int k, L::M m) {
    float* g = r.gates;
    L::V d[4], dco;  // dpre of i, f, g, o; dL/dc_t through h_t
    if (r.c) {
      const L::V tc = L::tanh(L::load<tail>(r.c + k, m)), o = L::load<tail>(g + 3 * H + k, m);
      const L::V dh = L::load<tail>(r.dh + k, m);
      dco = L::mul(L::mul(dh, o), L::sub(one, L::mul(tc, tc)));
      d[3] = L::mul(L::mul(L::mul(dh, tc), o), L::sub(one, o));
    } else {
      dco = L::load<tail>(r.dc_out + k, m);
      d[3] = L::load<tail>(g + 3 * H + k, m);
    }
    const L::V dc = L::add(L::load<tail>(r.dc + k, m), dco);
    const L::V i = L::load<tail>(g + k, m), f = L::load<tail>(g + H + k, m),
               gg = L::load<tail>(g + 2 * H + k, m);
    d[0] = L::mul(L::mul(L::mul(dc, gg), i), L::sub(one, i));
    d[1] = L::mul(L::mul(L::mul(dc, L::load<tail>(r.c_prev + k, m)), f), L::sub(one, f));
    d[2] = L::mul(L::mul(dc, i), L::sub(one, L::mul(gg, gg)));
    L::store<tail>(r.dc + k, L::mul(dc, f), m);
    for (int q = 0; q < 4; ++q) {
      const int j = q * H + k, s = q * w + k - k0;
      L::store<tail>(g + j, d[q], m);
      L::store<tail>(r.sum_d + s, L::add(L::load<tail>(r.sum_d + s, m), d[q]), m);
      if (r.rh) {
        const L::V z = L::load<tail>(r.rh + q * r.ld + k - k0, m);
        const L::V xh =
            L::mul(L::sub(z, L::load<tail>(r.mean_h + j, m)), L::load<tail>(r.rstd_h + j, m));
        L::store<tail>(r.sum_dxh_h + s, L::fmadd(d[q], xh, L::load<tail>(r.sum_dxh_h + s, m)), m);
      }
      if (r.x) {
        const L::V z = L::load<tail>(r.x + j, m);
        const L::V xh =
            L::mul(L::sub(z, L::load<tail>(r.mean_x + j, m)), L::load<tail>(r.rstd_x + j, m));
        L::store<tail>(r.sum_dxh_x + s, L::fmadd(d[q], xh, L::load<tail>(r.sum_dxh_x + s, m)), m);
      }
    }
  });
}
#endif

// tanh RNN backward: h = tanh(pre) kept in g; g becomes dpre = dh (1 - h^2).
template <class T>
inline void tanh_rnn_backward(const T* dh, int k0, int k1, T* g) {
#pragma omp simd
  for (int j = k0; j < k1; ++j) g[j] = dh[j] * (T(1) - g[j] * g[j]);
}

// GRU forward of one row's w units (pointers at the first unit): g holds the input terms x~ of
// r, z, n (normalized, + b_ih) at g, g + H, g + 2H and becomes r, z, n; ht holds the recurrent
// terms h~ (normalized, + b_hh) at ht, ht + hs, ht + 2*hs. r, z = sigmoid(x~ + h~),
// n = tanh(x~_n + r * h~_n), h = (1 - z) n + z h_prev, formed as n + z (h_prev - n) (nn.GRU's).
template <class T>
inline void gru_gates_forward(T* g, int H, const T* ht, int hs, int w, const T* h_prev, T* h) {
  T* r = g;
  T* z = g + H;
  T* n = g + 2 * H;
#pragma omp simd
  for (int j = 0; j < w; ++j) {
    r[j] += ht[j];
    z[j] += ht[hs + j];
  }
  sigmoid_inplace(r, w);
  sigmoid_inplace(z, w);
#pragma omp simd
  for (int j = 0; j < w; ++j) n[j] += r[j] * ht[2 * hs + j];
  tanh_inplace(n, w);
#pragma omp simd
  for (int j = 0; j < w; ++j) h[j] = n[j] + z[j] * (h_prev[j] - n[j]);
}

// The GRU step of one row's w units in one pass from the step's folded coefficients (BN_t or
// no normalization of the terms; pointers at the row's first unit): the input terms
// x~_q = kx_q * x_q + sx_q and the recurrent terms h~_q = kh_q * rh_q + sh_q of r, z, n
// (block q at q*H, R h's at q*ld), then gru_gates_forward's r, z, n (into gates) and h.
template <class T>
struct GruRowForward {
  const T* x = nullptr;   // [3H] W x
  const T* rh = nullptr;  // [3][ld] R h
  int ld = 0;
  const T *kx = nullptr, *sx = nullptr, *kh = nullptr, *sh = nullptr;  // [3H]
  const T* h_prev = nullptr;                                           // [w]
  T* gates = nullptr;                                                  // [3H] r, z, n
  T* h = nullptr;                                                      // [w]
};

template <class T>
inline void gru_row_forward(const GruRowForward<T>& r, int H, int w) {
  for (int k = 0; k < w; ++k) {
    T xt[3], ht[3];
    for (int q = 0; q < 3; ++q) {
      const int j = q * H + k;
      xt[q] = r.kx[j] * r.x[j] + r.sx[j];
      ht[q] = r.kh[j] * r.rh[q * r.ld + k] + r.sh[j];
    }
    const T rg = sigmoid_value(xt[0] + ht[0]), z = sigmoid_value(xt[1] + ht[1]),
            n = std::tanh(xt[2] + rg * ht[2]);
    r.gates[k] = rg, r.gates[H + k] = z, r.gates[2 * H + k] = n;
    r.h[k] = n + z * (r.h_prev[k] - n);
  }
}

#ifdef RBN_FLOAT_LANES
inline void gru_row_forward(const GruRowForward<float>& r, int H, int w) {
  using L = FloatLanes;
  for_lanes<L>(0, w, [&]<bool tail>(int k, L::M m) {
    L::V xt[3], ht[3];
    for (int q = 0; q < 3; ++q) {
      const int j = q * H + k;
      const L::V x = L::load<tail>(r.x + j, m);
      xt[q] = L::fmadd(L::load<tail>(r.kx + j, m), x, L::load<tail>(r.sx + j, m));
      ht[q] = L::fmadd(L::load<tail>(r.kh + j, m), L::load<tail>(r.rh + q * r.ld + k, m),
                       L::load<tail>(r.sh + j, m));
    }
    const L::V rg = sigmoid_lanes<L>(L::add(xt[0], ht[0]));
    const L::V z = sigmoid_lanes<L>(L::add(xt[1], ht[1]));
    const L::V n = L::tanh(L::fmadd(rg, ht[2], xt[2]));
    L::store<tail>(r.gates + k, rg, m);
    L::store<tail>(r.gates + H + k, z, m);
    L::store<tail>(r.gates + 2 * H + k, n, m);
    L::store<tail>(r.h + k, L::fmadd(z, L::sub(L::load<tail>(r.h_prev + k, m), n), n), m);
  });
}
#endif

// What the GRU backward of one row reads ([w] each, at the first unit): dL/dh_t, h_{t-1}, and
// h~_n, the n block's recurrent term (normalized, + b_hn) that the reset gate multiplied.
template <class T>
struct GruRowIn {
  const T* dh;
  const T* h_prev;
  const T* hn_term;
};

// GRU backward of one row's w units: g (r, z, n at g, g + H, g + 2H) becomes the gradients of the
// input terms (dr_pre, dz_pre, dn_pre); d_rec (same layout) gets the recurrent terms' (dr_pre,
// dz_pre, dn_pre * r: the reset gate sits between h~_n and n); dh_prev = dh * z, the direct path
// to h_{t-1} (the path through R h follows from d_rec). d_rec may be the storage of hn_term's
// source when hn_term was copied out first.
template <class T>
inline void gru_gates_backward(GruRowIn<T> in, int H, int w, T* g, T* d_rec, T* dh_prev) {
#pragma omp simd
  for (int j = 0; j < w; ++j) {
    const T r = g[j], z = g[H + j], n = g[2 * H + j], d = in.dh[j];
    const T dn_pre = d * (T(1) - z) * (T(1) - n * n);
    const T dz_pre = d * (in.h_prev[j] - n) * z * (T(1) - z);
    const T dr_pre = dn_pre * in.hn_term[j] * r * (T(1) - r);
    g[j] = dr_pre;
    g[H + j] = dz_pre;
    g[2 * H + j] = dn_pre;
    d_rec[j] = dr_pre;
    d_rec[H + j] = dz_pre;
    d_rec[2 * H + j] = dn_pre * r;
    dh_prev[j] = d * z;
  }
}

// ---- serial column kernels over a column block ----------------------------------------------
// Used inside the time loop's parallel region, where each thread owns a block of hidden units.

// A block of w columns of a row-major matrix with row stride ld: rows [0, rows), only the rows
// with valid[r] != 0 enter a statistic.
template <class T>
struct ColBlock {
  T* p;
  int64_t rows;
  int ld;
  int w;
  const uint8_t* valid;
};

// Sums and sums of squares in double over the valid rows of a column block (the raw material of
// the batch statistics; data-parallel training adds them up over the ranks before dividing).
template <class T>
void col_sums_serial(ColBlock<const T> z, double* sum, double* sq) {
  // Blocks of 16 columns with the accumulators in registers: a loop over all w columns per row
  // would load and store each sum once per row.
  constexpr int B = 16;
  const int w = z.w;
  int j0 = 0;
  for (; j0 + B <= w; j0 += B) {
    double s[B] = {}, q[B] = {};
    for (int64_t r = 0; r < z.rows; ++r) {
      if (!z.valid[r]) continue;
      const T* zr = z.p + r * z.ld + j0;
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
  for (int64_t r = 0; r < z.rows; ++r) {
    if (!z.valid[r]) continue;
    const T* zr = z.p + r * z.ld;
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

inline int64_t count_valid(const uint8_t* valid, int64_t rows) {
  int64_t count = 0;
  for (int64_t r = 0; r < rows; ++r) count += valid[r] != 0;
  return count;
}

// Batch mean and biased variance of a column block's valid rows.
template <class T>
void col_stats_serial(ColBlock<const T> z, double* mean, double* var) {
  col_sums_serial(z, mean, var);
  stats_from_sums(z.w, count_valid(z.valid, z.rows), mean, var);
}

// out = (z - mean) * rstd per column (out [rows, w] with stride ldo); invalid rows 0.
template <class T>
void col_normalize_serial(ColBlock<const T> z, const T* mean, const T* rstd, T* out, int ldo) {
  for (int64_t r = 0; r < z.rows; ++r) {
    T* o = out + r * ldo;
    if (!z.valid[r]) {
      std::fill(o, o + z.w, T(0));
      continue;
    }
    const T* zr = z.p + r * z.ld;
#pragma omp simd
    for (int j = 0; j < z.w; ++j) o[j] = (zr[j] - mean[j]) * rstd[j];
  }
}

// The x-hat a backward kernel reads: xh itself (mean == nullptr), or (xh - mean) * rstd from raw
// values, per column.
template <class T>
struct XhatSource {
  const T* xh;  // same row stride as the gradient block
  const T* mean = nullptr;
  const T* rstd = nullptr;
};

// s1 = sum dy, s2 = sum dy * x-hat over the valid rows. Accumulated in T over blocks of up to 128
// rows (16 float lanes), the blocks added in double: a batch's rows cost little, and all T*N rows
// of bnx-seq keep double's precision across blocks.
template <class T>
void col_grad_sums_serial(ColBlock<const T> dy, XhatSource<T> x, double* s1, double* s2) {
  constexpr int B = 64;
  constexpr int64_t RB = 128;
  const int w = dy.w;
  for (int j = 0; j < w; ++j) s1[j] = s2[j] = 0.0;
  for (int j0 = 0; j0 < w; j0 += B) {
    const int wb = std::min(B, w - j0);
    for (int64_t r0 = 0; r0 < dy.rows; r0 += RB) {
      T u1[B] = {}, u2[B] = {};
      for (int64_t r = r0; r < std::min(dy.rows, r0 + RB); ++r) {
        if (!dy.valid[r]) continue;
        const T* d = dy.p + r * dy.ld + j0;
        const T* xr = x.xh + r * dy.ld + j0;
        if (x.mean) {
          const T* mu = x.mean + j0;
          const T* rs = x.rstd + j0;
#pragma omp simd
          for (int j = 0; j < wb; ++j) {
            u1[j] += d[j];
            u2[j] += d[j] * ((xr[j] - mu[j]) * rs[j]);
          }
        } else {
#pragma omp simd
          for (int j = 0; j < wb; ++j) {
            u1[j] += d[j];
            u2[j] += d[j] * xr[j];
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

// What the BN backward of a column block needs besides dy and x-hat: the gain and rstd per column,
// the column sums s1 = sum dy and s2 = sum dy*x-hat (over the batch's `count` rows, all ranks'
// when synchronized) and whether the forward used batch statistics.
template <class T>
struct BnBackwardArgs {
  const T* gamma;
  const T* rstd;
  const double* s1;
  const double* s2;
  int64_t count;
  bool batch;
};

// dz = gamma*rstd*(dy - s1/M - xh*s2/M) (batch statistics) or gamma*rstd*dy; dz (stride dy.ld)
// may alias dy or x.xh. Per column the coefficients are formed once (a block of columns at a
// time), so the row loop is a few multiply-adds in T.
template <class T>
void col_norm_backward_serial(ColBlock<const T> dy, XhatSource<T> x, const BnBackwardArgs<T>& bn,
                              T* dz) {
  constexpr int B = 64;
  T a[B], m1[B], m2[B];  // dz = a*dy - m1 - xh*m2
  const BnGradScale scale = bn_grad_scale(bn.batch, bn.count);
  for (int j0 = 0; j0 < dy.w; j0 += B) {
    const int wb = std::min(B, dy.w - j0);
    for (int j = 0; j < wb; ++j) {
      const BnGradCoef<T> k =
          bn_grad_coef(bn.gamma[j0 + j], bn.rstd[j0 + j], bn.s1[j0 + j], bn.s2[j0 + j], scale);
      a[j] = k.a;
      m1[j] = k.m1;
      m2[j] = k.m2;
    }
    for (int64_t r = 0; r < dy.rows; ++r) {
      T* o = dz + r * dy.ld + j0;
      if (!dy.valid[r]) {
        std::fill(o, o + wb, T(0));
        continue;
      }
      const T* d = dy.p + r * dy.ld + j0;
      const T* xr = x.xh + r * dy.ld + j0;
      if (x.mean) {
        const T* mu = x.mean + j0;
        const T* rs = x.rstd + j0;
#pragma omp simd
        for (int j = 0; j < wb; ++j) o[j] = a[j] * d[j] - m1[j] - ((xr[j] - mu[j]) * rs[j]) * m2[j];
      } else {
#pragma omp simd
        for (int j = 0; j < wb; ++j) o[j] = a[j] * d[j] - m1[j] - xr[j] * m2[j];
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

// z [rows, F] with valid [rows]; the statistics [F].
template <class T>
void column_stats(const T* z, int64_t rows, int F, const uint8_t* valid, double* mean, double* var) {
  for_column_blocks(rows, F, [&](int j0, int w) {
    col_stats_serial<T>({z + j0, rows, F, w, valid}, mean + j0, var + j0);
  });
}

template <class T>
void column_sums(const T* z, int64_t rows, int F, const uint8_t* valid, double* sum, double* sq) {
  for_column_blocks(rows, F, [&](int j0, int w) {
    col_sums_serial<T>({z + j0, rows, F, w, valid}, sum + j0, sq + j0);
  });
}

// xh = (z - mean) * rstd, [rows, F]; may alias z.
template <class T>
void column_normalize(const T* z, int64_t rows, int F, const uint8_t* valid, const T* mean,
                      const T* rstd, T* xh) {
  for_column_blocks(rows, F, [&](int j0, int w) {
    col_normalize_serial<T>({z + j0, rows, F, w, valid}, mean + j0, rstd + j0, xh + j0, F);
  });
}

// s1, s2 [F] from dy and x-hat [rows, F].
template <class T>
void column_grad_sums(const T* dy, const T* xh, int64_t rows, int F, const uint8_t* valid,
                      double* s1, double* s2) {
  for_column_blocks(rows, F, [&](int j0, int w) {
    col_grad_sums_serial<T>({dy + j0, rows, F, w, valid}, {xh + j0}, s1 + j0, s2 + j0);
  });
}

// dz [rows, F] from dy and x-hat [rows, F]; bn's arrays are [F].
template <class T>
void column_norm_backward(const T* dy, const T* xh, int64_t rows, int F, const uint8_t* valid,
                          const BnBackwardArgs<T>& bn, T* dz) {
  for_column_blocks(rows, F, [&](int j0, int w) {
    const BnBackwardArgs<T> b{bn.gamma + j0, bn.rstd + j0, bn.s1 + j0, bn.s2 + j0, bn.count,
                              bn.batch};
    col_norm_backward_serial<T>({dy + j0, rows, F, w, valid}, {xh + j0}, b, dz + j0);
  });
}

}  // namespace rbn::kern
