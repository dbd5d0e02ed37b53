// The cell engine behind rbn::Stack: one class, its state grouped by what it is, its work split by
// phase over three files (docs/cells.md, "Where things are"):
//   stack.cpp         the driver: parameter layout, caches and workspaces, forward(), backward(),
//                     the statistics pass, the public wrappers;
//   forward_step.cpp  one layer forward through time: the input projection, then per step the
//                     named phases of forward_step();
//   backward_step.cpp one layer backward through time: per step the phases of backward_step(),
//                     then the deferred parameter-gradient GEMMs;
//   norms.hpp         the normalizations as units (per-step BN, sequence BN, LN): statistics
//                     (batch, population, synchronized), forward coefficients, backward;
//   kernels.hpp       activations, the pointwise cell steps, the column kernels;
//   input_projection.hpp  W x formed inside the time loop for layers with few inputs.
//
// Shapes: x [T,N,C]; per layer: Ax [T,N,G] (W x, raw; bnx-seq: its x-hat), Gates [T,N,G] (the
// activated gates; dpre in backward), Hh [T,N,G] (R h, raw), Hs/Cs [T+1,N,H] (states, the initial
// state at row 0; padded rows carry their state forward; cells without a cell state carry c
// unchanged), and each normalization's statistics per step (BN: per column; LN: per row and part). G = gates * H. One GEMM computes W x over all T*N rows before
// the time loop; per step only R h, its statistics and the pointwise step run, the
// normalizations applied on the fly. The caches keep the raw W x, R h and c: backward forms x-hat
// = (z - mean) * rstd where it needs it, which costs one multiply-add and saves writing a
// normalized copy (the pixel shape is bound by memory traffic, not arithmetic). Backward writes
// d(W x) over Ax for the per-step input normalizations, and defers dR and dW to one GEMM each over
// all T*N rows.
//
// Accumulation contract: parameter gradients +=, activation gradients (dx, dh0, dc0) =.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cells/input_projection.hpp"
#include "cells/kernels.hpp"
#include "rbn/rbn.hpp"
#include "util/blas.hpp"
#include "util/line_vector.hpp"
#include "util/rng.hpp"

