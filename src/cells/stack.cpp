// The fused recurrent stack: forward and backward through time over a whole sequence.
//
// Shapes: x [T,N,C]; per layer: Ax [T,N,4H] (W x, then x-hat of its normalization), G [T,N,4H]
// (activated gates i,f,g,o; reused for dpre in backward), Hh [T,N,4H] (x-hat of W_h h; reused for
// dRh), Hs/Cs [T+1,N,H] (states, initial state at row 0; padded rows carry their state forward),
// Ch [T,N,H] (x-hat of c). One GEMM computes W x over all T*N rows before the time loop; per step
// only R h, its normalization and the pointwise gates run. Backward defers dR and dW to one GEMM
// each over all T*N rows.
//
// Accumulation contract: parameter gradients +=, activation gradients (dx, dh0, dc0) =.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cells/init.hpp"
#include "cells/kernels.hpp"
#include "rbn/rbn.hpp"
#include "util/blas.hpp"
#include "util/error.hpp"
#include "util/rng.hpp"

namespace rbn {

namespace {

constexpr size_t npos = static_cast<size_t>(-1);

enum class Norm { none, bn_step, bn_seq, ln };

struct Norms {
  Norm x, h, c;
};

Norms norms_of(const StackConfig& cfg) {
  switch (cfg.cell) {
    case Cell::lstm: return {Norm::none, Norm::none, Norm::none};
    case Cell::bnlstm: return {Norm::bn_step, Norm::bn_step, Norm::bn_step};
    case Cell::bnx: return {Norm::bn_step, Norm::none, Norm::none};
    case Cell::bnx_seq: return {Norm::bn_seq, Norm::none, Norm::none};
    case Cell::lnlstm: return {cfg.ln_input ? Norm::ln : Norm::none, Norm::ln, Norm::ln};
    case Cell::rnn: return {Norm::none, Norm::none, Norm::none};
    case Cell::bnrnn: return {Norm::bn_step, Norm::bn_step, Norm::none};
  }
  return {Norm::none, Norm::none, Norm::none};
}

bool is_bn(Norm n) { return n == Norm::bn_step || n == Norm::bn_seq; }

// Offsets of one layer's tensors inside the flat parameter and buffer arrays.
struct LayerLayout {
  int C = 0;  // input features of this layer
  size_t W = npos, R = npos, b = npos, gx = npos, gh = npos, gc = npos, bc = npos, h0 = npos,
         c0 = npos;
  // population statistics (buffers): mean/var for the x, h and c normalizations
  size_t mx = npos, vx = npos, mh = npos, vh = npos, mc = npos, vc = npos;
  int rows_x = 0, rows_h = 0, rows_c = 0;  // rows of each population-statistics table
};

template <class T>
struct LayerCache {
  std::vector<T> X;   // [T,N,C] copy of the input (layer 0 only; others read the layer below)
  std::vector<T> Ax;  // [T,N,4H]
  std::vector<T> G;   // [T,N,4H]
  std::vector<T> Hh;  // [T,N,4H] (norm.h != none)
  std::vector<T> Hs;  // [T+1,N,H]
  std::vector<T> Cs;  // [T+1,N,H]
  std::vector<T> Ch;  // [T,N,H] (norm.c != none)
  // statistics: BN per step [T,F] (bn_seq [F]); LN per row [T,N]
  std::vector<T> mx, rx, mh, rh, mc, rc;
};

template <class T>
void ensure(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

}  // namespace

template <class T>
struct Stack<T>::Impl {
  StackConfig cfg;
  Norms norms;
  int ng = 4;  // gate blocks: 4 (i, f, g, o) for LSTMs, 1 for tanh RNNs
  std::vector<TensorInfo> pinfo, binfo;
  std::vector<T> params, grads, buffers;
  std::vector<LayerLayout> layers;

  // statistics pass accumulators, parallel to `buffers` (mean and var slots); counts per row
  bool pass_active = false;
  std::vector<double> pass_sum;    // sized like buffers
  std::vector<double> pass_count;  // sized like buffers (count for each element's row)

  // the last forward's cache
  std::vector<LayerCache<T>> caches;
  int T_ = 0, N_ = 0;
  bool have_cache = false;
  bool cache_batch_stats = false;  // the cached forward used batch statistics
  std::vector<int32_t> len;
  std::vector<uint8_t> valid;  // [T,N]
  std::vector<int64_t> count;  // [T] valid rows per step
  bool h0_given = false, c0_given = false;

  // Synchronized batch statistics (data-parallel training): see Stack::set_stat_allreduce.
  std::function<void(double*, size_t)> allreduce;
  bool synced = false;           // the last forward summed its batch statistics over the group
  std::vector<int64_t> gcount;   // [T] valid rows per step over the group (when synced)
  std::vector<double> red_xh;    // per-step group sums: [W x: sum, sq | R h: sum, sq], each G
  std::vector<double> red_c;     // per-step group sums of c: [sum, sq], each H
  // Rows behind step t's batch statistics.
  int64_t stat_count(int t) const { return synced ? gcount[t] : count[t]; }

  // Inside the time loop's parallel region: buf[0..n) (each thread has written its own columns)
  // becomes the sum over the group. Thread 0 talks to the group between two barriers.
  void group_sum(int p, int P, double* buf, size_t n) {
    if (P > 1) {
#pragma omp barrier
    }
    if (p == 0) allreduce(buf, n);
    if (P > 1) {
#pragma omp barrier
    }
  }

  // workspaces
  std::vector<T> dY, dh_rec, dc_rec, dh_new, dcn;
  std::vector<double> s1, s2, dstat_mean, dstat_var, xsum1, xsum2;

  size_t add_param(const std::string& name, std::vector<int64_t> shape) {
    return add(pinfo, name, std::move(shape));
  }
  size_t add_buffer(const std::string& name, std::vector<int64_t> shape) {
    return add(binfo, name, std::move(shape));
  }
  static size_t add(std::vector<TensorInfo>& infos, const std::string& name,
                    std::vector<int64_t> shape) {
    size_t numel = 1;
    for (auto s : shape) numel *= static_cast<size_t>(s);
    const size_t off = infos.empty() ? 0 : infos.back().offset + infos.back().numel;
    infos.push_back({name, std::move(shape), off, numel});
    return off;
  }

  explicit Impl(const StackConfig& c) : cfg(c) {
    cfg.validate();
    norms = norms_of(cfg);
    ng = cell_gates(cfg.cell);
    const int64_t H = cfg.hidden_size, G = ng * H;
    for (int k = 0; k < cfg.num_layers; ++k) {
      LayerLayout L;
      L.C = k == 0 ? cfg.input_size : cfg.hidden_size;
      const std::string p = "rnn." + std::to_string(k) + ".";
      L.W = add_param(p + "weight_ih", {G, L.C});
      L.R = add_param(p + "weight_hh", {G, H});
      L.b = add_param(p + "bias", {G});
      const bool bn = cfg.cell != Cell::lnlstm;
      const std::string nx = bn ? "bn_x" : "ln_x", nh = bn ? "bn_h" : "ln_h",
                        nc = bn ? "bn_c" : "ln_c";
      if (norms.x != Norm::none) L.gx = add_param(p + nx + ".weight", {G});
      if (norms.h != Norm::none) L.gh = add_param(p + nh + ".weight", {G});
      if (norms.c != Norm::none) {
        L.gc = add_param(p + nc + ".weight", {H});
        L.bc = add_param(p + nc + ".bias", {H});
      }
      if (cfg.learn_init_state) {
        L.h0 = add_param(p + "h0", {H});
        L.c0 = add_param(p + "c0", {H});
      }
      const int64_t rows = cfg.t_max;
      if (is_bn(norms.x)) {
        L.rows_x = norms.x == Norm::bn_seq ? 1 : cfg.t_max;
        std::vector<int64_t> shape =
            norms.x == Norm::bn_seq ? std::vector<int64_t>{G} : std::vector<int64_t>{rows, G};
        L.mx = add_buffer(p + "bn_x.running_mean", shape);
        L.vx = add_buffer(p + "bn_x.running_var", shape);
      }
      if (is_bn(norms.h)) {
        L.rows_h = cfg.t_max;
        L.mh = add_buffer(p + "bn_h.running_mean", {rows, G});
        L.vh = add_buffer(p + "bn_h.running_var", {rows, G});
      }
      if (is_bn(norms.c)) {
        L.rows_c = cfg.t_max;
        L.mc = add_buffer(p + "bn_c.running_mean", {rows, H});
        L.vc = add_buffer(p + "bn_c.running_var", {rows, H});
      }
      layers.push_back(L);
    }
    auto total = [](const std::vector<TensorInfo>& v) {
      return v.empty() ? size_t{0} : v.back().offset + v.back().numel;
    };
    params.assign(total(pinfo), T(0));
    grads.assign(total(pinfo), T(0));
    buffers.assign(total(binfo), T(0));
    caches.resize(cfg.num_layers);
    reset_parameters();
  }

