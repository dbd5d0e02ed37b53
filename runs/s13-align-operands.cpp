// Build: g++ -O2 -march=native -fopenmp -include cstring runs/s13-align-operands.cpp -ldnnl; OMP_NUM_THREADS=2 ./a.out [rounds]
// rbn's per-thread step product (PTB) with operands 64-byte aligned vs at 16 mod 64 (std::vector's
// large blocks from malloc's mmap), interleaved rounds, medians. fwd: h[64,1000] x Rc[1000,2000];
// bwd: dRh[64,4000] x Rc[4000,500]. Then dR = dG^T H over T*N rows (4000x6400 . 6400x1000) by
// offset, and the backward's step product with R's columns at leading dimension 500 or 512.
#include <dnnl.h>
#include <omp.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>
float* alloc(size_t n, size_t off) {
  char* p = static_cast<char*>(std::aligned_alloc(4096, n * 4 + 4096)) + off;
  float* f = reinterpret_cast<float*>(p);
  for (size_t i = 0; i < n; ++i) f[i] = 0.05f * std::sin(0.3f * (i % 1013));
  return f;
}
int main(int argc, char** argv) {
  const int M = 64, T = 100, rounds = argc > 1 ? atoi(argv[1]) : 9;
  for (int fwd : {1, 0}) {
    const int K = fwd ? 1000 : 4000, Np = fwd ? 2000 : 500;
    const int V = 4; float *A[V], *B[V], *C[V];
    const size_t offs[V][3] = {{0,0,0},{16,0,0},{0,16,0},{0,0,16}};
    for (int v = 0; v < V; ++v) A[v] = alloc(size_t(T + 1) * M * K, offs[v][0]), B[v] = alloc(2 * size_t(K) * Np, offs[v][1]), C[v] = alloc(2 * size_t(M) * Np, offs[v][2]);
    std::vector<double> ms[V];
    for (int r = 0; r < rounds; ++r)
      for (int v = 0; v < V; ++v) {
        auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(2)
        for (int t = 0; t < T; ++t) {
          int p = omp_get_thread_num();
          dnnl_sgemm('N', 'N', M, Np, K, 1.f, A[v] + size_t(t) * M * K, K, B[v] + size_t(p) * K * Np, Np, 0.f, C[v] + size_t(p) * M * Np, Np);
#pragma omp barrier
        }
        ms[v].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() * 1e3);
      }
    for (int v = 0; v < V; ++v) {
      std::sort(ms[v].begin(), ms[v].end());
      double med = ms[v][rounds / 2];
      std::printf("%s offsets A %2zu B %2zu C %2zu: median %6.1f ms (q1 %6.1f q3 %6.1f) %6.1f GFLOP/s\n", fwd ? "fwd" : "bwd", offs[v][0], offs[v][1], offs[v][2], med, ms[v][rounds / 4], ms[v][3 * rounds / 4], 2.0 * M * K * Np * 2 * T / med / 1e6);
    }
  }
  // the backward's other products: dR over all rows by operand offset; the step product by
  // the leading dimension of R's columns (w = 500 values: 2000 bytes, or 512)
  const int TN = 6400, G = 4000, H = 1000;
  {
    float *A[2], *B[2], *C[2];
    size_t offs[2] = {16, 0};
    for (int v = 0; v < 2; ++v) A[v] = alloc(size_t(TN) * G, offs[v]), B[v] = alloc(size_t(TN) * H, offs[v]), C[v] = alloc(size_t(G) * H, offs[v]);
    std::vector<double> ms[2];
    for (int r = 0; r < rounds; ++r)
      for (int v = 0; v < 2; ++v) {
        auto t0 = std::chrono::steady_clock::now();
        dnnl_sgemm('T', 'N', G, H, TN, 1.f, A[v], G, B[v], H, 1.f, C[v], H);
        ms[v].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() * 1e3);
      }
    for (int v = 0; v < 2; ++v) {
      std::sort(ms[v].begin(), ms[v].end());
      std::printf("dR offset %2zu: median %6.1f ms (q1 %6.1f q3 %6.1f)\n", offs[v], ms[v][rounds / 2], ms[v][rounds / 4], ms[v][3 * rounds / 4]);
    }
  }
  {  // backward step product per thread: dh[64, 500] = dRh[64,4000] r_cols[4000, ldb]
    const int M = 64, T = 100, w = 500;
    const int ldbs[2] = {500, 512};
    float *A = alloc(size_t(T) * M * G, 0), *B[2], *C = alloc(2 * size_t(M) * H, 0);
    for (int v = 0; v < 2; ++v) B[v] = alloc(2 * size_t(G) * ldbs[v], 0);
    std::vector<double> ms[2];
    for (int r = 0; r < 3 * rounds; ++r)
      for (int v = 0; v < 2; ++v) {
        auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(2)
        for (int t = 0; t < T; ++t) {
          int p = omp_get_thread_num();
          dnnl_sgemm('N', 'N', M, w, G, 1.f, A + size_t(t) * M * G, G, B[v] + size_t(p) * G * ldbs[v], ldbs[v], 0.f, C + p * w, H);
#pragma omp barrier
        }
        ms[v].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() * 1e3);
      }
    for (int v = 0; v < 2; ++v) {
      std::sort(ms[v].begin(), ms[v].end());
      int n = ms[v].size();
      std::printf("bwd step ldb %d: median %6.1f ms (q1 %6.1f q3 %6.1f)\n", ldbs[v], ms[v][n / 2], ms[v][n / 4], ms[v][3 * n / 4]);
    }
  }
}
