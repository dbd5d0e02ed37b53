// 2026-12-03, 17:30-18:00 UTC, linked against the library of 1f01586 (before the K panels: since
// then sgemm on oneDNN splits such products itself; detail::onednn_sgemm(false, ...) is the whole call):
//   g++ -O2 -std=c++20 -fopenmp -Isrc -Iinclude -Iruns runs/s15-kband-split.cpp build/librbn_io.a -ldnnl -lopenblas -lsleef -lz -lfmt
//   OMP_NUM_THREADS=2 ./a.out   (s15-kband-threads: OMP_NUM_THREADS=1, 2, 4)
// oneDNN's sgemm on C[M,N] = X[M,K] W[N,K]^T (the hoisted input product's form), whole against K
// split into a first panel of 32 columns and the rest (beta = 1), 2 threads, median of 7.
#include "util/blas.hpp"
#include "s15-kband-median.hpp"
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <vector>
using namespace rbn::blas;
static double med(std::function<void()> f, double flop) { return median_rate(f, flop, 7); }
int main() {
  struct S { int M, N; };
  for (S s : {S{6400, 4000}, S{1600, 4000}, S{6400, 1000}, S{12800, 8000}, S{640, 400}}) {
    std::vector<float> A(size_t(s.M) * s.N);
    for (int K : {33, 40, 48, 49, 56, 64, 72, 96, 112, 127, 128, 160}) {
      std::vector<float> X(size_t(s.M) * K), W(size_t(s.N) * K);
      for (size_t i = 0; i < X.size(); ++i) X[i] = std::sin(0.7f * (i % 1013));
      for (size_t i = 0; i < W.size(); ++i) W[i] = 0.05f * std::sin(0.3f * (i % 1013));
      const double fl = 2.0 * s.M * s.N * K;
      Backend be = Backend::onednn;
      double w = med([&] { sgemm(be, false, true, s.M, s.N, K, 1.f, X.data(), K, W.data(), K, 0.f, A.data(), s.N); }, fl);
      double sp = med([&] {
        for (int k0 = 0; k0 < K; k0 += 32)
          sgemm(be, false, true, s.M, s.N, std::min(32, K - k0), 1.f, X.data() + k0, K, W.data() + k0, K, k0 ? 1.f : 0.f, A.data(), s.N);
      }, fl);
      double sp2 = med([&] {
        sgemm(be, false, true, s.M, s.N, 32, 1.f, X.data(), K, W.data(), K, 0.f, A.data(), s.N);
        sgemm(be, false, true, s.M, s.N, K - 32, 1.f, X.data() + 32, K, W.data() + 32, K, 1.f, A.data(), s.N);
      }, fl);
      std::printf("%5dx%5d K=%3d whole %6.1f  panels of 32 %6.1f  32+rest %6.1f\n", s.M, s.N, K, w, sp, sp2);
    }
  }
}
