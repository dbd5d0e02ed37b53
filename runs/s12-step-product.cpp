// Build: g++ -O2 -fopenmp runs/s12-step-product.cpp -ldnnl; OMP_NUM_THREADS=2 ./a.out
// PTB step product h[64,1000] x R -> [64,4000], 2 threads, dnnl_sgemm: rbn's split (each thread
// one 64x1000x2000 call inside a parallel region, B = its packed columns) against one call over
// both threads (oneDNN's ref RNN: B = [1000,4000]). A and C rotate over T buffers like a time loop.
#include <dnnl.h>
#include <omp.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>
int main(int argc, char** argv) {
  const int M = 64, K = 1000, N = 4000, T = 100;
  std::vector<float> A(size_t(T + 1) * M * K), B(size_t(K) * N), C(size_t(T) * M * N);
  for (size_t i = 0; i < A.size(); ++i) A[i] = 0.5f * std::sin(0.7f * (i % 1013));
  for (size_t i = 0; i < B.size(); ++i) B[i] = 0.05f * std::sin(0.3f * (i % 1013));
  std::vector<float> Bp(B.size());  // per-thread packed halves [2][K][N/2]
  for (int p = 0; p < 2; ++p)
    for (int k = 0; k < K; ++k)
      for (int j = 0; j < N / 2; ++j) Bp[(size_t(p) * K + k) * (N / 2) + j] = B[size_t(k) * N + p * (N / 2) + j];
  for (int round = 0; round < 3; ++round)
    for (int mode = 0; mode < 3; ++mode) {
      auto t0 = std::chrono::steady_clock::now();
      for (int t = 0; t < T; ++t) {
        const float* a = A.data() + size_t(t) * M * K;
        float* c = C.data() + size_t(t) * M * N;
        if (mode == 0) {
#pragma omp parallel num_threads(2)
          {
            int p = omp_get_thread_num();
            dnnl_sgemm('N', 'N', M, N / 2, K, 1.f, a, K, Bp.data() + size_t(p) * K * (N / 2), N / 2, 0.f, c + p * (N / 2), N);
            // the step's pointwise writes next A rows
#pragma omp barrier
          }
        } else if (mode == 1) {
          dnnl_sgemm('N', 'N', M, N, K, 1.f, a, K, B.data(), N, 0.f, c, N);
        } else {
#pragma omp parallel num_threads(2)
          {
            int p = omp_get_thread_num();
            dnnl_sgemm('N', 'N', M, N / 2, K, 1.f, a, K, B.data() + p * (N / 2), N, 0.f, c + p * (N / 2), N);
#pragma omp barrier
          }
        }
      }
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const char* name[] = {"per-thread halves, packed B", "one call, 2 threads", "per-thread halves, B in place"};
      std::printf("round %d %-32s %7.1f ms  %6.1f GFLOP/s\n", round, name[mode], s * 1e3, 2.0 * M * K * N * T / s / 1e9);
    }
}
