// Bidirectional stacks (SPEC section 2b; docs/cells.md, "Bidirectional layers"): per layer two
// units of the one-directional engine, the forward direction (unit 2k) on the layer's input and
// the reverse direction (unit 2k+1) on each row's valid prefix reversed. The reversed prefix is
// left-aligned again, so the reverse runs with the forward's validity mask and row counts, and
// its step s — the age of its state — reads statistics row s, pooled over the rows that have a
// step s: per-step statistics, T_max, the running averages, the statistics pass and the group's
// sums all follow without a line of their own. Whole sequences only: each layer's reverse needs
// the whole sequence of the layer below (memory O(T*N*H) per layer at inference too). With two
// threads the directions run side by side, one core each; the reverse then runs on a twin engine
// (its own caches and workspaces) that receives the unit's tensors around each call.
#include <omp.h>

#include <algorithm>
#include <string>
#include <utility>

#include "cells/engine.hpp"
#include "rbn/error.hpp"

namespace rbn::cells {

// dst[len_n - 1 - t, n] = src[t, n] (accumulate: +=) for each row's valid steps t; without
// accumulate dst is 0 past each row's length. The map is its own inverse: it gathers the reverse
// direction's input and scatters its results back. src, dst [nT,N,width].
template <class T>
void Engine<T>::reverse_rows(int nT, int N, const T* src, int width, T* dst,
                             bool accumulate) const {
  const size_t W = static_cast<size_t>(width);
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(nT) * N * width > kern::kParallelWork)
  for (int t = 0; t < nT; ++t)
    for (int n = 0; n < N; ++n) {
      T* to = dst + (static_cast<size_t>(t) * N + n) * W;
      if (t >= len[n]) {
        if (!accumulate) std::fill_n(to, W, T(0));
        continue;
      }
      const T* from = src + (static_cast<size_t>(len[n] - 1 - t) * N + n) * W;
      if (accumulate) {
        for (size_t j = 0; j < W; ++j) to[j] += from[j];
      } else {
        std::copy_n(from, W, to);
      }
    }
}

// Layer k's output Y [nT,N,2H]: the forward direction's h_t ‖ the reverse direction's h at the
// same position (its step len_n - 1 - t), 0 at padded positions.
template <class T>
void Engine<T>::join_directions(int k, int nT, int N, T* Y) const {
  const size_t H = cfg.hidden_size, NH = N * H;
  const T* hf = caches[2 * k].Hs.data() + NH;  // rows 1..nT: h after step t
  const T* hr = reverse_cache(k).Hs.data() + NH;
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(nT) * N * H > kern::kParallelWork)
  for (int t = 0; t < nT; ++t)
    for (int n = 0; n < N; ++n) {
      T* y = Y + (static_cast<size_t>(t) * N + n) * 2 * H;
      if (t >= len[n]) {
        std::fill_n(y, 2 * H, T(0));
        continue;
      }
      std::copy_n(hf + static_cast<size_t>(t) * NH + n * H, H, y);
      std::copy_n(hr + static_cast<size_t>(len[n] - 1 - t) * NH + n * H, H, y + H);
    }
}

// The halves of a layer's output gradient dY [nT,N,2H]: dYf [nT,N,H] at the forward direction's
// steps, dYr [nT,N,H] at the reverse direction's (reversed); 0 at padded positions.
template <class T>
void Engine<T>::split_output_grad(int nT, int N, const T* dY, T* dYf, T* dYr) const {
  const size_t H = cfg.hidden_size;
  for (int t = 0; t < nT; ++t)
    for (int n = 0; n < N; ++n) {
      const size_t r = static_cast<size_t>(t) * N + n;
      T* f = dYf + r * H;
      T* b = dYr + r * H;
      if (t >= len[n]) {
        std::fill_n(f, H, T(0));
        std::fill_n(b, H, T(0));
        continue;
      }
      std::copy_n(dY + r * 2 * H, H, f);
      std::copy_n(dY + (static_cast<size_t>(len[n] - 1 - t) * N + n) * 2 * H + H, H, b);
    }
}

// The two directions of a layer side by side, one core each (the reverse on its twin engine), or
// one after the other with the time loop's threads: side by side when there are two threads to
// give and no group to synchronize with (the ranks' exchanges must come in one order).
template <class T>
bool Engine<T>::directions_side_by_side(bool train) const {
  return omp_get_max_threads() >= 2 && !omp_in_parallel() &&
         !(train && sync.allreduce && cell_has_population_stats(cfg.cell));
}

