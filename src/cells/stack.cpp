// The fused recurrent stack: forward and backward through time over a whole sequence.
//
// Shapes: x [T,N,C]; per layer: Ax [T,N,4H] (W x, raw; bnx-seq: its x-hat), G [T,N,4H] (activated
// gates i,f,g,o; reused for dpre in backward), Hh [T,N,4H] (W_h h, raw), Hs/Cs [T+1,N,H] (states,
// initial state at row 0; padded rows carry their state forward), and each normalization's
// statistics per step (BN: per column; LN: per row). One GEMM computes W x over all T*N rows
// before the time loop; per step only R h, its statistics and the pointwise gates run, with the
// normalizations applied on the fly. The caches keep the raw W x, R h and c: backward forms x-hat
// = (z - mean) * rstd where it needs it, which costs one multiply-add and saves writing a
// normalized copy (the pixel shape is bound by memory traffic, not arithmetic). Backward
// writes d(W x) over Ax for the per-step input normalizations, and defers dR and dW to one GEMM
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
  // statistics: BN per step [T,F] (bn_seq [F]); LN per row [T,N]
  std::vector<T> mx, rx, mh, rh, mc, rc;
  // Few input features (inline_x): W x is formed per step inside the time loop and recomputed in
  // backward instead of stored; Ax then holds one step [N,4H] and Wt = W^T [C,4H].
  bool inline_x = false;
  std::vector<T> Wt;
  // Hh's columns by thread (hh_blocked): each time-loop thread's gate blocks side by side, gate q
  // of the units [k0, k1) at ng*k0 + q*w, so that no cache line holds two threads' values; else
  // in gate order (q*H + k), where backward's dRh over Hh feeds the per-step product with R.
  bool hh_blocked = false;
  int P = 1;  // threads of the forward's time loop (backward keeps its partition of the units)
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

  // Layers with at most this many input features form W x inside the time loop (C multiply-adds
  // per gate value) instead of one GEMM over all steps whose [T,N,4H] result goes to memory and
  // back, and backward recomputes it instead of reading it; dW and dx then accumulate per step.
  // For the pixel tasks (C = 1) the stored W x was pure memory traffic. Not for bnx-seq (its
  // statistics span all steps before the loop) or synchronized BN of W x (its backward runs after
  // the loop, from the group's sums).
  static constexpr int kInlineInput = 8;
  // Forward calls of at least this many steps pack each thread's rows of R for one product per
  // step (the step API's short calls use R in place).
  static constexpr int kPackMinSteps = 4;
  bool inline_input(int k, bool batch) const {
    return layers[k].C <= kInlineInput && norms.x != Norm::bn_seq &&
           !(batch && synced && norms.x == Norm::bn_step);
  }
  // Backward forms d(W x) inside the time loop (and dRh then goes over dpre in G): per-step
  // input normalizations and inline W x, but not synchronized BN_t of W x (its backward waits
  // for the group's sums after the loop).
  bool x_in_loop(bool batch, bool inl) const {
    return inl || norms.x == Norm::ln || (norms.x == Norm::bn_step && !(batch && synced));
  }
  // Offset of Hh's gate block q for the units [k0, k0 + w) in a row.
  int hh_offset(const LayerCache<T>& cc, int q, int k0, int w) const {
    return cc.hh_blocked ? ng * k0 + q * w : q * cfg.hidden_size + k0;
  }

  // W x of step t for the columns [j0, j0 + w) of every row: out [N,G] (stride G), X_t [N,C].
  static void input_projection(const T* Xt, const T* Wt, int N, int C, int G, int j0, int w,
                               T* out) {
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
  static void input_moments(const T* Xt, const uint8_t* vm, int N, int C, double* mom) {
    std::fill_n(mom, C + C * C, 0.0);
    for (int n = 0; n < N; ++n) {
      if (!vm[n]) continue;
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
  static void linear_stats(const T* w, int C, const double* mom, int64_t cnt, double* mean,
                           double* var) {
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

  mutable std::vector<T> xhat_view;  // cached_normalized's result
  // workspaces
  std::vector<T> dY, dh_rec, dc_rec;
  std::vector<T> bwd_rows;  // [P][4][N,H]: each time-loop thread's dh, dc, dc~ and new dh rows
  std::vector<double> s1, s2, dstat_mean, dstat_var, xsum1, xsum2;
  std::vector<T> dx_part;  // [P,T,N,C] (inline input)
  std::vector<T> r_packed, rh_step;  // forward: R's rows by thread [G,H]; the step's R h [N,G]

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
    if (batch) {
      kern::col_stats_serial(z, rows, ld, w, vm, dm, dv);
      block_stats_given(dm, dv, w, cnt, mo, vo, table_rows, tg, F, j0, update_running, mean, rstd);
    } else {
      const int64_t row = std::min<int64_t>(tg, table_rows - 1);
      const T* pm = buffers.data() + mo + static_cast<size_t>(row) * F + j0;
      const T* pv = buffers.data() + vo + static_cast<size_t>(row) * F + j0;
      for (int j = 0; j < w; ++j) {
        mean[j] = pm[j];
        rstd[j] = static_cast<T>(1.0 / std::sqrt(static_cast<double>(pv[j]) + cfg.eps));
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
    block_stats_given(dm, dv, w, cnt, mo, vo, table_rows, tg, F, j0, update_running, mean, rstd);
  }
  // The same from this column block's mean and biased variance over cnt rows (dm, dv).
  void block_stats_given(const double* dm, const double* dv, int w, int64_t cnt, size_t mo,
                         size_t vo, int table_rows, int64_t tg, int F, int j0, bool update_running,
                         T* mean, T* rstd) {
    for (int j = 0; j < w; ++j) {
      mean[j] = static_cast<T>(dm[j]);
      rstd[j] = static_cast<T>(1.0 / std::sqrt(dv[j] + cfg.eps));
    }
    record_cols(mo, vo, table_rows, tg, F, j0, w, dm, dv, cnt, update_running);
  }

  // Layer normalization of rows over F features (stride ld), for the columns this thread owns: nb
  // blocks of width w at offsets q*stride + k0. ln_partial writes this thread's partial sums; after
  // a barrier ln_row_stats combines all threads' (every thread then knows each row's mean and
  // rstd). Two normalizations can share one barrier. The values themselves stay raw: whoever reads
  // them applies (z - mean) * rstd.
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
  // Each row's mean and rstd over all F features from every thread's partial sums (after the
  // barrier that follows ln_partial); padded rows get mean 0, rstd 1.
  void ln_row_stats(int F, const uint8_t* vm, int N, int P, const double* part, T* rowm, T* rowr) {
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
  }

  // LN backward over rows for the owned columns: dz = rstd*(dy*g - mean(dy*g) - xh*mean(dy*g*xh)),
  // the means over all F features from every thread's partial sums (part: sum dy*g, sum
  // dy*g*x-hat per thread and row, taken in the pass before the barrier). z holds the raw values:
  // x-hat = (z - mean_n) * rstd_n with each row's statistics. dz may alias dy or z.
  void ln_bwd_finish(const T* dy, const T* z, int ld, int F, int k0, int w, int nb, int stride,
                     const T* gamma, const uint8_t* vm, int N, const T* mean, const T* rstd, int P,
                     const double* part, T* dz) {
    for (int n = 0; n < N; ++n) {
      const T* d = dy + static_cast<int64_t>(n) * ld;
      const T* x = z + static_cast<int64_t>(n) * ld;
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
      const T a = static_cast<T>(s1 / F), bb = static_cast<T>(s2 / F), m = mean[n], r = rstd[n];
      for (int q = 0; q < nb; ++q) {
        const int j0 = q * stride + k0;
#pragma omp simd
        for (int j = j0; j < j0 + w; ++j) o[j] = r * (d[j] * gamma[j] - a - ((x[j] - m) * r) * bb);
      }
    }
  }

  // LN backward of R h (and of W x, when zx is given) from row sums taken elsewhere (ln_part_h,
  // ln_part_x: sum dy*gamma, sum dy*gamma*x-hat per thread): dzh = rstd_h*(dy*g_h - a_h -
  // x-hat_h*b_h), likewise dzx, for the owned columns. zh is in Hh's layout (zh_blocked: see
  // LayerCache::hh_blocked), the rest in gate order. Outputs may alias dy or the inputs.
  void ln_bwd_rows(const T* dy, const T* zh, bool zh_blocked, const T* zx, int ld, int k0, int w,
                   int nb, int stride,
                   const T* gh, const T* gx, const uint8_t* vm, int N, const T* mh, const T* rh,
                   const T* mx, const T* rx, int P, T* dzh, T* dzx) {
    const double F = static_cast<double>(nb) * stride;
    auto row_means = [&](const std::vector<double>& part, int n, T& a, T& b) {
      double s1 = 0, s2 = 0;
      for (int pp = 0; pp < P; ++pp) {
        s1 += part[(static_cast<size_t>(pp) * N + n) * 2];
        s2 += part[(static_cast<size_t>(pp) * N + n) * 2 + 1];
      }
      a = static_cast<T>(s1 / F);
      b = static_cast<T>(s2 / F);
    };
    for (int n = 0; n < N; ++n) {
      const int64_t ro = static_cast<int64_t>(n) * ld;
      if (!vm[n]) {
        for (int q = 0; q < nb; ++q) {
          std::fill_n(dzh + ro + q * stride + k0, w, T(0));
          if (zx) std::fill_n(dzx + ro + q * stride + k0, w, T(0));
        }
        continue;
      }
      T ah, bh, ax = 0, bx = 0;
      row_means(ln_part_h, n, ah, bh);
      if (zx) row_means(ln_part_x, n, ax, bx);
      const T hm = mh[n], hr = rh[n], xm = zx ? mx[n] : T(0), xr = zx ? rx[n] : T(1);
      for (int q = 0; q < nb; ++q) {
        const int64_t o = ro + q * stride + k0;
        const T* d = dy + o;
        const T* h = zh + ro + (zh_blocked ? nb * k0 + q * w : q * stride + k0);
        const T* ghq = gh + q * stride + k0;
        T* oh = dzh + o;
        if (zx) {
          const T* x = zx + o;
          const T* gxq = gx + q * stride + k0;
          T* ox = dzx + o;
#pragma omp simd
          for (int j = 0; j < w; ++j) {
            const T dj = d[j];
            ox[j] = xr * (dj * gxq[j] - ax - ((x[j] - xm) * xr) * bx);
            oh[j] = hr * (dj * ghq[j] - ah - ((h[j] - hm) * hr) * bh);
          }
        } else {
#pragma omp simd
          for (int j = 0; j < w; ++j) oh[j] = hr * (d[j] * ghq[j] - ah - ((h[j] - hm) * hr) * bh);
        }
      }
    }
  }

  // tanh(gamma_c * c-hat + beta_c), or tanh(c) without a normalization of c, for the units
  // [k0, k1) of one row of raw c: BN through the step's coefficients (kc * c + sc), LN through
  // the row's mean m and rstd r.
  void c_tilde(const T* c, int k0, int k1, const T* kc, const T* sc, T m, T r, const T* gc,
               const T* bc, T* out) const {
    if (norms.c == Norm::bn_step) {
#pragma omp simd
      for (int j = k0; j < k1; ++j) out[j] = kc[j] * c[j] + sc[j];
    } else if (norms.c == Norm::ln) {
#pragma omp simd
      for (int j = k0; j < k1; ++j) out[j] = gc[j] * ((c[j] - m) * r) + bc[j];
    } else {
      std::copy_n(c + k0, k1 - k0, out + k0);
    }
    kern::tanh_inplace(out + k0, k1 - k0);
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

    // Input projection for all steps at once, then its normalization (outside the recurrence);
    // or, with few input features, per step in the loop.
    const bool inl = cc.inline_x;
    // LN of an inline W x: the mean over the G features of each row is x . wbar and its variance
    // x^T Cov(W) x, with wbar and Cov(W) over W's rows [C + C*C], in double.
    std::vector<double> wmom;
    if (inl) {
      cc.Wt.resize(static_cast<size_t>(C) * G);
      for (int j = 0; j < G; ++j)
        for (int c = 0; c < C; ++c) cc.Wt[static_cast<size_t>(c) * G + j] = W[static_cast<size_t>(j) * C + c];
      if (norms.x == Norm::ln) {
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
    }
    if (!inl) blas::gemm(false, true, Tc * N, G, C, T(1), X, C, W, C, T(0), cc.Ax.data(), G);
    switch (inl ? Norm::none : norms.x) {
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
    const int P = cc.P;
    ensure(ln_part_h, static_cast<size_t>(P) * N * 2);
    ensure(ln_part_c, static_cast<size_t>(P) * N * 2);
    ensure(ln_part_x, static_cast<size_t>(P) * N * 2);
    if (Tc >= kPackMinSteps) ensure(r_packed, static_cast<size_t>(G) * H);
    ensure(rh_step, static_cast<size_t>(N) * G);
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
      std::vector<T> rowm(N), rowr(N), rowmx(N), rowrx(N);  // LN row statistics of this step
      std::vector<T> kx(G), kh(G), sh(G), kc(H), sc(H);     // per-step coefficients, owned columns
      std::vector<double> xmom(static_cast<size_t>(C) + C * C);  // inline BN of W x: input moments
      // This thread's rows of R packed together (gate q's units k0..k1 at rows q*w..), for one
      // product per step instead of ng.
      // Slices of the layer's workspaces (thread p's at ng*k0 rows of R, columns of R h).
      const int W4 = ng * w;
      const bool pack = Tc >= kPackMinSteps;
      T* Rp = r_packed.data() + static_cast<size_t>(ng) * k0 * H;    // [W4, H]
      T* rscr = rh_step.data() + static_cast<size_t>(N) * ng * k0;    // [N, W4]
      // (The product goes to this scratch, hot in cache, and is copied to Hh in the gate pass:
      // written straight to Hh's fresh lines, the GEMM stalls on them — measured slower.)
      const int ldr = W4;
      if (pack)
        for (int q = 0; q < ng; ++q)
          std::copy_n(R + static_cast<size_t>(q * H + k0) * H, static_cast<size_t>(w) * H,
                      Rp + static_cast<size_t>(q) * w * H);
      const bool ln_gates = norms.h == Norm::ln, lnx = norms.x == Norm::ln;
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
        T* ax = cc.Ax.data() + (inl ? p * NG : t * NG);
        if (inl)
          for (int q = 0; q < ng; ++q)
            input_projection(X + static_cast<int64_t>(t) * N * C, cc.Wt.data(), N, C, G, q * H + k0, w, ax);
        if (norms.x == Norm::bn_step && inl && batch) {
          // z = W x is linear in the few inputs: its column sums follow from the step's input
          // moments (in double), without a pass over z.
          input_moments(X + static_cast<int64_t>(t) * N * C, vm, N, C, xmom.data());
          T* m = cc.mx.data() + static_cast<size_t>(t) * G;
          T* r = cc.rx.data() + static_cast<size_t>(t) * G;
          for (int q = 0; q < ng; ++q) {
            const int j0 = q * H + k0;
            for (int j = 0; j < w; ++j)
              linear_stats(W + static_cast<size_t>(j0 + j) * C, C, xmom.data(), cnt, &sm[j], &sv[j]);
            block_stats_given(sm.data(), sv.data(), w, cnt, L.mx, L.vx, L.rows_x, tg, G, j0,
                              update_running, m + j0, r + j0);
          }
        } else if (norms.x == Norm::bn_step && !sync_xh) {
          T* m = cc.mx.data() + static_cast<size_t>(t) * G;
          T* r = cc.rx.data() + static_cast<size_t>(t) * G;
          for (int q = 0; q < ng; ++q) {
            const int j0 = q * H + k0;
            block_stats(ax + j0, N, G, w, vm, cnt, batch, L.mx, L.vx, L.rows_x, tg, G, j0,
                        update_running, sm.data(), sv.data(), m + j0, r + j0);
          }
        }
        // Recurrent product for the owned columns: rh [N, ng*w] (stride ldr), gate q's columns at
        // q*w, raw.
        T* rh = rscr;
        if (w > 0 && pack) {
          blas::gemm(false, true, N, W4, H, T(1), hprev, H, Rp, H, T(0), rh, ldr);
        } else if (w > 0) {
          for (int q = 0; q < ng; ++q)
            blas::gemm(false, true, N, w, H, T(1), hprev, H, R + static_cast<size_t>(q * H + k0) * H,
                       H, T(0), rh + q * w, ldr);
        }
        if (sync_xh) {
          double* red = red_xh.data();
          const bool xs = norms.x == Norm::bn_step, hs = norms.h == Norm::bn_step;
          for (int q = 0; q < ng; ++q) {
            const int j0 = q * H + k0;
            if (xs) kern::col_sums_serial(ax + j0, N, G, w, vm, red + j0, red + G + j0);
            if (hs) kern::col_sums_serial(rh + q * w, N, ldr, w, vm, red + 2 * G + j0, red + 3 * G + j0);
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
            block_stats(rh + q * w, N, ldr, w, vm, cnt, batch, L.mh, L.vh, L.rows_h, tg, G, j0,
                        update_running, sm.data(), sv.data(), m + j0, r + j0);
          }
        } else if (norms.h == Norm::ln) {  // row statistics over all units: one barrier
          ln_partial(rh, ldr, 0, w, ng, w, vm, N, p, ln_part_h.data());
          if (lnx && !inl) ln_partial(ax, G, k0, w, ng, H, vm, N, p, ln_part_x.data());
          if (P > 1) {
#pragma omp barrier
          }
          T* mh = cc.mh.data() + static_cast<size_t>(t) * N;
          T* rhs = cc.rh.data() + static_cast<size_t>(t) * N;
          ln_row_stats(G, vm, N, P, ln_part_h.data(), rowm.data(), rowr.data());
          if (lnx && !inl) ln_row_stats(G, vm, N, P, ln_part_x.data(), rowmx.data(), rowrx.data());
          if (lnx && inl)  // z = W x: each row's moments from the input row and W's moments
            for (int n = 0; n < N; ++n) {
              if (!vm[n]) {
                rowmx[n] = 0;
                rowrx[n] = 1;
                continue;
              }
              const T* xr = X + (static_cast<int64_t>(t) * N + n) * C;
              double m = 0, v = 0;
              for (int c = 0; c < C; ++c) {
                m += wmom[c] * xr[c];
                for (int e = 0; e < C; ++e) v += wmom[C + c * C + e] * xr[c] * xr[e];
              }
              rowmx[n] = static_cast<T>(m);
              rowrx[n] = static_cast<T>(1.0 / std::sqrt(std::max(0.0, v) + cfg.eps));
            }
          if (p == 0) {
            std::copy_n(rowm.data(), N, mh);
            std::copy_n(rowr.data(), N, rhs);
            if (lnx) {
              std::copy_n(rowmx.data(), N, cc.mx.data() + static_cast<size_t>(t) * N);
              std::copy_n(rowrx.data(), N, cc.rx.data() + static_cast<size_t>(t) * N);
            }
          }
        }

        // Gate pre-activations and the raw cell state for the owned units. The caches keep W x and
        // R h raw: the normalization is applied here, on the fly. BN (and no normalization) as
        // per-column coefficients, pre = kx * Wx + kh * Rh + sh; LN with each row's mean and rstd.
        if (!ln_gates) {
          const T* mxt = norms.x == Norm::bn_step ? cc.mx.data() + static_cast<size_t>(t) * G : nullptr;
          const T* rxt = norms.x == Norm::bn_step ? cc.rx.data() + static_cast<size_t>(t) * G : nullptr;
          const T* mht = norms.h == Norm::bn_step ? cc.mh.data() + static_cast<size_t>(t) * G : nullptr;
          const T* rht = norms.h == Norm::bn_step ? cc.rh.data() + static_cast<size_t>(t) * G : nullptr;
          for (int q = 0; q < ng; ++q)
            for (int j = q * H + k0; j < q * H + k1; ++j) {
              T s = b[j];
              T a = gx ? gx[j] : T(1);  // bnx-seq: Ax holds x-hat already
              if (mxt) {
                a *= rxt[j];
                s -= a * mxt[j];
              }
              T c = gh ? gh[j] : T(1);
              if (mht) {
                c *= rht[j];
                s -= c * mht[j];
              }
              kx[j] = a;
              kh[j] = c;
              sh[j] = s;
            }
        }
        for (int n = 0; n < N; ++n) {
          T* g = Gt + static_cast<int64_t>(n) * G;
          T* cn = cnext + static_cast<int64_t>(n) * H;
          const T* cp = cprev + static_cast<int64_t>(n) * H;
          T* axn = ax + static_cast<int64_t>(n) * G;
          const T* ahr = rh + static_cast<int64_t>(n) * ldr;  // R h of this row, [ng][w]
          if (Hht)  // raw R h for backward
            for (int q = 0; q < ng; ++q)
              std::copy_n(ahr + q * w, w, Hht + static_cast<int64_t>(n) * G + hh_offset(cc, q, k0, w));
          if (t + 1 < Tc) {  // the next step's rows (from memory) while this row computes
            const T* nx = inl ? nullptr : axn + NG;
            const T* ng_ = g + NG;
            const T* nh = Hht ? Hht + static_cast<int64_t>(n) * G + NG : nullptr;
            for (int q = 0; q < ng; ++q)
              for (int j = 0; j < w; j += 64 / static_cast<int>(sizeof(T))) {
                if (nx) __builtin_prefetch(nx + q * H + k0 + j, 1, 3);
                __builtin_prefetch(ng_ + q * H + k0 + j, 1, 3);
                if (nh) __builtin_prefetch(nh + hh_offset(cc, q, k0, w) + j, 1, 3);
              }
          }
          if (!vm[n]) {  // padded: carry the state, no gates
            for (int q = 0; q < ng; ++q) std::fill_n(g + q * H + k0, w, T(0));
            std::copy_n(cp + k0, w, cn + k0);
            continue;
          }
          if (ln_gates) {
            const T mh = rowm[n], rr = rowr[n];
            const T mx = lnx ? rowmx[n] : T(0), rx = lnx ? rowrx[n] : T(1);
            for (int q = 0; q < ng; ++q) {
              const int j0 = q * H + k0;
              T* gq = g + j0;
              const T* xq = axn + j0;
              const T* hq = ahr + q * w;
              const T* gxq = lnx ? gx + j0 : nullptr;
              const T* ghq = gh + j0;
              const T* bq = b + j0;
              if (lnx) {
#pragma omp simd
                for (int j = 0; j < w; ++j)
                  gq[j] = gxq[j] * ((xq[j] - mx) * rx) + ghq[j] * ((hq[j] - mh) * rr) + bq[j];
              } else {
#pragma omp simd
                for (int j = 0; j < w; ++j) gq[j] = xq[j] + ghq[j] * ((hq[j] - mh) * rr) + bq[j];
              }
            }
          } else {
            for (int q = 0; q < ng; ++q) {
              const int j0 = q * H + k0;
              T* gq = g + j0;
              const T* xq = axn + j0;
              const T* hq = ahr + q * w;
              const T *kxq = kx.data() + j0, *khq = kh.data() + j0, *shq = sh.data() + j0;
#pragma omp simd
              for (int j = 0; j < w; ++j) gq[j] = kxq[j] * xq[j] + khq[j] * hq[j] + shq[j];
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

        // Statistics of c for its output normalization (the raw c goes to the next step and stays
        // in Cs; h = o * tanh(gamma_c * c-hat + beta_c) is formed from it below).
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
          for (int j = k0; j < k1; ++j) {  // gamma_c * c-hat + beta_c = kc * c + sc
            kc[j] = gc[j] * r[j];
            sc[j] = bc[j] - kc[j] * m[j];
          }
        } else if (norms.c == Norm::ln) {
          ln_partial(cnext, H, k0, w, 1, H, vm, N, p, ln_part_c.data());
          if (P > 1) {
#pragma omp barrier
          }
          ln_row_stats(H, vm, N, P, ln_part_c.data(), rowm.data(), rowr.data());
          if (p == 0) {
            std::copy_n(rowm.data(), N, cc.mc.data() + static_cast<size_t>(t) * N);
            std::copy_n(rowr.data(), N, cc.rc.data() + static_cast<size_t>(t) * N);
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
          const bool lnc = norms.c == Norm::ln;
          c_tilde(cnext + static_cast<int64_t>(n) * H, k0, k1, kc.data(), sc.data(),
                  lnc ? rowm[n] : T(0), lnc ? rowr[n] : T(1), gc, bc, hn);
#pragma omp simd
          for (int j = k0; j < k1; ++j) hn[j] *= o[j];
        }
#pragma omp barrier
      }
    }
  }

  void allocate_cache(int k, int Tc, int N, bool copy_input, bool inline_x, bool train_mode_for_alloc) {
    LayerCache<T>& cc = caches[k];
    const size_t H = cfg.hidden_size, G = ng * H, C = layers[k].C;
    const size_t TN = static_cast<size_t>(Tc) * N;
    if (copy_input) ensure(cc.X, TN * C);
    cc.inline_x = inline_x;
    cc.hh_blocked = norms.h != Norm::none && x_in_loop(train_mode_for_alloc, inline_x);
    cc.P = time_loop_threads(static_cast<int>(H));
    ensure(cc.Ax, inline_x ? static_cast<size_t>(cc.P) * N * G : TN * G);
    ensure(cc.G, TN * G);
    if (norms.h != Norm::none) ensure(cc.Hh, TN * G);
    ensure(cc.Hs, (Tc + 1) * N * H);
    ensure(cc.Cs, (Tc + 1) * N * H);
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
      allocate_cache(k, chunk, N, keep && k == 0, inline_input(k, train), train);
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
    const int P = cc.P;  // the forward's partition of the units (Hh, the inline W x scratch)
    ensure(bwd_rows, 4 * static_cast<size_t>(P) * NH);
    ensure(s1, G);
    ensure(s2, G);
    const T* X = k == 0 ? cc.X.data() : caches[k - 1].Hs.data() + NH;

    // Per-step input normalization (BN_t, LN): its backward runs inside the time loop on the
    // step's rows while they are in cache, writing d(W x) over W x in Ax; dpre's place in G
    // then takes dRh. Synchronized BN needs the group's sums first: those steps' column sums are
    // kept and the backward runs after the loop (one exchange per layer), in place on G.
    // With W x formed inline (few inputs), dW and dx also accumulate per step, and G takes dRh.
    const bool inl = cc.inline_x;
    const bool x_in_loop = this->x_in_loop(batch, inl);
    if (norms.x == Norm::bn_step && !x_in_loop) {
      ensure(xsum1, static_cast<size_t>(nT) * G);
      ensure(xsum2, static_cast<size_t>(nT) * G);
    }
    const bool probe = probe_out && probe_layer == k;
    if (probe) probe_sq.assign(static_cast<size_t>(nT) * P * N, 0.0);
    // Same ownership of hidden units as the forward loop; one barrier per step makes dRh complete
    // before each thread computes its columns of dh_{t-1} = dRh R.
    ensure(ln_part_h, static_cast<size_t>(P) * N * 2);
    ensure(ln_part_c, static_cast<size_t>(P) * N * 2);
    ensure(ln_part_x, static_cast<size_t>(P) * N * 2);
    if (batch && synced) {
      ensure(red_xh, 4 * static_cast<size_t>(G));
      ensure(red_c, 2 * static_cast<size_t>(H));
    }
    // inline input: each thread's part of dx (its gate columns' share of d(W x) W), summed after
    if (inl && dX) ensure(dx_part, static_cast<size_t>(P) * TN * C);
#pragma omp parallel num_threads(P) if (P > 1)
    {
      const int p = P > 1 ? omp_get_thread_num() : 0;
      const std::pair<int, int> blk = unit_block(p, P, H);
      const int k0 = blk.first, k1 = blk.second;  // (no structured binding: clang 14 cannot capture one in omp simd)
      const int w = k1 - k0;
      // Thread-private copies of the [N,H] gradient rows (only the owned columns are used): rows
      // shared between the threads' columns would bounce between the cores every step.
      T* dhr = bwd_rows.data() + static_cast<size_t>(4 * p) * NH;
      T* dcr_ = dhr + NH;
      T* dcnp = dcr_ + NH;
      T* dhn = dcnp + NH;
      for (int n = 0; n < N; ++n) {
        std::copy_n(dh_rec.data() + static_cast<int64_t>(n) * H + k0, w, dhr + static_cast<int64_t>(n) * H + k0);
        std::copy_n(dc_rec.data() + static_cast<int64_t>(n) * H + k0, w, dcr_ + static_cast<int64_t>(n) * H + k0);
      }
      std::vector<double> a1(static_cast<size_t>(ng) * w + 1), a2(static_cast<size_t>(ng) * w + 1),
          a3(static_cast<size_t>(ng) * w + 1);
      std::vector<double> dW_acc(inl ? static_cast<size_t>(C) * ng * w : 0, 0.0);  // [C][ng][w]
      std::vector<T> dW_step(dW_acc.size());  // the step's part, in T over its rows
      // BN_t of an inline W x: d(W x) = ka*dpre - km1 - x-hat*km2, x-hat = (z - kmu)*krs, formed
      // row by row inside input_grads (never stored) [ng][w]
      std::vector<T> ka(inl ? static_cast<size_t>(ng) * w : 0), km1(ka.size()), km2(ka.size()),
          kmu(ka.size()), krs(ka.size()), drow(ka.size());
      // inline input: dW += d(W x)_t^T x_t and this thread's part of dx_t, from d(W x) [N,G]
      // (or, with bn, from dpre and the raw W x z through the BN_t backward above)
      auto input_grads = [&](int t, const uint8_t* vm, const T* dAx, const T* z, bool bn) {
        const T* Xt = X + static_cast<int64_t>(t) * N * C;
        T* dxp = dX ? dx_part.data() + (static_cast<size_t>(p) * TN + static_cast<size_t>(t) * N) * C
                    : nullptr;
        std::fill(dW_step.begin(), dW_step.end(), T(0));
        for (int n = 0; n < N; ++n) {
          if (!vm[n]) {
            if (dxp) std::fill_n(dxp + static_cast<int64_t>(n) * C, C, T(0));
            continue;
          }
          const T* d = dAx + static_cast<int64_t>(n) * G;
          const T* xr = Xt + static_cast<int64_t>(n) * C;
          if (bn) {
            const T* zr = z + static_cast<int64_t>(n) * G;
            for (int q = 0; q < ng; ++q) {
              const T* dq = d + q * H + k0;
              const T* zq = zr + q * H + k0;
              const size_t o = static_cast<size_t>(q) * w;
#pragma omp simd
              for (int j = 0; j < w; ++j)
                drow[o + j] = ka[o + j] * dq[j] - km1[o + j] - ((zq[j] - kmu[o + j]) * krs[o + j]) * km2[o + j];
            }
          }
          for (int c = 0; c < C; ++c) {
            const T xc = xr[c];
            T acc = 0;
            for (int q = 0; q < ng; ++q) {
              const T* dq = bn ? drow.data() + static_cast<size_t>(q) * w : d + q * H + k0;
              T* wq = dW_step.data() + (static_cast<size_t>(c) * ng + q) * w;
              const T* wt = cc.Wt.data() + static_cast<int64_t>(c) * G + q * H + k0;
#pragma omp simd reduction(+ : acc)
              for (int j = 0; j < w; ++j) {
                wq[j] += dq[j] * xc;
                acc += dq[j] * wt[j];
              }
            }
            if (dxp) dxp[static_cast<int64_t>(n) * C + c] = acc;
          }
        }
        for (size_t i = 0; i < dW_acc.size(); ++i) dW_acc[i] += dW_step[i];
      };
      std::vector<double> db_acc(static_cast<size_t>(ng) * w, 0.0), dgx_acc(static_cast<size_t>(ng) * w, 0.0);
      std::vector<T> kc(H), sc(H);  // BN of c: gamma_c * c-hat + beta_c = kc * c + sc
      std::vector<T> u1(static_cast<size_t>(ng) * w), u2(u1.size()), u3(u1.size());
      for (int t = nT - 1; t >= 0; --t) {
        const uint8_t* vm = valid.data() + static_cast<size_t>(t) * N;
        T* Gt = cc.G.data() + t * NG;
        const T* cprev = cc.Cs.data() + t * NH;
        const T* cnext = cc.Cs.data() + (t + 1) * NH;
        T* axt = cc.Ax.data() + (inl ? p * NG : t * NG);  // W x of this step (raw), later d(W x)
        if (inl && (norms.x == Norm::bn_step || norms.x == Norm::ln))  // recomputed, not stored
          for (int q = 0; q < ng; ++q)
            input_projection(X + static_cast<int64_t>(t) * N * C, cc.Wt.data(), N, C, G,
                             q * H + k0, w, axt);
        const T* dYt = dYin ? dYin + t * NH : nullptr;
        // the output normalization of c from the raw c (Cs) and the step's statistics
        const T* mct = norms.c == Norm::bn_step ? cc.mc.data() + static_cast<size_t>(t) * H
                       : norms.c == Norm::ln    ? cc.mc.data() + static_cast<size_t>(t) * N
                                                : nullptr;
        const T* rct = norms.c == Norm::bn_step ? cc.rc.data() + static_cast<size_t>(t) * H
                       : norms.c == Norm::ln    ? cc.rc.data() + static_cast<size_t>(t) * N
                                                : nullptr;
        if (norms.c == Norm::bn_step)
          for (int j = k0; j < k1; ++j) {  // gamma_c * c-hat + beta_c = kc * c + sc
            kc[j] = gc[j] * rct[j];
            sc[j] = bc[j] - kc[j] * mct[j];
          }

        // h = o * tanh(c~): gradient into o (written over o in G) and into c~ (dcn).
        for (int n = 0; n < N; ++n) {
          if (!vm[n]) continue;
          T* dh = dhr + static_cast<int64_t>(n) * H;
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
          T* dc = dcnp + static_cast<int64_t>(n) * H;
          // dc holds tanh(c~) first, then the gradient
          const bool lnc = norms.c == Norm::ln;
          c_tilde(cnext + static_cast<int64_t>(n) * H, k0, k1, kc.data(), sc.data(),
                  lnc ? mct[n] : T(0), lnc ? rct[n] : T(1), gc, bc, dc);
#pragma omp simd
          for (int j = k0; j < k1; ++j) {
            const T tc = dc[j];
            const T ov = o[j];
            dc[j] = dh[j] * ov * (T(1) - tc * tc);
            o[j] = dh[j] * tc * ov * (T(1) - ov);
          }
        }
        // through the normalization of c
        if (norms.c == Norm::bn_step) {
          kern::col_grad_sums_serial(dcnp + k0, cnext + k0, N, H, w, vm, a1.data(), a2.data(),
                                     mct + k0, rct + k0);
        } else if (norms.c == Norm::ln) {  // column sums (dgamma_c, dbeta_c) and row sums, one pass
          T* s1c = u1.data();
          T* s2c = u2.data();
          std::fill_n(s1c, w, T(0));
          std::fill_n(s2c, w, T(0));
          const T* gcq = gc + k0;
          for (int n = 0; n < N; ++n) {
            double* part = ln_part_c.data() + (static_cast<size_t>(p) * N + n) * 2;
            part[0] = part[1] = 0;
            if (!vm[n]) continue;
            const T* d = dcnp + static_cast<int64_t>(n) * H + k0;
            const T* ct = cnext + static_cast<int64_t>(n) * H + k0;
            const T m = mct[n], r = rct[n];
            T r1 = 0, r2 = 0;
#pragma omp simd reduction(+ : r1, r2)
            for (int j = 0; j < w; ++j) {
              const T xh = (ct[j] - m) * r, gd = d[j] * gcq[j];
              s1c[j] += d[j];
              s2c[j] += d[j] * xh;
              r1 += gd;
              r2 += gd * xh;
            }
            part[0] = r1;
            part[1] = r2;
          }
          for (int j = 0; j < w; ++j) {
            a1[j] = s1c[j];
            a2[j] = s2c[j];
          }
        }
        if (norms.c != Norm::none) {
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
            kern::col_norm_backward_serial(dcnp + k0, cnext + k0, N, H, w, vm, gc + k0,
                                           rct + k0, a1.data(), a2.data(), stat_count(t), batch,
                                           dcnp + k0, mct + k0);
          } else {
            if (P > 1) {
#pragma omp barrier
            }
            ln_bwd_finish(dcnp, cnext, H, H, k0, w, 1, H, gc, vm, N, mct, rct, P,
                          ln_part_c.data(), dcnp);
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
        // statistics of the step: per column [G] for BN_t, per row [N] for LN
        const bool hln = norms.h == Norm::ln, xln = norms.x == Norm::ln;
        const size_t hso = static_cast<size_t>(t) * (hln ? N : G);
        const size_t xso = static_cast<size_t>(t) * (xln ? N : G);
        const T* mht = hn ? cc.mh.data() + hso : nullptr;
        const T* rht = hn ? cc.rh.data() + hso : nullptr;
        const T* mxt = xbn ? cc.mx.data() + xso : nullptr;
        const T* rxt = xbn ? cc.rx.data() + xso : nullptr;
        const size_t W4 = static_cast<size_t>(ng) * w;
        // a1: sum dpre, a2: sum dpre * x-hat of R h, a3: sum dpre * x-hat of W x (owned columns)
        std::fill(u1.begin(), u1.end(), T(0));
        std::fill(u2.begin(), u2.end(), T(0));
        std::fill(u3.begin(), u3.end(), T(0));
        for (int n = 0; n < N; ++n) {
          T* g = Gt + static_cast<int64_t>(n) * G;
          double* part_h = hln ? ln_part_h.data() + (static_cast<size_t>(p) * N + n) * 2 : nullptr;
          double* part_x = xln ? ln_part_x.data() + (static_cast<size_t>(p) * N + n) * 2 : nullptr;
          if (!vm[n]) {
            for (int q = 0; q < ng; ++q) std::fill_n(g + q * H + k0, w, T(0));
            if (part_h) part_h[0] = part_h[1] = 0;
            if (part_x) part_x[0] = part_x[1] = 0;
            continue;
          }
          if (t > 0) {  // the previous step's rows (from memory) while this row computes
            constexpr int cl = 64 / static_cast<int>(sizeof(T));
            const int64_t rg = static_cast<int64_t>(n) * G - NG, rh = static_cast<int64_t>(n) * H - NH;
            for (int q = 0; q < ng; ++q)
              for (int j = 0; j < w; j += cl) {
                __builtin_prefetch(Gt + rg + q * H + k0 + j, 1, 3);
                if (xbn && !inl) __builtin_prefetch(axt + rg + q * H + k0 + j, 1, 3);
                if (hn) __builtin_prefetch(Hht + rg + hh_offset(cc, q, k0, w) + j, 0, 3);
              }
            for (int j = k0; j < k1; j += cl) {
              __builtin_prefetch(cprev + rh + j, 0, 3);
              if (dYt) __builtin_prefetch(dYt + rh + j, 0, 3);
            }
          }
          T* dcr = dcr_ + static_cast<int64_t>(n) * H;
          const T* dcv = dcnp + static_cast<int64_t>(n) * H;
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
          // The column sums of dpre over the step's rows (db; dgamma and the BN backward of R h
          // and W x, x-hat formed from the raw values) while the row is in cache: accumulated
          // in T over the step's rows (16 float lanes; as PyTorch's BN backward), then in double.
          const T* xr = axt + static_cast<int64_t>(n) * G;
          const T* hr = hn ? Hht + static_cast<int64_t>(n) * G : nullptr;
          const T hm = hln ? mht[n] : T(0), hs = hln ? rht[n] : T(1);
          const T xm = xln ? mxt[n] : T(0), xs = xln ? rxt[n] : T(1);
          T r1 = 0, r2 = 0, r3 = 0, r4 = 0;  // LN: sum dpre*g_h, dpre*g_h*x-hat_h; same for x
          for (int q = 0; q < ng; ++q) {
            const int j0 = q * H + k0;
            T* s1q = u1.data() + q * w;
            T* s2q = u2.data() + q * w;
            T* s3q = u3.data() + q * w;
            const T* gq = g + j0;
            const T* zh = hr ? hr + hh_offset(cc, q, k0, w) : nullptr;
            const T* zx = xr + j0;
            if (hln && xln) {  // LN: the column sums and this thread's part of the row sums
              const T* ghq = gh + j0;
              const T* gxq = gx + j0;
#pragma omp simd reduction(+ : r1, r2, r3, r4)
              for (int j = 0; j < w; ++j) {
                const T d = gq[j], xh = (zh[j] - hm) * hs, xx = (zx[j] - xm) * xs;
                s1q[j] += d;
                s2q[j] += d * xh;
                s3q[j] += d * xx;
                const T dh = d * ghq[j], dx = d * gxq[j];
                r1 += dh;
                r2 += dh * xh;
                r3 += dx;
                r4 += dx * xx;
              }
            } else if (hln) {
              const T* ghq = gh + j0;
#pragma omp simd reduction(+ : r1, r2)
              for (int j = 0; j < w; ++j) {
                const T d = gq[j], xh = (zh[j] - hm) * hs;
                s1q[j] += d;
                s2q[j] += d * xh;
                const T dh = d * ghq[j];
                r1 += dh;
                r2 += dh * xh;
              }
            } else {  // BN (or none): per-column statistics
#pragma omp simd
              for (int j = 0; j < w; ++j) s1q[j] += gq[j];
              if (zh) {
                const T* mu = mht + j0;
                const T* rs = rht + j0;
#pragma omp simd
                for (int j = 0; j < w; ++j) s2q[j] += gq[j] * ((zh[j] - mu[j]) * rs[j]);
              }
              if (xbn) {
                const T* mu = mxt + j0;
                const T* rs = rxt + j0;
#pragma omp simd
                for (int j = 0; j < w; ++j) s3q[j] += gq[j] * ((zx[j] - mu[j]) * rs[j]);
              }
            }
          }
          if (part_h) {
            part_h[0] = r1;
            part_h[1] = r2;
          }
          if (part_x) {
            part_x[0] = r3;
            part_x[1] = r4;
          }
        }
        for (size_t j = 0; j < W4; ++j) {
          a1[j] = u1[j];
          a2[j] = u2[j];
          a3[j] = u3[j];
          db_acc[j] += a1[j];
        }
        if (inl && !xbn) input_grads(t, vm, Gt, nullptr, false);  // d(W x) = dpre, before dRh
        if (xbn)
          for (int q = 0; q < ng; ++q) {
            for (int j = 0; j < w; ++j) dgx_acc[q * w + j] += a3[q * w + j];
            const int j0 = q * H + k0;
            if (norms.x == Norm::bn_step && inl) {  // the coefficients of d(W x), used below
              const int64_t cnt_t = stat_count(t);
              const bool centred = batch && cnt_t > 0;
              const double inv = centred ? 1.0 / static_cast<double>(cnt_t) : 0.0;
              for (int j = 0; j < w; ++j) {
                const size_t o = static_cast<size_t>(q) * w + j;
                const T gr = gx[j0 + j] * rxt[j0 + j];
                ka[o] = gr;
                km1[o] = centred ? gr * static_cast<T>(a1[o] * inv) : T(0);
                km2[o] = centred ? gr * static_cast<T>(a3[o] * inv) : T(0);
                kmu[o] = mxt[j0 + j];
                krs[o] = rxt[j0 + j];
              }
            } else if (norms.x == Norm::bn_step && x_in_loop) {  // d(W x) over W x, in cache
              kern::col_norm_backward_serial(Gt + j0, axt + j0, N, G, w, vm, gx + j0, rxt + j0,
                                             a1.data() + q * w, a3.data() + q * w, stat_count(t),
                                             batch, axt + j0, mxt + j0);
            } else if (norms.x == Norm::bn_step) {  // after the loop, from the group's sums
              const size_t off = static_cast<size_t>(t) * G + j0;
              for (int j = 0; j < w; ++j) {
                xsum1[off + j] = a1[q * w + j];
                xsum2[off + j] = a3[q * w + j];
              }
            }
          }
        if (inl && norms.x == Norm::bn_step) input_grads(t, vm, Gt, axt, true);  // before dRh
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
          // dRh goes over dpre in G when d(W x) is already out of it, else over the raw R h in Hh.
          dRh = x_in_loop ? Gt : Hht;
          for (int q = 0; q < ng; ++q) {
            const int j0 = q * H + k0;
            if (norms.h == Norm::bn_step)
              kern::col_norm_backward_serial(Gt + j0, Hht + hh_offset(cc, q, k0, w), N, G, w, vm,
                                             gh + j0, rht + j0, a1.data() + q * w,
                                             a2.data() + q * w, stat_count(t), batch, dRh + j0,
                                             mht + j0);
          }
          if (hln) {
            // The row sums (taken in the gate pass) over all threads, then d(W x) over W x in Ax
            // and dRh in one pass: both read dpre, each element read before it is written.
            if (P > 1) {
#pragma omp barrier
            }
            ln_bwd_rows(Gt, Hht, cc.hh_blocked, xln ? axt : nullptr, G, k0, w, ng, H, gh, gx, vm, N,
                        mht, rht, mxt, rxt, P, dRh, axt);
          }
        }
        if (inl && xln) input_grads(t, vm, axt, nullptr, false);
#pragma omp barrier
        // dh_{t-1} = dRh R for the owned columns; padded rows pass their gradient through.
        if (w > 0) {
          blas::gemm(false, false, N, w, G, T(1), dRh, G, R + k0, H, T(0), dhn + k0, H);
          for (int n = 0; n < N; ++n)
            if (vm[n])
              std::copy_n(dhn + static_cast<int64_t>(n) * H + k0, w,
                          dhr + static_cast<int64_t>(n) * H + k0);
        }
      }
      for (int q = 0; q < ng; ++q)
        for (int j = 0; j < w; ++j) {
          db[q * H + k0 + j] += static_cast<T>(db_acc[q * w + j]);
          if (dgx) dgx[q * H + k0 + j] += static_cast<T>(dgx_acc[q * w + j]);
          if (inl)
            for (int c = 0; c < C; ++c)
              dW[static_cast<size_t>(q * H + k0 + j) * C + c] +=
                  static_cast<T>(dW_acc[(static_cast<size_t>(c) * ng + q) * w + j]);
        }
      for (int n = 0; n < N; ++n) {
        std::copy_n(dhr + static_cast<int64_t>(n) * H + k0, w, dh_rec.data() + static_cast<int64_t>(n) * H + k0);
        std::copy_n(dcr_ + static_cast<int64_t>(n) * H + k0, w, dc_rec.data() + static_cast<int64_t>(n) * H + k0);
      }
    }
    if (probe) {  // batch mean over valid rows of ||dL/dh_t||
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
    const T* dRhAll = norms.h != Norm::none && !x_in_loop ? cc.Hh.data() : cc.G.data();
    blas::gemm(true, false, G, H, static_cast<int>(TN), T(1), dRhAll, G, cc.Hs.data(), H, T(1), dR,
               H);
    // Input normalization backward, in place on G (dpre -> d(W x)).
    switch (norms.x) {
      case Norm::none: break;
      case Norm::bn_step:  // the column sums were taken in the time loop
        if (x_in_loop) break;
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
                                         xsum2.data() + static_cast<size_t>(t) * G, stat_count(t),
                                         batch, d, cc.mx.data() + static_cast<size_t>(t) * G);
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
    if (inl) {  // dW accumulated in the loop; dx = the threads' parts
      if (dX)
        for (int64_t i = 0; i < TN * C; ++i) {
          T v = 0;
          for (int pp = 0; pp < P; ++pp) v += dx_part[static_cast<size_t>(pp) * TN * C + i];
          dX[i] = v;
        }
      return;
    }
    const T* dAx = x_in_loop ? cc.Ax.data() : cc.G.data();  // d(W x) [T,N,G]
    blas::gemm(true, false, G, C, static_cast<int>(TN), T(1), dAx, G, X, C, T(1), dW, C);
    if (dX) blas::gemm(false, false, static_cast<int>(TN), C, G, T(1), dAx, G, W, C, T(0), dX, C);
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
  const int N = I.N_, H = I.cfg.hidden_size, G = I.ng * H;
  const size_t TN = static_cast<size_t>(I.T_) * N;
  // The caches hold raw values (bnx-seq's Ax excepted): form x-hat from the step's statistics.
  Norm norm = Norm::none;
  const T *z = nullptr, *mean = nullptr, *rstd = nullptr;
  int F = 0;
  std::vector<T> zx;  // W x of every step when the forward formed it inline
  if (which == "x") {
    norm = I.norms.x, z = cc.Ax.data(), mean = cc.mx.data(), rstd = cc.rx.data(), F = G;
    if (cc.inline_x && norm != Norm::none) {
      const int C = I.layers[layer].C;
      const T* X = layer == 0 ? cc.X.data() : I.caches[layer - 1].Hs.data() + static_cast<size_t>(N) * H;
      zx.resize(TN * G);
      for (int t = 0; t < I.T_; ++t)
        Impl::input_projection(X + static_cast<size_t>(t) * N * C, cc.Wt.data(), N, C, G, 0, G,
                               zx.data() + static_cast<size_t>(t) * N * G);
      z = zx.data();
    }
  } else if (which == "h") {
    norm = I.norms.h, z = cc.Hh.data(), mean = cc.mh.data(), rstd = cc.rh.data(), F = G;
    if (cc.hh_blocked && norm != Norm::none) {  // back to gate order
      zx.resize(TN * G);
      for (int p = 0; p < cc.P; ++p) {
        const auto [k0, k1] = Impl::unit_block(p, cc.P, H);
        for (size_t r = 0; r < TN; ++r)
          for (int q = 0; q < I.ng; ++q)
            std::copy_n(cc.Hh.data() + r * G + I.hh_offset(cc, q, k0, k1 - k0), k1 - k0,
                        zx.data() + r * G + q * H + k0);
      }
      z = zx.data();
    }
  } else if (which == "c") {
    norm = I.norms.c, z = cc.Cs.data() + static_cast<size_t>(N) * H, mean = cc.mc.data(),
    rstd = cc.rc.data(), F = H;
  }
  if (norm == Norm::none) return {};
  if (norm == Norm::bn_seq) return {cc.Ax.data(), TN * G};
  auto& out = I.xhat_view;
  out.assign(TN * F, T(0));
  for (size_t r = 0; r < TN; ++r) {
    if (!I.valid[r]) continue;
    const size_t t = r / N;
    for (int j = 0; j < F; ++j) {
      const size_t si = norm == Norm::ln ? r : t * F + j;
      out[r * F + j] = (z[r * F + j] - mean[si]) * rstd[si];
    }
  }
  return {out.data(), out.size()};
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
    for (const auto* v : {&cc.X, &cc.Ax, &cc.G, &cc.Hh, &cc.Hs, &cc.Cs, &cc.mx, &cc.rx,
                          &cc.mh, &cc.rh, &cc.mc, &cc.rc})
      n += v->size();
  return n * sizeof(T);
}

template <class T>
size_t Stack<T>::workspace_bytes() const {
  const auto& I = *impl_;
  size_t n = 0;
  for (const auto* v : {&I.dY, &I.dh_rec, &I.dc_rec, &I.bwd_rows, &I.dx_part, &I.r_packed, &I.rh_step})
    n += v->size();
  return n * sizeof(T);
}

template class Stack<float>;
template class Stack<double>;

}  // namespace rbn
