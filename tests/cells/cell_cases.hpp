// One description per test case of a cell (in the manner of ggml's test-backend-ops), reused by
// the reference check, the finite-difference gradient check, the padding and step-API checks.
#pragma once

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "cells/reference.hpp"
#include "rbn/rbn.hpp"
#include "util/blas.hpp"
#include "util/rng.hpp"

namespace rbn::testing {

struct CellCase {
  Cell cell = Cell::lstm;
  int T = 5, N = 4, C = 3, H = 4, L = 2;
  std::vector<int> lengths;  // empty: all T
  int t_max = 5;
  bool ln_input = true;
  bool learn_init_state = false;
  bool given_state = true;  // pass random h0/c0
  bool bidirectional = false;  // y [T,N,2H], states [2L,N,H]
  bool one_hot = false;        // sparse input rows (input_rows): layer 0 gathers W x per step
  int D() const { return bidirectional ? 2 : 1; }

  std::string name() const {
    std::string s = std::string(cell_name(cell)) + "_T" + std::to_string(T) + "_N" +
                    std::to_string(N) + "_C" + std::to_string(C) + "_H" + std::to_string(H) +
                    "_L" + std::to_string(L);
    if (!lengths.empty()) s += "_ragged";
    if (!ln_input) s += "_nolnx";
    if (bidirectional) s += "_bidir";
    if (one_hot) s += "_onehot";
    for (auto& ch : s)
      if (ch == '-') ch = '_';
    return s;
  }
  StackConfig config() const {
    StackConfig c;
    c.cell = cell;
    c.input_size = C;
    c.hidden_size = H;
    c.num_layers = L;
    c.t_max = t_max;
    c.ln_input = ln_input;
    c.learn_init_state = learn_init_state;
    c.bidirectional = bidirectional;
    c.seed = 7;
    return c;
  }
  std::vector<int> lens() const { return lengths.empty() ? std::vector<int>(N, T) : lengths; }
};

// Random parameters away from their initial values (gains not all 0.1, biases not 0), so that
// every parameter matters in the checks.
template <class T>
void randomize(Stack<T>& s, uint64_t seed) {
  Rng rng(seed);
  for (const auto& ti : s.param_info()) {
    T* p = s.params().data() + ti.offset;
    const bool gain = ti.name.ends_with(".weight") && ti.name.find("_") != std::string::npos &&
                      (ti.name.find("bn_") != std::string::npos || ti.name.find("ln_") != std::string::npos);
    for (size_t i = 0; i < ti.numel; ++i)
      p[i] = static_cast<T>(gain ? 0.5 + 0.5 * rng.uniform() : 0.6 * rng.normal());
  }
  for (const auto& ti : s.buffer_info()) {
    T* p = s.buffers().data() + ti.offset;
    const bool var = ti.name.ends_with("running_var");
    for (size_t i = 0; i < ti.numel; ++i)
      p[i] = static_cast<T>(var ? 0.3 + rng.uniform() : 0.5 * rng.normal());
  }
}

// While it lives, the process's float products take bf16 inputs (emulated, RBN_TEST_BF16, where
// the CPU has no bf16); fp32 again after.
struct Bf16On {
  Bf16On() {
    setenv("RBN_TEST_BF16", "emulate", 1);
    blas::set_precision(blas::Precision::bf16, "test");
  }
  ~Bf16On() {
    blas::set_precision(blas::Precision::fp32, "test");
    unsetenv("RBN_TEST_BF16");
  }
};

// What run(out) appends to out, on one thread (result[0]) and on two (result[1]); OpenMP's thread
// count restored after.
template <class Run>
std::array<std::vector<double>, 2> on_one_and_two_threads(Run&& run) {
  std::array<std::vector<double>, 2> out;
  const int threads = omp_get_max_threads();
  for (int k = 0; k < 2; ++k) {
    omp_set_num_threads(k + 1);
    run(out[k]);
  }
  omp_set_num_threads(threads);
  return out;
}

// The largest |a - b| / (1 + |a|) over two runs' values, and where it is.
struct RunDifference {
  double worst = 0;
  size_t at = 0;
};
inline RunDifference relative_difference(const std::vector<double>& a,
                                         const std::vector<double>& b) {
  RunDifference d;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    const double e = std::abs(a[i] - b[i]) / (1 + std::abs(a[i]));
    if (e > d.worst) d = {e, i};
  }
  return d;
}

template <class T>
std::vector<T> random_vec(size_t n, uint64_t seed, double scale = 1.0) {
  Rng rng(seed);
  std::vector<T> v(n);
  for (auto& e : v) e = static_cast<T>(scale * rng.normal());
  return v;
}

// The case's input x [steps,N,C]: normal values, or with one_hot sparse rows as a language
// model's symbols: one 1 per row, and also rows of two random nonzeros (every third) and of none
// (every seventh), so that the gathered W x meets values other than 1 and empty rows. (No empty
// rows under LN of W x: a zero row has zero variance, and its 1/sqrt(eps) puts finite
// differences out of their linear range.)
template <class T>
std::vector<T> input_rows(const CellCase& cc, int steps, uint64_t seed) {
  const size_t rows = static_cast<size_t>(steps) * cc.N;
  if (!cc.one_hot) return random_vec<T>(rows * cc.C, seed);
  Rng rng(seed);
  std::vector<T> x(rows * cc.C, T(0));
  auto symbol = [&] { return std::min(cc.C - 1, static_cast<int>(rng.uniform() * cc.C)); };
  const bool ln_x = (cc.cell == Cell::lnlstm && cc.ln_input) || cc.cell == Cell::lngru;
  for (size_t r = 0; r < rows; ++r) {
    T* xr = x.data() + r * cc.C;
    if (r % 7 == 6 && !ln_x) continue;
    if (r % 3 == 2) {
      xr[symbol()] += static_cast<T>(rng.normal());
      xr[symbol()] += static_cast<T>(rng.normal());
    } else {
      xr[symbol()] = T(1);
    }
  }
  return x;
}

template <class T>
ref::Tensors to_tensors(const std::vector<TensorInfo>& infos, std::span<const T> flat) {
  ref::Tensors out;
  for (const auto& ti : infos)
    out[ti.name] = std::vector<double>(flat.begin() + ti.offset, flat.begin() + ti.offset + ti.numel);
  return out;
}

template <class T>
std::vector<double> to_double(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// Analytic against finite-difference gradients: the largest relative error, and where.
struct GradCheck {
  double max_rel = 0, max_abs = 0;
  std::string worst;
  void add(const std::string& what, double analytic, double numeric) {
    const double a = std::abs(analytic - numeric);
    const double denom = std::abs(analytic) + std::abs(numeric);
    max_abs = std::max(max_abs, a);
    // Relative to the gradient's size, floored: below 1e-3 the finite difference's own rounding
    // (about 1e-10 here) would dominate.
    {
      const double r = a / std::max(denom, 1e-3);
      if (r > max_rel) {
        max_rel = r;
        worst = what;
      }
    }
  }
};

inline double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = a.size() == b.size() ? 0.0 : INFINITY;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

}  // namespace rbn::testing
