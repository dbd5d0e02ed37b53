// 2026-12-03 ~23:12 UTC, AVX-512 AMD EPYC (Zen 5), main at 8474ba3:
//   g++ -O2 -std=c++20 -fopenmp -Isrc -Iinclude -Iruns runs/s16-fused.cpp build/librbn_io.a -ldnnl -lopenblas -lsleef -lz -lfmt && OMP_NUM_THREADS=2 ./a.out
// Output: s16-fused.txt
// PTB dense layer's input backward on 2 threads: dx [TN,C] = dA W and dW^T [C,G] = X^T dA as two
// whole products (dA [TN,G] read twice from memory), against row blocks of dA (each block read
// from memory once, the second product finding it in cache).
#include "util/blas.hpp"
#include "s15-kband-median.hpp"
#include <cmath>
#include <cstdio>
#include <vector>
using namespace rbn::blas;
int main() {
  const int TN = 6400, G = 4000, C = 50;
  std::vector<float> A(size_t(TN) * G), X(size_t(TN) * C), W(size_t(G) * C), dx(size_t(TN) * C), dWt(size_t(C) * G);
  for (size_t i = 0; i < A.size(); ++i) A[i] = 0.01f * std::sin(0.37f * (i % 1013));
  for (size_t i = 0; i < X.size(); ++i) X[i] = std::sin(0.7f * (i % 1013));
  for (size_t i = 0; i < W.size(); ++i) W[i] = std::sin(0.3f * (i % 1013));
  const double fl = 4.0 * TN * G * C;
  const Backend be = Backend::onednn;
  for (int rep = 0; rep < 3; ++rep) {
    double whole = median_rate([&] {
      sgemm(be, false, false, TN, C, G, 1.f, A.data(), G, W.data(), C, 0.f, dx.data(), C);
      sgemm(be, true, false, C, G, TN, 1.f, X.data(), C, A.data(), G, 0.f, dWt.data(), G);
    }, fl, 5);
    std::printf("whole %6.1f GFLOP/s (%.2f ms)", whole, fl / whole * 1e-6);
    for (int rb : {256, 512, 1024, 1600}) {
      double blk = median_rate([&] {
        for (int r0 = 0; r0 < TN; r0 += rb) {
          const int m = std::min(rb, TN - r0);
          sgemm(be, false, false, m, C, G, 1.f, A.data() + size_t(r0) * G, G, W.data(), C, 0.f, dx.data() + size_t(r0) * C, C);
          sgemm(be, true, false, C, G, m, 1.f, X.data() + size_t(r0) * C, C, A.data() + size_t(r0) * G, G, r0 ? 1.f : 0.f, dWt.data(), G);
        }
      }, fl, 5);
      std::printf("  blocks of %d: %6.1f (%.2f ms)", rb, blk, fl / blk * 1e-6);
    }
    std::printf("\n");
  }
}
