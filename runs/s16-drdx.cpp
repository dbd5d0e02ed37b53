// 2026-12-03 ~23:00 UTC, AVX-512 AMD EPYC (Zen 5), main at 8474ba3:
//   g++ -O2 -std=c++20 -fopenmp -Isrc -Iinclude -Iruns runs/s16-drdx.cpp build/librbn_io.a -ldnnl -lopenblas -lsleef -lz -lfmt && OMP_NUM_THREADS=2 ./a.out
// Output: s16-drdx.txt
// PTB layer's after-loop products on 2 threads: dR [G,H] += dRh^T H (and as dR^T = H^T dRh),
// dx [TN,C] = dA W (and as dx^T = W^T dA^T), dW as in s15-dw-transposed.
#include "util/blas.hpp"
#include "s15-kband-median.hpp"
#include <cmath>
#include <cstdio>
#include <vector>
using namespace rbn::blas;
int main() {
  const int TN = 6400, G = 4000, H = 1000, C = 50;
  std::vector<float> A(size_t(TN) * G), Hs(size_t(TN) * H), dR(size_t(G) * H), dRt(size_t(G) * H);
  std::vector<float> W(size_t(G) * C), dx(size_t(TN) * C), dxt(size_t(TN) * C);
  for (size_t i = 0; i < A.size(); ++i) A[i] = 0.01f * std::sin(0.37f * (i % 1013));
  for (size_t i = 0; i < Hs.size(); ++i) Hs[i] = std::sin(0.7f * (i % 1013));
  for (size_t i = 0; i < W.size(); ++i) W[i] = std::sin(0.3f * (i % 1013));
  for (Backend be : {Backend::onednn, Backend::openblas}) {
    for (int rep = 0; rep < 2; ++rep) {
    double fl = 2.0 * TN * G * H;
    double a = median_rate([&] { sgemm(be, true, false, G, H, TN, 1.f, A.data(), G, Hs.data(), H, 1.f, dR.data(), H); }, fl, 5);
    double b = median_rate([&] { sgemm(be, true, false, H, G, TN, 1.f, Hs.data(), H, A.data(), G, 0.f, dRt.data(), G); }, fl, 5);
    fl = 2.0 * TN * G * C;
    double c = median_rate([&] { sgemm(be, false, false, TN, C, G, 1.f, A.data(), G, W.data(), C, 0.f, dx.data(), C); }, fl, 5);
    double d = median_rate([&] { sgemm(be, true, true, C, TN, G, 1.f, W.data(), C, A.data(), G, 0.f, dxt.data(), TN); }, fl, 5);
    std::printf("%-8s dR %6.1f  dR^T (no add) %6.1f   dx %6.1f  dx^T (no transpose) %6.1f GFLOP/s\n", backend_name(be), a, b, c, d);
    }
  }
}
