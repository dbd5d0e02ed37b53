#include "bench_onednn.hpp"

#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

namespace rbn::cli {

namespace {

using dnnl::memory;
using dnnl::prop_kind;
using tag = memory::format_tag;
using dt = memory::data_type;

// The memory descriptors of one layer: [T,N,C] in, [T,N,H] out, weights [1,1,C|H,gates,H].
struct Layer {
  memory::desc src, dst, bias, wl_any, wi_any, none;
  memory::dims wl_dims, wi_dims;
  Layer(int T, int N, int C, int H, int gates, int bias_gates)
      : src({T, N, C}, dt::f32, tag::tnc),
        dst({T, N, H}, dt::f32, tag::tnc),
        bias({1, 1, bias_gates, H}, dt::f32, tag::ldgo),
        wl_any({1, 1, C, gates, H}, dt::f32, tag::any),
        wi_any({1, 1, H, gates, H}, dt::f32, tag::any),
        wl_dims{1, 1, C, gates, H},
        wi_dims{1, 1, H, gates, H} {}
};

const auto kDir = dnnl::rnn_direction::unidirectional_left2right;

template <class Fwd>
typename Fwd::desc fwd_desc(prop_kind pk, const Layer& l);
template <class Bwd>
typename Bwd::desc bwd_desc(const Layer& l);

template <>
dnnl::lstm_forward::desc fwd_desc<dnnl::lstm_forward>(prop_kind pk, const Layer& l) {
  return dnnl::lstm_forward::desc(pk, kDir, l.src, l.none, l.none, l.wl_any, l.wi_any, l.bias, l.dst,
                                  l.none, l.none);
}
template <>
dnnl::lstm_backward::desc bwd_desc<dnnl::lstm_backward>(const Layer& l) {
  return dnnl::lstm_backward::desc(prop_kind::backward, kDir, l.src, l.none, l.none, l.wl_any, l.wi_any,
                                   l.bias, l.dst, l.none, l.none, l.src, l.none, l.none, l.wl_any,
                                   l.wi_any, l.bias, l.dst, l.none, l.none);
}
template <>
dnnl::lbr_gru_forward::desc fwd_desc<dnnl::lbr_gru_forward>(prop_kind pk, const Layer& l) {
  return dnnl::lbr_gru_forward::desc(pk, kDir, l.src, l.none, l.wl_any, l.wi_any, l.bias, l.dst, l.none);
}
template <>
dnnl::lbr_gru_backward::desc bwd_desc<dnnl::lbr_gru_backward>(const Layer& l) {
  return dnnl::lbr_gru_backward::desc(prop_kind::backward, kDir, l.src, l.none, l.wl_any, l.wi_any, l.bias,
                                      l.dst, l.none, l.src, l.none, l.wl_any, l.wi_any, l.bias, l.dst, l.none);
}

void fill(memory& m, float scale) {
  float* p = static_cast<float*>(m.get_data_handle());
  const size_t n = m.get_desc().get_size() / sizeof(float);
  for (size_t i = 0; i < n; ++i) p[i] = scale * std::sin(0.7f * static_cast<float>(i % 1013));
}
void zero(memory& m) { std::memset(m.get_data_handle(), 0, m.get_desc().get_size()); }

// Weights in the user's layout (ldigo) reordered into what primitive `want` asks for.
memory weights_for(const dnnl::engine& eng, dnnl::stream& s, memory& user, const memory::desc& want) {
  memory m(want, eng);
  dnnl::reorder(user, m).execute(s, user, m);
  return m;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : (v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]));
}

