// 2026-12-03, 17:30-18:00 UTC, linked against the library of 1f01586 (before the K panels: since
// then sgemm on oneDNN splits such products itself; detail::onednn_sgemm(false, ...) is the whole call):
//   g++ -O2 -std=c++20 -fopenmp -Isrc -Iinclude -Iruns runs/s15-kband-shapes.cpp build/librbn_io.a -ldnnl -lopenblas -lsleef -lz -lfmt
//   OMP_NUM_THREADS=2 ./a.out   (s15-kband-threads: OMP_NUM_THREADS=1, 2, 4)
// Where oneDNN's slow K band applies: sizes of C and transposes, K = 64 (and 100), whole vs 2 panels.
#include "util/blas.hpp"
#include "s15-kband-median.hpp"
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <vector>
using namespace rbn::blas;
static double med(std::function<void()> f, double flop) { return median_rate(f, flop, 9); }
int main(int argc, char**) {
  struct S { int M, N, K; };
  for (S s : {S{100, 208, 100}, S{100, 400, 100}, S{64, 4000, 64}, S{256, 4000, 64}, S{640, 1000, 64}, S{1000, 1000, 64}, S{1024, 2048, 64}, S{1600, 1000, 64}, S{2048, 2048, 64}, S{6400, 4000, 44}, S{6400, 4000, 100}, S{6400, 4000, 108}})
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 2, tb = t & 1;
      std::vector<float> A(size_t(s.M) * s.K), B(size_t(s.N) * s.K), C(size_t(s.M) * s.N);
      for (size_t i = 0; i < A.size(); ++i) A[i] = std::sin(0.7f * (i % 1013));
      for (size_t i = 0; i < B.size(); ++i) B[i] = 0.05f * std::sin(0.3f * (i % 1013));
      const int lda = ta ? s.M : s.K, ldb = tb ? s.K : s.N;
      auto a_at = [&](int k) { return A.data() + (ta ? size_t(k) * lda : size_t(k)); };
      auto b_at = [&](int k) { return B.data() + (tb ? size_t(k) : size_t(k) * ldb); };
      const double fl = 2.0 * s.M * s.N * s.K;
      Backend be = Backend::onednn;
      double w = med([&] { sgemm(be, ta, tb, s.M, s.N, s.K, 1.f, A.data(), lda, B.data(), ldb, 0.f, C.data(), s.N); }, fl);
      const int K1 = s.K / 2;
      double sp = med([&] {
        sgemm(be, ta, tb, s.M, s.N, K1, 1.f, a_at(0), lda, b_at(0), ldb, 0.f, C.data(), s.N);
        sgemm(be, ta, tb, s.M, s.N, s.K - K1, 1.f, a_at(K1), lda, b_at(K1), ldb, 1.f, C.data(), s.N);
      }, fl);
      std::printf("%5dx%5dx%4d %c%c whole %6.1f  2 panels %6.1f\n", s.M, s.N, s.K, ta ? 'T' : 'N', tb ? 'T' : 'N', w, sp);
    }
}
