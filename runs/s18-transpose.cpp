// Session 18 microbenchmark: one thread transposing its R slice (PTB: 4 gates x 496 rows x 1000)
#include <cblas.h>
#include <dnnl.hpp>
#include <chrono>
#include <cstdio>
#include <vector>
#include "cells/kernels.hpp"
using clk = std::chrono::steady_clock;
int main() {
  const int H = 1000, w = 496, gates = 4, ld = gates * w + 16;
  std::vector<float> R(size_t(gates) * H * H), out(size_t(H) * ld), ref(size_t(H) * ld);
  for (size_t i = 0; i < R.size(); ++i) R[i] = float(i % 1013);
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream strm(eng);
  for (int v = 0; v < 3; ++v) {
    double best = 1e9;
    static std::vector<float> flush(size_t(32) << 20);
    for (int rep = 0; rep < 20; ++rep) {
      for (size_t i = 0; i < flush.size(); i += 16) flush[i] += 1.f;
      auto t0 = clk::now();
      for (int q = 0; q < gates; ++q) {
        const float* A = R.data() + size_t(q) * H * H;  // rows k0.. of gate q: [w, H], lda H
        float* o = out.data() + q * w;
        if (v == 0) rbn::kern::transpose_tiled(A, w, H, H, o, ld);
        else if (v == 1) cblas_somatcopy(CblasRowMajor, CblasTrans, w, H, 1.f, A, H, o, ld);
        else {
          using md = dnnl::memory::desc;
          md src({w, H}, dnnl::memory::data_type::f32, dnnl::memory::dims{H, 1});
          md dst({w, H}, dnnl::memory::data_type::f32, dnnl::memory::dims{1, ld});
          dnnl::memory ms(src, eng, const_cast<float*>(A)), mo(dst, eng, o);
          dnnl::reorder(ms, mo).execute(strm, ms, mo);
        }
      }
      double ms = std::chrono::duration<double, std::milli>(clk::now() - t0).count();
      if (ms < best) best = ms;
    }
    if (v == 0) ref = out;
    printf("variant %d: %.2f ms  same=%d\n", v, best, int(out == ref));
  }
}