template <class F>
double median_ms(F&& f, int warmup, int repeats) {
  for (int i = 0; i < warmup; ++i) f();
  std::vector<double> ms;
  for (int i = 0; i < repeats; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return median(ms);
}

template <class Fwd, class Bwd>
OnednnTimes time_rnn(const Layer& l, int warmup, int repeats) {
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream s(eng);
  typename Fwd::primitive_desc ftrain(fwd_desc<Fwd>(prop_kind::forward_training, l), eng);
  typename Fwd::primitive_desc finfer(fwd_desc<Fwd>(prop_kind::forward_inference, l), eng);
  typename Bwd::primitive_desc bpd(bwd_desc<Bwd>(l), eng, ftrain);
  memory wl_user({l.wl_dims, dt::f32, tag::ldigo}, eng), wi_user({l.wi_dims, dt::f32, tag::ldigo}, eng);
  fill(wl_user, 0.05f);
  fill(wi_user, 0.02f);
  memory wl_f = weights_for(eng, s, wl_user, ftrain.weights_layer_desc());
  memory wi_f = weights_for(eng, s, wi_user, ftrain.weights_iter_desc());
  memory wl_i = weights_for(eng, s, wl_user, finfer.weights_layer_desc());
  memory wi_i = weights_for(eng, s, wi_user, finfer.weights_iter_desc());
  memory wl_b(bpd.weights_layer_desc(), eng), wi_b(bpd.weights_iter_desc(), eng);
  dnnl::reorder to_bwd_l(wl_f, wl_b), to_bwd_i(wi_f, wi_b);
  memory src(l.src, eng), dst(l.dst, eng), bias(l.bias, eng), ws(ftrain.workspace_desc(), eng);
  memory dsrc(bpd.diff_src_layer_desc(), eng), ddst(bpd.diff_dst_layer_desc(), eng);
  memory dwl(bpd.diff_weights_layer_desc(), eng), dwi(bpd.diff_weights_iter_desc(), eng),
      db(bpd.diff_bias_desc(), eng);
  fill(src, 1.0f);
  fill(bias, 0.1f);
  fill(ddst, 0.01f);
  Fwd fwd_train(ftrain), fwd_infer(finfer);
  Bwd bwd(bpd);
  auto train = [&] {
    fwd_train.execute(s, {{DNNL_ARG_SRC_LAYER, src}, {DNNL_ARG_WEIGHTS_LAYER, wl_f},
                          {DNNL_ARG_WEIGHTS_ITER, wi_f}, {DNNL_ARG_BIAS, bias},
                          {DNNL_ARG_DST_LAYER, dst}, {DNNL_ARG_WORKSPACE, ws}});
    // a trainer's weights change every step: the backward's layout is made again each time
    to_bwd_l.execute(s, wl_f, wl_b);
    to_bwd_i.execute(s, wi_f, wi_b);
    zero(dwl);  // the backward accumulates into its weight gradients
    zero(dwi);
    zero(db);
    bwd.execute(s, {{DNNL_ARG_SRC_LAYER, src}, {DNNL_ARG_WEIGHTS_LAYER, wl_b},
                    {DNNL_ARG_WEIGHTS_ITER, wi_b}, {DNNL_ARG_BIAS, bias}, {DNNL_ARG_DST_LAYER, dst},
                    {DNNL_ARG_DIFF_DST_LAYER, ddst}, {DNNL_ARG_WORKSPACE, ws},
                    {DNNL_ARG_DIFF_SRC_LAYER, dsrc}, {DNNL_ARG_DIFF_WEIGHTS_LAYER, dwl},
                    {DNNL_ARG_DIFF_WEIGHTS_ITER, dwi}, {DNNL_ARG_DIFF_BIAS, db}});
    s.wait();
  };
  auto infer = [&] {
    fwd_infer.execute(s, {{DNNL_ARG_SRC_LAYER, src}, {DNNL_ARG_WEIGHTS_LAYER, wl_i},
                          {DNNL_ARG_WEIGHTS_ITER, wi_i}, {DNNL_ARG_BIAS, bias}, {DNNL_ARG_DST_LAYER, dst}});
    s.wait();
  };
  OnednnTimes t;
  t.train_ms = median_ms(train, warmup, repeats);
  t.infer_ms = median_ms(infer, warmup, repeats);
  return t;
}

}  // namespace

const char* onednn_rnn_name(OnednnRnn kind) { return kind == OnednnRnn::lstm ? "lstm" : "lbr_gru"; }

OnednnTimes bench_onednn_rnn(OnednnRnn kind, int T, int N, int C, int H, int warmup, int repeats) {
  if (kind == OnednnRnn::lstm)
    return time_rnn<dnnl::lstm_forward, dnnl::lstm_backward>(Layer(T, N, C, H, 4, 4), warmup, repeats);
  // lbr_gru: 3 gate blocks (u, r, n) and 4 biases (the n gate's recurrent bias apart: nn.GRU's b_hn)
  return time_rnn<dnnl::lbr_gru_forward, dnnl::lbr_gru_backward>(Layer(T, N, C, H, 3, 4), warmup, repeats);
}

}  // namespace rbn::cli
