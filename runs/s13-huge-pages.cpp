// Build: g++ -O2 -march=native -fopenmp -include cstring runs/s13-huge-pages.cpp -ldnnl; OMP_NUM_THREADS=2 ./a.out [rounds]
// NOPW=1: the product alone (no stand-in gate pass). Both variants start on 2 MB boundaries.
// Step product with operands on 2 MB pages (madvise) vs 4 KB pages, rbn's per-thread split.
#include <dnnl.h>
#include <omp.h>
#include <sys/mman.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>
float* alloc(size_t n, bool huge) {
  size_t bytes = (n * 4 + (2u << 20) - 1) / (2u << 20) * (2u << 20);
  float* p = static_cast<float*>(std::aligned_alloc(2u << 20, bytes));
  if (huge) madvise(p, bytes, MADV_HUGEPAGE);
  for (size_t i = 0; i < n; ++i) p[i] = 0.05f * std::sin(0.3f * (i % 1013));
  return p;
}
int main(int argc, char** argv) {
  const int M = 64, K = 1000, N = 4000, T = 100, rounds = argc > 1 ? atoi(argv[1]) : 9;
  float *A[2], *B[2], *C[2], *G[2];
  for (int h = 0; h < 2; ++h) A[h] = alloc(size_t(T + 1) * M * K, h), B[h] = alloc(size_t(K) * N, h), C[h] = alloc(size_t(M) * N, h), G[h] = alloc(size_t(T) * M * N, h);
  std::vector<double> ms[2], pw[2];
  for (int r = 0; r < rounds; ++r)
    for (int h = 0; h < 2; ++h) {
      double tp = 0;
      auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(2) reduction(+:tp)
      for (int t = 0; t < T; ++t) {
        int p = omp_get_thread_num();
        dnnl_sgemm('N', 'N', M, N / 2, K, 1.f, A[h] + size_t(t) * M * K, K, B[h] + size_t(p) * K * (N / 2), N / 2, 0.f, C[h] + size_t(p) * M * (N / 2), N / 2);
        auto t1 = std::chrono::steady_clock::now();
        // a gate-pass stand-in: this thread's columns of G[t] += C, streamed
        for (int n = 0; n < M; ++n) {
          float* g = G[h] + (size_t(t) * M + n) * N;
          const float* c = C[h] + size_t(p) * M * (N / 2) + size_t(n) * (N / 2);
          if (getenv("NOPW")) break; for (int q = 0; q < 4; ++q)
#pragma omp simd
            for (int j = 0; j < 500; ++j) g[q * 1000 + p * 500 + j] = std::tanh(g[q * 1000 + p * 500 + j] + c[q * 500 + j]);
        }
        tp += std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
#pragma omp barrier
      }
      ms[h].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() * 1e3);
      pw[h].push_back(tp / 2 * 1e3);
    }
  for (int h = 0; h < 2; ++h) {
    std::sort(ms[h].begin(), ms[h].end()), std::sort(pw[h].begin(), pw[h].end());
    std::printf("%s pages: total median %6.1f ms (q1 %6.1f q3 %6.1f), pointwise %6.1f ms\n", h ? "2 MB" : "4 KB", ms[h][rounds / 2], ms[h][rounds / 4], ms[h][3 * rounds / 4], pw[h][rounds / 2]);
  }
  FILE* f = fopen("/proc/self/smaps_rollup", "r"); char line[256]; while (fgets(line, sizeof line, f)) if (strstr(line, "AnonHuge")) fputs(line, stdout);
}
