// Build from the repository root after make build:
//   g++ -O2 -std=c++20 -fopenmp -Isrc -Iinclude runs/s12-input-products.cpp build/librbn_io.a -ldnnl -lopenblas -lsleef -lz -lfmt
//   OMP_NUM_THREADS=2 ./a.out
// The dense-input products of one PTB layer (T*N = 6400 rows, C = 50, G = 4000), 2 threads,
// each backend: hoisted A = X W^T, dx = dG W, dW = dG^T X. Median of 7 (GFLOP/s).
#include "util/blas.hpp"
#include <omp.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>
using namespace rbn::blas;
int main() {
  const int TN = 6400, C = 50, G = 4000;
  std::vector<float> X(size_t(TN) * C), W(size_t(G) * C), A(size_t(TN) * G), dX(size_t(TN) * C), dW(size_t(G) * C);
  for (size_t i = 0; i < X.size(); ++i) X[i] = std::sin(0.7f * (i % 1013));
  for (size_t i = 0; i < W.size(); ++i) W[i] = 0.05f * std::sin(0.3f * (i % 1013));
  for (size_t i = 0; i < A.size(); ++i) A[i] = 0.01f * std::sin(0.7f * (i % 1013));
  struct P { const char* name; int which; };
  for (P p : {P{"hoisted X W^T 6400x50->4000", 0}, P{"dx = dG W   6400x4000->50", 1}, P{"dW = dG^T X 4000x6400->50", 2}})
    for (Backend be : {Backend::openblas, Backend::onednn}) {
      std::vector<double> ts;
      for (int r = 0; r < 8; ++r) {
        auto t0 = std::chrono::steady_clock::now();
        if (p.which == 0) sgemm(be, false, true, TN, G, C, 1.f, X.data(), C, W.data(), C, 0.f, A.data(), G);
        if (p.which == 1) sgemm(be, false, false, TN, C, G, 1.f, A.data(), G, W.data(), C, 0.f, dX.data(), C);
        if (p.which == 2) sgemm(be, true, false, G, C, TN, 1.f, A.data(), G, X.data(), C, 1.f, dW.data(), C);
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (r) ts.push_back(s);
      }
      std::sort(ts.begin(), ts.end());
      double med = ts[ts.size() / 2];
      std::printf("%-32s %-9s %7.2f ms %7.1f GFLOP/s\n", p.name, be == Backend::openblas ? "openblas" : "onednn", med * 1e3,
                  2.0 * TN * C * G / med / 1e9);
    }
}