// The reverse direction's cache of layer k: its unit's, or its twin's when the last forward ran
// the directions side by side.
template <class T>
const LayerCache<T>& Engine<T>::reverse_cache(int k) const {
  return side_by_side ? twins[k]->caches[0] : caches[2 * k + 1];
}

namespace {
// [begin, end) of the tensors named prefix* in a flat buffer (one unit's: contiguous).
std::pair<size_t, size_t> tensor_span(const std::vector<TensorInfo>& infos,
                                      const std::string& prefix) {
  size_t b = static_cast<size_t>(-1), e = 0;
  for (const auto& ti : infos)
    if (ti.name.starts_with(prefix)) {
      b = std::min(b, ti.offset);
      e = std::max(e, ti.offset + ti.numel);
    }
  return b < e ? std::pair{b, e} : std::pair{size_t{0}, size_t{0}};
}
}  // namespace

// The reverse direction of layer k as a one-layer, one-directional engine: its unit 0 has the
// reverse unit's layout, its tensors a copy of them (exchanged around each call).
template <class T>
Engine<T>& Engine<T>::reverse_twin(int k) {
  twins.resize(cfg.num_layers);
  if (!twins[k]) {
    StackConfig c = cfg;
    c.bidirectional = false;
    c.num_layers = 1;
    c.input_size = layers[2 * k + 1].C;
    twins[k] = std::make_unique<Engine<T>>(c, false);
    twins[k]->sync.allreduce = nullptr;
  }
  return *twins[k];
}

// Unit u's initial state and forward over the whole sequence, its final state into out.
template <class T>
void Engine<T>::run_unit_forward(int u, const ForwardOptions& opt, int nT, int N,
                                 const StackInput<T>& in, const T* X) {
  const bool train = opt.mode == Mode::train;
  const size_t NH = static_cast<size_t>(N) * cfg.hidden_size;
  allocate_cache(u, std::max(nT, 1), N, false, inline_input(u, train), train);
  init_state(u, N, in.h0 ? in.h0 + u * NH : nullptr, in.c0 ? in.c0 + u * NH : nullptr, opt, train);
  if (nT > 0) layer_forward(u, nT, N, X, valid.data(), 0, train, train && opt.update_running);
}

// The reverse direction of layer k on its twin (reading bidir[k].Xr): the tensors, running
// statistics and statistics-pass sums of the unit go in, the statistics come back.
template <class T>
void Engine<T>::twin_forward(int k, const ForwardOptions& opt, int nT, int N,
                             const StackInput<T>& in) {
  Engine& tw = reverse_twin(k);
  const int u = 2 * k + 1;
  const bool train = opt.mode == Mode::train;
  const std::string prefix = "rnn." + std::to_string(k) + ".reverse.";
  const auto [p0, p1] = tensor_span(pinfo, prefix);
  const auto [b0, b1] = tensor_span(binfo, prefix);
  std::copy(params.begin() + p0, params.begin() + p1, tw.params.begin());
  std::copy(buffers.begin() + b0, buffers.begin() + b1, tw.buffers.begin());
  tw.pass.active = pass.active;
  if (pass.active) {
    tw.pass.sum.assign(pass.sum.begin() + b0, pass.sum.begin() + b1);
    tw.pass.count.assign(pass.count.begin() + b0, pass.count.begin() + b1);
  }
  tw.set_valid_rows(nT, N, in.lengths, train);
  tw.reg = reg;  // zoneout's mode and hash fields; its masks are this layer's direction 1
  tw.reg.twin_layer = k;
  tw.reg.dropout = false;  // dropout acts between layers, in this engine's driver
  const size_t NH = static_cast<size_t>(N) * cfg.hidden_size;
  tw.allocate_cache(0, std::max(nT, 1), N, false, tw.inline_input(0, train), train);
  ForwardOptions quiet = opt;  // the noise of h0 is drawn by this unit's index, not the twin's 0
  quiet.h0_noise = 0;
  tw.init_state(0, N, in.h0 ? in.h0 + u * NH : nullptr, in.c0 ? in.c0 + u * NH : nullptr, quiet,
                train);
  if (train && opt.h0_noise > 0) add_h0_noise(u, N, tw.caches[0].Hs.data(), opt);
  if (nT > 0)
    tw.layer_forward(0, nT, N, bidir[k].Xr.data(), tw.valid.data(), 0, train,
                     train && opt.update_running);
  std::copy(tw.buffers.begin(), tw.buffers.begin() + (b1 - b0), buffers.begin() + b0);
  if (pass.active) {
    std::copy(tw.pass.sum.begin(), tw.pass.sum.end(), pass.sum.begin() + b0);
    std::copy(tw.pass.count.begin(), tw.pass.count.end(), pass.count.begin() + b0);
  }
  tw.T_ = nT;
  tw.N_ = N;
  tw.h0_given = in.h0 != nullptr;
  tw.c0_given = in.c0 != nullptr;
  tw.cache_batch_stats = train;
}

