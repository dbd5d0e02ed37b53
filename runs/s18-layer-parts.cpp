// Session 18: where the PTB layer case spends its time outside the time loops (timers added by hand inside the engine for the run)
#include <omp.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>
#include "rbn/rbn.hpp"
#include "util/blas.hpp"
using namespace rbn;
using clk = std::chrono::steady_clock;
static double ms(clk::time_point a, clk::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }
int main(int argc, char** argv) {
  const int T = 100, N = 64, C = 50, H = argc > 1 ? atoi(argv[1]) : 1000;
  blas::set_backend(blas::Backend::onednn);
  StackConfig c; c.cell = Cell::lstm; c.input_size = C; c.hidden_size = H; c.t_max = T;
  Stack<float> st(c);
  std::vector<float> x(size_t(T) * N * C), dx(x.size()), y(size_t(T) * N * H), dy(y.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.001f * (i % 997);
  for (size_t i = 0; i < dy.size(); ++i) dy[i] = 1e-5f * (i % 991);
  std::vector<double> z, f, b;
  for (int r = 0; r < 12; ++r) {
    auto t0 = clk::now();
    st.zero_grad();
    auto t1 = clk::now();
    st.forward(ForwardOptions{}, T, N, {.x = x.data()}, {.y = y.data()});
    auto t2 = clk::now();
    st.backward(dy.data(), nullptr, nullptr, dx.data(), nullptr, nullptr);
    auto t3 = clk::now();
    if (r >= 2) z.push_back(ms(t0, t1)), f.push_back(ms(t1, t2)), b.push_back(ms(t2, t3));
  }
  auto med = [](std::vector<double> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; };
  printf("H=%d zero_grad %.2f ms  forward %.2f ms  backward %.2f ms  total %.2f\n", H, med(z), med(f), med(b), med(z) + med(f) + med(b));
}
