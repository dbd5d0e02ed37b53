// 2026-12-03, 17:30-18:00 UTC, linked against the library of 1f01586 (before the K panels: since
// then sgemm on oneDNN splits such products itself; detail::onednn_sgemm(false, ...) is the whole call):
//   g++ -O2 -std=c++20 -fopenmp -Isrc -Iinclude -Iruns runs/s15-kband-rows.cpp build/librbn_io.a -ldnnl -lopenblas -lsleef -lz -lfmt
//   OMP_NUM_THREADS=2 ./a.out   (s15-kband-threads: OMP_NUM_THREADS=1, 2, 4)
// oneDNN's sgemm on the hoisted product X[M,K] W[N,K]^T: whole against row blocks of R rows.
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
  for (S s : {S{6400, 4000}, S{12800, 8000}, S{6400, 1000}}) {
    std::vector<float> A(size_t(s.M) * s.N);
    for (int K : {40, 44, 48, 50, 64, 96, 100, 128}) {
      std::vector<float> X(size_t(s.M) * K), W(size_t(s.N) * K);
      for (size_t i = 0; i < X.size(); ++i) X[i] = std::sin(0.7f * (i % 1013));
      for (size_t i = 0; i < W.size(); ++i) W[i] = 0.05f * std::sin(0.3f * (i % 1013));
      const double fl = 2.0 * s.M * s.N * K;
      std::printf("%5dx%5d K=%3d", s.M, s.N, K);
      for (int R : {s.M, 2048, 1024, 640, 256}) {
        double r = med([&] {
          for (int r0 = 0; r0 < s.M; r0 += R)
            sgemm(Backend::onednn, false, true, std::min(R, s.M - r0), s.N, K, 1.f, X.data() + size_t(r0) * K, K, W.data(), K, 0.f, A.data() + size_t(r0) * s.N, s.N);
        }, fl);
        std::printf("  rows %5d %6.1f", R, r);
      }
      std::printf("\n");
    }
  }
}
