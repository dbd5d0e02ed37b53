// The normalizations as units: per-step batch normalization of a column block (statistics from the
// batch, from the group's sums, or from the population table), and layer normalization over the
// rows of a step (partial sums per thread, row statistics, backward). Sequence BN (bnx-seq) uses
// the whole-table column kernels of kernels.hpp through Engine::table_stats in forward_step.cpp.
//
// Population rows: a statistic of global step t lives in row t of its table; inference past the
// table's last row reads the last row (SPEC section 3a).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cells/engine.hpp"
#include "cells/kernels.hpp"

namespace rbn::cells {

// ---- batch normalization of a column block ---------------------------------------------------

// mean and rstd in T from a batch mean and biased variance in double (w values each).
template <class T>
inline void bn_mean_rstd(const double* mean, const double* var, int w, double eps, T* mean_out,
                         T* rstd_out) {
  for (int j = 0; j < w; ++j) {
    mean_out[j] = static_cast<T>(mean[j]);
    rstd_out[j] = static_cast<T>(kern::inv_std(var[j], eps));
  }
}

// mean and rstd in T of a slot from the population table in `buffers`.
template <class T>
inline void bn_population_stats(const T* buffers, const StatSlot& s, double eps, T* mean_out,
                                T* rstd_out) {
  const int64_t row = std::min<int64_t>(s.row, s.table->rows - 1);
  const size_t off = static_cast<size_t>(row) * s.table->F + s.j0;
  const T* pm = buffers + s.table->mean + off;
  const T* pv = buffers + s.table->var + off;
  for (int j = 0; j < s.w; ++j) {
    mean_out[j] = pm[j];
    rstd_out[j] = static_cast<T>(kern::inv_std(static_cast<double>(pv[j]), eps));
  }
}

// ---- layer normalization over the rows of a step ----------------------------------------------

// Each thread's partial row sums of an LN: [P][N][2] (forward: sum z, sum z^2; backward: sum
// dy*gamma, sum dy*gamma*x-hat). After a barrier every thread adds up all threads' parts.
struct RowPartials {
  double* data;
  int N;
  double* at(int p, int n) const { return data + (static_cast<size_t>(p) * N + n) * 2; }
  // sums over the P threads' parts of row n, in thread order
  void total(int P, int n, double& first, double& second) const {
    first = second = 0;
    for (int pp = 0; pp < P; ++pp) {
      first += at(pp, n)[0];
      second += at(pp, n)[1];
    }
  }
};

// The columns of a row one thread owns: `blocks` blocks of width w at offsets q*stride + k0.
struct OwnedColumns {
  int k0, w, blocks, stride;
};

// This thread's partial sums (sum z, sum z^2 over its columns) of each valid row of z [N, ld];
// padded rows get 0.
template <class T>
void ln_partial(const T* z, int ld, OwnedColumns cols, const uint8_t* valid, RowPartials part,
                int p) {
  for (int n = 0; n < part.N; ++n) {
    double s = 0, q2 = 0;
    if (valid[n]) {
      const T* zr = z + static_cast<int64_t>(n) * ld;
      for (int q = 0; q < cols.blocks; ++q) {
        const T* zq = zr + q * cols.stride + cols.k0;
#pragma omp simd reduction(+ : s, q2)
        for (int j = 0; j < cols.w; ++j) {
          s += zq[j];
          q2 += static_cast<double>(zq[j]) * zq[j];
        }
      }
    }
    part.at(p, n)[0] = s;
    part.at(p, n)[1] = q2;
  }
}

// Each row's mean and rstd over all F features from every thread's partial sums (after the
// barrier that follows ln_partial); padded rows get mean 0, rstd 1. mean, rstd [N].
template <class T>
void ln_row_stats(int F, const uint8_t* valid, RowPartials part, int P, double eps, T* mean,
                  T* rstd) {
  for (int n = 0; n < part.N; ++n) {
    if (!valid[n]) {
      mean[n] = 0;
      rstd[n] = 1;
      continue;
    }
    double s, q2;
    part.total(P, n, s, q2);
    const double m = s / F, var = std::max(0.0, q2 / F - m * m);
    mean[n] = static_cast<T>(m);
    rstd[n] = static_cast<T>(kern::inv_std(var, eps));
  }
}

// Each row's means over all F features of dy*gamma and dy*gamma*x-hat (the LN backward's two
// row terms) from every thread's partial sums, after the barrier that follows them: a, b [N]
// (padded rows: 0). One tight pass, so that the other threads' lines are fetched together and not
// one by one between the rows' elementwise work.
template <class T>
void ln_grad_row_means(RowPartials part, int P, double F, const uint8_t* valid, T* a, T* b) {
  for (int n = 0; n < part.N; ++n) {
    double s1 = 0, s2 = 0;
    if (valid[n]) part.total(P, n, s1, s2);
    a[n] = static_cast<T>(s1 / F);
    b[n] = static_cast<T>(s2 / F);
  }
}

// One LN-normalized term of a step, as its backward reads it: its gradient, the raw values, the
// gain, each row's statistics and the row means of ln_grad_row_means.
template <class T>
struct LnTerm {
  const T* dy;           // d(normalized term) [N, ld]
  const T* z;            // raw values [N, ld]; with `blocked`, in Hh's thread-blocked layout
  bool blocked;          // gate q of the owned units at blocks*k0 + q*w (LayerCache::hh_blocked)
  const T* gamma;        // [F] in gate order
  const T* mean;         // [N]
  const T* rstd;         // [N]
  const T* a;            // [N] row means of dy*gamma
  const T* b;            // [N] row means of dy*gamma*x-hat
};

// The rows of a step as the LN backward walks them: count, stride, owned columns, validity.
struct LnRows {
  int N, ld;
  OwnedColumns cols;
  const uint8_t* valid;
};

// LN backward over the rows for the owned columns: dz = rstd*(dy*g - a - x-hat * b). One pass
// serves the recurrent term h and, when x is given, the input term (the LSTM's two terms share
// dpre; a GRU's have their own). dzh, dzx [N, ld] in gate order; each may alias its own term's dy
// or z, and dzh may alias x's dy (each element is read before it is written).
template <class T>
void ln_backward(const LnRows& rows, const LnTerm<T>& h, T* dzh, const LnTerm<T>* x, T* dzx) {
  const OwnedColumns c = rows.cols;
  for (int n = 0; n < rows.N; ++n) {
    const int64_t ro = static_cast<int64_t>(n) * rows.ld;
    if (!rows.valid[n]) {
      for (int q = 0; q < c.blocks; ++q) {
        std::fill_n(dzh + ro + q * c.stride + c.k0, c.w, T(0));
        if (x) std::fill_n(dzx + ro + q * c.stride + c.k0, c.w, T(0));
      }
      continue;
    }
    const T ah = h.a[n], bh = h.b[n], hm = h.mean[n], hr = h.rstd[n];
    const T ax = x ? x->a[n] : T(0), bx = x ? x->b[n] : T(0);
    const T xm = x ? x->mean[n] : T(0), xr = x ? x->rstd[n] : T(1);
    for (int q = 0; q < c.blocks; ++q) {
      const int64_t o = ro + q * c.stride + c.k0;
      const T* dh = h.dy + o;
      const T* zh = h.z + ro + (h.blocked ? c.blocks * c.k0 + q * c.w : q * c.stride + c.k0);
      const T* ghq = h.gamma + q * c.stride + c.k0;
      T* oh = dzh + o;
      if (x) {
        const T* dx = x->dy + o;
        const T* zx = x->z + o;
        const T* gxq = x->gamma + q * c.stride + c.k0;
        T* ox = dzx + o;
#pragma omp simd
        for (int j = 0; j < c.w; ++j) {
          const T vx = kern::ln_grad(dx[j], gxq[j], zx[j], xm, xr, ax, bx);
          const T vh = kern::ln_grad(dh[j], ghq[j], zh[j], hm, hr, ah, bh);
          ox[j] = vx;
          oh[j] = vh;
        }
      } else {
#pragma omp simd
        for (int j = 0; j < c.w; ++j) oh[j] = kern::ln_grad(dh[j], ghq[j], zh[j], hm, hr, ah, bh);
      }
    }
  }
}

// ---- the units with an engine's statistics tables and group ----------------------------------

// Record a batch statistic (mean/var of the slot's w columns over `cnt` valid rows) into the
// running average or the statistics pass. Rows outside the table (and empty batches) are not
// recorded.
template <class T>
void Engine<T>::record_stats(const StatSlot& s, const double* mean, const double* var,
                             int64_t cnt, bool update_running) {
  if (cnt == 0 || s.row < 0 || s.row >= s.table->rows) return;
  const size_t off = static_cast<size_t>(s.row) * s.table->F + s.j0;
  const size_t mo = s.table->mean, vo = s.table->var;
  if (pass.active) {
    for (int j = 0; j < s.w; ++j) {
      pass.sum[mo + off + j] += cnt * mean[j];
      pass.sum[vo + off + j] += cnt * var[j];
      pass.count[mo + off + j] += static_cast<double>(cnt);
      pass.count[vo + off + j] += static_cast<double>(cnt);
    }
  } else if (update_running) {
    const T m = static_cast<T>(cfg.momentum);
    T* pm = buffers.data() + mo + off;
    T* pv = buffers.data() + vo + off;
    for (int j = 0; j < s.w; ++j) {
      pm[j] = (T(1) - m) * pm[j] + m * static_cast<T>(mean[j]);
      pv[j] = (T(1) - m) * pv[j] + m * static_cast<T>(var[j]);
    }
  }
}

// BN statistics of a slot from its batch mean and biased variance over cnt rows; recorded.
template <class T>
void Engine<T>::bn_stats_given(const StatSlot& s, const double* mean, const double* var,
                               int64_t cnt, bool update_running, T* mean_out, T* rstd_out) {
  bn_mean_rstd(mean, var, s.w, cfg.eps, mean_out, rstd_out);
  record_stats(s, mean, var, cnt, update_running);
}

// BN statistics of a column block z: the batch's (cnt valid rows; recorded) or the population's.
template <class T>
void Engine<T>::bn_stats_block(kern::ColBlock<const T> z, const StatSlot& s, int64_t cnt,
                               StatMode mode, BlockStatScratch& scratch, T* mean_out,
                               T* rstd_out) {
  if (!mode.batch) return bn_population_stats(buffers.data(), s, cfg.eps, mean_out, rstd_out);
  kern::col_stats_serial(z, scratch.mean.data(), scratch.var.data());
  bn_stats_given(s, scratch.mean.data(), scratch.var.data(), cnt, mode.update_running, mean_out,
                 rstd_out);
}

// The same from the block's sums over the group (sum, sq: w values each, over cnt rows).
template <class T>
void Engine<T>::bn_stats_from_sums(const double* sum, const double* sq, const StatSlot& s,
                                   int64_t cnt, bool update_running, BlockStatScratch& scratch,
                                   T* mean_out, T* rstd_out) {
  std::copy_n(sum, s.w, scratch.mean.data());
  std::copy_n(sq, s.w, scratch.var.data());
  kern::stats_from_sums(s.w, cnt, scratch.mean.data(), scratch.var.data());
  bn_stats_given(s, scratch.mean.data(), scratch.var.data(), cnt, update_running, mean_out,
                 rstd_out);
}

// Sequence BN: statistics of a whole table z [rows, F] (all steps' rows) outside the time loop,
// column blocks in parallel; synchronized: [sum F | sq F | count] summed over the group first.
template <class T>
void Engine<T>::bn_table_stats(const T* z, int64_t rows, const uint8_t* valid,
                               const StatTable& tab, StatMode mode, T* mean_out, T* rstd_out) {
  const int F = tab.F;
  const StatSlot slot{&tab, 0, 0, F};
  if (!mode.batch) return bn_population_stats(buffers.data(), slot, cfg.eps, mean_out, rstd_out);
  ensure_size(ws.stat_mean, F);
  ensure_size(ws.stat_var, F);
  int64_t cnt = 0;
  for (int64_t r = 0; r < rows; ++r) cnt += valid[r];
  if (sync.active) {
    std::vector<double> red(2 * static_cast<size_t>(F) + 1);
    kern::column_sums(z, rows, F, valid, red.data(), red.data() + F);
    red[2 * static_cast<size_t>(F)] = static_cast<double>(cnt);
    sync.allreduce(red.data(), red.size());
    cnt = static_cast<int64_t>(red[2 * static_cast<size_t>(F)]);
    std::copy_n(red.data(), F, ws.stat_mean.data());
    std::copy_n(red.data() + F, F, ws.stat_var.data());
    kern::stats_from_sums(F, cnt, ws.stat_mean.data(), ws.stat_var.data());
  } else {
    kern::column_stats(z, rows, F, valid, ws.stat_mean.data(), ws.stat_var.data());
  }
  bn_stats_given(slot, ws.stat_mean.data(), ws.stat_var.data(), cnt, mode.update_running,
                 mean_out, rstd_out);
}

// Inside the time loop's parallel region: buf[0..n) (each thread has written its own columns)
// becomes the sum over the group. Thread 0 talks to the group between two barriers.
template <class T>
void Engine<T>::group_sum(const UnitBlock& u, double* buf, size_t n) {
  if (u.P > 1) {
#pragma omp barrier
  }
  if (u.p == 0) sync.allreduce(buf, n);
  if (u.P > 1) {
#pragma omp barrier
  }
}

// BN of c folded for the owned units: gamma_c * c-hat + beta_c = scale * c + shift.
template <class T>
void Engine<T>::fold_cell_norm(const LayerTensors<const T*>& prm, const T* mean, const T* rstd,
                               const UnitBlock& u, T* scale, T* shift) const {
  for (int j = u.k0; j < u.k1; ++j) {
    T a = prm.gamma_c[j], sft = prm.beta_c[j];
    kern::fold_norm(a, sft, rstd[j], mean[j]);
    scale[j] = a;
    shift[j] = sft;
  }
}

// tanh(c~) for the units [k0, k1) of one row of raw c: c~ = gamma_c * c-hat + beta_c (BN through
// the folded coefficients, LN through the row's mean and rstd), or c without a normalization.
template <class T>
void Engine<T>::cell_output_tanh(const T* c, int k0, int k1, const CellNormRow<T>& norm, T mean,
                                 T rstd, T* out) const {
  if (spec.c == Norm::bn_step) {
#pragma omp simd
    for (int j = k0; j < k1; ++j) out[j] = norm.scale[j] * c[j] + norm.shift[j];
  } else if (spec.c == Norm::ln) {
#pragma omp simd
    for (int j = k0; j < k1; ++j) out[j] = norm.gamma[j] * ((c[j] - mean) * rstd) + norm.beta[j];
  } else {
    std::copy_n(c + k0, k1 - k0, out + k0);
  }
  kern::tanh_inplace(out + k0, k1 - k0);
}

}  // namespace rbn::cells
