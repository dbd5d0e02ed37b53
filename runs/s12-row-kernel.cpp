// Build: g++ -O2 -g -std=c++20 -march=native -Isrc runs/s12-row-kernel.cpp -lsleef; ./a.out (perf record -e cpu-clock for the share in SLEEF)
// lstm_row_forward on one thread's rows of PTB (64 rows x 500 units, H = 1000), data hot in cache.
#include "cells/kernels.hpp"
#include <chrono>
#include <cstdio>
#include <vector>
#include <cmath>
#include <algorithm>
using namespace rbn;
int main() {
  const int N = 64, H = 1000, G = 4 * H, w = 500;
  std::vector<float> X(size_t(N) * G), RH(size_t(N) * 4 * w), kx(G, 1.f), kh(G, 1.f), sh(G, 0.1f), C0(size_t(N) * H), C1(size_t(N) * H), Hn(size_t(N) * H);
  for (size_t i = 0; i < X.size(); ++i) X[i] = std::sin(0.7f * (i % 1013));
  for (size_t i = 0; i < RH.size(); ++i) RH[i] = 0.5f * std::sin(0.3f * (i % 1013));
  for (size_t i = 0; i < C0.size(); ++i) C0[i] = 0.2f * std::sin(0.1f * (i % 1013));
  std::vector<double> ts;
  for (int r = 0; r < 2000; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    for (int n = 0; n < N; ++n) {
      float* g = X.data() + size_t(n) * G;
      const kern::LstmRowForward<float> row{g, RH.data() + size_t(n) * 4 * w, w, kx.data(), kh.data(), sh.data(),
                                            C0.data() + size_t(n) * H, g, C1.data() + size_t(n) * H, Hn.data() + size_t(n) * H};
      kern::lstm_row_forward(row, H, 0, w);
    }
    ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ts.begin(), ts.end());
  std::printf("lstm_row_forward 64 rows x 500 units: median %.1f us, min %.1f us\n", ts[1000] * 1e6, ts[0] * 1e6);
  // the activations alone: 5 tanh per 16 units
  __m512 acc = _mm512_set1_ps(0.f);
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 64 * 500 / 16 * 5; ++i) acc = _mm512_add_ps(acc, Sleef_tanhf16_u35(_mm512_set1_ps(0.001f * i)));
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  float out[16]; _mm512_storeu_ps(out, acc);
  std::printf("10000 Sleef_tanhf16_u35: %.1f us (%g)\n", s * 1e6, out[0]);
}