// Layer by layer, both directions of each over the whole sequence. States in [2L,N,H] at index
// u = 2k + d (PyTorch's order).
template <class T>
void Engine<T>::forward_bidir(const ForwardOptions& opt, int nT, int N, const StackInput<T>& in,
                              const StackOutput<T>& out) {
  if (opt.t0 != 0)
    throw UsageError("forward: a bidirectional stack reads whole sequences (its reverse direction "
                     "starts at each row's end): the step API (t0 = " + std::to_string(opt.t0) +
                     ") does not apply");
  const bool train = opt.mode == Mode::train, keep = opt.need_backward;
  const int L = cfg.num_layers, H = cfg.hidden_size;
  const size_t NH = static_cast<size_t>(N) * H, TN = static_cast<size_t>(nT) * N;
  set_valid_rows(nT, N, in.lengths, train);
  set_regularizers(opt, train);
  sync.step0 = 0;
  h0_given = in.h0 != nullptr;
  c0_given = in.c0 != nullptr;
  side_by_side = directions_side_by_side(train);
  for (int k = 0; k < L; ++k) {
    BidirLayer<T>& b = bidir[k];
    const int C = layers[2 * k].C;
    ensure_size(b.Xr, TN * C);
    if (k < L - 1) ensure_size(b.Y, TN * 2 * H);
    const T* X = k == 0 ? in.x : bidir[k - 1].Y.data();
    if (k == 0 && keep) {  // backward reads layer 0's input again
      ensure_size(caches[0].X, TN * C);
      std::copy_n(in.x, TN * C, caches[0].X.data());
      X = caches[0].X.data();
    }
    reverse_rows(nT, N, X, C, b.Xr.data(), false);
    if (side_by_side) {
#pragma omp parallel num_threads(2)
      {
        omp_set_num_threads(1);  // each direction's time loop on its own core
        const int me = omp_get_thread_num(), team = omp_get_num_threads();
        if (me == 0) run_unit_forward(2 * k, opt, nT, N, in, X);
        if (me == 1 || team < 2) twin_forward(k, opt, nT, N, in);  // (a team of one: in turn)
      }
    } else {
      run_unit_forward(2 * k, opt, nT, N, in, X);
      run_unit_forward(2 * k + 1, opt, nT, N, in, b.Xr.data());
    }
    // the final states: the last row (carried past each row's end; the reverse's after x[0])
    for (int d = 0; d < 2; ++d) {
      const LayerCache<T>& cc = d == 1 ? reverse_cache(k) : caches[2 * k];
      if (out.hT) std::copy_n(cc.Hs.data() + nT * NH, NH, out.hT + (2 * k + d) * NH);
      if (out.cT) std::copy_n(cc.Cs.data() + nT * NH, NH, out.cT + (2 * k + d) * NH);
    }
    // the next layer's input; the top layer's straight into y (backward does not read it)
    if (k < L - 1) {
      join_directions(k, nT, N, b.Y.data());
      dropout_bidir(k, nT, N, b.Y.data());  // what both directions of layer k + 1 read
    } else if (out.y) {
      join_directions(k, nT, N, out.y);
    }
  }
  T_ = nT;
  N_ = N;
  have_cache = keep;
  cache_batch_stats = train;
}

// Unit u's backward from dL/dhT, dL/dcT at its index (nullable) and its output's gradient dYd;
// writes dXd and dh0, dc0 at its index (nullable), adds into the gradients.
template <class T>
void Engine<T>::run_unit_backward(int u, const T* dYd, T* dXd, const T* dhT, const T* dcT, T* dh0,
                                  T* dc0) {
  const size_t NH = static_cast<size_t>(N_) * cfg.hidden_size;
  ws.dh_carry.assign(NH, T(0));
  ws.dc_carry.assign(NH, T(0));
  if (dhT) std::copy_n(dhT + u * NH, NH, ws.dh_carry.data());
  if (dcT) std::copy_n(dcT + u * NH, NH, ws.dc_carry.data());
  layer_backward(u, layer_input(u), dYd, dXd);
  if (dh0) std::copy_n(ws.dh_carry.data(), NH, dh0 + u * NH);
  if (dc0) std::copy_n(ws.dc_carry.data(), NH, dc0 + u * NH);
  learned_state_grads(u);
}