  void reset_parameters() {
    Rng rng(cfg.seed);
    const int H = cfg.hidden_size;
    std::vector<double> block;
    std::fill(params.begin(), params.end(), T(0));
    for (const auto& L : layers) {
      // W_x and W_h orthogonal per gate block; "identity" puts I on the g block of W_h
      // (the authors' MNIST runs).
      for (int gate = 0; gate < ng; ++gate) {
        block.resize(static_cast<size_t>(H) * L.C);
        orthogonal_init(block.data(), H, L.C, rng);
        T* dst = params.data() + L.W + static_cast<size_t>(gate) * H * L.C;
        for (size_t i = 0; i < block.size(); ++i) dst[i] = static_cast<T>(block[i]);
      }
      for (int gate = 0; gate < ng; ++gate) {
        block.resize(static_cast<size_t>(H) * H);
        orthogonal_init(block.data(), H, H, rng);
        T* dst = params.data() + L.R + static_cast<size_t>(gate) * H * H;
        // identity on the g block (LSTM) or on the whole R (tanh RNN, Le et al.'s iRNN)
        const bool identity = cfg.recurrent_init == RecurrentInit::identity && (gate == 2 || ng == 1);
        for (int r = 0; r < H; ++r)
          for (int c = 0; c < H; ++c)
            dst[static_cast<size_t>(r) * H + c] =
                identity ? T(r == c ? 1 : 0) : static_cast<T>(block[static_cast<size_t>(r) * H + c]);
      }
      if (ng == 4)
        for (int j = 0; j < H; ++j) params[L.b + H + j] = static_cast<T>(cfg.forget_bias);
      auto fill = [&](size_t off, size_t n, double v) {
        if (off != npos) std::fill_n(params.data() + off, n, static_cast<T>(v));
      };
      fill(L.gx, ng * H, cfg.gamma_x_or_default());
      fill(L.gh, ng * H, cfg.gamma_h_or_default());
      fill(L.gc, H, cfg.gamma_c_or_default());
    }
    reset_population_stats();
  }

  void reset_population_stats() {
    // running means start at 0, variances at 1 (SPEC section 3a)
    for (const auto& bi : binfo) {
      const bool var = bi.name.ends_with("running_var");
      std::fill_n(buffers.data() + bi.offset, bi.numel, T(var ? 1 : 0));
    }
  }

  // ---- statistics bookkeeping -------------------------------------------------------------

  // Record a batch statistic row (mean/var over `cnt` valid rows) into the running average or the
  // statistics pass, at population row `row` of the table at (mo, vo).
  void record(size_t mo, size_t vo, int rows, int64_t row, int F, const double* mean,
              const double* var, int64_t cnt, bool update_running) {
    record_cols(mo, vo, rows, row, F, 0, F, mean, var, cnt, update_running);
  }
  // The same for the columns [j0, j0 + w) of a table row (mean/var hold w values).
  void record_cols(size_t mo, size_t vo, int rows, int64_t row, int F, int j0, int w,
                   const double* mean, const double* var, int64_t cnt, bool update_running) {
    if (cnt == 0 || row < 0 || row >= rows) return;
    const size_t off = static_cast<size_t>(row) * F + j0;
    F = w;
    if (pass_active) {
      for (int j = 0; j < F; ++j) {
        pass_sum[mo + off + j] += cnt * mean[j];
        pass_sum[vo + off + j] += cnt * var[j];
        pass_count[mo + off + j] += static_cast<double>(cnt);
        pass_count[vo + off + j] += static_cast<double>(cnt);
      }
    } else if (update_running) {
      const T m = static_cast<T>(cfg.momentum);
      T* pm = buffers.data() + mo + off;
      T* pv = buffers.data() + vo + off;
      for (int j = 0; j < F; ++j) {
        pm[j] = (T(1) - m) * pm[j] + m * static_cast<T>(mean[j]);
        pv[j] = (T(1) - m) * pv[j] + m * static_cast<T>(var[j]);
      }
    }
  }

  // BN statistics of z [rows,F] over valid rows, into mean/rstd (T) and recorded; or, with
  // population statistics, the row min(tg, rows-1) of the table.
  void bn_stats(const T* z, int64_t nrows, int F, const uint8_t* vmask, bool batch, size_t mo,
                size_t vo, int table_rows, int64_t tg, bool update_running, T* mean, T* rstd) {
    const double eps = cfg.eps;
    if (batch) {
      ensure(dstat_mean, F);
      ensure(dstat_var, F);
      int64_t cnt = 0;
      for (int64_t r = 0; r < nrows; ++r) cnt += vmask[r];
      if (synced) {  // [sum F | sq F | count] summed over the group, then divided
        std::vector<double> red(2 * static_cast<size_t>(F) + 1);
        kern::column_sums(z, nrows, F, vmask, red.data(), red.data() + F);
        red[2 * static_cast<size_t>(F)] = static_cast<double>(cnt);
        allreduce(red.data(), red.size());
        cnt = static_cast<int64_t>(red[2 * static_cast<size_t>(F)]);
        std::copy_n(red.data(), F, dstat_mean.data());
        std::copy_n(red.data() + F, F, dstat_var.data());
        kern::stats_from_sums(F, cnt, dstat_mean.data(), dstat_var.data());
      } else {
        kern::column_stats(z, nrows, F, vmask, dstat_mean.data(), dstat_var.data());
      }
      for (int j = 0; j < F; ++j) {
        mean[j] = static_cast<T>(dstat_mean[j]);
        rstd[j] = static_cast<T>(1.0 / std::sqrt(dstat_var[j] + eps));
      }
      record(mo, vo, table_rows, tg, F, dstat_mean.data(), dstat_var.data(), cnt, update_running);
    } else {
      const int64_t row = std::min<int64_t>(tg, table_rows - 1);
      const T* pm = buffers.data() + mo + static_cast<size_t>(row) * F;
      const T* pv = buffers.data() + vo + static_cast<size_t>(row) * F;
      for (int j = 0; j < F; ++j) {
        mean[j] = pm[j];
        rstd[j] = static_cast<T>(1.0 / std::sqrt(static_cast<double>(pv[j]) + eps));
      }
    }
  }

  // ---- the time loop's thread layout --------------------------------------------------------

  std::vector<double> ln_part_h, ln_part_c, ln_part_x;
  // gradient probe: per step, thread and row, the partial sum of squares of dL/dh_t
  int probe_layer = -1;
  std::vector<double>* probe_out = nullptr;
  std::vector<double> probe_sq;  // per thread and row: partial sums for LN rows

  // Threads for the time loop: a block of at least 16 hidden units each.
  static int time_loop_threads(int H) {
    return std::max(1, std::min(omp_get_max_threads(), (H + 15) / 16));
  }
  // Hidden units [k0, k1) of thread p: blocks of 16 (vector width), spread evenly.
  static std::pair<int, int> unit_block(int p, int P, int H) {
    const int blocks = (H + 15) / 16;
    const int b0 = blocks * p / P, b1 = blocks * (p + 1) / P;
    return {std::min(H, b0 * 16), std::min(H, b1 * 16)};
  }

  // BN statistics of a column block [rows, w] (stride ld) at feature offset j0 of F: batch
  // statistics (recorded) or the population row min(tg, rows-1).
  void block_stats(const T* z, int rows, int ld, int w, const uint8_t* vm, int64_t cnt, bool batch,
                   size_t mo, size_t vo, int table_rows, int64_t tg, int F, int j0,
                   bool update_running, double* dm, double* dv, T* mean, T* rstd) {
    const double eps = cfg.eps;
    if (batch) {
      kern::col_stats_serial(z, rows, ld, w, vm, dm, dv);
      for (int j = 0; j < w; ++j) {
        mean[j] = static_cast<T>(dm[j]);
        rstd[j] = static_cast<T>(1.0 / std::sqrt(dv[j] + eps));
      }
      record_cols(mo, vo, table_rows, tg, F, j0, w, dm, dv, cnt, update_running);
    } else {
      const int64_t row = std::min<int64_t>(tg, table_rows - 1);
      const T* pm = buffers.data() + mo + static_cast<size_t>(row) * F + j0;
      const T* pv = buffers.data() + vo + static_cast<size_t>(row) * F + j0;
      for (int j = 0; j < w; ++j) {
        mean[j] = pm[j];
        rstd[j] = static_cast<T>(1.0 / std::sqrt(static_cast<double>(pv[j]) + eps));
      }
    }
  }

