// Build from the repository root after make build:
//   g++ -O2 -std=c++20 -fopenmp -Isrc -Iinclude runs/s12-hoisted-transposed.cpp build/librbn_io.a -ldnnl -lopenblas -lsleef -lz -lfmt
//   OMP_NUM_THREADS=2 ./a.out
// The hoisted input product X[6400,C] W^T on 2 threads on oneDNN's sgemm: W [G,C] read transposed
// (tb = true, as rbn calls it) against W^T [C,G] stored (tb = false).
#include "util/blas.hpp"
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>
using namespace rbn::blas;
int main() {
  const int TN = 6400, G = 4000;
  std::vector<float> A(size_t(TN) * G);
  for (int C : {32, 40, 50, 64, 80, 96, 128}) {
    std::vector<float> X(size_t(TN) * C), W(size_t(G) * C), Wt(size_t(C) * G);
    for (size_t i = 0; i < X.size(); ++i) X[i] = std::sin(0.7f * (i % 1013));
    for (size_t i = 0; i < W.size(); ++i) W[i] = 0.05f * std::sin(0.3f * (i % 1013));
    for (int g = 0; g < G; ++g)
      for (int c = 0; c < C; ++c) Wt[size_t(c) * G + g] = W[size_t(g) * C + c];
    std::printf("C=%4d", C);
    for (Backend be : {Backend::openblas, Backend::onednn})
      for (int tb : {1, 0}) {
        std::vector<double> ts;
        for (int r = 0; r < 6; ++r) {
          auto t0 = std::chrono::steady_clock::now();
          if (tb) sgemm(be, false, true, TN, G, C, 1.f, X.data(), C, W.data(), C, 0.f, A.data(), G);
          else sgemm(be, false, false, TN, G, C, 1.f, X.data(), C, Wt.data(), G, 0.f, A.data(), G);
          double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          if (r) ts.push_back(s);
        }
        std::sort(ts.begin(), ts.end());
        std::printf("  %s %s %6.1f", be == Backend::openblas ? "openblas" : "onednn", tb ? "W " : "Wt", 2.0 * TN * C * G / ts[ts.size() / 2] / 1e9);
      }
    std::printf("  GFLOP/s\n");
  }
}
