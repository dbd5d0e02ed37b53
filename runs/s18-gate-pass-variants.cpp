// Session 18 microbenchmark: variants of the LSTM forward row kernel (0 as main, 1 streaming stores, 2 sigmoid through exp)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "cells/kernels.hpp"
using namespace rbn;
using L = kern::FloatLanes;
template <int V>
inline void row(const kern::LstmRowForward<float>& r, int H, int k0, int k1) {
  kern::for_lanes<L>(k0, k1, [&]<bool tail>(int k, L::M m) {
    L::V a[4];
    for (int q = 0; q < 4; ++q) {
      const int j = q * H + k;
      const L::V p = L::mul(L::load<tail>(r.kx + j, m), L::load<tail>(r.x + j, m));
      const L::V rh = L::load<tail>(r.rh + q * r.ld + k - k0, m);
      a[q] = L::add(L::fmadd(L::load<tail>(r.kh + j, m), rh, p), L::load<tail>(r.shift + j, m));
      if constexpr (V == 2) {  // sigmoid by exp
        a[q] = q == 2 ? L::tanh(a[q]) : _mm512_div_ps(L::set1(1.f), L::add(L::set1(1.f), Sleef_expf16_u10(L::sub(L::set1(0.f), a[q]))));
      } else {
        a[q] = q == 2 ? L::tanh(a[q]) : kern::sigmoid_lanes<L>(a[q]);
      }
      if constexpr (V == 1) {
        if (!tail && (reinterpret_cast<uintptr_t>(r.gates + j) & 63) == 0) _mm512_stream_ps(r.gates + j, a[q]);
        else L::store<tail>(r.gates + j, a[q], m);
      } else L::store<tail>(r.gates + j, a[q], m);
    }
    const L::V c = L::fmadd(a[1], L::load<tail>(r.c_prev + k, m), L::mul(a[0], a[2]));
    L::store<tail>(r.c + k, c, m);
    if (r.h) L::store<tail>(r.h + k, L::mul(a[3], L::tanh(c)), m);
  });
}
int main(int argc, char** argv) {
  const int N = 64, H = 1000, G = 4000, k0 = 0, k1 = 496, w = k1 - k0, T = 100;
  const bool stream = argv[1][0] == 's';
  const int V = atoi(argv[2]);
  float* X = static_cast<float*>(aligned_alloc(2 << 20, static_cast<size_t>(T) * N * G * 4));
  float* Gt = static_cast<float*>(aligned_alloc(2 << 20, static_cast<size_t>(T) * N * G * 4));
  for (size_t i = 0; i < static_cast<size_t>(T) * N * G; ++i) X[i] = 0.1f * (i % 7), Gt[i] = 0;
  std::vector<float> rh(N * 4 * w, 0.2f), kx(G, 1.f), kh(G, 1.f), sh(G, 0.05f), cp(N * H, 0.3f), cn(N * H), hn(N * H);
  double best = 1e9;
  for (int rep = 0; rep < 20; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    for (int t = 0; t < T; ++t) {
      size_t off = stream ? static_cast<size_t>(t) * N * G : 0;
      for (int n = 0; n < N; ++n) {
        kern::LstmRowForward<float> r{X + off + n * G, rh.data() + n * 4 * w, w, kx.data(), kh.data(), sh.data(),
                                      cp.data() + n * H, Gt + off + n * G, cn.data() + n * H, hn.data() + n * H};
        if (V == 0) row<0>(r, H, k0, k1); else if (V == 1) row<1>(r, H, k0, k1); else row<2>(r, H, k0, k1);
      }
    }
    double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / T;
    if (us < best) best = us;
  }
  printf("%s variant %d: %.1f us per step\n", stream ? "streamed" : "in cache", V, best);
}
