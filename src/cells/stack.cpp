// The stack driver: parameter layout and initialization, caches and workspaces, forward() and
// backward() over the layers, the statistics pass and the public wrappers of rbn::Stack. The work
// of one layer is in forward_step.cpp and backward_step.cpp; engine.hpp maps the rest.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "cells/engine.hpp"
#include "cells/init.hpp"
#include "cells/input_projection.hpp"
#include "cells/norms.hpp"
#include "rbn/error.hpp"
#include "util/rng.hpp"

namespace rbn {

namespace cells {

CellSpec cell_spec(const StackConfig& cfg) {
  const int g = cell_gates(cfg.cell);
  switch (cfg.cell) {
    case Cell::lstm: return {Norm::none, Norm::none, Norm::none, g};
    case Cell::bnlstm: return {Norm::bn_step, Norm::bn_step, Norm::bn_step, g};
    case Cell::bnx: return {Norm::bn_step, Norm::none, Norm::none, g};
    case Cell::bnx_seq: return {Norm::bn_seq, Norm::none, Norm::none, g};
    case Cell::lnlstm: return {cfg.ln_input ? Norm::ln : Norm::none, Norm::ln, Norm::ln, g};
    case Cell::rnn: return {Norm::none, Norm::none, Norm::none, g};
    case Cell::bnrnn: return {Norm::bn_step, Norm::bn_step, Norm::none, g};
    case Cell::gru: return {Norm::none, Norm::none, Norm::none, g};
    case Cell::bngru: return {Norm::bn_step, Norm::bn_step, Norm::none, g};
    case Cell::lngru: return {cfg.ln_input ? Norm::ln : Norm::none, Norm::ln, Norm::none, g};
  }
  return {Norm::none, Norm::none, Norm::none, g};
}

namespace {

size_t add_tensor(std::vector<TensorInfo>& infos, const std::string& name,
                  std::vector<int64_t> shape) {
  size_t numel = 1;
  for (auto s : shape) numel *= static_cast<size_t>(s);
  const size_t off = infos.empty() ? 0 : infos.back().offset + infos.back().numel;
  infos.push_back({name, std::move(shape), off, numel});
  return off;
}

size_t total_numel(const std::vector<TensorInfo>& v) {
  return v.empty() ? size_t{0} : v.back().offset + v.back().numel;
}

// Layer k's tensors (SPEC section 5 names) appended to the parameter and buffer lists; direction
// d = 1 (reverse) under "rnn.k.reverse.".
LayerLayout lay_out_layer(const StackConfig& cfg, const CellSpec& spec, int k, int d,
                          std::vector<TensorInfo>& pinfo, std::vector<TensorInfo>& binfo) {
  const int64_t H = cfg.hidden_size, G = spec.gates * H;
  LayerLayout L;
  L.C = k == 0 ? cfg.input_size : cfg.directions() * cfg.hidden_size;
  const std::string p = "rnn." + std::to_string(k) + (d == 1 ? ".reverse." : ".");
  L.W = add_tensor(pinfo, p + "weight_ih", {G, L.C});
  L.R = add_tensor(pinfo, p + "weight_hh", {G, H});
  if (spec.gru()) {  // nn.GRU's two biases: b_hn sits inside the reset product
    L.b = add_tensor(pinfo, p + "bias_ih", {G});
    L.b_h = add_tensor(pinfo, p + "bias_hh", {G});
  } else {
    L.b = add_tensor(pinfo, p + "bias", {G});
  }
  const std::string kind = spec.h == Norm::ln ? "ln_" : "bn_";
  if (spec.x != Norm::none) L.gamma_x = add_tensor(pinfo, p + kind + "x.weight", {G});
  if (spec.h != Norm::none) L.gamma_h = add_tensor(pinfo, p + kind + "h.weight", {G});
  if (spec.c != Norm::none) {
    L.gamma_c = add_tensor(pinfo, p + kind + "c.weight", {H});
    L.beta_c = add_tensor(pinfo, p + kind + "c.bias", {H});
  }
  if (cfg.learn_init_state) {
    L.h0 = add_tensor(pinfo, p + "h0", {H});
    if (!spec.gru()) L.c0 = add_tensor(pinfo, p + "c0", {H});  // a GRU has no cell state
  }
  // population statistics: [t_max, F] per step, [F] for sequence BN
  auto table = [&](Norm norm, const std::string& which, int64_t F, StatTable& tab) {
    if (!is_bn(norm)) return;
    const bool seq = norm == Norm::bn_seq;
    tab.rows = seq ? 1 : cfg.t_max;
    tab.F = static_cast<int>(F);
    const std::vector<int64_t> shape = seq ? std::vector<int64_t>{F} : std::vector<int64_t>{cfg.t_max, F};
    tab.mean = add_tensor(binfo, p + "bn_" + which + ".running_mean", shape);
    tab.var = add_tensor(binfo, p + "bn_" + which + ".running_var", shape);
  };
  table(spec.x, "x", G, L.stats_x);
  table(spec.h, "h", G, L.stats_h);
  table(spec.c, "c", H, L.stats_c);
  return L;
}

}  // namespace

template <class T>
Engine<T>::Engine(const StackConfig& c, bool initialize) : cfg(c) {
  cfg.validate();
  spec = cell_spec(cfg);
  gates = spec.gates;
  for (int k = 0; k < cfg.num_layers; ++k)
    for (int d = 0; d < dirs(); ++d) layers.push_back(lay_out_layer(cfg, spec, k, d, pinfo, binfo));
  params.assign(total_numel(pinfo), T(0));
  grads.assign(total_numel(pinfo), T(0));
  buffers.assign(total_numel(binfo), T(0));
  caches.resize(layers.size());
  if (cfg.bidirectional) bidir.resize(cfg.num_layers);
  if (initialize) reset_parameters();
}

template <class T>
void Engine<T>::reset_parameters() {
  Rng rng(cfg.seed);
  const int H = cfg.hidden_size;
  std::vector<double> block;
  std::fill(params.begin(), params.end(), T(0));
  for (const auto& L : layers) {
    // W_x and W_h orthogonal per gate block; "identity" puts I on the g block of W_h (the
    // authors' MNIST runs), on the n block of a GRU's (block 2 as well).
    for (int gate = 0; gate < gates; ++gate) {
      block.resize(static_cast<size_t>(H) * L.C);
      orthogonal_init(block.data(), H, L.C, rng);
      T* dst = params.data() + L.W + static_cast<size_t>(gate) * H * L.C;
      for (size_t i = 0; i < block.size(); ++i) dst[i] = static_cast<T>(block[i]);
    }
    for (int gate = 0; gate < gates; ++gate) {
      block.resize(static_cast<size_t>(H) * H);
      orthogonal_init(block.data(), H, H, rng);
      T* dst = params.data() + L.R + static_cast<size_t>(gate) * H * H;
      // identity on the g block (LSTM), the n block (GRU) or the whole R (tanh RNN, Le et al.'s
      // iRNN)
      const bool identity =
          cfg.recurrent_init == RecurrentInit::identity && (gate == 2 || gates == 1);
      for (int r = 0; r < H; ++r)
        for (int c = 0; c < H; ++c)
          dst[static_cast<size_t>(r) * H + c] =
              identity ? T(r == c ? 1 : 0) : static_cast<T>(block[static_cast<size_t>(r) * H + c]);
    }
    if (spec.lstm())  // GRUs: both biases 0
      for (int j = 0; j < H; ++j) params[L.b + H + j] = static_cast<T>(cfg.forget_bias_or_default());
    auto fill = [&](size_t off, size_t n, double v) {
      if (off != npos) std::fill_n(params.data() + off, n, static_cast<T>(v));
    };
    fill(L.gamma_x, static_cast<size_t>(gates) * H, cfg.gamma_x_or_default());
    fill(L.gamma_h, static_cast<size_t>(gates) * H, cfg.gamma_h_or_default());
    fill(L.gamma_c, H, cfg.gamma_c_or_default());
  }
  reset_population_stats();
}

template <class T>
void Engine<T>::reset_population_stats() {
  // running means start at 0, variances at 1 (SPEC section 3a)
  for (const auto& bi : binfo) {
    const bool var = bi.name.ends_with("running_var");
    std::fill_n(buffers.data() + bi.offset, bi.numel, T(var ? 1 : 0));
  }
}

template <class T>
const T* Engine<T>::layer_input(int k) const {
  if (cfg.bidirectional) {  // unit k = 2*layer + direction (dropout: Y dropped in place)
    const int layer = k / 2;
    if (k % 2 == 1) return bidir[layer].Xr.data();
    return layer == 0 ? caches[0].X.data() : bidir[layer - 1].Y.data();
  }
  if (k == 0) return caches[0].X.data();
  if (reg.dropout) return caches[k].Xd.data();
  return caches[k - 1].Hs.data() + static_cast<size_t>(N_) * cfg.hidden_size;
}

// ---- forward ------------------------------------------------------------------------------------

template <class T>
void Engine<T>::allocate_cache(int k, int Tc, int N, bool copy_input, bool inline_x, bool train) {
  LayerCache<T>& cc = caches[k];
  const size_t H = cfg.hidden_size, G = gates * H, C = layers[k].C;
  const size_t TN = static_cast<size_t>(Tc) * N;
  if (copy_input) ensure_size(cc.X, TN * C);
  cc.inline_x = inline_x;
  // (lngru's two LN parts read R h in gate order: its Hh is not blocked)
  cc.hh_blocked = spec.h != Norm::none && input_grad_in_loop(train, inline_x) &&
                  !(spec.gru() && spec.h == Norm::ln);
  cc.P = time_loop_threads(static_cast<int>(H));
  cc.wx_in_gates = spec.x == Norm::none && !inline_x;
  if (cc.wx_in_gates)
    decltype(cc.Ax)().swap(cc.Ax);
  else
    ensure_size(cc.Ax, inline_x ? static_cast<size_t>(cc.P) * N * G : TN * G);
  ensure_size(cc.Gates, TN * G);
  if (spec.keeps_hh()) ensure_size(cc.Hh, TN * G);
  ensure_size(cc.Hs, (Tc + 1) * N * H);
  ensure_size(cc.Cs, (Tc + 1) * N * H);
  if (reg.zone_c) ensure_size(cc.Ct, TN * H);
  if (reg.dropout && k > 0 && !cfg.bidirectional) ensure_size(cc.Xd, TN * C);
  auto stat = [&](Norm n, size_t F, NormStats<T>& ns) {
    size_t sz = 0;
    if (n == Norm::bn_step) sz = Tc * F;
    if (n == Norm::bn_seq) sz = F;
    if (n == Norm::ln) sz = TN * ln_parts(spec);
    ensure_size(ns.mean, sz);
    ensure_size(ns.rstd, sz);
  };
  stat(spec.x, G, cc.x);
  stat(spec.h, G, cc.h);
  stat(spec.c, H, cc.c);
}

// Initial state of unit k for N rows: given [N,H], learned (broadcast) or zero; plus noise (drawn
// by the state's index k in [L*D,N,H]).
template <class T>
void Engine<T>::init_state(int k, int N, const T* h0, const T* c0, const ForwardOptions& opt,
                           bool train) {
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
  if (train && opt.h0_noise > 0) add_h0_noise(k, N, cc.Hs.data(), opt);
}

// h [N,H] += N(0, h0_noise^2), drawn by (noise_seed, the state's index in [L*D,N,H], global row).
template <class T>
void Engine<T>::add_h0_noise(int index, int N, T* h, const ForwardOptions& opt) const {
  const size_t H = cfg.hidden_size;
  for (int n = 0; n < N; ++n) {
    Rng rng((opt.noise_seed * 1000003ULL + static_cast<uint64_t>(index)) * 0x9E3779B97F4A7C15ULL +
            static_cast<uint64_t>(opt.row0 + n));
    for (size_t j = 0; j < H; ++j) h[n * H + j] += static_cast<T>(opt.h0_noise * rng.normal());
  }
}

// The regularizers of this forward: masks only in train mode with opt.regularize; zoneout acts in
// both modes (by its expectation at inference), dropout only with masks and between layers.
template <class T>
void Engine<T>::set_regularizers(const ForwardOptions& opt, bool train) {
  reg.masks = train && opt.regularize;
  reg.dropout = reg.masks && cfg.dropout > 0 && cfg.num_layers > 1;
  reg.zone_h = cfg.zoneout_h > 0;
  reg.zone_c = cfg.zoneout_c > 0 && spec.lstm();
  reg.seed = cfg.seed;
  reg.update = opt.update;
  reg.row0 = opt.row0;
  reg.t0 = opt.t0;
  reg.dirs = cfg.directions();
}

// Dropout between layers (nn.LSTM's): layer k > 0 reads the layer below's h with each element
// (t, n, j) dropped with probability p and the others scaled by 1/(1-p), the masks drawn for the
// layer below's output (layer k - 1). below [Tc,N,C] that output for the chunk whose step 0 is
// global step step0. Returns the layer's input: below itself, or its dropped copy in caches[k].Xd
// (which backward reads, as the input the layer saw).
template <class T>
const T* Engine<T>::dropout_input(int k, int Tc, int N, int64_t step0, const T* below) {
  if (!reg.dropout || k == 0) return below;
  T* out = caches[k].Xd.data();
  drop_rows(reg.stream(k - 1, mask::Kind::dropout), Tc, N, layers[k].C, step0, below, out);
  return out;
}

// dst = src with each element (t, n, j) of [Tc,N,C] dropped by the mask stream ms (global row
// row0 + n, global step step0 + t, feature j) and the kept ones scaled by 1/(1-p); dst may be src.
// Forward and backward alike (the gradient goes through the same mask and scale).
template <class T>
void Engine<T>::drop_rows(const mask::Stream& ms, int Tc, int N, int C, int64_t step0,
                          const T* src, T* dst) const {
  const double p = cfg.dropout;
  const T scale = static_cast<T>(1.0 / (1.0 - p));
  const int64_t rows = static_cast<int64_t>(Tc) * N;
#pragma omp parallel for schedule(static) if (rows * C > kern::kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const uint64_t key = mask::row_key(ms, reg.row0 + r % N, step0 + r / N);
    const T* s = src + r * C;
    T* d = dst + r * C;
    for (int j = 0; j < C; ++j) d[j] = mask::bernoulli(key, j, p) ? T(0) : s[j] * scale;
  }
}

// Through dropout_input: dX [T,N,C], the gradient w.r.t. layer k's (dropped) input, becomes the
// gradient w.r.t. the layer below's output (the same masks, drawn again).
template <class T>
void Engine<T>::dropout_backward(int k, T* dX) const {
  if (!reg.dropout || k == 0) return;
  drop_rows(reg.stream(k - 1, mask::Kind::dropout), T_, N_, layers[k].C, reg.t0, dX, dX);
}

// lengths (checked), the validity mask [T,N], the valid rows per step, and (synchronized
// statistics) every step's row count over the group in one exchange.
template <class T>
void Engine<T>::set_valid_rows(int nT, int N, const int32_t* lengths, bool train) {
  len.assign(N, nT);
  if (lengths)
    for (int n = 0; n < N; ++n) {
      if (lengths[n] < 0 || lengths[n] > nT)
        throw UsageError("forward: lengths[" + std::to_string(n) + "] = " +
                         std::to_string(lengths[n]) + " outside [0, " + std::to_string(nT) + "]");
      len[n] = lengths[n];
    }
  valid.assign(static_cast<size_t>(std::max(nT, 1)) * N, 0);
  for (int t = 0; t < nT; ++t)
    for (int n = 0; n < N; ++n) valid[static_cast<size_t>(t) * N + n] = t < len[n];
  count.assign(std::max(nT, 1), 0);
  for (int t = 0; t < nT; ++t)
    for (int n = 0; n < N; ++n) count[t] += valid[static_cast<size_t>(t) * N + n];
  sync.active = train && sync.allreduce && cell_has_population_stats(cfg.cell);
  if (sync.active) {
    std::vector<double> c(count.begin(), count.end());
    sync.allreduce(c.data(), c.size());
    sync.count.assign(c.size(), 0);
    for (size_t i = 0; i < c.size(); ++i) sync.count[i] = static_cast<int64_t>(c[i]);
  }
}

template <class T>
void Engine<T>::forward(const ForwardOptions& opt, int nT, int N, const StackInput<T>& in,
                        const StackOutput<T>& out) {
  if (nT < 0 || N < 0) throw UsageError("forward: negative T or N");
  if (opt.t0 < 0) throw UsageError("forward: negative t0");
  if (cfg.bidirectional) return forward_bidir(opt, nT, N, in, out);
  const bool train = opt.mode == Mode::train;
  const bool keep = opt.need_backward;
  const int L = cfg.num_layers, H = cfg.hidden_size;
  const size_t NH = static_cast<size_t>(N) * H;
  set_valid_rows(nT, N, in.lengths, train);
  set_regularizers(opt, train);
  // A forward without a backward to come runs in chunks of time: memory O(N*H*chunk), not O(T).
  // Training mode too (per-step statistics need only their step), except sequence-wise BN in
  // training, whose statistics span every step before the first one is normalized.
  const bool whole = keep || (train && spec.x == Norm::bn_seq);
  const int chunk = whole ? std::max(nT, 1) : std::max(1, std::min(nT, 32));
  for (int k = 0; k < L; ++k) {
    allocate_cache(k, chunk, N, keep && k == 0, inline_input(k, train), train);
    init_state(k, N, in.h0 ? in.h0 + k * NH : nullptr, in.c0 ? in.c0 + k * NH : nullptr, opt,
               train);
  }
  h0_given = in.h0 != nullptr;
  c0_given = in.c0 != nullptr;
  for (int s = 0; s < nT; s += chunk) {
    const int Tc = std::min(chunk, nT - s);
    const uint8_t* vm = valid.data() + static_cast<size_t>(s) * N;
    sync.step0 = s;
    for (int k = 0; k < L; ++k) {
      LayerCache<T>& cc = caches[k];
      if (s > 0) {  // carry the state of the previous chunk
        std::copy_n(cc.Hs.data() + chunk * NH, NH, cc.Hs.data());
        std::copy_n(cc.Cs.data() + chunk * NH, NH, cc.Cs.data());
      }
      const T* X;
      if (k == 0) {
        X = in.x + static_cast<size_t>(s) * N * cfg.input_size;
        if (keep) {
          std::copy_n(X, static_cast<size_t>(Tc) * N * cfg.input_size, cc.X.data());
          X = cc.X.data();
        }
      } else {
        X = dropout_input(k, Tc, N, opt.t0 + s, caches[k - 1].Hs.data() + NH);
      }
      ws.reuse_packed = s > 0;  // R is as the previous chunk packed it (if it was this layer)
      layer_forward(k, Tc, N, X, vm, opt.t0 + s, train, train && opt.update_running);
    }
    if (out.y) {
      const T* top = caches[L - 1].Hs.data() + NH;
      for (int t = 0; t < Tc; ++t)
        for (int n = 0; n < N; ++n) {
          T* dst = out.y + (static_cast<size_t>(s + t) * N + n) * H;
          if (vm[static_cast<size_t>(t) * N + n])
            std::copy_n(top + (static_cast<size_t>(t) * N + n) * H, H, dst);
          else
            std::fill_n(dst, H, T(0));
        }
    }
    if (s + Tc >= nT)  // final state: the last row of each layer's state (carried past padding)
      for (int k = 0; k < L; ++k) {
        if (out.hT) std::copy_n(caches[k].Hs.data() + Tc * NH, NH, out.hT + k * NH);
        if (out.cT) std::copy_n(caches[k].Cs.data() + Tc * NH, NH, out.cT + k * NH);
      }
  }
  if (nT == 0)
    for (int k = 0; k < L; ++k) {
      if (out.hT) std::copy_n(caches[k].Hs.data(), NH, out.hT + k * NH);
      if (out.cT) std::copy_n(caches[k].Cs.data(), NH, out.cT + k * NH);
    }
  T_ = nT;
  N_ = N;
  have_cache = keep;
  cache_batch_stats = train;
}

// ---- backward -----------------------------------------------------------------------------------

template <class T>
void Engine<T>::backward(const T* dy, const T* dhT, const T* dcT, T* dx, T* dh0, T* dc0) {
  if (!have_cache)
    throw UsageError("backward: the last forward kept no activations (need_backward was false)");
  if (cfg.bidirectional) return backward_bidir(dy, dhT, dcT, dx, dh0, dc0);
  const int L = cfg.num_layers, N = N_;
  const size_t NH = static_cast<size_t>(N) * cfg.hidden_size;
  ensure_size(ws.dY, static_cast<size_t>(T_) * NH);
  ws.dh_carry.assign(NH, T(0));
  ws.dc_carry.assign(NH, T(0));
  for (int k = L - 1; k >= 0; --k) {
    if (dhT)
      std::copy_n(dhT + k * NH, NH, ws.dh_carry.data());
    else
      std::fill(ws.dh_carry.begin(), ws.dh_carry.end(), T(0));
    if (dcT)
      std::copy_n(dcT + k * NH, NH, ws.dc_carry.data());
    else
      std::fill(ws.dc_carry.begin(), ws.dc_carry.end(), T(0));
    const T* dYin = k == L - 1 ? dy : ws.dY.data();
    T* dX = k == 0 ? dx : ws.dY.data();
    // dY is both this layer's input gradient (from above) and the output for the layer below:
    // the output is written by the final GEMM, after the time loop has read the input.
    layer_backward(k, layer_input(k), dYin, dX);
    if (k > 0) dropout_backward(k, ws.dY.data());
    if (dh0) std::copy_n(ws.dh_carry.data(), NH, dh0 + k * NH);
    if (dc0) std::copy_n(ws.dc_carry.data(), NH, dc0 + k * NH);
    learned_state_grads(k);
  }
}

// A learned initial state receives the sum over rows of dL/dh_0, dL/dc_0 (in ws's carries after
// unit u's backward), unless the forward was given the state.
template <class T>
void Engine<T>::learned_state_grads(int u) {
  const LayerLayout& Ly = layers[u];
  const int H = cfg.hidden_size;
  if (!h0_given && Ly.h0 != npos)
    for (int n = 0; n < N_; ++n)
      for (int j = 0; j < H; ++j) grads[Ly.h0 + j] += ws.dh_carry[n * H + j];
  if (!c0_given && Ly.c0 != npos)
    for (int n = 0; n < N_; ++n)
      for (int j = 0; j < H; ++j) grads[Ly.c0 + j] += ws.dc_carry[n * H + j];
}

template struct Engine<float>;
template struct Engine<double>;

}  // namespace cells