  // The same from this column block's sums over the group (sum, sq: w values each, over cnt rows).
  void block_stats_from_sums(const double* sum, const double* sq, int w, int64_t cnt, size_t mo,
                             size_t vo, int table_rows, int64_t tg, int F, int j0, bool update_running,
                             double* dm, double* dv, T* mean, T* rstd) {
    std::copy_n(sum, w, dm);
    std::copy_n(sq, w, dv);
    kern::stats_from_sums(w, cnt, dm, dv);
    for (int j = 0; j < w; ++j) {
      mean[j] = static_cast<T>(dm[j]);
      rstd[j] = static_cast<T>(1.0 / std::sqrt(dv[j] + cfg.eps));
    }
    record_cols(mo, vo, table_rows, tg, F, j0, w, dm, dv, cnt, update_running);
  }

  // Layer normalization of rows over F features, in place on z (stride ld), for the columns this
  // thread owns: nb blocks of width w at offsets q*stride + k0. ln_partial writes this thread's
  // partial sums; after a barrier ln_finish combines all threads' and normalizes (every thread then
  // knows each row's mean and rstd: rowm, rowr). Two normalizations can share one barrier.
  void ln_partial(const T* z, int ld, int k0, int w, int nb, int stride, const uint8_t* vm, int N,
                  int p, double* part) {
    for (int n = 0; n < N; ++n) {
      double s = 0, q2 = 0;
      if (vm[n]) {
        const T* zr = z + static_cast<int64_t>(n) * ld;
        for (int q = 0; q < nb; ++q) {
          const T* zq = zr + q * stride + k0;
#pragma omp simd reduction(+ : s, q2)
          for (int j = 0; j < w; ++j) {
            s += zq[j];
            q2 += static_cast<double>(zq[j]) * zq[j];
          }
        }
      }
      part[(static_cast<size_t>(p) * N + n) * 2] = s;
      part[(static_cast<size_t>(p) * N + n) * 2 + 1] = q2;
    }
  }
  void ln_finish(T* z, int ld, int F, int k0, int w, int nb, int stride, const uint8_t* vm, int N,
                 int P, const double* part, T* rowm, T* rowr) {
    for (int n = 0; n < N; ++n) {
      if (!vm[n]) {
        rowm[n] = 0;
        rowr[n] = 1;
        continue;
      }
      double s = 0, q2 = 0;
      for (int pp = 0; pp < P; ++pp) {
        s += part[(static_cast<size_t>(pp) * N + n) * 2];
        q2 += part[(static_cast<size_t>(pp) * N + n) * 2 + 1];
      }
      const double m = s / F, var = std::max(0.0, q2 / F - m * m);
      rowm[n] = static_cast<T>(m);
      rowr[n] = static_cast<T>(1.0 / std::sqrt(var + cfg.eps));
    }
    for (int n = 0; n < N; ++n) {
      T* zr = z + static_cast<int64_t>(n) * ld;
      for (int q = 0; q < nb; ++q) {
        T* o = zr + q * stride + k0;
        if (!vm[n]) {
          std::fill_n(o, w, T(0));
          continue;
        }
        const T m = rowm[n], r = rowr[n];
#pragma omp simd
        for (int j = 0; j < w; ++j) o[j] = (o[j] - m) * r;
      }
    }
  }
  void ln_rows(T* z, int ld, int F, int k0, int w, int nb, int stride, const uint8_t* vm, int N,
               int p, int P, double* part, T* rowm, T* rowr) {
    ln_partial(z, ld, k0, w, nb, stride, vm, N, p, part);
    if (P > 1) {
#pragma omp barrier
    }
    ln_finish(z, ld, F, k0, w, nb, stride, vm, N, P, part, rowm, rowr);
  }

  // LN backward over rows for the owned columns: dz = rstd*(dy*g - mean(dy*g) - xh*mean(dy*g*xh)),
  // the means over all F features (partial sums combined after a barrier, which two
  // normalizations can share). dz may alias dy or xh (each element is read before it is written).
  void ln_bwd_partial(const T* dy, const T* xh, int ld, int k0, int w, int nb, int stride,
                      const T* gamma, const uint8_t* vm, int N, int p, double* part) {
    for (int n = 0; n < N; ++n) {
      double s1 = 0, s2 = 0;
      if (vm[n]) {
        const T* d = dy + static_cast<int64_t>(n) * ld;
        const T* x = xh + static_cast<int64_t>(n) * ld;
        for (int q = 0; q < nb; ++q) {
          const int j0 = q * stride + k0;
#pragma omp simd reduction(+ : s1, s2)
          for (int j = j0; j < j0 + w; ++j) {
            const double gd = static_cast<double>(d[j]) * gamma[j];
            s1 += gd;
            s2 += gd * x[j];
          }
        }
      }
      part[(static_cast<size_t>(p) * N + n) * 2] = s1;
      part[(static_cast<size_t>(p) * N + n) * 2 + 1] = s2;
    }
  }
  void ln_bwd_finish(const T* dy, const T* xh, int ld, int F, int k0, int w, int nb, int stride,
                     const T* gamma, const uint8_t* vm, int N, int P, const double* part,
                     const T* rstd, T* dz) {
    for (int n = 0; n < N; ++n) {
      const T* d = dy + static_cast<int64_t>(n) * ld;
      const T* x = xh + static_cast<int64_t>(n) * ld;
      T* o = dz + static_cast<int64_t>(n) * ld;
      if (!vm[n]) {
        for (int q = 0; q < nb; ++q) std::fill_n(o + q * stride + k0, w, T(0));
        continue;
      }
      double s1 = 0, s2 = 0;
      for (int pp = 0; pp < P; ++pp) {
        s1 += part[(static_cast<size_t>(pp) * N + n) * 2];
        s2 += part[(static_cast<size_t>(pp) * N + n) * 2 + 1];
      }
      const T a = static_cast<T>(s1 / F), bb = static_cast<T>(s2 / F), r = rstd[n];
      for (int q = 0; q < nb; ++q) {
        const int j0 = q * stride + k0;
#pragma omp simd
        for (int j = j0; j < j0 + w; ++j) o[j] = r * (d[j] * gamma[j] - a - x[j] * bb);
      }
    }
  }
  void ln_rows_backward(T* dy, const T* xh, int ld, int F, int k0, int w, int nb, int stride,
                        const T* gamma, const uint8_t* vm, int N, int p, int P, double* part,
                        const T* rstd) {
    ln_bwd_partial(dy, xh, ld, k0, w, nb, stride, gamma, vm, N, p, part);
    if (P > 1) {
#pragma omp barrier
    }
    ln_bwd_finish(dy, xh, ld, F, k0, w, nb, stride, gamma, vm, N, P, part, rstd, dy);
  }

  // ---- forward ----------------------------------------------------------------------------

