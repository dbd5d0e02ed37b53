// One layer backward through time: one parallel region with the forward's partition of the hidden
// units runs the phases of backward_step() from the last step to the first; then the deferred
// work over all T*N rows: dR, the input normalization's backward when it needs the whole
// sequence or the group's sums, dW and dx (docs/cells.md, "Where things are").
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "cells/engine.hpp"
#include "cells/input_projection.hpp"
#include "cells/kernels.hpp"
#include "cells/norms.hpp"
#include "util/blas.hpp"

namespace rbn::cells {

// One layer's backward: what every thread reads.
template <class T>
struct Engine<T>::BackwardRun {
  int k = 0, nT = 0, N = 0, H = 0, G = 0, C = 0, P = 1;
  const T* X = nullptr;   // [T,N,C] the layer's input (as the forward read it)
  const T* dY = nullptr;  // [T,N,H] gradient of the layer's output (nullable)
  T* dX = nullptr;        // [T,N,C] (nullable)
  bool batch = true;      // the forward used batch statistics
  bool inline_x = false;  // W x recomputed per step (LayerCache::inline_x)
  bool input_grad_in_loop = false;  // d(W x) formed inside the loop (Engine::input_grad_in_loop)
  bool probe = false;     // the gradient probe watches this layer
  bool pack = false;      // each thread's columns of R copied contiguous (nT >= kPackMinSteps)
  LayerTensors<const T*> prm{};
  LayerTensors<T*> grd{};
  LayerCache<T>* cache = nullptr;
};

// Thread-private state of the backward loop. The [N,H] rows are per thread (only the owned
// columns are used): rows shared between the threads' columns would bounce between the cores.
template <class T>
struct Engine<T>::BackwardScratch {
  T* dh = nullptr;      // [N,H] dL/dh_t (carried from step t+1, plus dy)
  T* dc = nullptr;      // [N,H] dL/dc_t carried from step t+1
  T* dc_out = nullptr;  // [N,H] tanh(c~), then dL/dc_t through h_t
  T* dh_new = nullptr;  // [N,H] dh_{t-1} = dRh R (GRU: + dh * z, written first)
  T* keep_h = nullptr;  // [N,H] zoneout: d_h * dL/dh_t, the part that goes straight to h_{t-1}
  T* keep_c = nullptr;  // [N,H] zoneout: d_c * dL/dc_t, straight to c_{t-1}
  // Column sums of the step over the owned columns [gates][w], in double: sum dpre, sum dpre *
  // x-hat of R h, sum dpre * x-hat of W x (c's normalization uses the first two, [w]); a GRU's
  // recurrent term has its own gradient and its own sum (sum_d_h; the LSTM's is sum_d).
  std::vector<double> sum_d, sum_d_xh_h, sum_d_xh_x, sum_d_h;
  std::vector<T> acc_d, acc_d_xh_h, acc_d_xh_x, acc_d_h;  // the same accumulated in T over the rows
  std::vector<double> db, db_h, dgamma_x;                 // [gates][w] over all steps (db_h: GRU)
  // GRU: h~_n of one row [w], and the step's folded BN (or none) coefficients of the n block's
  // recurrent term, h~_n = hn_scale * R h + hn_shift [w]
  std::vector<T> hn_row, hn_scale, hn_shift;
  std::vector<double> dW;                        // [C][gates][w] inline input, over all steps
  std::vector<T> dW_step;                        // the step's part, in T over its rows
  // BN_t of an inline W x: d(W x) = a*dpre - m1 - x-hat*m2, x-hat = (z - mean)*rstd, per column
  // [gates][w], and one row of d(W x) (never stored)
  std::vector<T> x_a, x_m1, x_m2, x_mean, x_rstd, d_wx_row;
  std::vector<T> scale_c, shift_c;  // [H] BN of c folded: gamma_c * c-hat + beta_c
  const T* r_cols = nullptr;         // [G, ld] the owned columns of R, contiguous (run.pack)
  blas::FixedRightOperand<T> r_op;   // r_cols as the step's product reads it (bf16: converted once)
  std::vector<T> ln_row_means;       // [4][N] LN backward: a_h, b_h, a_x, b_x of one part
  BackwardScratch(int H, int C, int gw, bool inline_x)
      : sum_d(gw + 1), sum_d_xh_h(gw + 1), sum_d_xh_x(gw + 1), sum_d_h(gw + 1), acc_d(gw),
        acc_d_xh_h(gw), acc_d_xh_x(gw), acc_d_h(gw), db(gw, 0.0), db_h(gw, 0.0), dgamma_x(gw, 0.0),
        hn_row(gw), hn_scale(gw), hn_shift(gw),
        dW(inline_x ? static_cast<size_t>(C) * gw : 0, 0.0), dW_step(dW.size()),
        x_a(inline_x ? gw : 0), x_m1(x_a.size()), x_m2(x_a.size()), x_mean(x_a.size()),
        x_rstd(x_a.size()), d_wx_row(x_a.size()), scale_c(H), shift_c(H) {}
};

// Step t's rows and statistics.
template <class T>
struct Engine<T>::BackStep {
  int t = 0;
  const uint8_t* valid = nullptr;  // [N]
  T* gates = nullptr;              // [N,G] activated gates, then dpre
  const T* c_prev = nullptr;       // [N,H] raw c_{t-1} (carried), c~_t (un-zoned under zoneout)
  const T* c_next = nullptr;
  const T* h_prev = nullptr;       // [N,H] h_{t-1}
  T* wx = nullptr;                 // [N,G] raw W x, then d(W x) (in-loop input backward)
  T* hh = nullptr;                 // [N,G] raw R h (nullptr without its normalization)
  const T* dY = nullptr;           // [N,H] nullable
  // The gradients the two terms' normalizations read, [N,G]: for the LSTM and the tanh RNN both
  // are dpre in Gates (pre = input term + recurrent term); a GRU's recurrent term has its own
  // (its n block is dn_pre * r; docs/cells.md, "Adding a cell"): written over the raw R h in Hh
  // for the plain gru (whose R h is read only for h~_n, first), else in the thread's ws.drec_step.
  T* d_input_term = nullptr;
  T* d_recurrent_term = nullptr;
  // statistics: BN per column [G] (c: [H]), LN per row [N]; nullptr without the normalization
  const T *mean_x = nullptr, *rstd_x = nullptr, *mean_h = nullptr, *rstd_h = nullptr;
  const T *mean_c = nullptr, *rstd_c = nullptr;
};

// ---- the layer ---------------------------------------------------------------------------------

// One layer. X [T,N,C] its input; dYin [T,N,H] (nullable): gradient w.r.t. this layer's output at
// valid positions. ws.dh_carry/dc_carry hold dL/dh_T, dL/dc_T on entry and dL/dh_0, dL/dc_0 on
// exit. dX [T,N,C] (nullable).
template <class T>
void Engine<T>::layer_backward(int k, const T* X, const T* dYin, T* dX) {
  LayerCache<T>& cc = caches[k];
  BackwardRun run;
  run.k = k, run.nT = T_, run.N = N_, run.H = cfg.hidden_size, run.G = gates * cfg.hidden_size;
  run.C = layers[k].C, run.P = cc.P;  // the forward's partition of the units
  run.X = X, run.dY = dYin, run.dX = dX;
  run.batch = cache_batch_stats, run.inline_x = cc.inline_x;
  run.input_grad_in_loop = input_grad_in_loop(run.batch, run.inline_x);
  run.probe = probe.out && probe.layer == k;
  run.pack = T_ >= kPackMinSteps;
  run.prm = layer_params(k);
  run.grd = layer_grads(k);
  run.cache = &cc;
  const int nT = run.nT, N = run.N, H = run.H, G = run.G, P = run.P;
  const int64_t NH = static_cast<int64_t>(N) * H, TN = static_cast<int64_t>(nT) * N;
  ensure_size(ws.bwd_rows, 6 * static_cast<size_t>(P) * NH);
  ensure_size(ws.col_sum, G);
  ensure_size(ws.col_dot, G);
  if (spec.x == Norm::bn_step && !run.input_grad_in_loop) {
    ensure_size(ws.xsum1, static_cast<size_t>(nT) * G);
    ensure_size(ws.xsum2, static_cast<size_t>(nT) * G);
  }
  if (run.probe) probe.sq.assign(static_cast<size_t>(nT) * P * N, 0.0);
  for (auto* part : {&ws.ln_part_h, &ws.ln_part_c, &ws.ln_part_x})
    ensure_size(*part, static_cast<size_t>(ln_parts(spec)) * P * N * 2);
  if (spec.gru() && spec.h != Norm::none) ensure_size(ws.drec_step, static_cast<size_t>(P) * N * G);
  if (run.batch && sync.active) {
    ensure_size(sync.sums_xh, 4 * static_cast<size_t>(G));
    ensure_size(sync.sums_c, 2 * static_cast<size_t>(H));
  }
  if (run.inline_x && dX) ensure_size(ws.dx_part, static_cast<size_t>(P) * TN * run.C);
  // Thread p's columns of R [G, w], rows on lines (the forward's buffer, reused).
  const auto r_slices = run.pack ? ws.packed_slices(P, G, widest_unit_block(P, H))
                                 : typename Workspace<T>::PackedSlices{};
  if (run.pack) ws.packed_layer = -1;  // overwritten below with the backward's layout
  // Same ownership of hidden units as the forward loop; one barrier per step makes dRh complete
  // before each thread computes its columns of dh_{t-1} = dRh R.
#pragma omp parallel num_threads(P) if (P > 1)
  {
    const UnitBlock u = unit_block(P > 1 ? omp_get_thread_num() : 0, P, H);
    BackwardScratch s(H, run.C, gates * u.w, run.inline_x);
    s.dh = ws.bwd_rows.data() + static_cast<size_t>(6 * u.p) * NH;
    s.dc = s.dh + NH;
    s.dc_out = s.dc + NH;
    s.dh_new = s.dc_out + NH;
    s.keep_h = s.dh_new + NH;
    s.keep_c = s.keep_h + NH;
    if (spec.h == Norm::ln || spec.c == Norm::ln) s.ln_row_means.resize(4 * static_cast<size_t>(N));
    if (run.pack) {  // the step's dRh R then reads its right operand contiguous
      T* r_cols = r_slices.slice(u.p);
      for (int j = 0; j < G; ++j)
        std::copy_n(run.prm.R + static_cast<size_t>(j) * H + u.k0, u.w,
                    r_cols + static_cast<size_t>(j) * r_slices.ld);
      s.r_cols = r_cols;
      if (u.w > 0) s.r_op.prepare(r_cols, G, u.w, r_slices.ld, N);
    }
    for (int n = 0; n < N; ++n) {
      const int64_t o = static_cast<int64_t>(n) * H + u.k0;
      std::copy_n(ws.dh_carry.data() + o, u.w, s.dh + o);
      std::copy_n(ws.dc_carry.data() + o, u.w, s.dc + o);
    }
    for (int t = nT - 1; t >= 0; --t) backward_step(run, u, s, t);
    flush_thread_sums(run, u, s);
  }
  if (run.probe) finish_probe(P);
  if (nT == 0) return;
  deferred_input_backward(run);
}

// ---- one step ----------------------------------------------------------------------------------

template <class T>
void Engine<T>::backward_step(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                              int t) {
  LayerCache<T>& cc = *run.cache;
  const int N = run.N, H = run.H, G = run.G;
  const int64_t NG = static_cast<int64_t>(N) * G, NH = static_cast<int64_t>(N) * H;
  const bool in_loop_x = spec.x == Norm::bn_step || spec.x == Norm::ln;  // per-step input norm
  BackStep st;
  st.t = t;
  st.valid = valid.data() + static_cast<size_t>(t) * N;
  st.gates = cc.Gates.data() + t * NG;
  st.c_prev = cc.Cs.data() + t * NH;
  st.c_next = reg.zone_c ? cc.Ct.data() + t * NH : cc.Cs.data() + (t + 1) * NH;
  st.h_prev = cc.Hs.data() + t * NH;
  st.wx = cc.wx() + (run.inline_x ? u.p * NG : t * NG);
  st.hh = spec.keeps_hh() ? cc.Hh.data() + t * NG : nullptr;
  st.dY = run.dY ? run.dY + t * NH : nullptr;
  st.d_input_term = st.d_recurrent_term = st.gates;
  if (spec.gru())  // (one [N,G] per thread: the threads' columns share cache lines in a row)
    st.d_recurrent_term = spec.h == Norm::none ? st.hh : ws.drec_step.data() + u.p * NG;
  auto stats = [&](Norm norm, const NormStats<T>& ns, int F, const T*& mean, const T*& rstd) {
    if (norm == Norm::none || norm == Norm::bn_seq) return;  // bnx-seq: after the loop
    // LN: [T,parts,N] (c: one part); BN: [T,F]
    const int parts = &ns == &cc.c ? 1 : ln_parts(spec);
    const size_t off = static_cast<size_t>(t) * (norm == Norm::ln ? static_cast<size_t>(N) * parts : F);
    mean = ns.mean.data() + off;
    rstd = ns.rstd.data() + off;
  };
  stats(spec.x, cc.x, G, st.mean_x, st.rstd_x);
  stats(spec.h, cc.h, G, st.mean_h, st.rstd_h);
  stats(spec.c, cc.c, H, st.mean_c, st.rstd_c);

  if (run.inline_x && in_loop_x)  // W x recomputed, not stored
    for (int q = 0; q < gates; ++q)
      input_projection(run.X + static_cast<int64_t>(t) * N * run.C, cc.Wt.data(), N, run.C, G,
                       q * H + u.k0, u.w, st.wx);
  if (spec.c == Norm::bn_step)
    fold_cell_norm(run.prm, st.mean_c, st.rstd_c, u, s.scale_c.data(), s.shift_c.data());
  output_gradient(run, u, s, st);     // h = o * tanh(c~): do, dc~ (tanh RNN: dpre)
  cell_norm_backward(run, u, s, st);  // dc~ -> dc through the normalization of c
  gate_gradients(run, u, s, st);      // c = f c + i g: dpre; column and LN row sums
  for (size_t j = 0; j < static_cast<size_t>(gates) * u.w; ++j) s.db[j] += s.sum_d[j];
  if (spec.gru())
    for (size_t j = 0; j < static_cast<size_t>(gates) * u.w; ++j) s.db_h[j] += s.sum_d_h[j];
  if (run.inline_x && !in_loop_x) inline_input_grads(run, u, s, st, st.d_input_term, nullptr);
  input_term_backward(run, u, s, st);  // dgamma_x; BN_t of W x: d(W x) or its deferred sums
  if (run.inline_x && spec.x == Norm::bn_step)
    inline_input_grads(run, u, s, st, st.d_input_term, st.wx);
  T* dRh = recurrent_term_backward(run, u, s, st);  // dgamma_h; d(R h) (LN: with d(W x))
  if (run.inline_x && spec.x == Norm::ln) inline_input_grads(run, u, s, st, st.wx, nullptr);
#pragma omp barrier
  // dh_{t-1} = dRh R for the owned columns (GRU: added to dh * z, in dh_new from the gate pass);
  // padded rows pass their gradient through.
  if (u.w > 0) {
    const T beta = spec.gru() ? T(1) : T(0);
    if (s.r_cols)
      s.r_op.multiply(dRh, G, beta, s.dh_new + u.k0, H);
    else
      blas::gemm(false, false, N, u.w, G, T(1), dRh, G, run.prm.R + u.k0, H, beta, s.dh_new + u.k0, H);
    for (int n = 0; n < N; ++n)
      if (st.valid[n])
        std::copy_n(s.dh_new + static_cast<int64_t>(n) * H + u.k0, u.w,
                    s.dh + static_cast<int64_t>(n) * H + u.k0);
  }
  zoneout_merge(run, u, s, st);  // + the parts that went straight to h_{t-1}, c_{t-1}
}

// Zoneout's backward, first half (row n, owned units): of dL/dh_t and dL/dc_t (dy included), the
// share d * grad goes straight to the previous state (kept for zoneout_merge) and (1 - d) * grad
// to the cell's ordinary update h~, c~, whose backward runs next. The same d as the forward's
// (drawn again from the hash, or the expectation z).
template <class T>
void Engine<T>::zoneout_split(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                              const BackStep& st, int n) {
  if (!reg.zone_h && !reg.zone_c) return;
  const int64_t o = static_cast<int64_t>(n) * run.H, step = reg.t0 + st.t;
  auto split = [&](mask::Kind kind, double z, T* grad, T* keep) {
    const uint64_t key = zone_key(run.k, kind, n, step);
    for (int j = u.k0; j < u.k1; ++j) {
      const T d = zone_weight(key, j, z);
      keep[o + j] = d * grad[o + j];
      grad[o + j] *= T(1) - d;
    }
  };
  if (reg.zone_h) split(mask::Kind::zoneout_h, cfg.zoneout_h, s.dh, s.keep_h);
  if (reg.zone_c) split(mask::Kind::zoneout_c, cfg.zoneout_c, s.dc, s.keep_c);
}

// Zoneout's backward, second half: the kept shares added to dL/dh_{t-1}, dL/dc_{t-1} of the
// valid rows (padded rows passed their gradient through untouched).
template <class T>
void Engine<T>::zoneout_merge(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                              const BackStep& st) {
  if (!reg.zone_h && !reg.zone_c) return;
  for (int n = 0; n < run.N; ++n) {
    if (!st.valid[n]) continue;
    const int64_t o = static_cast<int64_t>(n) * run.H;
    for (int j = u.k0; j < u.k1; ++j) {
      if (reg.zone_h) s.dh[o + j] += s.keep_h[o + j];
      if (reg.zone_c) s.dc[o + j] += s.keep_c[o + j];
    }
  }
}

// dh += dy; the probe's sums of squares; then through h = o * tanh(c~): the gradient of o's
// pre-activation (over o in Gates) and of c~ (s.dc_out). tanh RNN: dpre = dh (1 - h^2) in Gates.
template <class T>
void Engine<T>::output_gradient(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                                const BackStep& st) {
  const int N = run.N, H = run.H, G = run.G, k0 = u.k0, k1 = u.k1;
  const CellNormRow<T> norm{s.scale_c.data(), s.shift_c.data(), run.prm.gamma_c, run.prm.beta_c};
  const bool lnc = spec.c == Norm::ln;
  for (int n = 0; n < N; ++n) {
    if (!st.valid[n]) continue;
    T* dh = s.dh + static_cast<int64_t>(n) * H;
    if (st.dY) {
      const T* d = st.dY + static_cast<int64_t>(n) * H;
#pragma omp simd
      for (int j = k0; j < k1; ++j) dh[j] += d[j];
    }
    if (run.probe) {
      double q2 = 0;
      for (int j = k0; j < k1; ++j) q2 += static_cast<double>(dh[j]) * dh[j];
      probe.sq[(static_cast<size_t>(st.t) * u.P + u.p) * N + n] = q2;
    }
    zoneout_split(run, u, s, st, n);  // dh, dc -> the shares of h~, c~ and of the previous state
    T* g = st.gates + static_cast<int64_t>(n) * G;
    if (spec.gru()) continue;  // all in gate_gradients
    if (!spec.lstm()) {
      kern::tanh_rnn_backward(dh, k0, k1, g);
      continue;
    }
    if (h_with_gates(u)) continue;  // with the gates (lstm_row_gradients)
    T* dc = s.dc_out + static_cast<int64_t>(n) * H;  // tanh(c~) first, then the gradient
    if (spec.c == Norm::bn_step && fused_rows(u)) {
      kern::lstm_bn_output_backward(dh, st.c_next + static_cast<int64_t>(n) * H, norm.scale,
                                    norm.shift, k0, k1, g + 3 * H, dc);
      continue;
    }
    cell_output_tanh(st.c_next + static_cast<int64_t>(n) * H, k0, k1, norm,
                     lnc ? st.mean_c[n] : T(0), lnc ? st.rstd_c[n] : T(1), dc);
    kern::lstm_output_backward(dh, k0, k1, g + 3 * H, dc);
  }
}

// Through the normalization of c: dgamma_c, dbeta_c and dc~ -> dc (in place in s.dc_out). BN: the
// column sums (over the group's rows when synchronized); LN: column sums and this thread's row
// sums in one pass, a barrier, then the rows.
template <class T>
void Engine<T>::cell_norm_backward(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                                   const BackStep& st) {
  if (spec.c == Norm::none) return;
  const int N = run.N, H = run.H, k0 = u.k0, w = u.w;
  const T* gc = run.prm.gamma_c;
  double* sum_d = s.sum_d.data();
  double* sum_d_xh = s.sum_d_xh_h.data();
  const RowPartials part{ws.ln_part_c.data(), N};
  if (spec.c == Norm::bn_step) {
    kern::col_grad_sums_serial<T>({s.dc_out + k0, N, H, w, st.valid},
                                  {st.c_next + k0, st.mean_c + k0, st.rstd_c + k0}, sum_d, sum_d_xh);
  } else {
    T* acc_d = s.acc_d.data();
    T* acc_d_xh = s.acc_d_xh_h.data();
    std::fill_n(acc_d, w, T(0));
    std::fill_n(acc_d_xh, w, T(0));
    const T* gcq = gc + k0;
    for (int n = 0; n < N; ++n) {
      double* pn = part.at(u.p, n);
      pn[0] = pn[1] = 0;
      if (!st.valid[n]) continue;
      const T* d = s.dc_out + static_cast<int64_t>(n) * H + k0;
      const T* ct = st.c_next + static_cast<int64_t>(n) * H + k0;
      const T m = st.mean_c[n], r = st.rstd_c[n];
      T r1 = 0, r2 = 0;
#pragma omp simd reduction(+ : r1, r2)
      for (int j = 0; j < w; ++j) {
        const T xh = (ct[j] - m) * r, gd = d[j] * gcq[j];
        acc_d[j] += d[j];
        acc_d_xh[j] += d[j] * xh;
        r1 += gd;
        r2 += gd * xh;
      }
      pn[0] = r1;
      pn[1] = r2;
    }
    for (int j = 0; j < w; ++j) {
      sum_d[j] = acc_d[j];
      sum_d_xh[j] = acc_d_xh[j];
    }
  }
  for (int j = 0; j < w; ++j) {
    run.grd.gamma_c[k0 + j] += static_cast<T>(sum_d_xh[j]);
    run.grd.beta_c[k0 + j] += static_cast<T>(sum_d[j]);
  }
  if (spec.c == Norm::bn_step) {
    if (run.batch && sync.active) {  // the means of dy and dy*x_hat over the group's rows
      double* group_sums = sync.sums_c.data();
      std::copy_n(sum_d, w, group_sums + k0);
      std::copy_n(sum_d_xh, w, group_sums + H + k0);
      group_sum(u, group_sums, 2 * static_cast<size_t>(H));
      std::copy_n(group_sums + k0, w, sum_d);
      std::copy_n(group_sums + H + k0, w, sum_d_xh);
    }
    kern::col_norm_backward_serial<T>(
        {s.dc_out + k0, N, H, w, st.valid}, {st.c_next + k0, st.mean_c + k0, st.rstd_c + k0},
        {gc + k0, st.rstd_c + k0, sum_d, sum_d_xh, stat_count(st.t), run.batch}, s.dc_out + k0);
  } else {
    if (u.P > 1) {
#pragma omp barrier
    }
    T* a = s.ln_row_means.data();
    ln_grad_row_means(part, u.P, H, st.valid, a, a + N);
    const LnTerm<T> c_term{s.dc_out, st.c_next, false, gc, st.mean_c, st.rstd_c, a, a + N};
    ln_backward<T>({N, H, {k0, w, 1, H}, st.valid}, c_term, s.dc_out, nullptr, nullptr);
  }
}

// Through c_t = f c_{t-1} + i g (LSTM) or the GRU's gates: the gradients of the gate
// pre-activations (dpre, over Gates; a GRU's recurrent term has its own, gru_row_backward) and
// dc_{t-1}. The same pass takes, while the row is in cache, the column sums that db and the
// normalizations of W x and R h need (sum dpre, sum dpre * x-hat) and LN's row sums.
template <class T>
void Engine<T>::gate_gradients(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                               const BackStep& st) {
  const int N = run.N, H = run.H, G = run.G, k0 = u.k0, k1 = u.k1, w = u.w;
  const bool ln_h = spec.h == Norm::ln, ln_x = spec.x == Norm::ln;
  const bool read_x = spec.x == Norm::bn_step || ln_x;
  for (auto* acc : {&s.acc_d, &s.acc_d_xh_h, &s.acc_d_xh_x, &s.acc_d_h})
    std::fill(acc->begin(), acc->end(), T(0));
  if (spec.gru() && !ln_h) gru_hn_coefficients(run, u, s, st);
  for (int n = 0; n < N; ++n) {
    T* g = st.gates + static_cast<int64_t>(n) * G;
    int64_t ahead = 0;  // rows coming from memory (this step's, then step t-1's), prefetched now
    if (row_ahead(n, kPrefetchRows, N, st.t, -1, -1, ahead)) {
      constexpr int cl = 64 / static_cast<int>(sizeof(T));
      const int64_t ag = ahead * G, ah = ahead * H;
      for (int q = 0; q < gates; ++q)
        for (int j = 0; j < w; j += cl) {
          __builtin_prefetch(st.gates + ag + q * H + k0 + j, 1, 3);
          if (read_x && !run.inline_x) __builtin_prefetch(st.wx + ag + q * H + k0 + j, 1, 3);
          if (st.hh) __builtin_prefetch(st.hh + ag + hh_offset(*run.cache, q, k0, w) + j, 0, 3);
        }
      for (int j = k0; j < k1; j += cl) {
        __builtin_prefetch(st.c_prev + ah + j, 0, 3);
        if (st.dY) __builtin_prefetch(st.dY + ah + j, 0, 3);
      }
    }
    if (!st.valid[n]) {
      padded_row_gradients(run, u, s, st, n);
      continue;
    }
    if (spec.lstm() && fused_rows(u)) {
      lstm_row_gradients(run, u, s, st, n);
      continue;
    }
    if (spec.lstm())
      kern::lstm_cell_backward(s.dc_out + static_cast<int64_t>(n) * H,
                               st.c_prev + static_cast<int64_t>(n) * H, H, k0, k1, g,
                               s.dc + static_cast<int64_t>(n) * H);
    if (spec.gru()) gru_row_backward(run, u, s, st, n);
    row_term_sums(run, u, s, st, n);
  }
  for (size_t j = 0; j < s.acc_d.size(); ++j) {
    s.sum_d[j] = s.acc_d[j];
    s.sum_d_xh_h[j] = s.acc_d_xh_h[j];
    s.sum_d_xh_x[j] = s.acc_d_xh_x[j];
    s.sum_d_h[j] = s.acc_d_h[j];
  }
}

// One valid row n of an LSTM whose terms are BN_t or not normalized: kern::lstm_row_backward,
// from dh through h = o tanh(c) as well when c is not normalized (output_gradient left it), with
// the row's share of the step's column sums (row_term_sums' for these cells).
template <class T>
void Engine<T>::lstm_row_gradients(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                                   const BackStep& st, int n) {
  const int H = run.H, k0 = u.k0, w = u.w;
  const int64_t oh = static_cast<int64_t>(n) * H, og = static_cast<int64_t>(n) * run.G;
  kern::LstmRowBackward<T> r;
  if (h_with_gates(u)) {
    r.dh = s.dh + oh;
    r.c = st.c_next + oh;
  } else {
    r.dc_out = s.dc_out + oh;
  }
  r.c_prev = st.c_prev + oh;
  r.gates = st.gates + og;
  r.dc = s.dc + oh;
  r.sum_d = s.acc_d.data();
  if (spec.h == Norm::bn_step) {
    const LayerCache<T>& cc = *run.cache;
    r.rh = st.hh + og + hh_offset(cc, 0, k0, w);
    r.ld = hh_offset(cc, 1, k0, w) - hh_offset(cc, 0, k0, w);
    r.mean_h = st.mean_h, r.rstd_h = st.rstd_h, r.sum_dxh_h = s.acc_d_xh_h.data();
  }
  if (spec.x == Norm::bn_step)
    r.x = st.wx + og, r.mean_x = st.mean_x, r.rstd_x = st.rstd_x, r.sum_dxh_x = s.acc_d_xh_x.data();
  kern::lstm_row_backward(r, H, k0, u.k1);
}

// A padded row n: no gradient enters a term (dpre 0; a GRU's recurrent term 0 and its dh * z
// part of dh_new 0) nor LN's row sums; dh and dc pass through untouched.
template <class T>
void Engine<T>::padded_row_gradients(const BackwardRun& run, const UnitBlock& u,
                                     BackwardScratch& s, const BackStep& st, int n) {
  const int N = run.N, H = run.H, k0 = u.k0, w = u.w;
  const int64_t ro = static_cast<int64_t>(n) * run.G;
  for (int q = 0; q < gates; ++q) std::fill_n(st.gates + ro + q * H + k0, w, T(0));
  if (spec.gru()) {
    for (int q = 0; q < gates; ++q) std::fill_n(st.d_recurrent_term + ro + q * H + k0, w, T(0));
    std::fill_n(s.dh_new + static_cast<int64_t>(n) * H + k0, w, T(0));
  }
  const size_t part_stride = static_cast<size_t>(u.P) * N * 2;
  for (int i = 0; i < ln_parts(spec); ++i) {
    if (spec.h == Norm::ln) {
      double* ph = RowPartials{ws.ln_part_h.data() + i * part_stride, N}.at(u.p, n);
      ph[0] = ph[1] = 0;
    }
    if (spec.x == Norm::ln) {
      double* px = RowPartials{ws.ln_part_x.data() + i * part_stride, N}.at(u.p, n);
      px[0] = px[1] = 0;
    }
  }
}

// GRU, BN or no normalization of R h: the step's coefficients of the n block's recurrent term for
// the owned units, h~_n = hn_scale * R h + hn_shift, formed as term_coefficients forms them.
template <class T>
void Engine<T>::gru_hn_coefficients(const BackwardRun& run, const UnitBlock& u,
                                    BackwardScratch& s, const BackStep& st) {
  const T* gh = run.prm.gamma_h;
  for (int j = 0; j < u.w; ++j) {
    const int col = 2 * run.H + u.k0 + j;
    T a = gh ? gh[col] : T(1), shift = run.prm.b_h[col];
    if (spec.h == Norm::bn_step) kern::fold_norm(a, shift, st.rstd_h[col], st.mean_h[col]);
    s.hn_scale[j] = a;
    s.hn_shift[j] = shift;
  }
}

// One valid row n of a GRU: h~_n recomputed from the raw R h in Hh as the forward formed it, then
// kern::gru_gates_backward: the input terms' gradients over the gates, the recurrent terms' into
// st.d_recurrent_term (for the plain gru that is Hh itself, read first), dh * z into dh_new.
template <class T>
void Engine<T>::gru_row_backward(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                                 const BackStep& st, int n) {
  const int H = run.H, G = run.G, k0 = u.k0, w = u.w;
  const T* zn = st.hh + static_cast<int64_t>(n) * G + hh_offset(*run.cache, 2, k0, w);
  T* hn = s.hn_row.data();
  if (spec.h == Norm::ln) {
    const T m = st.mean_h[run.N + n], r = st.rstd_h[run.N + n];  // the n block's LN (part 1)
    const T* gh = run.prm.gamma_h + 2 * H + k0;
    const T* bh = run.prm.b_h + 2 * H + k0;
#pragma omp simd
    for (int j = 0; j < w; ++j) hn[j] = gh[j] * ((zn[j] - m) * r) + bh[j];
  } else {
    const T* a = s.hn_scale.data();
    const T* b = s.hn_shift.data();
#pragma omp simd
    for (int j = 0; j < w; ++j) hn[j] = a[j] * zn[j] + b[j];
  }
  const int64_t o = static_cast<int64_t>(n) * H + k0, ro = static_cast<int64_t>(n) * G + k0;
  kern::gru_gates_backward<T>({s.dh + o, st.h_prev + o, hn}, H, w, st.gates + ro,
                              st.d_recurrent_term + ro, s.dh_new + o);
}

// One row's share of the step's sums of dpre, x-hat formed from the raw values: per column (db;
// dgamma and the BN backward of R h and W x), accumulated in T over the step's rows (16 float
// lanes; as PyTorch's BN backward); LN: this thread's part of the row sums of dpre*gamma and
// dpre*gamma*x-hat, per LN part. A GRU's recurrent term reads its own gradient (and sums it for
// db_hh).
template <class T>
void Engine<T>::row_term_sums(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                              const BackStep& st, int n) {
  const int N = run.N, H = run.H, G = run.G, k0 = u.k0, w = u.w;
  const bool ln_h = spec.h == Norm::ln, ln_x = spec.x == Norm::ln;
  const bool x_per_step = spec.x == Norm::bn_step || ln_x;  // BN_t or LN of W x
  const T* g = st.d_input_term + static_cast<int64_t>(n) * G;
  const T* gr = st.d_recurrent_term + static_cast<int64_t>(n) * G;
  const T* xr = st.wx + static_cast<int64_t>(n) * G;
  const T* hr = st.hh ? st.hh + static_cast<int64_t>(n) * G : nullptr;
  const T* gh = run.prm.gamma_h;
  const T* gx = run.prm.gamma_x;
  const size_t part_stride = static_cast<size_t>(u.P) * N * 2;
  for (int i = 0; i < (ln_h ? ln_parts(spec) : 1); ++i) {
    const LnPart pt = ln_h ? ln_part(spec, i) : LnPart{0, gates};
    const T mean_h_n = ln_h ? st.mean_h[i * N + n] : T(0), rstd_h_n = ln_h ? st.rstd_h[i * N + n] : T(1);
    const T mean_x_n = ln_x ? st.mean_x[i * N + n] : T(0), rstd_x_n = ln_x ? st.rstd_x[i * N + n] : T(1);
    T r1 = 0, r2 = 0, r3 = 0, r4 = 0;  // LN: sum dpre*g_h, dpre*g_h*x-hat_h; the same for x
    for (int q = pt.q0; q < pt.q0 + pt.nq; ++q) {
      const int j0 = q * H + k0;
      T* s1q = s.acc_d.data() + q * w;
      T* s2q = s.acc_d_xh_h.data() + q * w;
      T* s3q = s.acc_d_xh_x.data() + q * w;
      const T* gq = g + j0;   // d(input term)
      const T* grq = gr + j0;  // d(recurrent term)
      const T* zh = hr ? hr + hh_offset(*run.cache, q, k0, w) : nullptr;
      const T* zx = xr + j0;
      if (spec.gru()) {  // the recurrent term's own column sums (db_hh; BN of R h)
        T* s4q = s.acc_d_h.data() + q * w;
#pragma omp simd
        for (int j = 0; j < w; ++j) s4q[j] += grq[j];
      }
      if (ln_h && ln_x) {  // LN: the column sums and this thread's part of the row sums
        const T* ghq = gh + j0;
        const T* gxq = gx + j0;
#pragma omp simd reduction(+ : r1, r2, r3, r4)
        for (int j = 0; j < w; ++j) {
          const T d = gq[j], dr = grq[j], xh = (zh[j] - mean_h_n) * rstd_h_n, xx = (zx[j] - mean_x_n) * rstd_x_n;
          s1q[j] += d;
          s2q[j] += dr * xh;
          s3q[j] += d * xx;
          const T dh = dr * ghq[j], dx = d * gxq[j];
          r1 += dh;
          r2 += dh * xh;
          r3 += dx;
          r4 += dx * xx;
        }
      } else if (ln_h) {
        const T* ghq = gh + j0;
#pragma omp simd reduction(+ : r1, r2)
        for (int j = 0; j < w; ++j) {
          const T d = gq[j], dr = grq[j], xh = (zh[j] - mean_h_n) * rstd_h_n;
          s1q[j] += d;
          s2q[j] += dr * xh;
          const T dh = dr * ghq[j];
          r1 += dh;
          r2 += dh * xh;
        }
      } else {  // BN (or none): per-column statistics
#pragma omp simd
        for (int j = 0; j < w; ++j) s1q[j] += gq[j];
        if (zh && spec.h != Norm::none) {
          const T* mu = st.mean_h + j0;
          const T* rs = st.rstd_h + j0;
#pragma omp simd
          for (int j = 0; j < w; ++j) s2q[j] += grq[j] * ((zh[j] - mu[j]) * rs[j]);
        }
        if (x_per_step) {
          const T* mu = st.mean_x + j0;
          const T* rs = st.rstd_x + j0;
#pragma omp simd
          for (int j = 0; j < w; ++j) s3q[j] += gq[j] * ((zx[j] - mu[j]) * rs[j]);
        }
      }
    }
    if (ln_h) {
      double* ph = RowPartials{ws.ln_part_h.data() + i * part_stride, N}.at(u.p, n);
      ph[0] = r1;
      ph[1] = r2;
    }
    if (ln_x) {
      double* px = RowPartials{ws.ln_part_x.data() + i * part_stride, N}.at(u.p, n);
      px[0] = r3;
      px[1] = r4;
    }
  }
}

// The input term's share of the step: dgamma_x's sums; for BN_t of W x its backward: the
// coefficients of an inline d(W x) (formed row by row in inline_input_grads), d(W x) over W x in
// Ax while it is in cache, or (synchronized) the column sums kept for after the loop.
template <class T>
void Engine<T>::input_term_backward(const BackwardRun& run, const UnitBlock& u,
                                    BackwardScratch& s, const BackStep& st) {
  if (spec.x != Norm::bn_step && spec.x != Norm::ln) return;
  const int N = run.N, H = run.H, G = run.G, k0 = u.k0, w = u.w;
  const T* gx = run.prm.gamma_x;
  const double* sum_d = s.sum_d.data();
  const double* sum_d_xh_x = s.sum_d_xh_x.data();
  for (int q = 0; q < gates; ++q) {
    for (int j = 0; j < w; ++j) s.dgamma_x[q * w + j] += sum_d_xh_x[q * w + j];
    if (spec.x != Norm::bn_step) continue;
    const int j0 = q * H + k0;
    if (run.inline_x) {  // the coefficients of d(W x), used in inline_input_grads
      const kern::BnGradScale scale = kern::bn_grad_scale(run.batch, stat_count(st.t));
      for (int j = 0; j < w; ++j) {
        const size_t o = static_cast<size_t>(q) * w + j;
        const kern::BnGradCoef<T> k =
            kern::bn_grad_coef(gx[j0 + j], st.rstd_x[j0 + j], sum_d[o], sum_d_xh_x[o], scale);
        s.x_a[o] = k.a;
        s.x_m1[o] = k.m1;
        s.x_m2[o] = k.m2;
        s.x_mean[o] = st.mean_x[j0 + j];
        s.x_rstd[o] = st.rstd_x[j0 + j];
      }
    } else if (run.input_grad_in_loop) {  // d(W x) over W x, in cache
      kern::col_norm_backward_serial<T>(
          {st.d_input_term + j0, N, G, w, st.valid},
          {st.wx + j0, st.mean_x + j0, st.rstd_x + j0},
          {gx + j0, st.rstd_x + j0, sum_d + q * w, sum_d_xh_x + q * w, stat_count(st.t), run.batch},
          st.wx + j0);
    } else {  // after the loop, from the group's sums
      const size_t off = static_cast<size_t>(st.t) * G + j0;
      for (int j = 0; j < w; ++j) {
        ws.xsum1[off + j] = sum_d[q * w + j];
        ws.xsum2[off + j] = sum_d_xh_x[q * w + j];
      }
    }
  }
}

// The recurrent term's share: dgamma_h, and d(recurrent term) -> d(R h) through its
// normalization (BN_t per column block, over the group's sums when synchronized; LN over the rows
// after a barrier, together with d(W x) over W x). Returns where d(R h) [N,G] now is (dRh_in_hh):
// over dpre in Gates when d(W x) is already out of it, else over the raw R h in Hh; the plain
// gru's recurrent term is d(R h) already (in Hh).
template <class T>
T* Engine<T>::recurrent_term_backward(const BackwardRun& run, const UnitBlock& u,
                                      BackwardScratch& s, const BackStep& st) {
  if (spec.h == Norm::none) return st.d_recurrent_term;
  const int N = run.N, H = run.H, G = run.G, k0 = u.k0, w = u.w;
  const LayerCache<T>& cc = *run.cache;
  const T* gh = run.prm.gamma_h;
  double* sum_d = spec.gru() ? s.sum_d_h.data() : s.sum_d.data();  // sum of d(recurrent term)
  double* sum_d_xh = s.sum_d_xh_h.data();
  for (int q = 0; q < gates; ++q)  // this rank's share of dgamma (summed with the gradients)
    for (int j = 0; j < w; ++j) run.grd.gamma_h[q * H + k0 + j] += static_cast<T>(sum_d_xh[q * w + j]);
  if (spec.h == Norm::bn_step && run.batch && sync.active) {  // group sums for BN's backward
    double* group_sums = sync.sums_xh.data();
    for (int q = 0; q < gates; ++q) {
      std::copy_n(sum_d + q * w, w, group_sums + q * H + k0);
      std::copy_n(sum_d_xh + q * w, w, group_sums + G + q * H + k0);
    }
    group_sum(u, group_sums, 2 * static_cast<size_t>(G));
    for (int q = 0; q < gates; ++q) {
      std::copy_n(group_sums + q * H + k0, w, sum_d + q * w);
      std::copy_n(group_sums + G + q * H + k0, w, sum_d_xh + q * w);
    }
  }
  T* dRh = dRh_in_hh(run.input_grad_in_loop) ? st.hh : st.gates;
  if (spec.h == Norm::bn_step)
    for (int q = 0; q < gates; ++q) {
      const int j0 = q * H + k0;
      const T* zh = st.hh + hh_offset(cc, q, k0, w);
      kern::col_norm_backward_serial<T>(
          {st.d_recurrent_term + j0, N, G, w, st.valid}, {zh, st.mean_h + j0, st.rstd_h + j0},
          {gh + j0, st.rstd_h + j0, sum_d + q * w, sum_d_xh + q * w, stat_count(st.t), run.batch},
          dRh + j0);
    }
  if (spec.h == Norm::ln) {
    // The row sums (taken in the gate pass) over all threads first.
    if (u.P > 1) {
#pragma omp barrier
    }
    layer_norm_terms_backward(run, u, s, st, dRh);
  }
  return dRh;
}

// LN backward of both terms over the owned columns, per LN part: d(W x) over W x in Ax and d(R h)
// into dRh, in one pass over the rows (each element of a term's gradient is read before dRh,
// which may lie over dpre in Gates, is written). The row means of the threads' sums first.
template <class T>
void Engine<T>::layer_norm_terms_backward(const BackwardRun& run, const UnitBlock& u,
                                          BackwardScratch& s, const BackStep& st, T* dRh) {
  const int N = run.N, H = run.H, G = run.G;
  const size_t part_stride = static_cast<size_t>(u.P) * N * 2;
  const bool ln_x = spec.x == Norm::ln;
  for (int i = 0; i < ln_parts(spec); ++i) {
    const LnPart pt = ln_part(spec, i);
    const double F = static_cast<double>(pt.nq) * H;
    T* m = s.ln_row_means.data();  // a_h, b_h, a_x, b_x [N] each
    ln_grad_row_means({ws.ln_part_h.data() + i * part_stride, N}, u.P, F, st.valid, m, m + N);
    if (ln_x)
      ln_grad_row_means({ws.ln_part_x.data() + i * part_stride, N}, u.P, F, st.valid, m + 2 * N,
                        m + 3 * N);
    const LnTerm<T> h_term{st.d_recurrent_term, st.hh, run.cache->hh_blocked, run.prm.gamma_h,
                           st.mean_h + i * N, st.rstd_h + i * N, m, m + N};
    const LnTerm<T> x_term{st.d_input_term, st.wx, false, run.prm.gamma_x,
                           ln_x ? st.mean_x + i * N : nullptr, ln_x ? st.rstd_x + i * N : nullptr,
                           m + 2 * N, m + 3 * N};
    ln_backward<T>({N, G, {pt.q0 * H + u.k0, u.w, pt.nq, H}, st.valid}, h_term, dRh,
                   ln_x ? &x_term : nullptr, st.wx);
  }
}

// Inline input: dW += d(W x)_t^T x_t and this thread's part of dx_t, from d(W x) [N,G] (dAx);
// with z (the raw W x) given, d(W x) is formed from dpre (dAx) row by row through BN_t's
// backward coefficients (input_term_backward).
template <class T>
void Engine<T>::inline_input_grads(const BackwardRun& run, const UnitBlock& u,
                                   BackwardScratch& s, const BackStep& st, const T* dAx,
                                   const T* z) {
  const int N = run.N, H = run.H, G = run.G, C = run.C, k0 = u.k0, w = u.w;
  const int64_t TN = static_cast<int64_t>(run.nT) * N;
  const T* Xt = run.X + static_cast<int64_t>(st.t) * N * C;
  const T* Wt = run.cache->Wt.data();
  T* dxp = run.dX ? ws.dx_part.data() + (static_cast<size_t>(u.p) * TN +
                                         static_cast<size_t>(st.t) * N) * C
                  : nullptr;
  std::fill(s.dW_step.begin(), s.dW_step.end(), T(0));
  for (int n = 0; n < N; ++n) {
    if (!st.valid[n]) {
      if (dxp) std::fill_n(dxp + static_cast<int64_t>(n) * C, C, T(0));
      continue;
    }
    const T* d = dAx + static_cast<int64_t>(n) * G;
    const T* xr = Xt + static_cast<int64_t>(n) * C;
    if (z) {
      const T* zr = z + static_cast<int64_t>(n) * G;
      for (int q = 0; q < gates; ++q) {
        const T* dq = d + q * H + k0;
        const T* zq = zr + q * H + k0;
        const size_t o = static_cast<size_t>(q) * w;
        const T* ka = s.x_a.data() + o;
        const T* km1 = s.x_m1.data() + o;
        const T* km2 = s.x_m2.data() + o;
        const T* mu = s.x_mean.data() + o;
        const T* rs = s.x_rstd.data() + o;
        T* dr = s.d_wx_row.data() + o;
#pragma omp simd
        for (int j = 0; j < w; ++j)
          dr[j] = ka[j] * dq[j] - km1[j] - ((zq[j] - mu[j]) * rs[j]) * km2[j];
      }
    }
    for (int c = 0; c < C; ++c) {
      const T xc = xr[c];
      T acc = 0;
      for (int q = 0; q < gates; ++q) {
        const T* dq = z ? s.d_wx_row.data() + static_cast<size_t>(q) * w : d + q * H + k0;
        T* wq = s.dW_step.data() + (static_cast<size_t>(c) * gates + q) * w;
        const T* wt = Wt + static_cast<int64_t>(c) * G + q * H + k0;
#pragma omp simd reduction(+ : acc)
        for (int j = 0; j < w; ++j) {
          wq[j] += dq[j] * xc;
          acc += dq[j] * wt[j];
        }
      }
      if (dxp) dxp[static_cast<int64_t>(n) * C + c] = acc;
    }
  }
  for (size_t i = 0; i < s.dW.size(); ++i) s.dW[i] += s.dW_step[i];
}

// After the last step: the thread's sums over all steps into the gradients (db, dgamma_x, an
// inline dW), and its columns of dL/dh_0, dL/dc_0 into the carries.
template <class T>
void Engine<T>::flush_thread_sums(const BackwardRun& run, const UnitBlock& u,
                                  BackwardScratch& s) {
  const int H = run.H, C = run.C, k0 = u.k0, w = u.w;
  for (int q = 0; q < gates; ++q)
    for (int j = 0; j < w; ++j) {
      run.grd.b[q * H + k0 + j] += static_cast<T>(s.db[q * w + j]);
      if (run.grd.b_h) run.grd.b_h[q * H + k0 + j] += static_cast<T>(s.db_h[q * w + j]);
      if (run.grd.gamma_x) run.grd.gamma_x[q * H + k0 + j] += static_cast<T>(s.dgamma_x[q * w + j]);
      if (run.inline_x)
        for (int c = 0; c < C; ++c)
          run.grd.W[static_cast<size_t>(q * H + k0 + j) * C + c] +=
              static_cast<T>(s.dW[(static_cast<size_t>(c) * gates + q) * w + j]);
    }
  for (int n = 0; n < run.N; ++n) {
    const int64_t o = static_cast<int64_t>(n) * H + k0;
    std::copy_n(s.dh + o, w, ws.dh_carry.data() + o);
    std::copy_n(s.dc + o, w, ws.dc_carry.data() + o);
  }
}

// The probe's figure: per step, the batch mean over valid rows of ||dL/dh_t||.
template <class T>
void Engine<T>::finish_probe(int P) {
  const int nT = T_, N = N_;
  probe.out->assign(nT, 0.0);
  for (int t = 0; t < nT; ++t) {
    double sum = 0;
    for (int n = 0; n < N; ++n) {
      if (!valid[static_cast<size_t>(t) * N + n]) continue;
      double q2 = 0;
      for (int p = 0; p < P; ++p) q2 += probe.sq[(static_cast<size_t>(t) * P + p) * N + n];
      sum += std::sqrt(q2);
    }
    (*probe.out)[t] = count[t] ? sum / count[t] : 0.0;
  }
}

// dW [G,C] of a dense input with few features as its transpose X^T d(W x) [C,G], added in place:
// oneDNN 2.6's sgemm runs that product (C rows) 1.1-1.8x faster than dW's own (C columns) for
// 32 <= C <= 64 on the AVX-512 Xeon and EPYC it was measured on (docs/performance.md, "GEMM
// backends"; fewer features than 32 were not measured, and the rule takes them too);
// level at 128-256, slower at 1000. OpenBLAS gained on the EPYC but lost on the Xeon, so it keeps
// dW's own product. fp32 only (bf16 not measured).
namespace {
template <class T>
bool weight_grad_transposed(int C) {
  return std::is_same_v<T, float> && C <= 64 && blas::backend() == blas::Backend::onednn &&
         blas::precision() == blas::Precision::fp32;
}
}  // namespace

// After the time loop: dR over all T*N rows; the input normalization's backward where it needs
// the whole sequence (bnx-seq) or the group's sums (synchronized BN_t), in place on Gates
// (dpre -> d(W x)); then dW and dx (inline input: dx from the threads' parts).
template <class T>
void Engine<T>::deferred_input_backward(const BackwardRun& run) {
  LayerCache<T>& cc = *run.cache;
  const int nT = run.nT, N = run.N, H = run.H, G = run.G, C = run.C;
  const int64_t NG = static_cast<int64_t>(N) * G, TN = static_cast<int64_t>(nT) * N;
  const T* dRhAll = dRh_in_hh(run.input_grad_in_loop) ? cc.Hh.data() : cc.Gates.data();
  blas::gemm(true, false, G, H, static_cast<int>(TN), T(1), dRhAll, G, cc.Hs.data(), H, T(1),
             run.grd.R, H);
  if (spec.x == Norm::bn_step && !run.input_grad_in_loop) {
    if (run.batch && sync.active) {  // summed over the group in one exchange per layer
      sync.allreduce(ws.xsum1.data(), static_cast<size_t>(nT) * G);
      sync.allreduce(ws.xsum2.data(), static_cast<size_t>(nT) * G);
    }
#pragma omp parallel for schedule(static) if (TN * G > kern::kParallelWork)
    for (int t = 0; t < nT; ++t) {
      T* d = cc.Gates.data() + t * NG;
      const size_t so = static_cast<size_t>(t) * G;
      kern::col_norm_backward_serial<T>(
          {d, N, G, G, valid.data() + static_cast<size_t>(t) * N},
          {cc.Ax.data() + t * NG, cc.x.mean.data() + so, cc.x.rstd.data() + so},
          {run.prm.gamma_x, cc.x.rstd.data() + so, ws.xsum1.data() + so, ws.xsum2.data() + so,
           stat_count(t), run.batch},
          d);
    }
  } else if (spec.x == Norm::bn_seq) {
    int64_t cnt = 0;
    for (int64_t r = 0; r < TN; ++r) cnt += valid[r];
    double* s1 = ws.col_sum.data();
    double* s2 = ws.col_dot.data();
    kern::column_grad_sums(cc.Gates.data(), cc.Ax.data(), TN, G, valid.data(), s1, s2);
    for (int j = 0; j < G; ++j) run.grd.gamma_x[j] += static_cast<T>(s2[j]);
    if (run.batch && sync.active) {
      std::vector<double> group_sums(2 * static_cast<size_t>(G) + 1);
      std::copy_n(s1, G, group_sums.data());
      std::copy_n(s2, G, group_sums.data() + G);
      group_sums[2 * static_cast<size_t>(G)] = static_cast<double>(cnt);
      sync.allreduce(group_sums.data(), group_sums.size());
      std::copy_n(group_sums.data(), G, s1);
      std::copy_n(group_sums.data() + G, G, s2);
      cnt = static_cast<int64_t>(group_sums[2 * static_cast<size_t>(G)]);
    }
    kern::column_norm_backward<T>(cc.Gates.data(), cc.Ax.data(), TN, G, valid.data(),
                                  {run.prm.gamma_x, cc.x.rstd.data(), s1, s2, cnt, run.batch},
                                  cc.Gates.data());
  }
  if (run.inline_x) {  // dW accumulated in the loop; dx = the threads' parts
    if (run.dX)
      for (int64_t i = 0; i < TN * C; ++i) {
        T v = 0;
        for (int pp = 0; pp < run.P; ++pp) v += ws.dx_part[static_cast<size_t>(pp) * TN * C + i];
        run.dX[i] = v;
      }
    return;
  }
  const T* dAx = run.input_grad_in_loop ? cc.Ax.data() : cc.Gates.data();  // d(W x) [T,N,G]
  if (cc.sparse_x) {  // dW from X's nonzeros (one-hot rows: a column's rows added up)
    ensure_size(ws.dwt, static_cast<size_t>(C) * G);
    sparse_weight_grad(cc.xs, dAx, TN, G, C, ws.dwt.data(), run.grd.W);
  } else if (weight_grad_transposed<T>(C)) {  // dW^T = X^T d(W x), added to dW transposed
    ensure_size(ws.dwt, static_cast<size_t>(C) * G);
    blas::gemm(true, false, C, G, static_cast<int>(TN), T(1), run.X, C, dAx, G, T(0),
               ws.dwt.data(), G);
#pragma omp parallel if (static_cast<int64_t>(G) * C > kern::kParallelWork)
    {
      const int P = omp_get_num_threads(), p = omp_get_thread_num();
      kern::add_transposed_rows(ws.dwt.data(), G, C, G * p / P, G * (p + 1) / P, run.grd.W, C);
    }
  } else {
    blas::gemm(true, false, G, C, static_cast<int>(TN), T(1), dAx, G, run.X, C, T(1), run.grd.W,
               C);
  }
  if (run.dX)
    blas::gemm(false, false, static_cast<int>(TN), C, G, T(1), dAx, G, run.prm.W, C, T(0), run.dX,
               C);
}

template void Engine<float>::layer_backward(int, const float*, const float*, float*);
template void Engine<double>::layer_backward(int, const double*, const double*, double*);

}  // namespace rbn::cells
