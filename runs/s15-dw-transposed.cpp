// 2026-12-03 18:46 UTC (a slow hour), main at 311750c:
//   g++ -O2 -std=c++20 -fopenmp -Isrc -Iinclude -Iruns runs/s15-dw-transposed.cpp build/librbn_io.a -ldnnl -lopenblas -lsleef -lz -lfmt
//   OMP_NUM_THREADS=2 ./a.out
// The input weights' gradient dW[G,C] += dA[TN,G]^T X[TN,C] on 2 threads: as one TN product into
// dW, against dW^T[C,G] = X^T dA (a TN product with the small C as rows) added transposed.
#include "util/blas.hpp"
#include "s15-kband-median.hpp"
#include <cmath>
#include <cstdio>
#include <vector>
using namespace rbn::blas;
int main() {
  const int TN = 6400, G = 4000;
  std::vector<float> A(size_t(TN) * G);
  for (size_t i = 0; i < A.size(); ++i) A[i] = 0.01f * std::sin(0.37f * (i % 1013));
  for (int C : {32, 50, 64, 128, 256, 1000}) {
    std::vector<float> X(size_t(TN) * C), dW(size_t(G) * C), dWt(size_t(C) * G);
    for (size_t i = 0; i < X.size(); ++i) X[i] = std::sin(0.7f * (i % 1013));
    const double fl = 2.0 * TN * G * C;
    for (Backend be : {Backend::openblas, Backend::onednn}) {
      double d = median_rate([&] { sgemm(be, true, false, G, C, TN, 1.f, A.data(), G, X.data(), C, 1.f, dW.data(), C); }, fl, 5);
      double t = median_rate([&] {
        sgemm(be, true, false, C, G, TN, 1.f, X.data(), C, A.data(), G, 0.f, dWt.data(), G);
        for (int g = 0; g < G; ++g)
          for (int c = 0; c < C; ++c) dW[size_t(g) * C + c] += dWt[size_t(c) * G + g];
      }, fl, 5);
      std::printf("C=%4d %-8s dW %6.1f  dW^T + transpose %6.1f GFLOP/s\n", C, backend_name(be), d, t);
    }
  }
}
