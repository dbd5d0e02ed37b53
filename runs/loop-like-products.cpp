// Built against a tree with runs/fp32-blocked-matmul.patch applied (FixedRightOperand::prepare_on):
//   g++ -O2 -std=c++20 -fopenmp -Isrc -Iinclude runs/loop-like-products.cpp build/librbn_io.a \
//       -ldnnl -lopenblas -lsleef -lz -lfmt
//   OPENBLAS_CORETYPE=SkylakeX ./a.out M K N beta T write_a [pollute_KiB]
// Loop-like per-thread products: A rotates through T step buffers (h_t written by both threads
// between products), C rotates through T step buffers (the gates cache), optional beta.
#include "util/blas.hpp"
#include <omp.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
using namespace rbn::blas;
int main(int argc, char** argv) {
  int M = atoi(argv[1]), K = atoi(argv[2]), N = atoi(argv[3]);
  float beta = atof(argv[4]);
  int T = atoi(argv[5]);          // rotating buffers (1 = the old micro-bench)
  int write_a = atoi(argv[6]);    // threads write their half of A_t+1 after each product
  size_t pollute = argc > 7 ? size_t(atoi(argv[7])) * 256 : 0;  // KiB of other memory touched per step per thread
  std::vector<float> P(size_t(2) * (pollute + 1) * T, 1.f);
  const int nt = 2;
  const int ldc = N * nt;  // C: [T][M][2N], each thread its N columns
  std::vector<float> A(size_t(T + 1) * M * K, 0.5f), B(size_t(nt) * K * N, 0.25f), C(size_t(T) * M * ldc, 0.f);
  for (size_t i = 0; i < B.size(); ++i) B[i] = 0.25f + 1e-3f * (i % 97);
  for (int mode = 0; mode < 3; ++mode) {
    Backend be = mode == 0 ? Backend::openblas : Backend::onednn;
    std::vector<double> ts;
    for (int r = 0; r < 5; ++r) {
      double t_total = 0;
#pragma omp parallel num_threads(nt) reduction(max:t_total)
      {
        int t = omp_get_thread_num();
        FixedRightOperand<float> op;
        if (mode == 2) op.prepare_on(be, B.data() + size_t(t) * K * N, K, N, N, M);
        else op.prepare_on(be, B.data() + size_t(t) * K * N, K, N, N, M);
#pragma omp barrier
        auto t0 = std::chrono::steady_clock::now();
        for (int s = 0; s < T; ++s) {
          const float* a = A.data() + size_t(s) * M * K;
          float* c = C.data() + size_t(s) * M * ldc + t * N;
          if (mode == 2) op.multiply(a, K, beta, c, ldc);
          else sgemm(be, false, false, M, N, K, 1.f, a, K, B.data() + size_t(t) * K * N, N, beta, c, ldc);
          if (write_a) {  // h_{t+1}: each thread writes its half of every row
            float* an = A.data() + size_t(s + 1) * M * K;
            const int k0 = t * K / nt, k1 = (t + 1) * K / nt;
            for (int m = 0; m < M; ++m)
              for (int k = k0; k < k1; ++k) an[size_t(m) * K + k] = 0.5f + 1e-3f * c[size_t(m) * ldc + (k % N)];
          }
          if (pollute) {
            float* p = P.data() + (size_t(s) * 2 + t) * pollute;
            for (size_t i = 0; i < pollute; ++i) p[i] = p[i] * 0.999f + 1e-3f;
          }
#pragma omp barrier
        }
        t_total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      }
      ts.push_back(t_total);
    }
    std::sort(ts.begin(), ts.end());
    printf("%s %.1f  ", mode == 0 ? "openblas" : mode == 1 ? "dnnl_sgemm" : "blocked", 2.0 * M * K * N * T * nt / ts[2] / 1e9);
  }
  printf(" GFLOP/s (%dx%dx%d beta %g T %d write_a %d pollute %zu KiB)\n", M, K, N, beta, T, write_a, pollute / 256);
}
