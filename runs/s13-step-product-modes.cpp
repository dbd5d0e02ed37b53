// Build: g++ -O2 -march=native -fopenmp -include cstring runs/s13-step-product-modes.cpp -ldnnl; OMP_NUM_THREADS=2 ./a.out [rounds]
// PTB forward step product, 100 steps, 2 threads: one 2-thread dnnl_sgemm per step vs rbn's
// per-thread halves, by lda of h. Interleaved rounds, medians.
#include <dnnl.h>
#include <omp.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>
#include <string>
int main(int argc, char** argv) {
  const int M = 64, K = 1000, N = 4000, T = 100, rounds = argc > 1 ? atoi(argv[1]) : 9;
  const int ldmax = 1008;
  std::vector<float> A(size_t(T + 1) * M * ldmax), B(size_t(K) * N), Bp(B.size()), C(size_t(M) * N);
  for (size_t i = 0; i < A.size(); ++i) A[i] = 0.5f * std::sin(0.7f * (i % 1013));
  for (size_t i = 0; i < B.size(); ++i) B[i] = 0.05f * std::sin(0.3f * (i % 1013));
  for (int p = 0; p < 2; ++p)
    for (int k = 0; k < K; ++k)
      for (int j = 0; j < N / 2; ++j) Bp[(size_t(p) * K + k) * (N / 2) + j] = B[size_t(k) * N + p * (N / 2) + j];
  struct Mode { std::string name; bool one; bool packed; int lda; };
  std::vector<Mode> modes = {{"one call, lda 1000", true, false, 1000}, {"one call, lda 1008", true, false, 1008},
                             {"per-thread packed, lda 1000", false, true, 1000}, {"per-thread packed, lda 1008", false, true, 1008},
                             {"per-thread in place, lda 1008", false, false, 1008}};
  std::vector<std::vector<double>> ms(modes.size());
  for (int r = 0; r < rounds; ++r)
    for (size_t m = 0; m < modes.size(); ++m) {
      const Mode& md = modes[m];
      auto t0 = std::chrono::steady_clock::now();
      if (md.one) {
        for (int t = 0; t < T; ++t)
          dnnl_sgemm('N', 'N', M, N, K, 1.f, A.data() + size_t(t) * M * md.lda, md.lda, B.data(), N, 0.f, C.data(), N);
      } else {
#pragma omp parallel num_threads(2)
        for (int t = 0; t < T; ++t) {
          int p = omp_get_thread_num();
          const float* b = md.packed ? Bp.data() + size_t(p) * K * (N / 2) : B.data() + p * (N / 2);
          dnnl_sgemm('N', 'N', M, N / 2, K, 1.f, A.data() + size_t(t) * M * md.lda, md.lda, b, md.packed ? N / 2 : N, 0.f,
                     C.data() + size_t(p) * (N / 2), N);
#pragma omp barrier
        }
      }
      ms[m].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() * 1e3);
    }
  for (size_t m = 0; m < modes.size(); ++m) {
    auto v = ms[m];
    std::sort(v.begin(), v.end());
    std::printf("%-32s median %6.1f ms  q1 %6.1f  q3 %6.1f  %6.1f GFLOP/s\n", modes[m].name.c_str(), v[v.size() / 2],
                v[v.size() / 4], v[3 * v.size() / 4], 2.0 * M * K * N * T / v[v.size() / 2] / 1e6);
  }
}
