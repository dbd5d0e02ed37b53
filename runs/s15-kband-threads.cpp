// 2026-12-03, 17:30-18:00 UTC, linked against the library of 1f01586 (before the K panels: since
// then sgemm on oneDNN splits such products itself; detail::onednn_sgemm(false, ...) is the whole call):
//   g++ -O2 -std=c++20 -fopenmp -Isrc -Iinclude -Iruns runs/s15-kband-threads.cpp build/librbn_io.a -ldnnl -lopenblas -lsleef -lz -lfmt
//   OMP_NUM_THREADS=2 ./a.out   (s15-kband-threads: OMP_NUM_THREADS=1, 2, 4)
// The slow K band of oneDNN's sgemm against the thread count: X[6400,K] W[4000,K]^T, whole and
// in panels of at most 32 columns.
#include "util/blas.hpp"
#include "s15-kband-median.hpp"
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <vector>
using namespace rbn::blas;
static double med(std::function<void()> f, double flop) { return median_rate(f, flop, 5); }
int main(int argc, char** argv) {
  const int M = argc > 1 ? atoi(argv[1]) : 6400, N = argc > 2 ? atoi(argv[2]) : 4000;
  std::vector<float> A(size_t(M) * N);
  for (int K : {44, 46, 47, 48, 50, 64, 96, 100, 104, 108}) {
    std::vector<float> X(size_t(M) * K), W(size_t(N) * K);
    for (size_t i = 0; i < X.size(); ++i) X[i] = std::sin(0.7f * (i % 1013));
    for (size_t i = 0; i < W.size(); ++i) W[i] = 0.05f * std::sin(0.3f * (i % 1013));
    const double fl = 2.0 * M * N * K;
    double w = med([&] { sgemm(Backend::onednn, false, true, M, N, K, 1.f, X.data(), K, W.data(), K, 0.f, A.data(), N); }, fl);
    const int P = (K + 31) / 32;
    double p = med([&] {
      for (int i = 0, k0 = 0; i < P; ++i) {
        const int k1 = K * (i + 1) / P;
        sgemm(Backend::onednn, false, true, M, N, k1 - k0, 1.f, X.data() + k0, K, W.data() + k0, K, i ? 1.f : 0.f, A.data(), N);
        k0 = k1;
      }
    }, fl);
    std::printf("%dx%d K=%3d whole %6.1f  %d panels %6.1f\n", M, N, K, w, P, p);
  }
}
