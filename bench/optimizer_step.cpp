// The part of a PTB training step outside the time loops that scales with the parameters: global
// gradient-norm clipping and the Adam update of the PTB model's parameters (R 4000x1000, W 4000x50,
// the head 50x1000: 4.25M values), through rbn's own clip_grad_norm and Optimizer, at the thread
// count of OMP_NUM_THREADS. Milliseconds of each, 7 samples (docs/performance-history.md, "The
// optimizer and clipping on both threads"). Not part of the build:
//
//   g++ -O3 -march=native -fopenmp -fno-math-errno -std=c++20 -DNDEBUG -Isrc -Iinclude \
//       bench/optimizer_step.cpp src/train/optim.cpp -lfmt -o /tmp/optimizer_step
//   OMP_NUM_THREADS=1 /tmp/optimizer_step; OMP_NUM_THREADS=2 /tmp/optimizer_step
#include <chrono>
#include <cstdio>
#include <vector>

#include "train/optim.hpp"

namespace {
double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

int main() {
  using rbn::ParamRef;
  const size_t sizes[] = {4000 * 1000, 4000 * 50, 4000, 50 * 1000, 50};
  std::vector<std::vector<float>> value, grad;
  std::vector<ParamRef> params;
  for (size_t n : sizes) {
    value.emplace_back(n, 0.1f);
    grad.emplace_back(n, 0.01f);
  }
  for (size_t i = 0; i < value.size(); ++i)
    params.push_back({"p" + std::to_string(i), value[i].data(), grad[i].data(), value[i].size()});
  rbn::OptimConfig oc;
  oc.name = "adam";
  oc.lr = 1e-3;
  auto opt = rbn::make_optimizer(oc);
  for (int r = 0; r < 8; ++r) {  // the first allocates Adam's state: not printed
    const double t0 = now_ms();
    rbn::clip_grad_norm(params, 1.0f);
    const double t1 = now_ms();
    opt->step(params, 1e-3f);
    const double t2 = now_ms();
    if (r > 0) std::printf("clip %.1f ms, adam %.1f ms\n", t1 - t0, t2 - t1);
  }
}
