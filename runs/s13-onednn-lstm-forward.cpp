// Build: g++ -O2 -std=c++17 runs/s13-onednn-lstm-forward.cpp -ldnnl; ONEDNN_JIT_PROFILE=2 OMP_NUM_THREADS=2 perf record -e cpu-clock ./a.out 15
// oneDNN LSTM forward_training on PTB's layer (T100 N64 C50 H1000), repeated; for perf.
#include <dnnl.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;
int main(int argc, char** argv) {
  int T = 100, N = 64, C = 50, H = 1000, reps = argc > 1 ? atoi(argv[1]) : 10;
  engine eng(engine::kind::cpu, 0);
  stream s(eng);
  memory::desc src({T, N, C}, dt::f32, tag::tnc), dst({T, N, H}, dt::f32, tag::tnc);
  memory::desc wl({1, 1, C, 4, H}, dt::f32, tag::ldigo), wi({1, 1, H, 4, H}, dt::f32, tag::ldigo);
  memory::desc b({1, 1, 4, H}, dt::f32, tag::ldgo), none;
  lstm_forward::desc d(prop_kind::forward_training, rnn_direction::unidirectional_left2right, src, none, none, wl, wi, b, dst, none, none);
  lstm_forward::primitive_desc pd(d, eng);
  memory msrc(src, eng), mdst(dst, eng), mwl(wl, eng), mwi(wi, eng), mb(b, eng), ws(pd.workspace_desc(), eng);
  auto fill = [](memory& m, float sc) { float* p = (float*)m.get_data_handle(); size_t n = m.get_desc().get_size() / 4; for (size_t i = 0; i < n; ++i) p[i] = sc * std::sin(0.7f * (i % 1013)); };
  fill(msrc, 1), fill(mwl, 0.05f), fill(mwi, 0.05f), fill(mb, 0.1f);
  lstm_forward p(pd);
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    p.execute(s, {{DNNL_ARG_SRC_LAYER, msrc}, {DNNL_ARG_WEIGHTS_LAYER, mwl}, {DNNL_ARG_WEIGHTS_ITER, mwi}, {DNNL_ARG_BIAS, mb}, {DNNL_ARG_DST_LAYER, mdst}, {DNNL_ARG_WORKSPACE, ws}});
    s.wait();
    std::printf("%.1f ms\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() * 1e3);
  }
}