namespace rbn::cells {

template <class V>
void ensure_size(V& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

constexpr size_t npos = static_cast<size_t>(-1);

enum class Norm { none, bn_step, bn_seq, ln };
inline bool is_bn(Norm n) { return n == Norm::bn_step || n == Norm::bn_seq; }

// A cell as a description: which normalization acts on each term, and how many gate blocks its
// pointwise step reads (docs/cells.md, "Adding a cell").
struct CellSpec {
  Norm x = Norm::none;  // of the input term W x
  Norm h = Norm::none;  // of the recurrent term R h
  Norm c = Norm::none;  // of the cell state before the output tanh (LSTMs)
  int gates = 4;        // gate blocks of G = gates * H: 4 (i, f, g, o) LSTM, 3 (r, z, n) GRU, 1 tanh RNN
  bool lstm() const { return gates == 4; }
  // GRU: the two terms stay apart (n = tanh(x~_n + r * h~_n)), each with its own bias and its own
  // gradient; R h is kept for backward even without a normalization (h~_n).
  bool gru() const { return gates == 3; }
  bool keeps_hh() const { return h != Norm::none || gru(); }
};
CellSpec cell_spec(const StackConfig& cfg);

// The gate blocks one layer normalization takes together: one part for the LSTM (all four
// blocks); two for the GRU (the r, z blocks, then the n block: Ba et al., eqs. 26-28), each with
// its own statistics. Blocks [q0, q0 + nq).
struct LnPart {
  int q0, nq;
};
inline int ln_parts(const CellSpec& spec) { return spec.gru() ? 2 : 1; }
inline LnPart ln_part(const CellSpec& spec, int i) {
  if (!spec.gru()) return {0, spec.gates};
  return i == 0 ? LnPart{0, 2} : LnPart{2, 1};
}
// The part of gate block q.
inline int ln_part_of(const CellSpec& spec, int q) { return spec.gru() && q == 2 ? 1 : 0; }

// Population statistics of one normalization inside the flat buffers: running mean and var,
// [rows, F] each (rows = t_max per step, 1 for a statistic over the whole sequence).
struct StatTable {
  size_t mean = npos, var = npos;
  int rows = 0;
  int F = 0;
};

// Where one column block's statistics belong: its table, the table row of the step, and the
// columns [j0, j0 + w) of the table's F.
struct StatSlot {
  const StatTable* table;
  int64_t row;
  int j0;
  int w;
};
// Which statistics a forward uses: the batch's (train) or the population's; and whether the
// batch's go into the running averages.
struct StatMode {
  bool batch;
  bool update_running;
};
// Scratch of the per-step BN statistics of one thread (one block of up to gates*w columns).
struct BlockStatScratch {
  std::vector<double> mean, var;
  explicit BlockStatScratch(size_t n = 0) : mean(n + 1), var(n + 1) {}
};

// The normalization of c in a row's output tanh(c~), c~ = gamma_c * c-hat + beta_c: BN through
// per-column folded coefficients (scale * c + shift), LN through gamma, beta and the row's
// statistics. [H] each; nullptr where the cell has none.
template <class T>
struct CellNormRow {
  const T* scale;
  const T* shift;
  const T* gamma;
  const T* beta;
};

// Offsets of one layer's tensors inside the flat parameter buffer, and its statistics tables.
// b is the LSTM's one bias (rnn.k.bias) or the GRU's bias_ih; b_h the GRU's bias_hh.
struct LayerLayout {
  int C = 0;  // input features of this layer
  size_t W = npos, R = npos, b = npos, b_h = npos, gamma_x = npos, gamma_h = npos,
         gamma_c = npos, beta_c = npos, h0 = npos, c0 = npos;
  StatTable stats_x, stats_h, stats_c;
};

// One layer's parameters (P = const T*) or their gradients (P = T*); nullptr where the cell has
// none. W [G,C], R [G,H], b [G] (GRU: b_ih), b_h [G] (GRU: b_hh), gamma_x/gamma_h [G],
// gamma_c/beta_c [H].
template <class P>
struct LayerTensors {
  P W, R, b, b_h, gamma_x, gamma_h, gamma_c, beta_c;
};
template <class P>
LayerTensors<P*> layer_tensors(const LayerLayout& L, P* base) {
  auto at = [&](size_t off) { return off != npos ? base + off : nullptr; };
  return {at(L.W),       at(L.R),       at(L.b),       at(L.b_h),
          at(L.gamma_x), at(L.gamma_h), at(L.gamma_c), at(L.beta_c)};
}

// Statistics of one normalization over the steps of a forward: BN per step [T,F] (sequence BN
// [F]); LN per row and part [T,parts,N] (ln_parts).
template <class T>
struct NormStats {
  std::vector<T> mean, rstd;
};

// The activations one layer's backward reads, kept by its forward.
template <class T>
struct LayerCache {
  // (on lines: the time loop streams them, and G = 4H rows then start on lines too)
  LineVector<T> X;      // [T,N,C] copy of the input (layer 0 only; others read the layer below)
  LineVector<T> Ax;     // [T,N,G] W x (inline_x: one step [P,N,G] by thread; wx_in_gates: empty)
  LineVector<T> Gates;  // [T,N,G]
  LineVector<T> Hh;     // [T,N,G] R h (spec.keeps_hh())
  LineVector<T> Hs;     // [T+1,N,H]
  LineVector<T> Cs;     // [T+1,N,H]
  LineVector<T> Ct;     // [T,N,H] zoneout_c: each step's un-zoned c~ (Cs holds the zoned, carried c)
  LineVector<T> Xd;     // [T,N,C] layer k > 0 under dropout: its input, the layer below's h dropped
  NormStats<T> x, h, c;  // statistics of W x, R h and c
  // Few input features (inline_x): W x is formed per step inside the time loop and recomputed in
  // backward instead of stored; Ax then holds one step per thread and Wt = W^T [C,G].
  bool inline_x = false;
  std::vector<T> Wt;
  // W x unnormalized and hoisted (spec.x none, not inline): the hoisted product is written into
  // Gates and each step's gate pass turns its row into the gates in place, so that the pass reads
  // and writes the same lines (no separate [T,N,G] Ax; backward never reads the raw W x).
  bool wx_in_gates = false;
  T* wx() { return wx_in_gates ? Gates.data() : Ax.data(); }
  // Sparse input rows (sparse_x; one-hot symbols): X's nonzeros by row, W x gathered per step in
  // the time loop from Wt = W^T [C,G] into wx()'s step t (no hoisted product), dW scattered from
  // d(W x) after backward's loop (input_projection.hpp).
  bool sparse_x = false;
  SparseRows<T> xs;
  // Hh's columns by thread (hh_blocked): each time-loop thread's gate blocks side by side, gate q
  // of the units [k0, k1) at gates*k0 + q*w, so that no cache line holds two threads' values; else
  // in gate order (q*H + k), where backward's dRh over Hh feeds the per-step product with R.
  bool hh_blocked = false;
  int P = 1;  // threads of the forward's time loop (backward keeps its partition of the units)
};

// One time-loop thread's share of a layer: the hidden units [k0, k1) and, of each gate block q,
// the columns q*H + k0 .. q*H + k1 (w = k1 - k0 each).
struct UnitBlock {
  int p = 0, P = 1;
  int k0 = 0, k1 = 0, w = 0;
};

// Threads for the time loop: a block of at least 16 hidden units each.
inline int time_loop_threads(int H) {
  return std::max(1, std::min(omp_get_max_threads(), (H + 15) / 16));
}
// Hidden units of thread p of P: blocks of 16 (vector width), spread evenly.
inline UnitBlock unit_block(int p, int P, int H) {
  const int blocks = (H + 15) / 16;
  const int b0 = blocks * p / P, b1 = blocks * (p + 1) / P;
  UnitBlock u;
  u.p = p;
  u.P = P;
  u.k0 = std::min(H, b0 * 16);
  u.k1 = std::min(H, b1 * 16);
  u.w = u.k1 - u.k0;
  return u;
}
// The row `ahead` rows after row n of step t in the time loop's order, in rows from step t's row 0
// of the loop's [T,N,*] buffers, for a loop whose steps run in direction dir (+1 forward, -1
// backward) up to t_end (exclusive: T, or -1); false when it lies past the loop's last step.
inline bool row_ahead(int n, int ahead, int N, int t, int dir, int t_end, int64_t& rows) {
  const int m = n + ahead, steps = m / N, t_row = t + dir * steps;
  if (dir > 0 ? t_row >= t_end : t_row <= t_end) return false;
  rows = static_cast<int64_t>(dir) * steps * N + m % N;
  return true;
}
// The widest block of the P threads (the per-thread slices of a shared workspace).
inline int widest_unit_block(int P, int H) {
  int w = 0;
  for (int p = 0; p < P; ++p) w = std::max(w, unit_block(p, P, H).w);
  return w;
}

// Synchronized batch statistics (data-parallel training): see Stack::set_stat_allreduce.
struct GroupSync {
  std::function<void(double*, size_t)> allreduce;  // empty: this process's rows only
  bool active = false;          // the last forward summed its batch statistics over the group
  std::vector<int64_t> count;   // [T] valid rows per step over the group (when active)
  int step0 = 0;                // the forward chunk's step 0 within count (chunked forward)
  int64_t rows_at(int t) const { return count[static_cast<size_t>(step0 + t)]; }  // chunk step t
  std::vector<double> sums_xh;  // per-step group sums: [W x: sum, sq | R h: sum, sq], each G
  std::vector<double> sums_c;   // per-step group sums of c: [sum, sq], each H
};

// Gradient probe (the gradient-flow figure): see Stack::set_grad_probe.
struct GradProbe {
  int layer = -1;
  std::vector<double>* out = nullptr;
  std::vector<double> sq;  // [T,P,N]: per step, thread and row, the partial sum of squares of dh
};

// The statistics pass (popstats_begin .. finish): accumulators parallel to the buffers.
struct StatsPass {
  bool active = false;
  std::vector<double> sum;    // sized like buffers: count-weighted sums of the batch statistics
  std::vector<double> count;  // sized like buffers: rows behind each element's sum
};

// A bidirectional layer k (docs/cells.md, "Bidirectional layers"): what its two directions share.
// Its forward direction is unit 2k of Engine::layers/caches, its reverse unit 2k+1; the reverse
// runs the one-directional layer on each row's valid prefix reversed (left-aligned again, so the
// validity mask, the row counts and step s's statistics are the forward's).
template <class T>
struct BidirLayer {
  std::vector<T> Xr;  // [T,N,C] the layer's input, each row's valid prefix reversed (0 past it)
  std::vector<T> Y;   // [T,N,2H] forward h ‖ reverse h at each position, 0 at padding: the next
                      //   layer's input (the top layer's goes to y, if asked for)
};
// Backward scratch of the bidirectional driver.
template <class T>
struct BidirWorkspace {
  std::vector<T> dY;     // [T,N,2H] gradient of a layer's output (written by the layer above)
  std::vector<T> dYf;    // [T,N,H] its forward half
  std::vector<T> dYr;    // [T,N,H] its reverse half, reversed like the reverse direction's steps
  std::vector<T> dXr;    // [T,N,C] the reverse direction's input gradient, reversed
};

// The regularizers of the last forward (docs/cells.md, "Dropout and zoneout"): whether it drew
// masks (train mode with ForwardOptions::regularize) and the fields of the mask hash besides
// layer, row, step and feature. Backward recomputes the masks from these.
struct Regularizers {
  bool masks = false;    // train-mode draws; else no dropout and zoneout by its expectation
  bool dropout = false;  // layers k > 0 read their input dropped (LayerCache::Xd; bidirectional:
                         //   BidirLayer::Y dropped in place)
  bool zone_h = false;   // zoneout of h (either mode)
  bool zone_c = false;   // zoneout of c (LSTMs; either mode)
  uint64_t seed = 0, update = 0;
  int64_t row0 = 0;      // global row of row 0
  int64_t t0 = 0;        // global step of x[0]
  int dirs = 1;          // D: unit u is layer u / D, direction u % D
  int twin_layer = -1;   // a reverse twin engine (its one unit is layer twin_layer, direction 1)
  // The hash fields of unit u's zoneout masks (direction 1 for a reverse pass, whose steps are
  // its own step count s).
  mask::Stream stream(int u, mask::Kind kind) const {
    if (twin_layer >= 0) return {seed, update, twin_layer, 1, kind};
    return {seed, update, u / dirs, u % dirs, kind};
  }
};

// Scratch that outlives one layer call (sized on first use, reused).
template <class T>
struct Workspace {
  std::vector<T> dY;                     // [T,N,H] gradient handed to the layer below
  std::vector<T> dh_carry, dc_carry;     // [N,H] dL/dh_t, dL/dc_t between layers' loops
  std::vector<T> bwd_rows;               // [P][6][N,H] each thread's dh, dc, dc~, new dh rows and
                                         //   zoneout's kept parts of dh, dc
  std::vector<double> col_sum, col_dot;  // [G] sequence BN backward: sum dy, sum dy*x-hat
  std::vector<double> stat_mean, stat_var;  // [F] whole-table BN statistics
  std::vector<double> xsum1, xsum2;      // [T,G] deferred BN_t(W x) backward: sum dy, dy*x-hat
  std::vector<T> dx_part;                // [P,T,N,C] inline input: each thread's part of dx
  std::vector<T> dwt;                    // [C,G] dW transposed (sparse_weight_grad; a dense
                                         //   input's on oneDNN: weight_grad_transposed)
  LineVector<T> r_packed;                // by thread, rows on lines: R's rows transposed
                                         //   [H, line_ld(gates*w)] (fwd), its columns [G, line_ld(w)] (bwd)
  // r_packed holds the forward's slices of layer packed_layer's R (-1: anything else). The next
  // chunk of the same forward call (reuse_packed, set by Engine::forward: parameters do not change
  // within a call, and layer_forward clears it) reuses them instead of transposing R again.
  int packed_layer = -1;
  bool reuse_packed = false;
  std::vector<T> rh_step;                // [N,G] forward: the step's R h, by thread
  std::vector<T> drec_step;              // [P][N,G] backward, bngru/lngru: d(recurrent term) of the step
  std::vector<double> ln_part_h, ln_part_c, ln_part_x;  // [parts,P,N,2] LN partial row sums
  std::vector<double> ln_w_moments[2];   // [C + C*C] per LN part: moments of an inline W's rows

  // r_packed as P thread slices of [rows, cols], each row starting on a cache line (ld); sized here.
  struct PackedSlices {
    T* base = nullptr;
    int ld = 0;
    size_t stride = 0;  // rows * ld
    T* slice(int p) const { return base + p * stride; }
  };
  PackedSlices packed_slices(int P, int rows, int cols) {
    PackedSlices s{nullptr, line_ld<T>(cols), 0};
    s.stride = static_cast<size_t>(rows) * s.ld;
    ensure_size(r_packed, P * s.stride);
    s.base = r_packed.data();
    return s;
  }
};

template <class T>
struct Engine {
  StackConfig cfg;
  CellSpec spec;
  int gates = 4;  // = spec.gates
  std::vector<TensorInfo> pinfo, binfo;
  std::vector<T> params, grads, buffers;
  // Per unit: a layer's direction, u = k*D + d (D = cfg.directions(); one-directional: u = k).
  // layers, caches and every per-layer call below are indexed by u.
  std::vector<LayerLayout> layers;
  std::vector<BidirLayer<T>> bidir;  // [L] bidirectional stacks only
  BidirWorkspace<T> bws;
  // [L] (made on first use) the reverse direction of layer k as a one-layer, one-directional
  // engine of its own, with its own caches and workspaces: it runs beside the forward direction
  // on another core (docs/cells.md, "Bidirectional layers").
  std::vector<std::unique_ptr<Engine>> twins;
  bool side_by_side = false;  // the last bidirectional forward ran each layer's directions at once

  // the last forward's cache
  std::vector<LayerCache<T>> caches;
  int T_ = 0, N_ = 0;
  bool have_cache = false;
  bool cache_batch_stats = false;  // the cached forward used batch statistics
  std::vector<int32_t> len;        // [N]
  std::vector<uint8_t> valid;      // [T,N]
  std::vector<int64_t> count;      // [T] valid rows per step
  bool h0_given = false, c0_given = false;

  GroupSync sync;
  StatsPass pass;
  GradProbe probe;
  Regularizers reg;
  Workspace<T> ws;
  mutable std::vector<T> xhat_view;  // cached_normalized's result
  struct ForwardScratch;
  // [P] the forward time loop's per-thread scratch, kept between calls so that a forward of the
  // same shape (the step API: one step per call) allocates nothing.
  std::vector<ForwardScratch> fwd_scratch;

  // Layers with at most this many input features form W x inside the time loop (C multiply-adds
  // per gate value) instead of one GEMM over all steps whose [T,N,G] result goes to memory and
  // back, and backward recomputes it instead of reading it; dW and dx then accumulate per step.
  // For the pixel tasks (C = 1) the stored W x was pure memory traffic. Not for bnx-seq (its
  // statistics span all steps before the loop) or synchronized BN of W x (its backward runs after
  // the loop, from the group's sums).
  static constexpr int kInlineInput = 8;
  // Forward calls of at least this many steps pack each thread's rows of R for one product per
  // step (the step API's short calls use R in place).
  static constexpr int kPackMinSteps = 4;
  // Calls of at least kPackMinSteps steps whose input rows have at most this many nonzeros each,
  // among at least kSparseMinInput features, gather W x per step instead of the hoisted product
  // (LayerCache::sparse_x). Not for bnx-seq (its statistics need every step's W x first).
  static constexpr int kSparseRowNnz = 4;
  static constexpr int kSparseMinInput = 16;
  // The pointwise passes prefetch the rows of the [T,N,*] caches (gates, W x, R h, c, dy) this
  // many rows ahead of the row they are on, in the loop's order: this step's later rows, then the
  // next step's (backward: the previous step's) first ones. Prefetched a whole step ahead, as
  // before, the lines were evicted again by the step's product, which streams R through the
  // cache, before the pass reached them (PTB training steps 1-4 % faster by cell, same-process A/B;
  // docs/performance.md, "Prefetching rows ahead").
  static constexpr int kPrefetchRows = 2;
  // An LSTM or GRU whose terms are BN_t or not normalized runs each row's step in one pass
  // (kern::lstm_row_forward / lstm_row_backward, kern::gru_row_forward) when a thread owns at
  // most this many units: separate passes over so short a row stall on reloading what the pass
  // before stored (sMNIST, 48-52 units a thread: lstm 0.64-0.78x the time), while over long rows
  // they stream and the one-pass kernel was slower (PTB, 500 units: lstm 1.03-1.06x). Measured
  // at those two widths only (docs/performance-history.md, "One pass per row").
  static constexpr int kFusedRowMaxUnits = 128;
  bool fused_rows(const UnitBlock& u) const {
    return (spec.lstm() || spec.gru()) && spec.h != Norm::ln && u.w <= kFusedRowMaxUnits;
  }
  // ... and an LSTM then forms h with the gates when no statistics of c stand between them.
  bool h_with_gates(const UnitBlock& u) const {
    return spec.lstm() && fused_rows(u) && spec.c == Norm::none;
  }

  // initialize = false: the tensors stay 0 (a twin that receives them from its engine)
  explicit Engine(const StackConfig& c, bool initialize = true);
  void reset_parameters();
  void reset_population_stats();

  // Rows behind step t's batch statistics.
  int64_t stat_count(int t) const { return sync.active ? sync.count[t] : count[t]; }
  bool inline_input(int k, bool batch) const {
    return layers[k].C <= kInlineInput && spec.x != Norm::bn_seq &&
           !(batch && sync.active && spec.x == Norm::bn_step);
  }
  // Backward forms d(W x) inside the time loop (and dRh then goes over dpre in Gates): per-step
  // input normalizations and inline W x, but not synchronized BN_t of W x (its backward waits
  // for the group's sums after the loop).
  bool input_grad_in_loop(bool batch, bool inline_x) const {
    return inline_x || spec.x == Norm::ln || (spec.x == Norm::bn_step && !(batch && sync.active));
  }
  // Where backward leaves d(R h) [T,N,G] for the deferred dR: over the raw R h in Hh when Gates
  // still holds d(W x) for after the loop (always for the plain gru, whose recurrent-term
  // gradient is written over Hh), else over dpre in Gates.
  bool dRh_in_hh(bool in_loop) const {
    if (spec.gru() && spec.h == Norm::none) return true;
    return spec.h != Norm::none && !in_loop;
  }
  // Offset of Hh's gate block q for the units [k0, k0 + w) in a row.
  int hh_offset(const LayerCache<T>& cc, int q, int k0, int w) const {
    return cc.hh_blocked ? gates * k0 + q * w : q * cfg.hidden_size + k0;
  }
  LayerTensors<const T*> layer_params(int k) const {
    return layer_tensors(layers[k], params.data());
  }
  LayerTensors<T*> layer_grads(int k) { return layer_tensors(layers[k], grads.data()); }
  // The input rows of layer k in the cache: the copy of x, or the outputs of the layer below.
  const T* layer_input(int k) const;

  // the normalization units with this engine's tables and group (norms.hpp)
  void record_stats(const StatSlot& s, const double* mean, const double* var, int64_t cnt,
                    bool update_running);
  void bn_stats_given(const StatSlot& s, const double* mean, const double* var, int64_t cnt,
                      bool update_running, T* mean_out, T* rstd_out);
  void bn_stats_block(kern::ColBlock<const T> z, const StatSlot& s, int64_t cnt, StatMode mode,
                      BlockStatScratch& scratch, T* mean_out, T* rstd_out);
  void bn_stats_from_sums(const double* sum, const double* sq, const StatSlot& s, int64_t cnt,
                          bool update_running, BlockStatScratch& scratch, T* mean_out,
                          T* rstd_out);
  void bn_table_stats(const T* z, int64_t rows, const uint8_t* valid, const StatTable& tab,
                      StatMode mode, T* mean_out, T* rstd_out);
  void group_sum(const UnitBlock& u, double* buf, size_t n);
  void fold_cell_norm(const LayerTensors<const T*>& prm, const T* mean, const T* rstd,
                      const UnitBlock& u, T* scale, T* shift) const;
  void cell_output_tanh(const T* c, int k0, int k1, const CellNormRow<T>& norm, T mean, T rstd,
                        T* out) const;

  int dirs() const { return cfg.directions(); }
  // the driver (stack.cpp)
  void forward(const ForwardOptions& opt, int steps, int N, const StackInput<T>& in,
               const StackOutput<T>& out);
  void backward(const T* dy, const T* dhT, const T* dcT, T* dx, T* dh0, T* dc0);
  void allocate_cache(int k, int Tc, int N, bool copy_input, bool inline_x, bool train);
  void init_state(int k, int N, const T* h0, const T* c0, const ForwardOptions& opt, bool train);
  void set_valid_rows(int steps, int N, const int32_t* lengths, bool train);
  void learned_state_grads(int u);  // after unit u's backward: its learned h0/c0 (if not given)
  void add_h0_noise(int index, int N, T* h, const ForwardOptions& opt) const;

  // bidirectional stacks (bidirectional.cpp): whole sequences, layer by layer
  void forward_bidir(const ForwardOptions& opt, int nT, int N, const StackInput<T>& in,
                     const StackOutput<T>& out);
  void backward_bidir(const T* dy, const T* dhT, const T* dcT, T* dx, T* dh0, T* dc0);
  void reverse_rows(int nT, int N, const T* src, int width, T* dst, bool accumulate) const;
  void join_directions(int k, int nT, int N, T* Y) const;
  void split_output_grad(int nT, int N, const T* dY, T* dYf, T* dYr) const;
  bool directions_side_by_side(bool train) const;
  const LayerCache<T>& reverse_cache(int k) const;
  Engine& reverse_twin(int k);
  void run_unit_forward(int u, const ForwardOptions& opt, int nT, int N, const StackInput<T>& in,
                        const T* X);
  void twin_forward(int k, const ForwardOptions& opt, int nT, int N, const StackInput<T>& in);
  void run_unit_backward(int u, const T* dYd, T* dXd, const T* dhT, const T* dcT, T* dh0, T* dc0);
  void twin_backward(int k, const T* dYd, T* dXd, const T* dhT, const T* dcT, T* dh0, T* dc0);
  void set_regularizers(const ForwardOptions& opt, bool train);
  const T* dropout_input(int k, int Tc, int N, int64_t step0, const T* below);
  void dropout_backward(int k, T* dX) const;
  void drop_rows(const mask::Stream& ms, int Tc, int N, int C, int64_t step0, const T* src,
                 T* dst) const;
  void dropout_bidir(int k, int nT, int N, T* Y) const;  // bidirectional layer k's output Y
  // zoneout's keep-previous weight d of feature j: a Bernoulli(z) draw (key: mask::row_key) in
  // train mode, z itself at inference
  T zone_weight(uint64_t key, int j, double z) const {
    return reg.masks ? T(mask::bernoulli(key, j, z) ? 1 : 0) : static_cast<T>(z);
  }
  uint64_t zone_key(int k, mask::Kind kind, int64_t row, int64_t step) const {
    return reg.masks ? mask::row_key(reg.stream(k, kind), reg.row0 + row, step) : 0;
  }

  // one layer (forward_step.cpp, backward_step.cpp)
  struct ForwardRun;
  struct StepRows;
  void layer_forward(int k, int Tc, int N, const T* X, const uint8_t* vmask, int64_t tg0,
                     bool batch, bool update_running);
  void prepare_input(ForwardRun& run);
  void forward_step(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s, int t);
  void input_term_stats(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s,
                        const StepRows& st);
  void pack_recurrent_columns(const T* R, int H, const UnitBlock& u, T* r_cols, int ld) const;
  void recurrent_product(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s,
                         const StepRows& st);
  void synced_term_stats(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s,
                         const StepRows& st);
  void recurrent_term_stats(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s,
                            const StepRows& st);
  void layer_norm_term_stats(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s,
                             const StepRows& st);
  void inline_ln_row_stats(const ForwardRun& run, const StepRows& st, int part, T* mean,
                           T* rstd) const;
  void term_coefficients(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s, int t);
  void pointwise_forward(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s,
                         const StepRows& st);
  void gru_row_forward(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s,
                       const StepRows& st, int n);
  void gru_row_one_pass(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s,
                       const StepRows& st, int n);
  void cell_norm_stats(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s,
                       const StepRows& st);
  void hidden_output(const ForwardRun& run, const UnitBlock& u, ForwardScratch& s,
                     const StepRows& st);
  void zoneout_forward(const ForwardRun& run, const UnitBlock& u, const StepRows& st);

  struct BackwardRun;
  struct BackwardScratch;
  struct BackStep;
  void layer_backward(int k, const T* X, const T* dYin, T* dX);
  void backward_step(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s, int t);
  void output_gradient(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                       const BackStep& st);
  void zoneout_split(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                     const BackStep& st, int n);
  void zoneout_merge(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                     const BackStep& st);
  void cell_norm_backward(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                          const BackStep& st);
  void gate_gradients(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                      const BackStep& st);
  void lstm_row_gradients(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                          const BackStep& st, int n);
  void padded_row_gradients(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                            const BackStep& st, int n);
  void gru_hn_coefficients(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                           const BackStep& st);
  void gru_row_backward(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                        const BackStep& st, int n);
  void row_term_sums(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                     const BackStep& st, int n);
  void input_term_backward(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                           const BackStep& st);
  T* recurrent_term_backward(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                             const BackStep& st);
  void layer_norm_terms_backward(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                                 const BackStep& st, T* dRh);
  void inline_input_grads(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s,
                          const BackStep& st, const T* dAx, const T* z);
  void flush_thread_sums(const BackwardRun& run, const UnitBlock& u, BackwardScratch& s);
  void finish_probe(int P);
  void deferred_input_backward(const BackwardRun& run);
};

// Thread-private scratch of the forward time loop (Engine::fwd_scratch[p]).
template <class T>
struct Engine<T>::ForwardScratch {
  BlockStatScratch block;                  // [gates*w+1] batch statistics of a column block
  std::vector<T> ln_mean_h, ln_rstd_h;     // [parts,N] LN row statistics of R h this step
  std::vector<T> ln_mean_x, ln_rstd_x;     // [parts,N] ... of W x
  std::vector<T> ln_mean_c, ln_rstd_c;     // [N] ... of c
  std::vector<T> scale_x, scale_h, shift;  // [G] BN (or none) folded: pre = sx*Wx + sh*Rh + shift
  std::vector<T> shift_h;                  // [G] GRU: the recurrent term's own, h~ = sh*Rh + shift_h
  std::vector<T> scale_c, shift_c;         // [H] BN of c folded: gamma_c*c-hat + beta_c
  std::vector<double> x_moments;           // [C + C*C] inline BN of W x: the step's input moments
  T* r_cols = nullptr;  // [H, ld] this thread's rows of R, transposed (gate q's units at q*w)
  blas::FixedRightOperand<T> r_op;  // r_cols as the step's product reads it (bf16: converted once)
  T* rh_step = nullptr;  // [N, gates*w] the step's R h for the owned columns (gate q at q*w)
  int ld_rh = 0;
  // Sizes for a call (gw = gates * w); grows only, so that repeated calls reuse the memory. Every
  // value is written before it is read within a step, as between the steps of one call.
  void size_for(int N, int G, int H, int C, int gw) {
    for (auto* v : {&block.mean, &block.var}) ensure_size(*v, static_cast<size_t>(gw) + 1);
    for (auto* v : {&ln_mean_h, &ln_rstd_h, &ln_mean_x, &ln_rstd_x}) ensure_size(*v, 2 * static_cast<size_t>(N));
    for (auto* v : {&ln_mean_c, &ln_rstd_c}) ensure_size(*v, static_cast<size_t>(N));
    for (auto* v : {&scale_x, &scale_h, &shift, &shift_h}) ensure_size(*v, static_cast<size_t>(G));
    for (auto* v : {&scale_c, &shift_c}) ensure_size(*v, static_cast<size_t>(H));
    ensure_size(x_moments, static_cast<size_t>(C) + static_cast<size_t>(C) * C);
    ld_rh = gw;
  }
};

}  // namespace rbn::cells
