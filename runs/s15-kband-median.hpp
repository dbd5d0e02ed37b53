// The timing helper of runs/s15-kband-*.cpp: one untimed call, then `samples` timed calls; the
// median as GFLOP/s for a product of `flop` floating-point operations.
#pragma once
#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>
inline double median_rate(const std::function<void()>& f, double flop, int samples) {
  std::vector<double> ts;
  f();
  for (int r = 0; r < samples; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ts.begin(), ts.end());
  return flop / ts[samples / 2] * 1e-9;
}