template <class T>
struct Stack<T>::Impl : cells::Engine<T> {
  using cells::Engine<T>::Engine;
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
void Stack<T>::forward(const ForwardOptions& opt, int steps, int N, const StackInput<T>& in,
                       const StackOutput<T>& out) {
  impl_->forward(opt, steps, N, in, out);
}
template <class T>
void Stack<T>::backward(const T* dy, const T* dhT, const T* dcT, T* dx, T* dh0, T* dc0) {
  impl_->backward(dy, dhT, dcT, dx, dh0, dc0);
}

template <class T>
void Stack<T>::popstats_begin() {
  impl_->pass.active = true;
  impl_->pass.sum.assign(impl_->buffers.size(), 0.0);
  impl_->pass.count.assign(impl_->buffers.size(), 0.0);
}
template <class T>
void Stack<T>::popstats_feed(int steps, int N, const T* x, const int32_t* lengths, const T* h0,
                             const T* c0) {
  if (!impl_->pass.active) throw UsageError("popstats_feed: popstats_begin() was not called");
  ForwardOptions opt;
  opt.mode = Mode::train;
  opt.update_running = false;
  opt.regularize = false;  // the inference-mode regularizers (SPEC 2b)
  impl_->forward(opt, steps, N, {x, lengths, h0, c0}, {});
  impl_->have_cache = false;  // a statistics pass is not a training step
}
template <class T>
void Stack<T>::popstats_finish() {
  if (!impl_->pass.active) throw UsageError("popstats_finish: popstats_begin() was not called");
  auto& I = *impl_;
  for (size_t i = 0; i < I.buffers.size(); ++i)
    if (I.pass.count[i] > 0) I.buffers[i] = static_cast<T>(I.pass.sum[i] / I.pass.count[i]);
  I.pass.active = false;
  I.pass.sum.clear();
  I.pass.count.clear();
}

template <class T>
std::span<const T> Stack<T>::cached_normalized(int layer, std::string_view which) const {
  const auto& I = *impl_;
  if (layer < 0 || layer >= I.cfg.num_layers || !I.have_cache) return {};
  layer *= I.dirs();  // the unit of the layer's forward direction
  const auto& cc = I.caches[layer];
  const int N = I.N_, H = I.cfg.hidden_size, G = I.gates * H;
  const size_t TN = static_cast<size_t>(I.T_) * N;
  // The caches hold raw values (bnx-seq's Ax excepted): form x-hat from the step's statistics.
  using cells::Norm;
  Norm norm = Norm::none;
  const T *z = nullptr, *mean = nullptr, *rstd = nullptr;
  int F = 0;
  std::vector<T> zx;  // W x of every step when the forward formed it inline
  if (which == "x") {
    norm = I.spec.x, z = cc.Ax.data(), mean = cc.x.mean.data(), rstd = cc.x.rstd.data(), F = G;
    if (cc.inline_x && norm != Norm::none) {
      const int C = I.layers[layer].C;
      const T* X = I.layer_input(layer);
      zx.resize(TN * G);
      for (int t = 0; t < I.T_; ++t)
        cells::input_projection(X + static_cast<size_t>(t) * N * C, cc.Wt.data(), N, C, G, 0, G,
                               zx.data() + static_cast<size_t>(t) * N * G);
      z = zx.data();
    }
  } else if (which == "h") {
    norm = I.spec.h, z = cc.Hh.data(), mean = cc.h.mean.data(), rstd = cc.h.rstd.data(), F = G;
    if (cc.hh_blocked && norm != Norm::none) {  // back to gate order
      zx.resize(TN * G);
      for (int p = 0; p < cc.P; ++p) {
        const cells::UnitBlock u = cells::unit_block(p, cc.P, H);
        for (size_t r = 0; r < TN; ++r)
          for (int q = 0; q < I.gates; ++q)
            std::copy_n(cc.Hh.data() + r * G + I.hh_offset(cc, q, u.k0, u.w), u.w,
                        zx.data() + r * G + q * H + u.k0);
      }
      z = zx.data();
    }
  } else if (which == "c") {  // the un-zoned c~ under zoneout_c
    norm = I.spec.c, z = I.reg.zone_c ? cc.Ct.data() : cc.Cs.data() + static_cast<size_t>(N) * H,
    mean = cc.c.mean.data(),
    rstd = cc.c.rstd.data(), F = H;
  }
  if (norm == Norm::none) return {};
  if (norm == Norm::bn_seq) return {cc.Ax.data(), TN * G};
  auto& out = I.xhat_view;
  out.assign(TN * F, T(0));
  const size_t parts = which == "c" ? 1 : cells::ln_parts(I.spec);  // LN statistics [T,parts,N]
  for (size_t r = 0; r < TN; ++r) {
    if (!I.valid[r]) continue;
    const size_t t = r / N, n = r % N;
    for (int j = 0; j < F; ++j) {
      const size_t part = which == "c" ? 0 : cells::ln_part_of(I.spec, j / H);
      const size_t si = norm == Norm::ln ? (t * parts + part) * N + n : t * F + j;
      out[r * F + j] = (z[r * F + j] - mean[si]) * rstd[si];
    }
  }
  return {out.data(), out.size()};
}

template <class T>
void Stack<T>::set_stat_allreduce(Allreduce allreduce) {
  impl_->sync.allreduce = std::move(allreduce);
}

template <class T>
void Stack<T>::set_grad_probe(int layer, std::vector<double>* norms) {
  impl_->probe.layer = layer * impl_->dirs();  // the unit of the layer's forward direction
  impl_->probe.out = norms;
}

namespace {
// Bytes of an engine's caches (and its twins', which hold the reverse directions' when they ran
// side by side).
template <class T>
size_t cache_bytes_of(const cells::Engine<T>& I) {
  size_t n = 0, index_bytes = 0;
  for (const auto& cc : I.caches) {
    for (const auto* v : {&cc.X, &cc.Ax, &cc.Gates, &cc.Hh, &cc.Hs, &cc.Cs, &cc.Ct, &cc.Xd})
      n += v->size();
    for (const auto* v : {&cc.x.mean, &cc.x.rstd, &cc.h.mean, &cc.h.rstd, &cc.c.mean, &cc.c.rstd})
      n += v->size();
    if (cc.inline_x || cc.sparse_x) n += cc.Wt.size();
    if (cc.sparse_x) {
      n += cc.xs.val.size();
      index_bytes += cc.xs.ptr.size() * sizeof(int64_t) + cc.xs.col.size() * sizeof(int32_t);
    }
  }
  for (const auto& b : I.bidir) n += b.Xr.size() + b.Y.size();
  size_t bytes = n * sizeof(T) + index_bytes;
  for (const auto& tw : I.twins)
    if (tw) bytes += cache_bytes_of(*tw);
  return bytes;
}
}  // namespace

template <class T>
size_t Stack<T>::cache_bytes() const {
  return cache_bytes_of<T>(*impl_);
}

template <class T>
std::string_view Stack<T>::input_projection(int layer) const {
  const auto& I = *impl_;
  if (layer < 0 || layer >= I.cfg.num_layers || I.caches.empty()) return {};
  const auto& cc = I.caches[static_cast<size_t>(layer) * I.dirs()];
  return cc.sparse_x ? "sparse" : cc.inline_x ? "inline" : "hoisted";
}

template <class T>
size_t Stack<T>::workspace_bytes() const {
  const auto& I = *impl_;
  size_t n = 0;
  const auto& ws = I.ws;
  for (const auto* v : {&ws.dY, &ws.dh_carry, &ws.dc_carry, &ws.bwd_rows, &ws.dx_part, &ws.dwt,
                        &ws.rh_step, &ws.drec_step, &I.bws.dY, &I.bws.dYf, &I.bws.dYr, &I.bws.dXr})
    n += v->size();
  n += ws.r_packed.size();
  return n * sizeof(T);
}

template class Stack<float>;
template class Stack<double>;

}  // namespace rbn