  // One layer over Tc steps. Inputs: X [Tc,N,C]; cache.Hs[0], cache.Cs[0] hold the initial state.
  // vmask [Tc,N]; tg0: global time of step 0 (population-statistics row).
  void layer_forward(int k, int Tc, int N, const T* X, const uint8_t* vmask, int64_t tg0,
                     bool batch, bool update_running) {
    const LayerLayout& L = layers[k];
    LayerCache<T>& cc = caches[k];
    const int H = cfg.hidden_size, G = ng * H, C = L.C;
    const int64_t NG = static_cast<int64_t>(N) * G, NH = static_cast<int64_t>(N) * H;
    const T* W = params.data() + L.W;
    const T* R = params.data() + L.R;
    const T* b = params.data() + L.b;
    const T* gx = L.gx != npos ? params.data() + L.gx : nullptr;
    const T* gh = L.gh != npos ? params.data() + L.gh : nullptr;
    const T* gc = L.gc != npos ? params.data() + L.gc : nullptr;
    const T* bc = L.bc != npos ? params.data() + L.bc : nullptr;

    // Input projection for all steps at once, then its normalization (outside the recurrence).
    blas::gemm(false, true, Tc * N, G, C, T(1), X, C, W, C, T(0), cc.Ax.data(), G);
    switch (norms.x) {
      case Norm::none: break;
      case Norm::bn_step: break;  // per step inside the time loop, while Ax[t] is in cache
      case Norm::bn_seq:
        bn_stats(cc.Ax.data(), static_cast<int64_t>(Tc) * N, G, vmask, batch, L.mx, L.vx, 1, 0,
                 update_running, cc.mx.data(), cc.rx.data());
        kern::column_normalize(cc.Ax.data(), static_cast<int64_t>(Tc) * N, G, vmask,
                               cc.mx.data(), cc.rx.data(), cc.Ax.data());
        break;
      case Norm::ln: break;  // per step inside the time loop, sharing LN(R h)'s barrier
    }

    // The time loop runs in one parallel region. Each thread owns a block of hidden units and the
    // four gate columns of each (i, f, g, o of unit k): its part of R h, the BN statistics of those
    // columns, the gates, c and h need no other thread, and one barrier per step publishes h_t.
    // LN's row statistics span all units: partial sums and one more barrier per normalization.
    const int P = time_loop_threads(H);
    ensure(ln_part_h, static_cast<size_t>(P) * N * 2);
    ensure(ln_part_c, static_cast<size_t>(P) * N * 2);
    ensure(ln_part_x, static_cast<size_t>(P) * N * 2);
    if (synced) {
      ensure(red_xh, 4 * static_cast<size_t>(G));
      ensure(red_c, 2 * static_cast<size_t>(H));
    }
#pragma omp parallel num_threads(P) if (P > 1)
    {
      const int p = P > 1 ? omp_get_thread_num() : 0;
      const std::pair<int, int> blk = unit_block(p, P, H);
      const int k0 = blk.first, k1 = blk.second;  // (no structured binding: clang 14 cannot capture one in omp simd)
      const int w = k1 - k0;
      std::vector<double> sm(static_cast<size_t>(ng) * w + 1), sv(static_cast<size_t>(ng) * w + 1);
      std::vector<T> rowm(N), rowr(N);
      for (int t = 0; t < Tc; ++t) {
        const uint8_t* vm = vmask + t * N;
        int64_t cnt = 0;
        for (int n = 0; n < N; ++n) cnt += vm[n];
        const int64_t tg = tg0 + t;
        const T* hprev = cc.Hs.data() + t * NH;
        const T* cprev = cc.Cs.data() + t * NH;
        T* hnext = cc.Hs.data() + (t + 1) * NH;
        T* cnext = cc.Cs.data() + (t + 1) * NH;
        T* Gt = cc.G.data() + t * NG;
        T* Hht = norms.h != Norm::none ? cc.Hh.data() + t * NG : nullptr;

        // Synchronized: the sums of W x and R h over the group in one exchange, after R h.
        const bool sync_xh = batch && synced && (norms.x == Norm::bn_step || norms.h == Norm::bn_step);
        if (norms.x == Norm::bn_step && !sync_xh) {
          T* m = cc.mx.data() + static_cast<size_t>(t) * G;
          T* r = cc.rx.data() + static_cast<size_t>(t) * G;
          T* ax = cc.Ax.data() + t * NG;
          for (int q = 0; q < ng; ++q) {
            const int j0 = q * H + k0;
            block_stats(ax + j0, N, G, w, vm, cnt, batch, L.mx, L.vx, L.rows_x, tg, G, j0,
                        update_running, sm.data(), sv.data(), m + j0, r + j0);
          }
        }
        // Recurrent product for the owned columns: into Hh (normalized in place) or into G.
        T* rh = Hht ? Hht : Gt;
        if (w > 0)
          for (int q = 0; q < ng; ++q)
            blas::gemm(false, true, N, w, H, T(1), hprev, H, R + static_cast<size_t>(q * H + k0) * H,
                       H, T(0), rh + q * H + k0, G);
        if (sync_xh) {
          double* red = red_xh.data();
          const bool xs = norms.x == Norm::bn_step, hs = norms.h == Norm::bn_step;
          T* ax = cc.Ax.data() + t * NG;
          for (int q = 0; q < ng; ++q) {
            const int j0 = q * H + k0;
            if (xs) kern::col_sums_serial(ax + j0, N, G, w, vm, red + j0, red + G + j0);
            if (hs) kern::col_sums_serial(rh + j0, N, G, w, vm, red + 2 * G + j0, red + 3 * G + j0);
          }
          group_sum(p, P, red, 4 * static_cast<size_t>(G));
          const int64_t gcnt = gcount[t];
          for (int q = 0; q < ng; ++q) {
            const int j0 = q * H + k0;
            const size_t so = static_cast<size_t>(t) * G + j0;
            if (xs)
              block_stats_from_sums(red + j0, red + G + j0, w, gcnt, L.mx, L.vx, L.rows_x, tg, G, j0,
                                    update_running, sm.data(), sv.data(), cc.mx.data() + so,
                                    cc.rx.data() + so);
            if (hs)
              block_stats_from_sums(red + 2 * G + j0, red + 3 * G + j0, w, gcnt, L.mh, L.vh,
                                    L.rows_h, tg, G, j0, update_running, sm.data(), sv.data(),
                                    cc.mh.data() + so, cc.rh.data() + so);
          }
        } else if (norms.h == Norm::bn_step) {
          T* m = cc.mh.data() + static_cast<size_t>(t) * G;
          T* r = cc.rh.data() + static_cast<size_t>(t) * G;
          for (int q = 0; q < ng; ++q) {
            const int j0 = q * H + k0;
            block_stats(rh + j0, N, G, w, vm, cnt, batch, L.mh, L.vh, L.rows_h, tg, G, j0,
                        update_running, sm.data(), sv.data(), m + j0, r + j0);
          }
        } else if (norms.h == Norm::ln) {
          T* ax = cc.Ax.data() + t * NG;
          const bool lnx = norms.x == Norm::ln;
          ln_partial(rh, G, k0, w, ng, H, vm, N, p, ln_part_h.data());
          if (lnx) ln_partial(ax, G, k0, w, ng, H, vm, N, p, ln_part_x.data());
          if (P > 1) {
#pragma omp barrier
          }
          ln_finish(rh, G, G, k0, w, ng, H, vm, N, P, ln_part_h.data(), rowm.data(), rowr.data());
          if (p == 0) {
            std::copy_n(rowm.data(), N, cc.mh.data() + static_cast<size_t>(t) * N);
            std::copy_n(rowr.data(), N, cc.rh.data() + static_cast<size_t>(t) * N);
          }
          if (lnx) {
            ln_finish(ax, G, G, k0, w, ng, H, vm, N, P, ln_part_x.data(), rowm.data(), rowr.data());
            if (p == 0) {
              std::copy_n(rowm.data(), N, cc.mx.data() + static_cast<size_t>(t) * N);
              std::copy_n(rowr.data(), N, cc.rx.data() + static_cast<size_t>(t) * N);
            }
          }
        }

        // Gates and the raw cell state for the owned units.
        const bool xbn = norms.x == Norm::bn_step, hbn = norms.h == Norm::bn_step;
        const T* mxt = xbn ? cc.mx.data() + static_cast<size_t>(t) * G : nullptr;
        const T* rxt = xbn ? cc.rx.data() + static_cast<size_t>(t) * G : nullptr;
        const T* mht = hbn ? cc.mh.data() + static_cast<size_t>(t) * G : nullptr;
        const T* rht = hbn ? cc.rh.data() + static_cast<size_t>(t) * G : nullptr;
        for (int n = 0; n < N; ++n) {
          T* g = Gt + static_cast<int64_t>(n) * G;
          T* cn = cnext + static_cast<int64_t>(n) * H;
          const T* cp = cprev + static_cast<int64_t>(n) * H;
          T* ax = cc.Ax.data() + t * NG + static_cast<int64_t>(n) * G;
          T* ah = Hht ? Hht + static_cast<int64_t>(n) * G : g;
          if (!vm[n]) {  // padded: carry the state, no gates, normalized values 0
            for (int q = 0; q < ng; ++q) {
              std::fill_n(g + q * H + k0, w, T(0));
              if (xbn) std::fill_n(ax + q * H + k0, w, T(0));
              if (hbn) std::fill_n(ah + q * H + k0, w, T(0));
            }
            std::copy_n(cp + k0, w, cn + k0);
            continue;
          }
          for (int q = 0; q < ng; ++q) {
            const int j0 = q * H + k0;
            if (xbn) {  // BN of W x and of R h fused here: x-hat written back for backward
#pragma omp simd
              for (int j = j0; j < j0 + w; ++j) ax[j] = (ax[j] - mxt[j]) * rxt[j];
            }
            if (hbn) {
#pragma omp simd
              for (int j = j0; j < j0 + w; ++j) ah[j] = (ah[j] - mht[j]) * rht[j];
            }
#pragma omp simd
            for (int j = j0; j < j0 + w; ++j) {
              const T xa = gx ? gx[j] * ax[j] : ax[j];
              const T ha = gh ? gh[j] * ah[j] : ah[j];
              g[j] = xa + ha + b[j];
            }
          }
          if (ng == 1) {  // tanh RNN: h = tanh(pre), kept in G for backward; c stays as given
            kern::tanh_inplace(g + k0, w);
            std::copy_n(g + k0, w, hnext + static_cast<int64_t>(n) * H + k0);
            std::copy_n(cp + k0, w, cn + k0);
            continue;
          }
          kern::sigmoid_inplace(g + k0, w);          // i
          kern::sigmoid_inplace(g + H + k0, w);      // f
          kern::tanh_inplace(g + 2 * H + k0, w);     // g
          kern::sigmoid_inplace(g + 3 * H + k0, w);  // o
#pragma omp simd
          for (int j = k0; j < k1; ++j) cn[j] = g[H + j] * cp[j] + g[j] * g[2 * H + j];
        }

        // Output normalization of c (never carried: the raw c goes to the next step).
        T* cht = nullptr;
        if (norms.c != Norm::none) {
          cht = cc.Ch.data() + t * NH;
          if (norms.c == Norm::bn_step) {
            T* m = cc.mc.data() + static_cast<size_t>(t) * H;
            T* r = cc.rc.data() + static_cast<size_t>(t) * H;
            if (batch && synced) {
              double* red = red_c.data();
              kern::col_sums_serial(cnext + k0, N, H, w, vm, red + k0, red + H + k0);
              group_sum(p, P, red, 2 * static_cast<size_t>(H));
              block_stats_from_sums(red + k0, red + H + k0, w, gcount[t], L.mc, L.vc, L.rows_c, tg,
                                    H, k0, update_running, sm.data(), sv.data(), m + k0, r + k0);
            } else {
              block_stats(cnext + k0, N, H, w, vm, cnt, batch, L.mc, L.vc, L.rows_c, tg, H, k0,
                          update_running, sm.data(), sv.data(), m + k0, r + k0);
            }
            kern::col_normalize_serial(cnext + k0, N, H, w, vm, m + k0, r + k0, cht + k0, H);
          } else {
            for (int n = 0; n < N; ++n) std::copy_n(cnext + n * H + k0, w, cht + n * H + k0);
            ln_rows(cht, H, H, k0, w, 1, H, vm, N, p, P, ln_part_c.data(), rowm.data(), rowr.data());
            if (p == 0) {
              std::copy_n(rowm.data(), N, cc.mc.data() + static_cast<size_t>(t) * N);
              std::copy_n(rowr.data(), N, cc.rc.data() + static_cast<size_t>(t) * N);
            }
          }
        }

        for (int n = 0; n < N; ++n) {
          T* hn = hnext + static_cast<int64_t>(n) * H;
          if (!vm[n]) {
            std::copy_n(hprev + static_cast<int64_t>(n) * H + k0, w, hn + k0);
            continue;
          }
          if (ng == 1) continue;  // tanh RNN: h written with the gates
          const T* o = Gt + static_cast<int64_t>(n) * G + 3 * H;
          if (cht) {
            const T* ch = cht + static_cast<int64_t>(n) * H;
#pragma omp simd
            for (int j = k0; j < k1; ++j) hn[j] = gc[j] * ch[j] + bc[j];
          } else {
            std::copy_n(cnext + static_cast<int64_t>(n) * H + k0, w, hn + k0);
          }
          kern::tanh_inplace(hn + k0, w);
#pragma omp simd
          for (int j = k0; j < k1; ++j) hn[j] *= o[j];
        }
#pragma omp barrier
      }
    }
  }

