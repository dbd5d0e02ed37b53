#include "bench_onednn.hpp"

#include <oneapi/dnnl/dnnl.hpp>

#include <cmath>
#include <cstring>
#include <memory>

namespace rbn::cli {

void bench_fill(float* p, size_t n, float scale) {
  for (size_t i = 0; i < n; ++i) p[i] = scale * std::sin(0.7f * static_cast<float>(i % 1013));
}

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
  bench_fill(static_cast<float*>(m.get_data_handle()), m.get_desc().get_size() / sizeof(float), scale);
}
void zero(memory& m) { std::memset(m.get_data_handle(), 0, m.get_desc().get_size()); }

// Weights in the user's layout (ldigo) reordered into what primitive `want` asks for.
memory weights_for(const dnnl::engine& eng, dnnl::stream& s, memory& user, const memory::desc& want) {
  memory m(want, eng);
  dnnl::reorder(user, m).execute(s, user, m);
  return m;
}

// One layer of primitive Fwd/Bwd with its memories, created at the current OpenMP thread count.
template <class Fwd, class Bwd>
class RnnSteps final : public OnednnRnnCase::Steps {
 public:
  explicit RnnSteps(const Layer& l)
      : s_(eng_),
        ftrain_(fwd_desc<Fwd>(prop_kind::forward_training, l), eng_),
        finfer_(fwd_desc<Fwd>(prop_kind::forward_inference, l), eng_),
        bpd_(bwd_desc<Bwd>(l), eng_, ftrain_),
        wl_user_({l.wl_dims, dt::f32, tag::ldigo}, eng_),
        wi_user_({l.wi_dims, dt::f32, tag::ldigo}, eng_) {
    fill(wl_user_, 0.05f);
    fill(wi_user_, 0.02f);
    wl_f_ = weights_for(eng_, s_, wl_user_, ftrain_.weights_layer_desc());
    wi_f_ = weights_for(eng_, s_, wi_user_, ftrain_.weights_iter_desc());
    wl_i_ = weights_for(eng_, s_, wl_user_, finfer_.weights_layer_desc());
    wi_i_ = weights_for(eng_, s_, wi_user_, finfer_.weights_iter_desc());
    wl_b_ = memory(bpd_.weights_layer_desc(), eng_);
    wi_b_ = memory(bpd_.weights_iter_desc(), eng_);
    to_bwd_l_ = dnnl::reorder(wl_f_, wl_b_);
    to_bwd_i_ = dnnl::reorder(wi_f_, wi_b_);
    src_ = memory(l.src, eng_), dst_ = memory(l.dst, eng_), bias_ = memory(l.bias, eng_);
    ws_ = memory(ftrain_.workspace_desc(), eng_);
    dsrc_ = memory(bpd_.diff_src_layer_desc(), eng_), ddst_ = memory(bpd_.diff_dst_layer_desc(), eng_);
    dwl_ = memory(bpd_.diff_weights_layer_desc(), eng_), dwi_ = memory(bpd_.diff_weights_iter_desc(), eng_);
    db_ = memory(bpd_.diff_bias_desc(), eng_);
    fill(src_, 1.0f);
    fill(bias_, 0.1f);
    fill(ddst_, 0.01f);
    fwd_train_ = Fwd(ftrain_), fwd_infer_ = Fwd(finfer_), bwd_ = Bwd(bpd_);
  }
  void train() override {
    fwd_train_.execute(s_, {{DNNL_ARG_SRC_LAYER, src_}, {DNNL_ARG_WEIGHTS_LAYER, wl_f_},
                            {DNNL_ARG_WEIGHTS_ITER, wi_f_}, {DNNL_ARG_BIAS, bias_},
                            {DNNL_ARG_DST_LAYER, dst_}, {DNNL_ARG_WORKSPACE, ws_}});
    // a trainer's weights change every step: the backward's layout is made again each time
    to_bwd_l_.execute(s_, wl_f_, wl_b_);
    to_bwd_i_.execute(s_, wi_f_, wi_b_);
    zero(dwl_);  // the backward accumulates into its weight gradients
    zero(dwi_);
    zero(db_);
    bwd_.execute(s_, {{DNNL_ARG_SRC_LAYER, src_}, {DNNL_ARG_WEIGHTS_LAYER, wl_b_},
                      {DNNL_ARG_WEIGHTS_ITER, wi_b_}, {DNNL_ARG_BIAS, bias_}, {DNNL_ARG_DST_LAYER, dst_},
                      {DNNL_ARG_DIFF_DST_LAYER, ddst_}, {DNNL_ARG_WORKSPACE, ws_},
                      {DNNL_ARG_DIFF_SRC_LAYER, dsrc_}, {DNNL_ARG_DIFF_WEIGHTS_LAYER, dwl_},
                      {DNNL_ARG_DIFF_WEIGHTS_ITER, dwi_}, {DNNL_ARG_DIFF_BIAS, db_}});
    s_.wait();
  }
  void infer() override {
    fwd_infer_.execute(s_, {{DNNL_ARG_SRC_LAYER, src_}, {DNNL_ARG_WEIGHTS_LAYER, wl_i_},
                            {DNNL_ARG_WEIGHTS_ITER, wi_i_}, {DNNL_ARG_BIAS, bias_},
                            {DNNL_ARG_DST_LAYER, dst_}});
    s_.wait();
  }

 private:
  dnnl::engine eng_{dnnl::engine::kind::cpu, 0};
  dnnl::stream s_;
  typename Fwd::primitive_desc ftrain_, finfer_;
  typename Bwd::primitive_desc bpd_;
  memory wl_user_, wi_user_, wl_f_, wi_f_, wl_i_, wi_i_, wl_b_, wi_b_;
  dnnl::reorder to_bwd_l_, to_bwd_i_;
  memory src_, dst_, bias_, ws_, dsrc_, ddst_, dwl_, dwi_, db_;
  Fwd fwd_train_, fwd_infer_;
  Bwd bwd_;
};

}  // namespace

const char* onednn_rnn_name(OnednnRnn kind) { return kind == OnednnRnn::lstm ? "lstm" : "lbr_gru"; }

OnednnRnnCase::OnednnRnnCase(OnednnRnn kind, int T, int N, int C, int H) {
  if (kind == OnednnRnn::lstm)
    steps_ = std::make_unique<RnnSteps<dnnl::lstm_forward, dnnl::lstm_backward>>(Layer(T, N, C, H, 4, 4));
  else  // lbr_gru: 3 gate blocks (u, r, n) and 4 biases (the n gate's recurrent bias apart: nn.GRU's b_hn)
    steps_ = std::make_unique<RnnSteps<dnnl::lbr_gru_forward, dnnl::lbr_gru_backward>>(Layer(T, N, C, H, 3, 4));
}

OnednnRnnCase::~OnednnRnnCase() = default;

}  // namespace rbn::cli
