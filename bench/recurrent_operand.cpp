// The per-step recurrent products of the PTB shape as the time loop issues them (two threads,
// each one single-threaded call per step on its own slice, a barrier after each), with the
// slice's weights in the two layouts a GEMM can read them: the forward's h R^T with the rows of R
// as they are (B transposed) or transposed once beforehand (B untransposed, what the engine packs
// now), and the backward's dRh R with R's columns in place or copied contiguous. GFLOP/s of each,
// on oneDNN's dnnl_sgemm or OpenBLAS's cblas_sgemm (docs/performance-history.md, "The forward
// product's operand"). Not part of the build:
//
//   g++ -O2 -fopenmp bench/recurrent_operand.cpp -o /tmp/recurrent_operand -ldnnl -lopenblas
//   OMP_NUM_THREADS=2 /tmp/recurrent_operand onednn; OMP_NUM_THREADS=2 /tmp/recurrent_operand openblas
#include <cblas.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

namespace {
double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Row-major C [M,N] = op(A) op(B) on the chosen library.
void gemm(bool onednn, bool ta, bool tb, int M, int N, int K, const float* A, int lda,
          const float* B, int ldb, float* C, int ldc) {
  if (onednn) {
    dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, 1.f, A, lda, B, ldb, 0.f, C, ldc);
  } else {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M,
                N, K, 1.f, A, lda, B, ldb, 0.f, C, ldc);
  }
}

// T steps of `product(p)` on each of two threads, a barrier after each step; seconds.
template <class F>
double time_steps(int T, F product) {
  const double t0 = now();
#pragma omp parallel num_threads(2)
  for (int t = 0; t < T; ++t) {
    product(omp_get_thread_num());
#pragma omp barrier
  }
  return now() - t0;
}
}  // namespace

int main(int argc, char** argv) {
  const bool onednn = argc > 1 && std::strcmp(argv[1], "onednn") == 0;
  const int N = 64, H = 1000, G = 4 * H, T = 50, w = H / 2, gw = G / 2;  // PTB: thread p owns gw
  std::vector<float> h(size_t(N) * H, 0.1f), R(size_t(G) * H), y(size_t(N) * G);
  std::vector<float> dRh(size_t(N) * G, 0.1f), dh(size_t(N) * H);
  for (size_t i = 0; i < R.size(); ++i) R[i] = float((i * 7919) % 1000) / 1e4f;
  // thread p's rows of R transposed: [H, gw]; its columns of R contiguous: [G, w]
  std::vector<float> Rt(2 * size_t(H) * gw), Rc(2 * size_t(G) * w);
  for (int p = 0; p < 2; ++p) {
    for (int k = 0; k < H; ++k)
      for (int j = 0; j < gw; ++j)
        Rt[(size_t(p) * H + k) * gw + j] = R[size_t(p * gw + j) * H + k];
    for (int g = 0; g < G; ++g)
      for (int j = 0; j < w; ++j) Rc[(size_t(p) * G + g) * w + j] = R[size_t(g) * H + p * w + j];
  }
  const double flop = 2.0 * N * H * G * T;
  std::printf("%s, PTB per-step products (N=%d, H=%d, 4H=%d), 2 threads, GFLOP/s\n",
              onednn ? "oneDNN dnnl_sgemm" : "OpenBLAS cblas_sgemm", N, H, G);
  std::printf("%-6s %16s %16s %16s %16s\n", "round", "fwd R rows (NT)", "fwd R^T (NN)",
              "bwd R in place", "bwd R copied");
  for (int round = 1; round <= 7; ++round) {
    const double a = time_steps(T, [&](int p) {
      gemm(onednn, false, true, N, gw, H, h.data(), H, R.data() + size_t(p) * gw * H, H,
           y.data() + p * gw, G);
    });
    const double b = time_steps(T, [&](int p) {
      gemm(onednn, false, false, N, gw, H, h.data(), H, Rt.data() + size_t(p) * H * gw, gw,
           y.data() + p * gw, G);
    });
    const double c = time_steps(T, [&](int p) {
      gemm(onednn, false, false, N, w, G, dRh.data(), G, R.data() + p * w, H, dh.data() + p * w, H);
    });
    const double d = time_steps(T, [&](int p) {
      gemm(onednn, false, false, N, w, G, dRh.data(), G, Rc.data() + size_t(p) * G * w, w,
           dh.data() + p * w, H);
    });
    std::printf("%-6d %16.1f %16.1f %16.1f %16.1f\n", round, flop / a / 1e9, flop / b / 1e9,
                flop / c / 1e9, flop / d / 1e9);
  }
}
