// 2026-12-03 ~22:52 UTC, AVX-512 AMD EPYC (Zen 5), oneDNN 2.6.3:
//   g++ -O2 -fopenmp runs/s16-twothreads.cpp -ldnnl && ./a.out 2000
// (R as the time loop packs it, [K,N] untransposed. With B as [N,K] transposed the calls ran at
// 94-136 GFLOP/s and the threads differed by up to 1.44x, either way round.) Output: s16-twothreads.txt
// Each of two OpenMP threads runs the same single-threaded dnnl_sgemm (64x1000x2000) on its own
// data, a barrier after each call; per-thread time summed over calls. Is thread 1 slower on equal work?
#include <dnnl.h>
#include <omp.h>
#include <chrono>
#include <cstdio>
#include <vector>
#include <algorithm>
int main(int argc, char** argv) {
  int M = 64, K = 1000, N = argc > 1 ? atoi(argv[1]) : 2000;
  std::vector<float> A[2], B[2], C[2];
  double t[2] = {0, 0};
  #pragma omp parallel num_threads(2)
  {
    int p = omp_get_thread_num();
    A[p].assign((size_t)M * K, 0.01f); B[p].assign((size_t)N * K, 0.02f); C[p].assign((size_t)M * N, 0);
    #pragma omp barrier
    for (int it = 0; it < 2200; ++it) {
      auto t0 = std::chrono::steady_clock::now();
      dnnl_sgemm('N', 'N', M, N, K, 1.f, A[p].data(), K, B[p].data(), N, 0.f, C[p].data(), N);
      auto t1 = std::chrono::steady_clock::now();
      if (it >= 200) t[p] += std::chrono::duration<double>(t1 - t0).count();
      #pragma omp barrier
    }
  }
  printf("N=%d thread0 %.1f us  thread1 %.1f us per call  (t1/t0 %.3f)  GFLOP/s %.0f %.0f\n", N, t[0] / 2000 * 1e6,
         t[1] / 2000 * 1e6, t[1] / t[0], 2.0 * M * K * N / (t[0] / 2000) / 1e9, 2.0 * M * K * N / (t[1] / 2000) / 1e9);
}
