#include <omp.h>
#include <x86intrin.h>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "rbn/rbn.hpp"
#include "util/blas.hpp"
using namespace rbn;
namespace rbn::cells { extern unsigned long long g_wait[64]; }
int main(int argc, char** argv) {
  const int T = 100, N = 64, C = 50, H = 1000;
  setenv("NODYN", "1", 1);
  blas::set_backend(blas::Backend::onednn);
  StackConfig c; c.cell = Cell::lstm; c.input_size = C; c.hidden_size = H; c.t_max = T;
  Stack<float> st(c);
  std::vector<float> x(size_t(T) * N * C), y(size_t(T) * N * H);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.001f * (i % 997);
  for (int r = 0; r < 24; ++r) {
    const bool rev = r % 2;
    if (rev) setenv("REVERSE", "1", 1); else unsetenv("REVERSE");
    cells::g_wait[0] = cells::g_wait[8] = 0;
    ForwardOptions o; o.mode = Mode::infer;
    const auto c0 = __rdtsc();
    st.forward(o, T, N, {.x = x.data()}, {.y = y.data()});
    const double tot = double(__rdtsc() - c0);
    if (r >= 4) printf("%s thread0 waits %.1f%%  thread1 waits %.1f%%  (%.0f Mcyc)\n", rev ? "reversed" : "normal  ", 100 * cells::g_wait[0] / tot, 100 * cells::g_wait[8] / tot, tot / 1e6);
  }
}
