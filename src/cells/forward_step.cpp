// One layer forward through time: the input projection over all steps (or per step for few
// inputs), then one parallel region whose threads each own a block of hidden units and run the
// phases of forward_step() for every step (docs/cells.md, "Where things are").
#include <algorithm>
#include <cmath>

#include "cells/engine.hpp"
#include "cells/input_projection.hpp"
#include "cells/kernels.hpp"
#include "cells/norms.hpp"
#include "util/blas.hpp"

namespace rbn::cells {

// One layer's forward over Tc steps: what every thread reads.
template <class T>
struct Engine<T>::ForwardRun {
  int k = 0, Tc = 0, N = 0, H = 0, G = 0, C = 0;
  const T* X = nullptr;            // [Tc,N,C] input rows, in whatever order the caller gathered
  const uint8_t* valid = nullptr;  // [Tc,N]
  int64_t t0 = 0;                  // statistics row of step 0 (global time)
  bool batch = true;               // batch statistics (train mode); else population
  bool update_running = false;     // record batch statistics into the running averages
  bool inline_x = false;           // W x formed per step (LayerCache::inline_x)
  bool sparse_x = false;           // W x gathered per step (LayerCache::sparse_x)
  bool pack = false;               // R's rows packed per thread, transposed (Tc >= kPackMinSteps)
  bool sync_terms = false;         // W x / R h statistics summed over the group
  LayerTensors<const T*> prm{};
  const LayerLayout* layout = nullptr;
  LayerCache<T>* cache = nullptr;
  // [C + C*C] moments of W's rows of each LN part (LN of an inline W x; ln_part): ws.ln_w_moments
  std::vector<double>* w_moments = nullptr;
};

// Step t's rows.
template <class T>
struct Engine<T>::StepRows {
  int t = 0;
  const uint8_t* valid = nullptr;  // [N]
  int64_t count = 0;               // valid rows of this process
  int64_t row = 0;                 // statistics row
  const T* h_prev = nullptr;       // [N,H]
  const T* c_prev = nullptr;
  T* h_next = nullptr;
  T* c_next = nullptr;
  T* gates = nullptr;  // [N,G]
  T* hh = nullptr;     // [N,G] R h kept for backward (nullptr unless spec.keeps_hh())
  T* wx = nullptr;     // [N,G] W x (inline: this thread's scratch)
};

// ---- the layer ---------------------------------------------------------------------------------

// One layer over Tc steps. X [Tc,N,C]; cache.Hs[0], cache.Cs[0] hold the initial state.
// vmask [Tc,N]; tg0: global time of step 0 (population-statistics row).
template <class T>
void Engine<T>::layer_forward(int k, int Tc, int N, const T* X, const uint8_t* vmask, int64_t tg0,
                              bool batch, bool update_running) {
  LayerCache<T>& cc = caches[k];
  ForwardRun run;
  run.k = k, run.Tc = Tc, run.N = N, run.H = cfg.hidden_size, run.G = gates * cfg.hidden_size;
  run.C = layers[k].C, run.X = X, run.valid = vmask, run.t0 = tg0;
  run.batch = batch, run.update_running = update_running;
  run.inline_x = cc.inline_x, run.pack = Tc >= kPackMinSteps;
  run.sync_terms =
      batch && sync.active && (spec.x == Norm::bn_step || spec.h == Norm::bn_step);
  run.prm = layer_params(k);
  run.layout = &layers[k];
  run.cache = &cc;
  run.w_moments = ws.ln_w_moments;
  prepare_input(run);

  // The time loop runs in one parallel region. Each thread owns a block of hidden units and the
  // gate columns of each (i, f, g, o of unit k): its part of R h, the BN statistics of those
  // columns, the gates, c and h need no other thread, and one barrier per step publishes h_t.
  // LN's row statistics span all units: partial sums and one more barrier per normalization.
  const int P = cc.P, H = run.H, G = run.G;
  for (auto* part : {&ws.ln_part_h, &ws.ln_part_c, &ws.ln_part_x})
    ensure_size(*part, static_cast<size_t>(ln_parts(spec)) * P * N * 2);
  // Thread p's R^T columns [H, gates*w], rows on lines.
  const auto r_slices = run.pack ? ws.packed_slices(P, H, gates * widest_unit_block(P, H))
                                 : typename Workspace<T>::PackedSlices{};
  const bool repack = !(ws.reuse_packed && ws.packed_layer == k);  // else as the last chunk left it
  ws.reuse_packed = false;
  ws.packed_layer = run.pack ? k : -1;
  ensure_size(ws.rh_step, static_cast<size_t>(N) * G);
  if (sync.active) {
    ensure_size(sync.sums_xh, 4 * static_cast<size_t>(G));
    ensure_size(sync.sums_c, 2 * static_cast<size_t>(H));
  }
  if (fwd_scratch.size() < static_cast<size_t>(P)) fwd_scratch.resize(P);
#pragma omp parallel num_threads(P) if (P > 1)
  {
    const UnitBlock u = unit_block(P > 1 ? omp_get_thread_num() : 0, P, H);
    ForwardScratch& s = fwd_scratch[u.p];  // kept between calls: a step allocates nothing
    s.size_for(N, G, H, run.C, gates * u.w);
    // Slices of the layer's workspaces (thread p's R^T columns, its columns of R h).
    // (The product goes to this scratch, hot in cache, and is copied to Hh in the gate pass:
    // written straight to Hh's fresh lines, the GEMM stalls on them — measured slower.)
    s.rh_step = ws.rh_step.data() + static_cast<size_t>(N) * gates * u.k0;
    if (run.pack && u.w > 0 && repack) {
      s.r_cols = r_slices.slice(u.p);
      pack_recurrent_columns(run.prm.R, H, u, s.r_cols, r_slices.ld);
      s.r_op.prepare(s.r_cols, H, gates * u.w, r_slices.ld, run.N);
    }
    for (int t = 0; t < Tc; ++t) forward_step(run, u, s, t);
  }
}

// This thread's rows of R [G,H] (gate q's units k0..k1), transposed once per call into
// r_cols [H, gates*w] (leading dimension ld): the step's product h R^T then reads its right
// operand untransposed, which both GEMM backends pack faster on every call than the rows of R
// (measured: docs/performance-history.md, "The forward product's operand").
template <class T>
void Engine<T>::pack_recurrent_columns(const T* R, int H, const UnitBlock& u, T* r_cols,
                                       int ld) const {
  for (int q = 0; q < gates; ++q)
    blas::transpose(u.w, H, R + static_cast<size_t>(q * H + u.k0) * H, H, r_cols + q * u.w, ld);
}

// The input projection of all steps at once and its normalization when it spans the sequence
// (outside the recurrence); or, with few input features (inline_x) or sparse input rows
// (sparse_x: X's nonzeros by row), W^T and W's moments for the per-step projection in the loop.
template <class T>
void Engine<T>::prepare_input(ForwardRun& run) {
  LayerCache<T>& cc = *run.cache;
  const int G = run.G, C = run.C;
  const T* W = run.prm.W;
  const int64_t rows = static_cast<int64_t>(run.Tc) * run.N;
  cc.sparse_x = !run.inline_x && run.pack && spec.x != Norm::bn_seq && C >= kSparseMinInput &&
                sparse_rows(run.X, rows, C, kSparseRowNnz, cc.xs);
  run.sparse_x = cc.sparse_x;
  if (run.inline_x || run.sparse_x) {
    cc.Wt.resize(static_cast<size_t>(C) * G);
    blas::transpose(G, C, W, C, cc.Wt.data(), G);
    if (run.inline_x && spec.x == Norm::ln)
      for (int i = 0; i < ln_parts(spec); ++i) {
        const LnPart pt = ln_part(spec, i);
        weight_row_moments(W + static_cast<size_t>(pt.q0) * run.H * C, pt.nq * run.H, C,
                           run.w_moments[i]);
      }
    return;
  }
  blas::gemm(false, true, run.Tc * run.N, G, C, T(1), run.X, C, W, C, T(0), cc.wx(), G);
  // BN_t and LN of W x run per step inside the time loop, while Ax[t] is in cache.
  if (spec.x == Norm::bn_seq) {
    bn_table_stats(cc.Ax.data(), rows, run.valid, run.layout->stats_x,
                   {run.batch, run.update_running}, cc.x.mean.data(), cc.x.rstd.data());
    kern::column_normalize(cc.Ax.data(), rows, G, run.valid, cc.x.mean.data(), cc.x.rstd.data(),
                           cc.Ax.data());
  }
}

// ---- one step ----------------------------------------------------------------------------------

template <class T>
void Engine<T>::forward_step(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s, int t) {
  LayerCache<T>& cc = *run.cache;
  const int64_t NG = static_cast<int64_t>(run.N) * run.G, NH = static_cast<int64_t>(run.N) * run.H;
  StepRows st;
  st.t = t;
  st.valid = run.valid + t * run.N;
  st.count = kern::count_valid(st.valid, run.N);
  st.row = run.t0 + t;
  st.h_prev = cc.Hs.data() + t * NH;
  st.c_prev = cc.Cs.data() + t * NH;
  st.h_next = cc.Hs.data() + (t + 1) * NH;
  st.c_next = cc.Cs.data() + (t + 1) * NH;
  st.gates = cc.Gates.data() + t * NG;
  st.hh = spec.keeps_hh() ? cc.Hh.data() + t * NG : nullptr;
  st.wx = cc.wx() + (run.inline_x ? u.p * NG : t * NG);

  input_term_stats(run, u, s, st);    // (inline: W x first) BN_t statistics of W x
  recurrent_product(run, u, s, st);   // R h for the owned columns
  if (run.sync_terms)
    synced_term_stats(run, u, s, st);  // BN_t of W x and R h from the group's sums
  else
    recurrent_term_stats(run, u, s, st);  // BN_t or LN (with LN of W x) of R h
  if (spec.h != Norm::ln) term_coefficients(run, u, s, t);
  pointwise_forward(run, u, s, st);   // pre-activations, gates, c (tanh RNN: h)
  cell_norm_stats(run, u, s, st);     // statistics of c for its normalization
  hidden_output(run, u, s, st);       // h = o * tanh(c~)
  zoneout_forward(run, u, st);        // keep some units' previous h, c (or their expectation)
#pragma omp barrier
}

// W x of the step for the owned columns (inline or sparse input), and BN_t's statistics of W x:
// from the step's input moments (inline: z is linear in the few inputs, so no pass over z), from
// the rows, or from the population; synchronized statistics wait for R h (synced_term_stats).
template <class T>
void Engine<T>::input_term_stats(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s,
                                 const StepRows& st) {
  const int N = run.N, H = run.H, G = run.G, C = run.C;
  const T* Xt = run.X + static_cast<int64_t>(st.t) * N * C;
  if (run.inline_x)
    for (int q = 0; q < gates; ++q)
      input_projection(Xt, run.cache->Wt.data(), N, C, G, q * H + u.k0, u.w, st.wx);
  if (run.sparse_x)
    for (int q = 0; q < gates; ++q)
      sparse_projection(run.cache->xs, static_cast<int64_t>(st.t) * N, N, run.cache->Wt.data(), G,
                        q * H + u.k0, u.w, st.wx);
  if (spec.x != Norm::bn_step) return;
  T* m = run.cache->x.mean.data() + static_cast<size_t>(st.t) * G;
  T* r = run.cache->x.rstd.data() + static_cast<size_t>(st.t) * G;
  const StatTable* tab = &run.layout->stats_x;
  if (run.inline_x && run.batch) {
    input_moments(Xt, st.valid, N, C, s.x_moments.data());
    for (int q = 0; q < gates; ++q) {
      const int j0 = q * H + u.k0;
      for (int j = 0; j < u.w; ++j)
        linear_stats(run.prm.W + static_cast<size_t>(j0 + j) * C, C, s.x_moments.data(), st.count,
                     &s.block.mean[j], &s.block.var[j]);
      bn_stats_given({tab, st.row, j0, u.w}, s.block.mean.data(), s.block.var.data(), st.count,
                     run.update_running, m + j0, r + j0);
    }
  } else if (!run.sync_terms) {
    for (int q = 0; q < gates; ++q) {
      const int j0 = q * H + u.k0;
      bn_stats_block({st.wx + j0, N, G, u.w, st.valid}, {tab, st.row, j0, u.w}, st.count,
                     {run.batch, run.update_running}, s.block, m + j0, r + j0);
    }
  }
}

// Recurrent product for the owned columns: s.rh_step [N, gates*w], gate q's columns at q*w, raw.
template <class T>
void Engine<T>::recurrent_product(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s,
                                  const StepRows& st) {
  if (u.w <= 0) return;
  const int N = run.N, H = run.H;
  if (run.pack) {
    s.r_op.multiply(st.h_prev, H, T(0), s.rh_step, s.ld_rh);
    return;
  }
  for (int q = 0; q < gates; ++q)
    blas::gemm(false, true, N, u.w, H, T(1), st.h_prev, H,
               run.prm.R + static_cast<size_t>(q * H + u.k0) * H, H, T(0), s.rh_step + q * u.w,
               s.ld_rh);
}

// Synchronized BN_t of W x and R h: this thread's column sums of both, one exchange with the
// group, then each block's statistics from the group's sums.
template <class T>
void Engine<T>::synced_term_stats(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s,
                                  const StepRows& st) {
  const int N = run.N, H = run.H, G = run.G;
  LayerCache<T>& cc = *run.cache;
  double* group_sums = sync.sums_xh.data();
  const bool bn_x = spec.x == Norm::bn_step, bn_h = spec.h == Norm::bn_step;
  for (int q = 0; q < gates; ++q) {
    const int j0 = q * H + u.k0;
    if (bn_x) kern::col_sums_serial<T>({st.wx + j0, N, G, u.w, st.valid}, group_sums + j0, group_sums + G + j0);
    if (bn_h)
      kern::col_sums_serial<T>({s.rh_step + q * u.w, N, s.ld_rh, u.w, st.valid}, group_sums + 2 * G + j0,
                               group_sums + 3 * G + j0);
  }
  group_sum(u, group_sums, 4 * static_cast<size_t>(G));
  const int64_t group_count = sync.rows_at(st.t);
  for (int q = 0; q < gates; ++q) {
    const int j0 = q * H + u.k0;
    const size_t so = static_cast<size_t>(st.t) * G + j0;
    if (bn_x)
      bn_stats_from_sums(group_sums + j0, group_sums + G + j0, {&run.layout->stats_x, st.row, j0, u.w},
                         group_count, run.update_running, s.block, cc.x.mean.data() + so,
                         cc.x.rstd.data() + so);
    if (bn_h)
      bn_stats_from_sums(group_sums + 2 * G + j0, group_sums + 3 * G + j0,
                         {&run.layout->stats_h, st.row, j0, u.w}, group_count,
                         run.update_running, s.block, cc.h.mean.data() + so,
                         cc.h.rstd.data() + so);
  }
}

// BN_t of R h per column block, or LN of R h (and of W x) over the rows.
template <class T>
void Engine<T>::recurrent_term_stats(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s,
                                     const StepRows& st) {
  if (spec.h == Norm::ln) return layer_norm_term_stats(run, u, s, st);
  if (spec.h != Norm::bn_step) return;
  const int H = run.H, G = run.G;
  T* m = run.cache->h.mean.data() + static_cast<size_t>(st.t) * G;
  T* r = run.cache->h.rstd.data() + static_cast<size_t>(st.t) * G;
  for (int q = 0; q < gates; ++q) {
    const int j0 = q * H + u.k0;
    bn_stats_block({s.rh_step + q * u.w, run.N, s.ld_rh, u.w, st.valid},
                   {&run.layout->stats_h, st.row, j0, u.w}, st.count,
                   {run.batch, run.update_running}, s.block, m + j0, r + j0);
  }
}

// LN row statistics of R h and W x over all units, per LN part (lngru: the r, z blocks and the n
// block apart): partial sums, one barrier, totals. An inline W x takes each row's moments from
// the input row and W's moments instead.
template <class T>
void Engine<T>::layer_norm_term_stats(const ForwardRun& run, const UnitBlock& u,
                                      ForwardScratch& s, const StepRows& st) {
  const int N = run.N, H = run.H, G = run.G, parts = ln_parts(spec);
  const bool ln_x = spec.x == Norm::ln, inl = run.inline_x;
  const size_t part_stride = static_cast<size_t>(u.P) * N * 2;  // RowPartials of one LN part
  auto partials = [&](std::vector<double>& v, int i) { return RowPartials{v.data() + i * part_stride, N}; };
  for (int i = 0; i < parts; ++i) {
    const LnPart pt = ln_part(spec, i);
    ln_partial(s.rh_step, s.ld_rh, {pt.q0 * u.w, u.w, pt.nq, u.w}, st.valid, partials(ws.ln_part_h, i), u.p);
    if (ln_x && !inl)
      ln_partial(st.wx, G, {pt.q0 * H + u.k0, u.w, pt.nq, H}, st.valid, partials(ws.ln_part_x, i), u.p);
  }
  if (u.P > 1) {
#pragma omp barrier
  }
  for (int i = 0; i < parts; ++i) {
    const int F = ln_part(spec, i).nq * H;
    T* mh = s.ln_mean_h.data() + i * N;
    T* rh = s.ln_rstd_h.data() + i * N;
    T* mx = s.ln_mean_x.data() + i * N;
    T* rx = s.ln_rstd_x.data() + i * N;
    ln_row_stats(F, st.valid, partials(ws.ln_part_h, i), u.P, cfg.eps, mh, rh);
    if (ln_x && !inl) ln_row_stats(F, st.valid, partials(ws.ln_part_x, i), u.P, cfg.eps, mx, rx);
    if (ln_x && inl) inline_ln_row_stats(run, st, i, mx, rx);
  }
  if (u.p == 0) {
    LayerCache<T>& cc = *run.cache;
    const size_t so = static_cast<size_t>(st.t) * parts * N, n_all = static_cast<size_t>(parts) * N;
    std::copy_n(s.ln_mean_h.data(), n_all, cc.h.mean.data() + so);
    std::copy_n(s.ln_rstd_h.data(), n_all, cc.h.rstd.data() + so);
    if (ln_x) {
      std::copy_n(s.ln_mean_x.data(), n_all, cc.x.mean.data() + so);
      std::copy_n(s.ln_rstd_x.data(), n_all, cc.x.rstd.data() + so);
    }
  }
}

// LN statistics of an inline W x's part i for every row, from the input rows and the moments of
// W's rows of that part (no pass over W x). mean, rstd [N]; padded rows get 0, 1.
template <class T>
void Engine<T>::inline_ln_row_stats(const ForwardRun& run, const StepRows& st, int i, T* mean,
                                    T* rstd) const {
  for (int n = 0; n < run.N; ++n) {
    if (!st.valid[n]) {
      mean[n] = 0;
      rstd[n] = 1;
      continue;
    }
    double m, v;
    linear_row_moments(run.X + (static_cast<int64_t>(st.t) * run.N + n) * run.C, run.C,
                       run.w_moments[i], m, v);
    mean[n] = static_cast<T>(m);
    rstd[n] = static_cast<T>(kern::inv_std(std::max(0.0, v), cfg.eps));
  }
}

// Per-column coefficients of the pre-activations for BN_t (or no) normalization of the terms:
// pre = scale_x * Wx + scale_h * Rh + shift, with the bias and both means folded into shift
// (bnx-seq: Ax holds x-hat already, scale_x = gamma_x). A GRU keeps the terms apart, one shift
// each: x~ = scale_x * Wx + shift (b_ih folded), h~ = scale_h * Rh + shift_h (b_hh folded).
template <class T>
void Engine<T>::term_coefficients(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s,
                                  int t) {
  const LayerCache<T>& cc = *run.cache;
  const int G = run.G, H = run.H;
  const LayerTensors<const T*>& prm = run.prm;
  const size_t so = static_cast<size_t>(t) * G;
  const T* mxt = spec.x == Norm::bn_step ? cc.x.mean.data() + so : nullptr;
  const T* rxt = spec.x == Norm::bn_step ? cc.x.rstd.data() + so : nullptr;
  const T* mht = spec.h == Norm::bn_step ? cc.h.mean.data() + so : nullptr;
  const T* rht = spec.h == Norm::bn_step ? cc.h.rstd.data() + so : nullptr;
  for (int q = 0; q < gates; ++q)
    for (int j = q * H + u.k0; j < q * H + u.k1; ++j) {
      T shift = prm.b[j], shift_h = prm.b_h ? prm.b_h[j] : T(0);
      T& term_h_shift = prm.b_h ? shift_h : shift;  // the LSTM folds both terms into one shift
      T a = prm.gamma_x ? prm.gamma_x[j] : T(1);
      if (mxt) kern::fold_norm(a, shift, rxt[j], mxt[j]);
      T c = prm.gamma_h ? prm.gamma_h[j] : T(1);
      if (mht) kern::fold_norm(c, term_h_shift, rht[j], mht[j]);
      s.scale_x[j] = a;
      s.scale_h[j] = c;
      s.shift[j] = shift;
      s.shift_h[j] = shift_h;
    }
}

// Per row: R h kept raw for backward, the pre-activations from the two normalized terms (BN and
// none through the folded coefficients, LN through each row's statistics), then the cell's
// pointwise step: the LSTM's gates and c, the tanh RNN's h, or the GRU's (gru_row_forward).
template <class T>
void Engine<T>::pointwise_forward(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s,
                                  const StepRows& st) {
  const int N = run.N, H = run.H, G = run.G, k0 = u.k0, w = u.w;
  const LayerCache<T>& cc = *run.cache;
  const bool ln_terms = spec.h == Norm::ln, ln_x = spec.x == Norm::ln;
  const T* gx = run.prm.gamma_x;
  const T* gh = run.prm.gamma_h;
  const T* b = run.prm.b;
  for (int n = 0; n < N; ++n) {
    T* g = st.gates + static_cast<int64_t>(n) * G;
    T* cn = st.c_next + static_cast<int64_t>(n) * H;
    const T* cp = st.c_prev + static_cast<int64_t>(n) * H;
    const T* xrow = st.wx + static_cast<int64_t>(n) * G;
    const T* hrow = s.rh_step + static_cast<int64_t>(n) * s.ld_rh;  // R h of this row, [gates][w]
    if (st.hh)  // raw R h for backward
      for (int q = 0; q < gates; ++q)
        std::copy_n(hrow + q * w, w, st.hh + static_cast<int64_t>(n) * G + hh_offset(cc, q, k0, w));
    int64_t ahead = 0;  // rows coming from memory, prefetched while this one computes
    if (row_ahead(n, kPrefetchRows, N, st.t, +1, run.Tc, ahead)) {
      const int64_t ag = ahead * G;
      const T* nx = run.inline_x || cc.wx_in_gates ? nullptr : st.wx + ag;
      const T* ngt = st.gates + ag;
      const T* nh = st.hh ? st.hh + ag : nullptr;
      for (int q = 0; q < gates; ++q)
        for (int j = 0; j < w; j += 64 / static_cast<int>(sizeof(T))) {
          if (nx) __builtin_prefetch(nx + q * H + k0 + j, 1, 3);
          __builtin_prefetch(ngt + q * H + k0 + j, 1, 3);
          if (nh) __builtin_prefetch(nh + hh_offset(cc, q, k0, w) + j, 1, 3);
        }
    }
    if (!st.valid[n]) {  // padded: carry the state, no gates
      for (int q = 0; q < gates; ++q) std::fill_n(g + q * H + k0, w, T(0));
      std::copy_n(cp + k0, w, cn + k0);
      continue;
    }
    if (spec.gru()) {
      if (fused_rows(u))
        gru_row_one_pass(run, u, s, st, n);
      else
        gru_row_forward(run, u, s, st, n);
      continue;
    }
    if (spec.lstm() && fused_rows(u)) {  // the whole step in one pass
      T* hn = h_with_gates(u) ? st.h_next + static_cast<int64_t>(n) * H : nullptr;
      const kern::LstmRowForward<T> r{xrow, hrow, w, s.scale_x.data(), s.scale_h.data(),
                                      s.shift.data(), cp, g, cn, hn};
      kern::lstm_row_forward(r, H, k0, u.k1);
      continue;
    }
    for (int q = 0; q < gates; ++q) {
      const int j0 = q * H + k0;
      T* gq = g + j0;
      const T* xq = xrow + j0;
      const T* hq = hrow + q * w;
      if (ln_terms && ln_x) {
        const T mean_h = s.ln_mean_h[n], rstd_h = s.ln_rstd_h[n], mean_x = s.ln_mean_x[n],
                rstd_x = s.ln_rstd_x[n];
#pragma omp simd
        for (int j = 0; j < w; ++j)
          gq[j] = gx[j0 + j] * ((xq[j] - mean_x) * rstd_x) +
                  gh[j0 + j] * ((hq[j] - mean_h) * rstd_h) + b[j0 + j];
      } else if (ln_terms) {
        const T mean_h = s.ln_mean_h[n], rstd_h = s.ln_rstd_h[n];
#pragma omp simd
        for (int j = 0; j < w; ++j)
          gq[j] = xq[j] + gh[j0 + j] * ((hq[j] - mean_h) * rstd_h) + b[j0 + j];
      } else {
        const T *kxq = s.scale_x.data() + j0, *khq = s.scale_h.data() + j0,
                *shq = s.shift.data() + j0;
#pragma omp simd
        for (int j = 0; j < w; ++j) gq[j] = kxq[j] * xq[j] + khq[j] * hq[j] + shq[j];
      }
    }
    if (!spec.lstm()) {  // tanh RNN: h = tanh(pre), kept in Gates for backward; c stays as given
      kern::tanh_inplace(g + k0, w);
      std::copy_n(g + k0, w, st.h_next + static_cast<int64_t>(n) * H + k0);
      std::copy_n(cp + k0, w, cn + k0);
      continue;
    }
    kern::lstm_gates_forward(g, H, k0, u.k1, cp, cn);
  }
}

// One valid row n of a GRU: the input terms x~ (into the row's gates) and the recurrent terms h~
// (over the row's R h in s.rh_step, its raw values already copied to Hh), each normalized with its
// own bias (BN and none through the folded coefficients, LN through the row's statistics of the
// block's part), then r, z, n and h (kern::gru_gates_forward); c is carried unchanged.
template <class T>
void Engine<T>::gru_row_forward(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s,
                                const StepRows& st, int n) {
  const int N = run.N, H = run.H, k0 = u.k0, w = u.w;
  const bool ln_h = spec.h == Norm::ln, ln_x = spec.x == Norm::ln;
  const T *gx = run.prm.gamma_x, *gh = run.prm.gamma_h, *bx = run.prm.b, *bh = run.prm.b_h;
  T* g = st.gates + static_cast<int64_t>(n) * run.G;
  T* hrow = s.rh_step + static_cast<int64_t>(n) * s.ld_rh;  // [gates][w]
  const T* xrow = st.wx + static_cast<int64_t>(n) * run.G;
  for (int q = 0; q < gates; ++q) {
    const int j0 = q * H + k0, i = ln_part_of(spec, q) * N + n;
    T* gq = g + j0;
    T* hq = hrow + q * w;
    const T* xq = xrow + j0;
    if (ln_h) {
      const T mh = s.ln_mean_h[i], rh = s.ln_rstd_h[i], mx = s.ln_mean_x[i], rx = s.ln_rstd_x[i];
#pragma omp simd
      for (int j = 0; j < w; ++j) hq[j] = gh[j0 + j] * ((hq[j] - mh) * rh) + bh[j0 + j];
      if (ln_x) {
#pragma omp simd
        for (int j = 0; j < w; ++j) gq[j] = gx[j0 + j] * ((xq[j] - mx) * rx) + bx[j0 + j];
      } else {
#pragma omp simd
        for (int j = 0; j < w; ++j) gq[j] = xq[j] + bx[j0 + j];
      }
    } else {
      const T *kx = s.scale_x.data() + j0, *kh = s.scale_h.data() + j0, *sx = s.shift.data() + j0,
              *sh = s.shift_h.data() + j0;
#pragma omp simd
      for (int j = 0; j < w; ++j) {
        gq[j] = kx[j] * xq[j] + sx[j];
        hq[j] = kh[j] * hq[j] + sh[j];
      }
    }
  }
  const int64_t o = static_cast<int64_t>(n) * H + k0;
  kern::gru_gates_forward(g + k0, H, hrow, w, w, st.h_prev + o, st.h_next + o);
  std::copy_n(st.c_prev + o, w, st.c_next + o);
}

// The same in one pass (kern::gru_row_forward) for a narrow block whose terms are BN_t or not
// normalized (fused_rows).
template <class T>
void Engine<T>::gru_row_one_pass(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s,
                                 const StepRows& st, int n) {
  const int H = run.H, k0 = u.k0, w = u.w;
  const int64_t o = static_cast<int64_t>(n) * H + k0, og = static_cast<int64_t>(n) * run.G + k0;
  kern::gru_row_forward(
      kern::GruRowForward<T>{st.wx + og, s.rh_step + static_cast<int64_t>(n) * s.ld_rh, w,
                             s.scale_x.data() + k0, s.shift.data() + k0, s.scale_h.data() + k0,
                             s.shift_h.data() + k0, st.h_prev + o, st.gates + og, st.h_next + o},
      H, w);
  std::copy_n(st.c_prev + o, w, st.c_next + o);
}

// Statistics of c for its output normalization (the raw c goes to the next step and stays in Cs;
// h = o * tanh(gamma_c * c-hat + beta_c) is formed from it in hidden_output).
template <class T>
void Engine<T>::cell_norm_stats(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s,
                                const StepRows& st) {
  const int N = run.N, H = run.H, k0 = u.k0, w = u.w;
  LayerCache<T>& cc = *run.cache;
  if (spec.c == Norm::bn_step) {
    T* m = cc.c.mean.data() + static_cast<size_t>(st.t) * H;
    T* r = cc.c.rstd.data() + static_cast<size_t>(st.t) * H;
    const StatSlot slot{&run.layout->stats_c, st.row, k0, w};
    if (run.batch && sync.active) {
      double* group_sums = sync.sums_c.data();
      kern::col_sums_serial<T>({st.c_next + k0, N, H, w, st.valid}, group_sums + k0, group_sums + H + k0);
      group_sum(u, group_sums, 2 * static_cast<size_t>(H));
      bn_stats_from_sums(group_sums + k0, group_sums + H + k0, slot, sync.rows_at(st.t), run.update_running,
                         s.block, m + k0, r + k0);
    } else {
      bn_stats_block({st.c_next + k0, N, H, w, st.valid}, slot, st.count,
                     {run.batch, run.update_running}, s.block, m + k0, r + k0);
    }
    fold_cell_norm(run.prm, m, r, u, s.scale_c.data(), s.shift_c.data());
  } else if (spec.c == Norm::ln) {
    const RowPartials part{ws.ln_part_c.data(), N};
    ln_partial(st.c_next, H, {k0, w, 1, H}, st.valid, part, u.p);
    if (u.P > 1) {
#pragma omp barrier
    }
    ln_row_stats(H, st.valid, part, u.P, cfg.eps, s.ln_mean_c.data(), s.ln_rstd_c.data());
    if (u.p == 0) {
      std::copy_n(s.ln_mean_c.data(), N, cc.c.mean.data() + static_cast<size_t>(st.t) * N);
      std::copy_n(s.ln_rstd_c.data(), N, cc.c.rstd.data() + static_cast<size_t>(st.t) * N);
    }
  }
}

// h = o * tanh(c~) for the valid rows; padded rows carry h.
template <class T>
void Engine<T>::hidden_output(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s,
                              const StepRows& st) {
  const int H = run.H, k0 = u.k0, k1 = u.k1;
  const CellNormRow<T> norm{s.scale_c.data(), s.shift_c.data(), run.prm.gamma_c, run.prm.beta_c};
  for (int n = 0; n < run.N; ++n) {
    T* hn = st.h_next + static_cast<int64_t>(n) * H;
    if (!st.valid[n]) {
      std::copy_n(st.h_prev + static_cast<int64_t>(n) * H + k0, u.w, hn + k0);
      continue;
    }
    if (!spec.lstm() || h_with_gates(u)) continue;  // h written with the gates
    const T* o = st.gates + static_cast<int64_t>(n) * run.G + 3 * H;
    if (spec.c == Norm::bn_step && fused_rows(u)) {
      kern::lstm_bn_output(st.c_next + static_cast<int64_t>(n) * H, norm.scale, norm.shift, o, k0,
                           k1, hn);
      continue;
    }
    const bool lnc = spec.c == Norm::ln;
    cell_output_tanh(st.c_next + static_cast<int64_t>(n) * H, k0, k1, norm,
                     lnc ? s.ln_mean_c[n] : T(0), lnc ? s.ln_rstd_c[n] : T(1), hn);
#pragma omp simd
    for (int j = k0; j < k1; ++j) hn[j] *= o[j];
  }
}

// Zoneout (Krueger et al. 2016; SPEC 2b) of the owned units of the valid rows, after the cell's
// ordinary update (h~, c~ in h_next, c_next, c~'s normalization already taken from c~):
// c = d_c c_prev + (1 - d_c) c~, h = d_h h_prev + (1 - d_h) h~, d a Bernoulli(z) draw per
// (row, step, unit) in train mode and z at inference. Under zoneout_c, c~ is kept in Ct for
// backward (its output path reads c~, the next step the zoned c). Padded rows carry their state.
template <class T>
void Engine<T>::zoneout_forward(const ForwardRun& run, const UnitBlock& u, const StepRows& st) {
  if (!reg.zone_h && !reg.zone_c) return;
  const int H = run.H, k0 = u.k0, k1 = u.k1;
  const int64_t step = run.t0 + st.t;
  for (int n = 0; n < run.N; ++n) {
    if (!st.valid[n]) continue;
    const int64_t o = static_cast<int64_t>(n) * H;
    if (reg.zone_c) {
      T* cn = st.c_next + o;
      const T* cp = st.c_prev + o;
      std::copy(cn + k0, cn + k1, run.cache->Ct.data() + static_cast<int64_t>(st.t) * run.N * H + o + k0);
      const uint64_t key = zone_key(run.k, mask::Kind::zoneout_c, n, step);
      for (int j = k0; j < k1; ++j) {
        const T d = zone_weight(key, j, cfg.zoneout_c);
        cn[j] = d * cp[j] + (T(1) - d) * cn[j];
      }
    }
    if (reg.zone_h) {
      T* hn = st.h_next + o;
      const T* hp = st.h_prev + o;
      const uint64_t key = zone_key(run.k, mask::Kind::zoneout_h, n, step);
      for (int j = k0; j < k1; ++j) {
        const T d = zone_weight(key, j, cfg.zoneout_h);
        hn[j] = d * hp[j] + (T(1) - d) * hn[j];
      }
    }
  }
}

template void Engine<float>::layer_forward(int, int, int, const float*, const uint8_t*, int64_t,
                                           bool, bool);
template void Engine<double>::layer_forward(int, int, int, const double*, const uint8_t*, int64_t,
                                            bool, bool);

}  // namespace rbn::cells