  void allocate_cache(int k, int Tc, int N, bool copy_input) {
    LayerCache<T>& cc = caches[k];
    const size_t H = cfg.hidden_size, G = ng * H, C = layers[k].C;
    const size_t TN = static_cast<size_t>(Tc) * N;
    if (copy_input) ensure(cc.X, TN * C);
    ensure(cc.Ax, TN * G);
    ensure(cc.G, TN * G);
    if (norms.h != Norm::none) ensure(cc.Hh, TN * G);
    ensure(cc.Hs, (Tc + 1) * N * H);
    ensure(cc.Cs, (Tc + 1) * N * H);
    if (norms.c != Norm::none) ensure(cc.Ch, TN * H);
    auto stat = [&](Norm n, size_t F, std::vector<T>& m, std::vector<T>& r) {
      size_t sz = 0;
      if (n == Norm::bn_step) sz = Tc * F;
      if (n == Norm::bn_seq) sz = F;
      if (n == Norm::ln) sz = TN;
      ensure(m, sz);
      ensure(r, sz);
    };
    stat(norms.x, G, cc.mx, cc.rx);
    stat(norms.h, G, cc.mh, cc.rh);
    stat(norms.c, H, cc.mc, cc.rc);
  }

  // Initial state of layer k for N rows: given [N,H], learned (broadcast) or zero; plus noise.
  void init_state(int k, int N, const T* h0, const T* c0, const ForwardOptions& opt, bool train) {
    LayerCache<T>& cc = caches[k];
    const LayerLayout& L = layers[k];
    const size_t H = cfg.hidden_size, NH = N * H;
    for (int which = 0; which < 2; ++which) {
      T* dst = which == 0 ? cc.Hs.data() : cc.Cs.data();
      const T* given = which == 0 ? h0 : c0;
      const size_t learned = which == 0 ? L.h0 : L.c0;
      if (given) {
        std::copy(given, given + NH, dst);
      } else if (learned != npos) {
        for (int n = 0; n < N; ++n) std::copy_n(params.data() + learned, H, dst + n * H);
      } else {
        std::fill_n(dst, NH, T(0));
      }
    }
    if (train && opt.h0_noise > 0)
      for (int n = 0; n < N; ++n) {
        Rng rng((opt.noise_seed * 1000003ULL + static_cast<uint64_t>(k)) * 0x9E3779B97F4A7C15ULL +
                static_cast<uint64_t>(opt.row0 + n));
        for (size_t j = 0; j < H; ++j) cc.Hs[n * H + j] += static_cast<T>(opt.h0_noise * rng.normal());
      }
  }

  void forward(const ForwardOptions& opt, int nT, int N, const T* x, const int32_t* lengths,
               const T* h0, const T* c0, T* y, T* hT, T* cT) {
    if (nT < 0 || N < 0) throw UsageError("forward: negative T or N");
    if (opt.t0 < 0) throw UsageError("forward: negative t0");
    const bool train = opt.mode == Mode::train;
    const bool keep = train || opt.need_backward;
    const int L = cfg.num_layers, H = cfg.hidden_size;
    const size_t NH = static_cast<size_t>(N) * H;
    len.assign(N, nT);
    if (lengths)
      for (int n = 0; n < N; ++n) {
        if (lengths[n] < 0 || lengths[n] > nT)
          throw UsageError("forward: lengths[" + std::to_string(n) + "] = " +
                           std::to_string(lengths[n]) + " outside [0, " + std::to_string(nT) + "]");
        len[n] = lengths[n];
      }
    // Inference without backward runs in chunks of time: memory O(N*H*chunk), not O(T).
    const int chunk = keep ? std::max(nT, 1) : std::max(1, std::min(nT, 32));
    valid.assign(static_cast<size_t>(std::max(nT, 1)) * N, 0);
    for (int t = 0; t < nT; ++t)
      for (int n = 0; n < N; ++n) valid[static_cast<size_t>(t) * N + n] = t < len[n];
    count.assign(std::max(nT, 1), 0);
    for (int t = 0; t < nT; ++t)
      for (int n = 0; n < N; ++n) count[t] += valid[static_cast<size_t>(t) * N + n];
    // Synchronized statistics need every step's row count over the group (one exchange).
    synced = train && allreduce && cell_has_population_stats(cfg.cell);
    if (synced) {
      std::vector<double> c(count.begin(), count.end());
      allreduce(c.data(), c.size());
      gcount.assign(c.size(), 0);
      for (size_t i = 0; i < c.size(); ++i) gcount[i] = static_cast<int64_t>(c[i]);
    }
    for (int k = 0; k < L; ++k) {
      allocate_cache(k, chunk, N, keep && k == 0);
      init_state(k, N, h0 ? h0 + k * NH : nullptr, c0 ? c0 + k * NH : nullptr, opt, train);
    }
    h0_given = h0 != nullptr;
    c0_given = c0 != nullptr;
    const bool batch = train;
    for (int s = 0; s < nT; s += chunk) {
      const int Tc = std::min(chunk, nT - s);
      const uint8_t* vm = valid.data() + static_cast<size_t>(s) * N;
      for (int k = 0; k < L; ++k) {
        LayerCache<T>& cc = caches[k];
        if (s > 0) {  // carry the state of the previous chunk
          std::copy_n(cc.Hs.data() + chunk * NH, NH, cc.Hs.data());
          std::copy_n(cc.Cs.data() + chunk * NH, NH, cc.Cs.data());
        }
        const T* X;
        if (k == 0) {
          X = x + static_cast<size_t>(s) * N * cfg.input_size;
          if (keep) {
            std::copy_n(X, static_cast<size_t>(Tc) * N * cfg.input_size, cc.X.data());
            X = cc.X.data();
          }
        } else {
          X = caches[k - 1].Hs.data() + NH;
        }
        layer_forward(k, Tc, N, X, vm, opt.t0 + s, batch, train && opt.update_running);
      }
      if (y) {
        const T* top = caches[L - 1].Hs.data() + NH;
        for (int t = 0; t < Tc; ++t)
          for (int n = 0; n < N; ++n) {
            T* dst = y + (static_cast<size_t>(s + t) * N + n) * H;
            if (vm[static_cast<size_t>(t) * N + n])
              std::copy_n(top + (static_cast<size_t>(t) * N + n) * H, H, dst);
            else
              std::fill_n(dst, H, T(0));
          }
      }
      if (s + Tc >= nT) {  // final state: the last row of each layer's state (carried past padding)
        for (int k = 0; k < L; ++k) {
          if (hT) std::copy_n(caches[k].Hs.data() + Tc * NH, NH, hT + k * NH);
          if (cT) std::copy_n(caches[k].Cs.data() + Tc * NH, NH, cT + k * NH);
        }
      }
    }
    if (nT == 0) {
      for (int k = 0; k < L; ++k) {
        if (hT) std::copy_n(caches[k].Hs.data(), NH, hT + k * NH);
        if (cT) std::copy_n(caches[k].Cs.data(), NH, cT + k * NH);
      }
    }
    T_ = nT;
    N_ = N;
    have_cache = keep;
    cache_batch_stats = batch;
  }

