// forward-only A/B inside one process: NODYN toggled per call
#include <omp.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>
#include "rbn/rbn.hpp"
#include "util/blas.hpp"
using namespace rbn;
#include <x86intrin.h>
using clk = std::chrono::steady_clock;
static double ms(clk::time_point a, clk::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }
int main(int argc, char** argv) {
  const int T = argc > 5 ? atoi(argv[5]) : 100, N = argc > 2 ? atoi(argv[2]) : 64, C = argc > 6 ? atoi(argv[6]) : 50, H = argc > 1 ? atoi(argv[1]) : 1000;
  const bool train = argc > 3 && atoi(argv[3]);
  blas::set_backend(blas::Backend::onednn);
  StackConfig c; const std::string cn = argc > 7 ? argv[7] : "lstm"; c.cell = cn == "gru" ? Cell::gru : cn == "bnlstm" ? Cell::bnlstm : Cell::lstm; c.input_size = C; c.hidden_size = H; c.t_max = T;
  Stack<float> st(c);
  std::vector<float> x(size_t(T) * N * C), dx(x.size()), y(size_t(T) * N * H), dy(y.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.001f * (i % 997);
  for (size_t i = 0; i < dy.size(); ++i) dy[i] = 1e-5f * (i % 991);
  std::vector<double> a, b, ratio;
  const int rounds = argc > 4 ? atoi(argv[4]) : 42;
  for (int r = 0; r < rounds; ++r) {
    double tt[2];
    for (int k = 0; k < 2; ++k) {
      const int v = (r + k) % 2;  // 0 = split, 1 = nosplit
      setenv("NODYN", "1", 1); if (v) setenv("PFROW", getenv("PF") ? getenv("PF") : "2", 1); else unsetenv("PFROW");
      ForwardOptions o; if (!train) o.mode = Mode::infer;
      auto t1 = clk::now();
      st.forward(o, T, N, {.x = x.data()}, {.y = y.data()});
      if (train) st.backward(dy.data(), nullptr, nullptr, dx.data(), nullptr, nullptr);
      auto t2 = clk::now();
      tt[v] = ms(t1, t2);
    }
    if (r >= 2) a.push_back(tt[0]), b.push_back(tt[1]), ratio.push_back(tt[0] / tt[1]);
  }
  auto med = [](std::vector<double> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; };
  printf("%s H=%d N=%d %s next-step-prefetch %.2f ms  row-ahead %.2f ms  median ratio %.4f\n", cn.c_str(), H, N, train ? "train" : "infer", med(a), med(b), med(ratio));
}