// The reverse direction of layer k on its twin; its parameter gradients are added to the unit's.
template <class T>
void Engine<T>::twin_backward(int k, const T* dYd, T* dXd, const T* dhT, const T* dcT, T* dh0,
                              T* dc0) {
  Engine& tw = *twins[k];
  const int u = 2 * k + 1;
  const size_t NH = static_cast<size_t>(N_) * cfg.hidden_size;
  std::fill(tw.grads.begin(), tw.grads.end(), T(0));
  tw.ws.dh_carry.assign(NH, T(0));
  tw.ws.dc_carry.assign(NH, T(0));
  if (dhT) std::copy_n(dhT + u * NH, NH, tw.ws.dh_carry.data());
  if (dcT) std::copy_n(dcT + u * NH, NH, tw.ws.dc_carry.data());
  tw.layer_backward(0, bidir[k].Xr.data(), dYd, dXd);
  if (dh0) std::copy_n(tw.ws.dh_carry.data(), NH, dh0 + u * NH);
  if (dc0) std::copy_n(tw.ws.dc_carry.data(), NH, dc0 + u * NH);
  tw.learned_state_grads(0);
  const size_t p0 = tensor_span(pinfo, "rnn." + std::to_string(k) + ".reverse.").first;
  for (size_t i = 0; i < tw.grads.size(); ++i) grads[p0 + i] += tw.grads[i];
}

// From the top layer down; per layer both directions (side by side as the forward ran them), the
// reverse direction's input gradient scattered back and added. dY of the layer below is written
// over bws.dY after this layer's halves were taken from it.
template <class T>
void Engine<T>::backward_bidir(const T* dy, const T* dhT, const T* dcT, T* dx, T* dh0, T* dc0) {
  const int L = cfg.num_layers, H = cfg.hidden_size, N = N_, nT = T_;
  const size_t TN = static_cast<size_t>(nT) * N;
  ensure_size(bws.dY, TN * 2 * H);
  ensure_size(bws.dYf, TN * H);
  ensure_size(bws.dYr, TN * H);
  for (int k = L - 1; k >= 0; --k) {
    const T* dYk = k == L - 1 ? dy : bws.dY.data();
    if (dYk) split_output_grad(nT, N, dYk, bws.dYf.data(), bws.dYr.data());
    const int C = layers[2 * k].C;
    T* dX = k == 0 ? dx : bws.dY.data();
    if (dX) ensure_size(bws.dXr, TN * C);
    const T* dYf = dYk ? bws.dYf.data() : nullptr;
    const T* dYr = dYk ? bws.dYr.data() : nullptr;
    T* dXr = dX ? bws.dXr.data() : nullptr;
    if (side_by_side) {
#pragma omp parallel num_threads(2)
      {
        omp_set_num_threads(1);
        const int me = omp_get_thread_num(), team = omp_get_num_threads();
        if (me == 0) run_unit_backward(2 * k, dYf, dX, dhT, dcT, dh0, dc0);
        if (me == 1 || team < 2) twin_backward(k, dYr, dXr, dhT, dcT, dh0, dc0);
      }
    } else {
      run_unit_backward(2 * k, dYf, dX, dhT, dcT, dh0, dc0);
      run_unit_backward(2 * k + 1, dYr, dXr, dhT, dcT, dh0, dc0);
    }
    if (dX) reverse_rows(nT, N, bws.dXr.data(), C, dX, true);
    if (k > 0) dropout_bidir(k - 1, nT, N, bws.dY.data());  // through the dropout of layer k - 1
  }
}

// Dropout of bidirectional layer k's output Y [nT,N,2H] (in place; forward, and its gradient in
// backward): the mask of element (t, n, j) is drawn for layer k, direction 0, feature j of the
// joined 2H (both directions of the layer above read the same dropped tensor).
template <class T>
void Engine<T>::dropout_bidir(int k, int nT, int N, T* Y) const {
  if (!reg.dropout) return;
  const mask::Stream ms{reg.seed, reg.update, k, 0, mask::Kind::dropout};
  drop_rows(ms, nT, N, 2 * cfg.hidden_size, 0, Y, Y);
}

#define RBN_BIDIR_INSTANTIATE(T)                                                                \
  template void Engine<T>::forward_bidir(const ForwardOptions&, int, int, const StackInput<T>&, \
                                         const StackOutput<T>&);                                \
  template void Engine<T>::backward_bidir(const T*, const T*, const T*, T*, T*, T*);
RBN_BIDIR_INSTANTIATE(float)
RBN_BIDIR_INSTANTIATE(double)
#undef RBN_BIDIR_INSTANTIATE

}  // namespace rbn::cells