  // ---- backward ---------------------------------------------------------------------------

  // One layer. dYin [T,N,H] (nullable): gradient w.r.t. this layer's output at valid positions.
  // dh_rec/dc_rec hold dL/dh_T, dL/dc_T on entry and dL/dh_0, dL/dc_0 on exit. dX [T,N,C] (nullable).
  void layer_backward(int k, const T* dYin, T* dX) {
    const LayerLayout& L = layers[k];
    LayerCache<T>& cc = caches[k];
    const int nT = T_, N = N_, H = cfg.hidden_size, G = ng * H, C = L.C;
    const int64_t NG = static_cast<int64_t>(N) * G, NH = static_cast<int64_t>(N) * H;
    const int64_t TN = static_cast<int64_t>(nT) * N;
    const bool batch = cache_batch_stats;
    const T* W = params.data() + L.W;
    const T* R = params.data() + L.R;
    const T* gx = L.gx != npos ? params.data() + L.gx : nullptr;
    const T* gh = L.gh != npos ? params.data() + L.gh : nullptr;
    const T* gc = L.gc != npos ? params.data() + L.gc : nullptr;
    const T* bc = L.bc != npos ? params.data() + L.bc : nullptr;
    T* dW = grads.data() + L.W;
    T* dR = grads.data() + L.R;
    T* db = grads.data() + L.b;
    T* dgx = gx ? grads.data() + L.gx : nullptr;
    T* dgh = gh ? grads.data() + L.gh : nullptr;
    T* dgc = gc ? grads.data() + L.gc : nullptr;
    T* dbc = bc ? grads.data() + L.bc : nullptr;
    ensure(dh_new, NH);
    ensure(dcn, NH);
    ensure(s1, G);
    ensure(s2, G);
    const T* X = k == 0 ? cc.X.data() : caches[k - 1].Hs.data() + NH;

    if (norms.x == Norm::bn_step) {
      ensure(xsum1, static_cast<size_t>(nT) * G);
      ensure(xsum2, static_cast<size_t>(nT) * G);
    }
    const bool probe = probe_out && probe_layer == k;
    if (probe) probe_sq.assign(static_cast<size_t>(nT) * time_loop_threads(H) * N, 0.0);
    // Same ownership of hidden units as the forward loop; one barrier per step makes dRh complete
    // before each thread computes its columns of dh_{t-1} = dRh R.
    const int P = time_loop_threads(H);
    ensure(ln_part_h, static_cast<size_t>(P) * N * 2);
    ensure(ln_part_c, static_cast<size_t>(P) * N * 2);
    ensure(ln_part_x, static_cast<size_t>(P) * N * 2);
    if (batch && synced) {
      ensure(red_xh, 4 * static_cast<size_t>(G));
      ensure(red_c, 2 * static_cast<size_t>(H));
    }
#pragma omp parallel num_threads(P) if (P > 1)
    {
      const int p = P > 1 ? omp_get_thread_num() : 0;
      const std::pair<int, int> blk = unit_block(p, P, H);
      const int k0 = blk.first, k1 = blk.second;  // (no structured binding: clang 14 cannot capture one in omp simd)
      const int w = k1 - k0;
      std::vector<double> a1(static_cast<size_t>(ng) * w + 1), a2(static_cast<size_t>(ng) * w + 1),
          a3(static_cast<size_t>(ng) * w + 1);
      std::vector<double> db_acc(static_cast<size_t>(ng) * w, 0.0), dgx_acc(static_cast<size_t>(ng) * w, 0.0);
      for (int t = nT - 1; t >= 0; --t) {
        const uint8_t* vm = valid.data() + static_cast<size_t>(t) * N;
        T* Gt = cc.G.data() + t * NG;
        const T* cprev = cc.Cs.data() + t * NH;
        const T* cnext = cc.Cs.data() + (t + 1) * NH;
        const T* cht = norms.c != Norm::none ? cc.Ch.data() + t * NH : nullptr;
        const T* dYt = dYin ? dYin + t * NH : nullptr;

        // h = o * tanh(c~): gradient into o (written over o in G) and into c~ (dcn).
        for (int n = 0; n < N; ++n) {
          if (!vm[n]) continue;
          T* dh = dh_rec.data() + static_cast<int64_t>(n) * H;
          if (dYt) {
            const T* d = dYt + static_cast<int64_t>(n) * H;
#pragma omp simd
            for (int j = k0; j < k1; ++j) dh[j] += d[j];
          }
          if (probe) {
            double q2 = 0;
            for (int j = k0; j < k1; ++j) q2 += static_cast<double>(dh[j]) * dh[j];
            probe_sq[(static_cast<size_t>(t) * P + p) * N + n] = q2;
          }
          if (ng == 1) {  // tanh RNN: dpre = dh (1 - h^2), h = tanh(pre) kept in G
            T* g = Gt + static_cast<int64_t>(n) * G;
#pragma omp simd
            for (int j = k0; j < k1; ++j) g[j] = dh[j] * (T(1) - g[j] * g[j]);
            continue;
          }
          T* o = Gt + static_cast<int64_t>(n) * G + 3 * H;
          T* dc = dcn.data() + static_cast<int64_t>(n) * H;
          // dc holds tanh(c~) first, then the gradient
          if (cht) {
            const T* ch = cht + static_cast<int64_t>(n) * H;
#pragma omp simd
            for (int j = k0; j < k1; ++j) dc[j] = gc[j] * ch[j] + bc[j];
          } else {
            std::copy_n(cnext + static_cast<int64_t>(n) * H + k0, w, dc + k0);
          }
          kern::tanh_inplace(dc + k0, w);
#pragma omp simd
          for (int j = k0; j < k1; ++j) {
            const T tc = dc[j];
            const T ov = o[j];
            dc[j] = dh[j] * ov * (T(1) - tc * tc);
            o[j] = dh[j] * tc * ov * (T(1) - ov);
          }
        }
        // through the normalization of c
        if (norms.c != Norm::none) {
          kern::col_grad_sums_serial(dcn.data() + k0, cht + k0, N, H, w, vm, a1.data(), a2.data());
          for (int j = 0; j < w; ++j) {
            dgc[k0 + j] += static_cast<T>(a2[j]);
            dbc[k0 + j] += static_cast<T>(a1[j]);
          }
          if (norms.c == Norm::bn_step) {
            if (batch && synced) {  // the means of dy and dy*x_hat over the group's rows
              double* red = red_c.data();
              std::copy_n(a1.data(), w, red + k0);
              std::copy_n(a2.data(), w, red + H + k0);
              group_sum(p, P, red, 2 * static_cast<size_t>(H));
              std::copy_n(red + k0, w, a1.data());
              std::copy_n(red + H + k0, w, a2.data());
            }
            kern::col_norm_backward_serial(dcn.data() + k0, cht + k0, N, H, w, vm, gc + k0,
                                           cc.rc.data() + static_cast<size_t>(t) * H + k0,
                                           a1.data(), a2.data(), stat_count(t), batch,
                                           dcn.data() + k0);
          } else {
            ln_rows_backward(dcn.data(), cht, H, H, k0, w, 1, H, gc, vm, N, p, P,
                             ln_part_c.data(), cc.rc.data() + static_cast<size_t>(t) * N);
          }
        }
        // (tanh RNN: dpre is already in G for valid rows; padded rows are zeroed below.)
        // c_t = f c_{t-1} + i g: gradients of the gate pre-activations (dpre, over G). The same
        // pass takes the column sums that db and the W x / R h normalizations need (sum of dpre,
        // sum of dpre * x-hat), while the row is in cache.
        // xs: the input normalization is per step (BN_t or LN): its dgamma sums come from here.
        const bool xbn = norms.x == Norm::bn_step || norms.x == Norm::ln,
                   hn = norms.h != Norm::none;
        T* Hht = hn ? cc.Hh.data() + t * NG : nullptr;
        const size_t W4 = static_cast<size_t>(ng) * w;
        std::fill_n(a1.data(), W4, 0.0);  // sum dpre (per owned column)
        std::fill_n(a2.data(), W4, 0.0);  // sum dpre * x-hat of R h
        std::fill_n(a3.data(), W4, 0.0);  // sum dpre * x-hat of W x
        for (int n = 0; n < N; ++n) {
          T* g = Gt + static_cast<int64_t>(n) * G;
          if (!vm[n]) {
            for (int q = 0; q < ng; ++q) std::fill_n(g + q * H + k0, w, T(0));
            continue;
          }
          T* dcr = dc_rec.data() + static_cast<int64_t>(n) * H;
          const T* dcv = dcn.data() + static_cast<int64_t>(n) * H;
          const T* cp = cprev + static_cast<int64_t>(n) * H;
          if (ng == 4) {
#pragma omp simd
            for (int j = k0; j < k1; ++j) {
              const T dc = dcr[j] + dcv[j];
              const T i = g[j], f = g[H + j], gg = g[2 * H + j];
              g[j] = dc * gg * i * (T(1) - i);
              g[H + j] = dc * cp[j] * f * (T(1) - f);
              g[2 * H + j] = dc * i * (T(1) - gg * gg);
              dcr[j] = dc * f;
            }
          }
          const T* xr = cc.Ax.data() + t * NG + static_cast<int64_t>(n) * G;
          const T* hr = hn ? Hht + static_cast<int64_t>(n) * G : nullptr;
          for (int q = 0; q < ng; ++q) {
            const int j0 = q * H + k0;
            double* s1q = a1.data() + q * w;
            double* s2q = a2.data() + q * w;
            double* s3q = a3.data() + q * w;
#pragma omp simd
            for (int j = 0; j < w; ++j) s1q[j] += g[j0 + j];
            if (hr) {
#pragma omp simd
              for (int j = 0; j < w; ++j) s2q[j] += static_cast<double>(g[j0 + j]) * hr[j0 + j];
            }
            if (xbn) {
#pragma omp simd
              for (int j = 0; j < w; ++j) s3q[j] += static_cast<double>(g[j0 + j]) * xr[j0 + j];
            }
          }
        }
        for (size_t j = 0; j < W4; ++j) db_acc[j] += a1[j];
        if (xbn)
          for (int q = 0; q < ng; ++q) {
            for (int j = 0; j < w; ++j) dgx_acc[q * w + j] += a3[q * w + j];
            if (norms.x == Norm::bn_step) {
              const size_t off = static_cast<size_t>(t) * G + q * H + k0;
              for (int j = 0; j < w; ++j) {
                xsum1[off + j] = a1[q * w + j];
                xsum2[off + j] = a3[q * w + j];
              }
            }
          }
        // through the normalization of W_h h
        T* dRh = Gt;
        if (hn) {
          for (int q = 0; q < ng; ++q)  // this rank's share of dgamma (summed with the gradients)
            for (int j = 0; j < w; ++j) dgh[q * H + k0 + j] += static_cast<T>(a2[q * w + j]);
          if (norms.h == Norm::bn_step && batch && synced) {  // group sums for BN's backward
            double* red = red_xh.data();
            for (int q = 0; q < ng; ++q) {
              std::copy_n(a1.data() + q * w, w, red + q * H + k0);
              std::copy_n(a2.data() + q * w, w, red + G + q * H + k0);
            }
            group_sum(p, P, red, 2 * static_cast<size_t>(G));
            for (int q = 0; q < ng; ++q) {
              std::copy_n(red + q * H + k0, w, a1.data() + q * w);
              std::copy_n(red + G + q * H + k0, w, a2.data() + q * w);
            }
          }
          for (int q = 0; q < ng; ++q) {
            const int j0 = q * H + k0;
            if (norms.h == Norm::bn_step)
              kern::col_norm_backward_serial(Gt + j0, Hht + j0, N, G, w, vm, gh + j0,
                                             cc.rh.data() + static_cast<size_t>(t) * G + j0,
                                             a1.data() + q * w, a2.data() + q * w, stat_count(t),
                                             batch, Hht + j0);
          }
          if (norms.h == Norm::ln) {
            // dRh is written over x-hat in Hh, then d(W x) over dpre in G (LN of W x shares
            // the barrier): each element is read before it is written.
            T* ax = cc.Ax.data() + t * NG;
            const bool lnx = norms.x == Norm::ln;
            ln_bwd_partial(Gt, Hht, G, k0, w, ng, H, gh, vm, N, p, ln_part_h.data());
            if (lnx) ln_bwd_partial(Gt, ax, G, k0, w, ng, H, gx, vm, N, p, ln_part_x.data());
            if (P > 1) {
#pragma omp barrier
            }
            ln_bwd_finish(Gt, Hht, G, G, k0, w, ng, H, gh, vm, N, P, ln_part_h.data(),
                          cc.rh.data() + static_cast<size_t>(t) * N, Hht);
            if (lnx)
              ln_bwd_finish(Gt, ax, G, G, k0, w, ng, H, gx, vm, N, P, ln_part_x.data(),
                            cc.rx.data() + static_cast<size_t>(t) * N, Gt);
          }
          dRh = Hht;
        }
#pragma omp barrier
        // dh_{t-1} = dRh R for the owned columns; padded rows pass their gradient through.
        if (w > 0) {
          blas::gemm(false, false, N, w, G, T(1), dRh, G, R + k0, H, T(0), dh_new.data() + k0, H);
          for (int n = 0; n < N; ++n)
            if (vm[n])
              std::copy_n(dh_new.data() + static_cast<int64_t>(n) * H + k0, w,
                          dh_rec.data() + static_cast<int64_t>(n) * H + k0);
        }
      }
      for (int q = 0; q < ng; ++q)
        for (int j = 0; j < w; ++j) {
          db[q * H + k0 + j] += static_cast<T>(db_acc[q * w + j]);
          if (dgx) dgx[q * H + k0 + j] += static_cast<T>(dgx_acc[q * w + j]);
        }
    }
    if (probe) {  // batch mean over valid rows of ||dL/dh_t||
      const int P = time_loop_threads(H);
      probe_out->assign(nT, 0.0);
      for (int t = 0; t < nT; ++t) {
        double sum = 0;
        for (int n = 0; n < N; ++n) {
          if (!valid[static_cast<size_t>(t) * N + n]) continue;
          double q2 = 0;
          for (int p = 0; p < P; ++p) q2 += probe_sq[(static_cast<size_t>(t) * P + p) * N + n];
          sum += std::sqrt(q2);
        }
        (*probe_out)[t] = count[t] ? sum / count[t] : 0.0;
      }
    }
    if (nT == 0) return;

    // Deferred parameter gradients over all T*N rows.
    const T* dRhAll = norms.h != Norm::none ? cc.Hh.data() : cc.G.data();
    blas::gemm(true, false, G, H, static_cast<int>(TN), T(1), dRhAll, G, cc.Hs.data(), H, T(1), dR,
               H);
    // Input normalization backward, in place on G (dpre -> d(W x)).
    switch (norms.x) {
      case Norm::none: break;
      case Norm::bn_step:  // the column sums were taken in the time loop
        if (batch && synced) {  // summed over the group in one exchange per layer
          allreduce(xsum1.data(), static_cast<size_t>(nT) * G);
          allreduce(xsum2.data(), static_cast<size_t>(nT) * G);
        }
#pragma omp parallel for schedule(static) if (TN * G > kern::kParallelWork)
        for (int t = 0; t < nT; ++t) {
          const uint8_t* vm = valid.data() + static_cast<size_t>(t) * N;
          T* d = cc.G.data() + t * NG;
          const T* xh = cc.Ax.data() + t * NG;
          kern::col_norm_backward_serial(d, xh, N, G, G, vm, gx,
                                         cc.rx.data() + static_cast<size_t>(t) * G,
                                         xsum1.data() + static_cast<size_t>(t) * G,
                                         xsum2.data() + static_cast<size_t>(t) * G, stat_count(t), batch, d);
        }
        break;
      case Norm::bn_seq: {
        int64_t cnt = 0;
        for (int64_t r = 0; r < TN; ++r) cnt += valid[r];
        kern::column_grad_sums(cc.G.data(), cc.Ax.data(), TN, G, valid.data(), s1.data(),
                               s2.data());
        for (int j = 0; j < G; ++j) dgx[j] += static_cast<T>(s2[j]);
        if (batch && synced) {
          std::vector<double> red(2 * static_cast<size_t>(G) + 1);
          std::copy_n(s1.data(), G, red.data());
          std::copy_n(s2.data(), G, red.data() + G);
          red[2 * static_cast<size_t>(G)] = static_cast<double>(cnt);
          allreduce(red.data(), red.size());
          std::copy_n(red.data(), G, s1.data());
          std::copy_n(red.data() + G, G, s2.data());
          cnt = static_cast<int64_t>(red[2 * static_cast<size_t>(G)]);
        }
        kern::column_norm_backward(cc.G.data(), cc.Ax.data(), TN, G, valid.data(), gx,
                                   cc.rx.data(), s1.data(), s2.data(), cnt, batch, cc.G.data());
        break;
      }
      case Norm::ln: break;  // done in the time loop
    }
    blas::gemm(true, false, G, C, static_cast<int>(TN), T(1), cc.G.data(), G, X, C, T(1), dW, C);
    if (dX)
      blas::gemm(false, false, static_cast<int>(TN), C, G, T(1), cc.G.data(), G, W, C, T(0), dX, C);
  }

