// Streaming inference through the step API: one step per call, the state carried by the caller
// and t0 = the stream's own step count. A step allocates nothing once the first call of its shape
// has sized the workspaces, and the BN cells read population row t0 clamped at T_max - 1.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <utility>

#include "cell_cases.hpp"
#include "count_allocations.hpp"
#include "util/blas.hpp"
#include "util/line_vector.hpp"

namespace rbn::testing {
namespace {

std::vector<Cell> stream_cells() {
  std::vector<Cell> v = all_cells();
  for (Cell c : all_rnn_cells()) v.push_back(c);
  for (Cell c : all_gru_cells()) v.push_back(c);
  return v;
}

// A stream of N rows: steps [t0, t0 + steps) one per call, state carried; y [steps,N,H].
template <class T>
struct Streamer {
  Stack<T>& s;
  int N;
  std::vector<T> h, c, hT, cT;  // [L,N,H]
  int64_t t = 0;
  Streamer(Stack<T>& stack, int rows, const std::vector<T>& h0, const std::vector<T>& c0)
      : s(stack), N(rows), h(h0), c(c0), hT(h0.size()), cT(c0.size()) {}
  void step(const T* x, T* y) {
    ForwardOptions opt;
    opt.mode = Mode::infer;
    opt.need_backward = false;
    opt.t0 = static_cast<int>(t++);
    s.forward(opt, 1, N, {.x = x, .h0 = h.data(), .c0 = c.data()},
              {.y = y, .hT = hT.data(), .cT = cT.data()});
    std::swap(h, hT);
    std::swap(c, cT);
  }
};

// One step per call with t0 = the step count, past T_max, equals one inference call over the
// whole sequence (whose step t reads population row min(t, T_max - 1)): outputs and final state.
TEST(Streaming, StepsOfOneCallEqualTheWholeSequenceDouble) {
  for (Cell cell : stream_cells())
    for (int N : {1, 8}) {
      CellCase cc;
      cc.cell = cell;
      cc.N = N;
      cc.T = 9;
      cc.t_max = 4;
      cc.H = 20;
      Stack<double> s(cc.config());
      randomize(s, 201);
      const size_t NH = static_cast<size_t>(N) * cc.H, NC = static_cast<size_t>(N) * cc.C;
      auto x = random_vec<double>(cc.T * NC, 202);
      auto h0 = random_vec<double>(cc.L * NH, 203), c0 = random_vec<double>(cc.L * NH, 204);
      std::vector<double> y_whole(cc.T * NH), hT(cc.L * NH), cT(cc.L * NH);
      ForwardOptions opt;
      opt.mode = Mode::infer;
      opt.need_backward = false;
      s.forward(opt, cc.T, N, {.x = x.data(), .h0 = h0.data(), .c0 = c0.data()},
                {.y = y_whole.data(), .hT = hT.data(), .cT = cT.data()});
      Streamer<double> st(s, N, h0, c0);
      std::vector<double> y(cc.T * NH);
      for (int t = 0; t < cc.T; ++t) st.step(x.data() + t * NC, y.data() + t * NH);
      EXPECT_LE(max_abs_diff(y, y_whole), 1e-12) << cell_name(cell) << " N=" << N;
      EXPECT_LE(max_abs_diff(st.h, hT), 1e-12) << cell_name(cell) << " N=" << N;
      EXPECT_LE(max_abs_diff(st.c, cT), 1e-12) << cell_name(cell) << " N=" << N;
    }
}

// The population row is the stream's step count, clamped: a step at t0 far past T_max reads row
// T_max - 1 (same output as at t0 = T_max - 1), and the row matters (t0 = 0 gives another output).
TEST(Streaming, PopulationRowIsTheStepCountClampedAtTmaxDouble) {
  for (Cell cell : stream_cells()) {
    if (!cell_has_population_stats(cell) || cell == Cell::bnx_seq) continue;  // bnx-seq: one row
    CellCase cc;
    cc.cell = cell;
    cc.t_max = 4;
    Stack<double> s(cc.config());
    randomize(s, 211);
    const size_t NH = static_cast<size_t>(cc.N) * cc.H;
    auto x = random_vec<double>(static_cast<size_t>(cc.N) * cc.C, 212);
    auto h0 = random_vec<double>(cc.L * NH, 213), c0 = random_vec<double>(cc.L * NH, 214);
    auto step_at = [&](int t0) {
      std::vector<double> y(NH);
      ForwardOptions opt;
      opt.mode = Mode::infer;
      opt.need_backward = false;
      opt.t0 = t0;
      s.forward(opt, 1, cc.N, {.x = x.data(), .h0 = h0.data(), .c0 = c0.data()}, {.y = y.data()});
      return y;
    };
    const auto last = step_at(cc.t_max - 1);
    EXPECT_EQ(step_at(cc.t_max), last) << cell_name(cell);
    EXPECT_EQ(step_at(1000000), last) << cell_name(cell);
    EXPECT_GT(max_abs_diff(step_at(0), last), 1e-6) << cell_name(cell) << ": row 0 = row T_max - 1?";
  }
}

// After the first call of a shape, a step allocates nothing: every cell, one and two layers,
// batch 1 and 8, few inputs (W x formed in the loop) and many (the input GEMM). The
// per-thread scratch of the time loop and every workspace are kept between calls.
TEST(Streaming, StepsAllocateNothingAfterTheFirst) {
  for (Cell cell : stream_cells())
    for (int N : {1, 8})
      for (int C : {3, 40}) {
        CellCase cc;
        cc.cell = cell;
        cc.N = N;
        cc.C = C;
        cc.H = 48;  // three blocks of 16 units: two time-loop threads when OpenMP has two
        cc.t_max = 4;
        Stack<float> s(cc.config());
        randomize(s, 221);
        const size_t NH = static_cast<size_t>(N) * cc.H, NC = static_cast<size_t>(N) * C;
        const int steps = 12;
        auto x = random_vec<float>(steps * NC, 222);
        std::vector<float> y(steps * NH);
        Streamer<float> st(s, N, random_vec<float>(cc.L * NH, 223), random_vec<float>(cc.L * NH, 224));
        st.step(x.data(), y.data());  // sizes the workspaces
        const long before = operator_new_calls();
        for (int t = 1; t < steps; ++t) st.step(x.data() + t * NC, y.data() + t * NH);
        // rbn's own code allocates nothing. oneDNN's dnnl_sgemm itself makes one operator new
        // call when it runs on more than one thread (measured with a bare dnnl_sgemm: none on one
        // thread; on AVX2 only at N = 1, on AVX-512 at N = 1 and 8 too); a step makes at most one
        // such call (the same steps on OpenBLAS make none, and rbn's call into either library
        // is the same): bounded, not growing.
        const long allowed = blas::backend() == blas::Backend::onednn ? steps - 1 : 0;
        EXPECT_LE(operator_new_calls() - before, allowed)
            << cell_name(cell) << " N=" << N << " C=" << C << ": operator new calls in " << steps - 1
            << " steps";
      }
}

// The counter counts (else the test above proves nothing).
std::vector<float>* volatile g_sink;  // escaped pointers: the allocations cannot be elided
LineVector<float>* volatile g_line_sink;
TEST(Streaming, AllocationCounterCounts) {
  const long before = operator_new_calls();
  auto v = std::make_unique<std::vector<float>>(100);
  g_sink = v.get();
  EXPECT_GE(operator_new_calls() - before, 2);
  // ... and the aligned allocations of the engine's LineVectors too
  const long before_lines = operator_new_calls();
  auto w = std::make_unique<LineVector<float>>(100);
  g_line_sink = w.get();
  EXPECT_GE(operator_new_calls() - before_lines, 2);
}

}  // namespace
}  // namespace rbn::testing