  void backward(const T* dy, const T* dhT, const T* dcT, T* dx, T* dh0, T* dc0) {
    if (!have_cache)
      throw UsageError("backward: no forward with activations kept (train mode or need_backward)");
    const int L = cfg.num_layers, H = cfg.hidden_size, N = N_;
    const size_t NH = static_cast<size_t>(N) * H;
    ensure(dY, static_cast<size_t>(T_) * NH);
    dh_rec.assign(NH, T(0));
    dc_rec.assign(NH, T(0));
    for (int k = L - 1; k >= 0; --k) {
      if (dhT)
        std::copy_n(dhT + k * NH, NH, dh_rec.data());
      else
        std::fill(dh_rec.begin(), dh_rec.end(), T(0));
      if (dcT)
        std::copy_n(dcT + k * NH, NH, dc_rec.data());
      else
        std::fill(dc_rec.begin(), dc_rec.end(), T(0));
      const T* dYin = k == L - 1 ? dy : dY.data();
      T* dX = k == 0 ? dx : dY.data();
      // dY is both this layer's input gradient (from above) and the output for the layer below:
      // the output is written by the final GEMM, after the time loop has read the input.
      layer_backward(k, dYin, dX);
      const LayerLayout& Ly = layers[k];
      if (dh0) std::copy_n(dh_rec.data(), NH, dh0 + k * NH);
      if (dc0) std::copy_n(dc_rec.data(), NH, dc0 + k * NH);
      if (!h0_given && Ly.h0 != npos)
        for (int n = 0; n < N; ++n)
          for (int j = 0; j < H; ++j) grads[Ly.h0 + j] += dh_rec[n * H + j];
      if (!c0_given && Ly.c0 != npos)
        for (int n = 0; n < N; ++n)
          for (int j = 0; j < H; ++j) grads[Ly.c0 + j] += dc_rec[n * H + j];
    }
  }
};

// ---- public wrappers ------------------------------------------------------------------------

template <class T>
Stack<T>::Stack(const StackConfig& config) : impl_(std::make_unique<Impl>(config)) {}
template <class T>
Stack<T>::~Stack() = default;
template <class T>
Stack<T>::Stack(Stack&&) noexcept = default;
template <class T>
Stack<T>& Stack<T>::operator=(Stack&&) noexcept = default;

template <class T>
const StackConfig& Stack<T>::config() const {
  return impl_->cfg;
}
template <class T>
std::span<T> Stack<T>::params() {
  return impl_->params;
}
template <class T>
std::span<const T> Stack<T>::params() const {
  return impl_->params;
}
template <class T>
std::span<T> Stack<T>::grads() {
  return impl_->grads;
}
template <class T>
const std::vector<TensorInfo>& Stack<T>::param_info() const {
  return impl_->pinfo;
}
template <class T>
std::span<T> Stack<T>::buffers() {
  return impl_->buffers;
}
template <class T>
std::span<const T> Stack<T>::buffers() const {
  return impl_->buffers;
}
template <class T>
const std::vector<TensorInfo>& Stack<T>::buffer_info() const {
  return impl_->binfo;
}
template <class T>
const TensorInfo* Stack<T>::find_info(std::string_view name) const {
  for (const auto& v : {&impl_->pinfo, &impl_->binfo})
    for (const auto& ti : *v)
      if (ti.name == name) return &ti;
  return nullptr;
}
template <class T>
T* Stack<T>::find(std::string_view name) {
  for (const auto& ti : impl_->pinfo)
    if (ti.name == name) return impl_->params.data() + ti.offset;
  for (const auto& ti : impl_->binfo)
    if (ti.name == name) return impl_->buffers.data() + ti.offset;
  return nullptr;
}
template <class T>
void Stack<T>::zero_grad() {
  std::fill(impl_->grads.begin(), impl_->grads.end(), T(0));
}
template <class T>
void Stack<T>::reset_parameters() {
  impl_->reset_parameters();
}
template <class T>
void Stack<T>::forward(const ForwardOptions& opt, int steps, int N, const T* x,
                       const int32_t* lengths, const T* h0, const T* c0, T* y, T* hT, T* cT) {
  impl_->forward(opt, steps, N, x, lengths, h0, c0, y, hT, cT);
}
template <class T>
void Stack<T>::backward(const T* dy, const T* dhT, const T* dcT, T* dx, T* dh0, T* dc0) {
  impl_->backward(dy, dhT, dcT, dx, dh0, dc0);
}

template <class T>
void Stack<T>::popstats_begin() {
  impl_->pass_active = true;
  impl_->pass_sum.assign(impl_->buffers.size(), 0.0);
  impl_->pass_count.assign(impl_->buffers.size(), 0.0);
}
template <class T>
void Stack<T>::popstats_feed(int steps, int N, const T* x, const int32_t* lengths, const T* h0,
                             const T* c0) {
  if (!impl_->pass_active) throw UsageError("popstats_feed: popstats_begin() was not called");
  ForwardOptions opt;
  opt.mode = Mode::train;
  opt.update_running = false;
  impl_->forward(opt, steps, N, x, lengths, h0, c0, nullptr, nullptr, nullptr);
  impl_->have_cache = false;  // a statistics pass is not a training step
}
template <class T>
void Stack<T>::popstats_finish() {
  if (!impl_->pass_active) throw UsageError("popstats_finish: popstats_begin() was not called");
  auto& I = *impl_;
  for (size_t i = 0; i < I.buffers.size(); ++i)
    if (I.pass_count[i] > 0) I.buffers[i] = static_cast<T>(I.pass_sum[i] / I.pass_count[i]);
  I.pass_active = false;
  I.pass_sum.clear();
  I.pass_count.clear();
}

template <class T>
std::span<const T> Stack<T>::cached_normalized(int layer, std::string_view which) const {
  const auto& I = *impl_;
  if (layer < 0 || layer >= I.cfg.num_layers || !I.have_cache) return {};
  const auto& cc = I.caches[layer];
  const size_t TN = static_cast<size_t>(I.T_) * I.N_, H = I.cfg.hidden_size;
  if (which == "x" && I.norms.x != Norm::none) return {cc.Ax.data(), TN * I.ng * H};
  if (which == "h" && I.norms.h != Norm::none) return {cc.Hh.data(), TN * I.ng * H};
  if (which == "c" && I.norms.c != Norm::none) return {cc.Ch.data(), TN * H};
  return {};
}

template <class T>
void Stack<T>::set_stat_allreduce(Allreduce allreduce) {
  impl_->allreduce = std::move(allreduce);
}

template <class T>
void Stack<T>::set_grad_probe(int layer, std::vector<double>* norms) {
  impl_->probe_layer = layer;
  impl_->probe_out = norms;
}

template <class T>
size_t Stack<T>::cache_bytes() const {
  const auto& I = *impl_;
  size_t n = 0;
  for (const auto& cc : I.caches)
    for (const auto* v : {&cc.X, &cc.Ax, &cc.G, &cc.Hh, &cc.Hs, &cc.Cs, &cc.Ch, &cc.mx, &cc.rx,
                          &cc.mh, &cc.rh, &cc.mc, &cc.rc})
      n += v->size();
  return n * sizeof(T);
}

template <class T>
size_t Stack<T>::workspace_bytes() const {
  const auto& I = *impl_;
  size_t n = 0;
  for (const auto* v : {&I.dY, &I.dh_rec, &I.dc_rec, &I.dh_new, &I.dcn}) n += v->size();
  return n * sizeof(T);
}

template class Stack<float>;
template class Stack<double>;

}  // namespace rbn
