// The cells: fast path against the reference, finite-difference gradients, padding invariance,
// normalization properties, population statistics and the step API.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <string>

#include "cells/engine.hpp"
#include "cell_cases.hpp"

namespace rbn::testing {
namespace {

std::vector<Cell> every_cell() {
  std::vector<Cell> v = all_cells();
  for (Cell c : all_rnn_cells()) v.push_back(c);
  for (Cell c : all_gru_cells()) v.push_back(c);
  return v;
}

// The cells whose step API carries (h, c, t) across calls exactly: all but bnx-seq in training.
std::vector<Cell> lstm_and_gru_cells() {
  std::vector<Cell> v = all_cells();
  for (Cell c : all_gru_cells()) v.push_back(c);
  return v;
}

// Bidirectional stacks of every cell, ragged: two layers (the second reads 2H), one input feature
// (W x inside the time loop) with learned initial states, and units split over threads. (At least
// three rows at most steps: a BN over two rows normalizes their difference, and in float that
// difference loses its digits where the two values nearly agree — conditioning, not the engine.)
std::vector<CellCase> bidirectional_reference_cases() {
  std::vector<CellCase> out;
  for (Cell cell : every_cell()) {
    CellCase a;
    a.cell = cell;
    a.bidirectional = true;
    a.lengths = {5, 3, 5, 1};
    out.push_back(a);
    CellCase c = a;
    c.T = c.t_max = 6;
    c.N = 6;
    c.C = 1;
    c.H = 5;
    c.lengths = {6, 2, 6, 4, 6, 5};
    // learned initial states, but not under BN of R h: one learned h0 makes every row of R h0
    // the same, a zero-variance batch (the "zero variance" note below) whose 1/sqrt(eps)
    // amplifies float rounding past the float tolerance (in both directions; double agrees)
    c.learn_init_state = cell != Cell::bnlstm && cell != Cell::bnrnn && cell != Cell::bngru;
    c.given_state = false;
    out.push_back(c);
    CellCase w = a;
    w.T = w.t_max = 4;
    w.N = 8;
    w.H = 40;
    w.lengths = {4, 1, 3, 4, 2, 4, 3, 4};
    out.push_back(w);
  }
  return out;
}

// Every cell, one- and bidirectional, with one-hot input rows (input_rows: W x gathered per step,
// dW scattered), two layers, N = 8 ragged rows of T steps.
std::vector<CellCase> one_hot_cases(int T, int C, int H, const std::vector<int>& lengths) {
  std::vector<CellCase> out;
  for (Cell cell : every_cell())
    for (bool bidir : {false, true}) {
      CellCase o;
      o.cell = cell;
      o.one_hot = true;
      o.bidirectional = bidir;
      o.T = o.t_max = T;
      o.N = static_cast<int>(lengths.size());
      o.C = C;
      o.H = H;
      o.lengths = lengths;
      out.push_back(o);
    }
  return out;
}

std::vector<CellCase> reference_cases() {
  std::vector<CellCase> out;
  for (Cell cell : every_cell()) {
    CellCase a;
    a.cell = cell;
    a.lengths = {5, 3, 5, 1};
    out.push_back(a);
    CellCase b;  // T = 1, N = 1 (LN on a single row; BN normalizes a single row to beta)
    b.cell = cell;
    b.T = 1;
    b.N = 1;
    b.C = 2;
    b.H = 3;
    b.L = 1;
    b.t_max = 1;
    out.push_back(b);
    CellCase c;  // one input feature, as on pixel tasks
    c.cell = cell;
    c.T = 7;
    c.N = 3;
    c.C = 1;
    c.H = 5;
    c.L = 1;
    c.t_max = 7;
    c.lengths = {7, 2, 4};
    c.given_state = false;
    out.push_back(c);
    CellCase d;  // three layers, wider
    d.cell = cell;
    d.T = 3;
    d.N = 6;
    d.C = 4;
    d.H = 8;
    d.L = 3;
    d.t_max = 3;
    d.learn_init_state = true;
    d.given_state = false;
    out.push_back(d);
    CellCase f;  // a dense input of 20 features: W x hoisted over all steps (and dW of it)
    f.cell = cell;
    f.T = 4;
    f.N = 5;
    f.C = 20;
    f.H = 6;
    f.L = 1;
    f.t_max = 4;
    f.lengths = {4, 2, 4, 3, 4};
    out.push_back(f);
    if (cell == Cell::lstm || cell == Cell::gru) {  // dW^T [C,G] added by rows on two threads
      CellCase g = f;                                // (G*C above kern::kParallelWork)
      g.C = 64;
      g.H = 80;
      out.push_back(g);
    }
    CellCase w;  // wide enough for the time loop to split units over threads (blocks of 16)
    w.cell = cell;
    w.T = 4;
    w.N = 5;
    w.C = 3;
    w.H = 40;
    w.L = 2;
    w.t_max = 4;
    w.lengths = {4, 1, 3, 4, 2};
    out.push_back(w);
  }
  for (Cell cell : {Cell::lnlstm, Cell::lngru}) {
    CellCase e;
    e.cell = cell;
    e.ln_input = false;
    e.lengths = {2, 5, 4, 3};
    out.push_back(e);
  }
  for (const CellCase& b : bidirectional_reference_cases()) out.push_back(b);
  // units split over threads
  for (const CellCase& o : one_hot_cases(6, 20, 40, {6, 2, 5, 6, 6, 3, 6, 4})) out.push_back(o);
  return out;
}

template <class T>
struct FastRun {
  std::vector<T> y, hT, cT;
};

template <class T>
FastRun<T> run_fast(Stack<T>& s, const CellCase& cc, Mode mode, int steps, const std::vector<T>& x,
                const std::vector<int>& lens, const std::vector<T>& h0, const std::vector<T>& c0,
                int t0 = 0, bool update_running = false) {
  FastRun<T> r;
  const size_t NH = static_cast<size_t>(cc.N) * cc.H, D = cc.D();
  r.y.assign(static_cast<size_t>(steps) * D * NH, T(-7));
  r.hT.assign(cc.L * D * NH, T(-7));
  r.cT.assign(cc.L * D * NH, T(-7));
  std::vector<int32_t> l32(lens.begin(), lens.end());
  ForwardOptions opt;
  opt.mode = mode;
  opt.t0 = t0;
  opt.update_running = update_running;
  s.forward(opt, steps, cc.N,
            {.x = x.data(),
             .lengths = l32.data(),
             .h0 = h0.empty() ? nullptr : h0.data(),
             .c0 = c0.empty() ? nullptr : c0.data()},
            {.y = r.y.data(), .hT = r.hT.data(), .cT = r.cT.data()});
  return r;
}

class CellReference : public ::testing::TestWithParam<CellCase> {};

template <class T>
void check_against_reference(const CellCase& cc, Mode mode, double tol) {
  StackConfig cfg = cc.config();
  const int steps = mode == Mode::infer ? cc.T + 2 : cc.T;  // inference past T_max: clamp
  Stack<T> s(cfg);
  randomize(s, 11);
  const size_t NH = static_cast<size_t>(cc.N) * cc.H;
  auto x = input_rows<T>(cc, steps, 3);
  std::vector<int> lens = cc.lens();
  if (mode == Mode::infer)
    for (auto& l : lens) l = std::min(l + 2, steps);
  std::vector<T> h0, c0;
  if (cc.given_state) {
    h0 = random_vec<T>(cc.L * cc.D() * NH, 4, 0.5);
    c0 = random_vec<T>(cc.L * cc.D() * NH, 5, 0.5);
  }
  FastRun<T> fast = run_fast(s, cc, mode, steps, x, lens, h0, c0);
  auto params = to_tensors<T>(s.param_info(), s.params());
  auto buffers = to_tensors<T>(s.buffer_info(), s.buffers());
  ref::Result want = ref::forward(
      cfg, params, buffers,
      {mode, steps, cc.N, to_double(x), lens, to_double(h0), to_double(c0)});
  EXPECT_LE(max_abs_diff(to_double(fast.y), want.y), tol) << "y";
  EXPECT_LE(max_abs_diff(to_double(fast.hT), want.hT), tol) << "hT";
  EXPECT_LE(max_abs_diff(to_double(fast.cT), want.cT), tol) << "cT";
  if (cc.one_hot) {  // the path under test (bnx-seq's statistics need the hoisted product)
    EXPECT_EQ(s.input_projection(0), cfg.cell == Cell::bnx_seq ? "hoisted" : "sparse");
  }
}

TEST_P(CellReference, TrainFloat) { check_against_reference<float>(GetParam(), Mode::train, 2e-4); }
TEST_P(CellReference, TrainDouble) { check_against_reference<double>(GetParam(), Mode::train, 1e-10); }
TEST_P(CellReference, InferFloat) { check_against_reference<float>(GetParam(), Mode::infer, 2e-4); }
TEST_P(CellReference, InferDouble) { check_against_reference<double>(GetParam(), Mode::infer, 1e-10); }

// The float engine's backward (on the test's GEMM backend: ctest runs this file under each)
// against the double engine's, which CellGradient checks by finite differences: the same
// parameters, inputs and output gradients; every parameter gradient, dx, dh0 and dc0, each within
// tol times the larger of 1 and its tensor's largest magnitude. (1e-2: BN_t over the two or three
// rows left at a ragged batch's last steps divides float rounding by their small spread, 0.36 % of
// the largest gradient in bnlstm's H = 40 case; a wrong or missing term is off by its whole size.)
template <class T>
std::vector<T> stack_gradients(Stack<T>& s, const CellCase& cc, Mode mode,
                               const std::vector<double>& x, const std::vector<double>& h0,
                               const std::vector<double>& c0, const std::vector<double>& w) {
  const size_t NH = static_cast<size_t>(cc.N) * cc.H, LDNH = cc.L * cc.D() * NH;
  const size_t Y = static_cast<size_t>(cc.T) * cc.D() * NH;
  const std::vector<int> li = cc.lens();
  const std::vector<int32_t> lens(li.begin(), li.end());
  const std::vector<T> xt(x.begin(), x.end()), h0t(h0.begin(), h0.end()),
      c0t(c0.begin(), c0.end()), dy(w.begin(), w.begin() + Y),
      dhT(w.begin() + Y, w.begin() + Y + LDNH), dcT(w.begin() + Y + LDNH, w.end());
  std::vector<T> y(Y), hT(LDNH), cT(LDNH), dx(xt.size()), dh0(LDNH), dc0(LDNH);
  ForwardOptions opt;
  opt.mode = mode;
  opt.update_running = false;
  s.forward(opt, cc.T, cc.N,
            {.x = xt.data(),
             .lengths = lens.data(),
             .h0 = cc.given_state ? h0t.data() : nullptr,
             .c0 = cc.given_state ? c0t.data() : nullptr},
            {.y = y.data(), .hT = hT.data(), .cT = cT.data()});
  s.zero_grad();
  s.backward(dy.data(), dhT.data(), dcT.data(), dx.data(), dh0.data(), dc0.data());
  std::vector<T> g(s.grads().begin(), s.grads().end());
  for (const auto* v : {&dx, &dh0, &dc0}) g.insert(g.end(), v->begin(), v->end());
  return g;
}

void check_backward_float(const CellCase& cc, Mode mode, double tol) {
  Stack<float> sf(cc.config());
  Stack<double> sd(cc.config());
  randomize(sf, 11);
  std::copy(sf.params().begin(), sf.params().end(), sd.params().begin());
  std::copy(sf.buffers().begin(), sf.buffers().end(), sd.buffers().begin());
  const size_t NH = static_cast<size_t>(cc.N) * cc.H, LDNH = cc.L * cc.D() * NH;
  const size_t Y = static_cast<size_t>(cc.T) * cc.D() * NH;
  const auto x = to_double(input_rows<float>(cc, cc.T, 3));
  const auto h0 = to_double(random_vec<float>(LDNH, 4, 0.5));
  const auto c0 = to_double(random_vec<float>(LDNH, 5, 0.5));
  const auto w = to_double(random_vec<float>(Y + 2 * LDNH, 6));
  const std::vector<float> gf = stack_gradients(sf, cc, mode, x, h0, c0, w);
  const std::vector<double> gd = stack_gradients(sd, cc, mode, x, h0, c0, w);
  std::vector<std::pair<std::string, std::pair<size_t, size_t>>> parts;  // name, [begin, end)
  for (const auto& ti : sf.param_info()) parts.push_back({ti.name, {ti.offset, ti.offset + ti.numel}});
  size_t at = sf.grads().size();
  for (auto [name, n] : {std::pair<const char*, size_t>{"dx", x.size()}, {"dh0", LDNH}, {"dc0", LDNH}}) {
    parts.push_back({name, {at, at + n}});
    at += n;
  }
  ASSERT_EQ(gd.size(), at);
  for (const auto& [name, r] : parts) {
    double scale = 0, err = 0;
    for (size_t i = r.first; i < r.second; ++i) {
      scale = std::max(scale, std::abs(gd[i]));
      err = std::max(err, std::abs(gf[i] - gd[i]));
    }
    EXPECT_LE(err, tol * std::max(1.0, scale)) << name << ": " << err << " off (largest |gradient| " << scale << ")";
  }
}
TEST_P(CellReference, BackwardFloat) {
  for (Mode mode : {Mode::train, Mode::infer}) {
    SCOPED_TRACE(mode == Mode::train ? "train" : "infer");
    check_backward_float(GetParam(), mode, 1e-2);
  }
}

INSTANTIATE_TEST_SUITE_P(AllCells, CellReference, ::testing::ValuesIn(reference_cases()),
                         [](const auto& info) { return info.param.name(); });

// ---- finite differences in double --------------------------------------------------------

class CellGradient : public ::testing::TestWithParam<CellCase> {};

TEST_P(CellGradient, FiniteDifferences) {
  const CellCase cc = GetParam();
  for (Mode mode : {Mode::train, Mode::infer}) {
    Stack<double> s(cc.config());
    randomize(s, 21);
    const size_t NH = static_cast<size_t>(cc.N) * cc.H, LDNH = cc.L * cc.D() * NH;
    auto x = input_rows<double>(cc, cc.T, 31);
    const std::vector<int> lens_int = cc.lens();
    std::vector<int32_t> lens(lens_int.begin(), lens_int.end());
    auto h0 = random_vec<double>(LDNH, 32, 0.5);
    auto c0 = random_vec<double>(LDNH, 33, 0.5);
    auto wy = random_vec<double>(static_cast<size_t>(cc.T) * cc.D() * NH, 34);
    auto whT = random_vec<double>(LDNH, 35);
    auto wcT = random_vec<double>(LDNH, 36);
    const bool given = cc.given_state;
    std::vector<double> y(wy.size()), hT(LDNH), cT(LDNH);
    ForwardOptions opt;
    opt.mode = mode;
    opt.update_running = false;
    opt.need_backward = true;
    auto loss = [&]() {
      s.forward(opt, cc.T, cc.N,
                {.x = x.data(),
                 .lengths = lens.data(),
                 .h0 = given ? h0.data() : nullptr,
                 .c0 = given ? c0.data() : nullptr},
                {.y = y.data(), .hT = hT.data(), .cT = cT.data()});
      double l = 0;
      for (size_t i = 0; i < y.size(); ++i) l += wy[i] * y[i];
      for (size_t i = 0; i < hT.size(); ++i) l += whT[i] * hT[i] + wcT[i] * cT[i];
      return l;
    };
    loss();
    s.zero_grad();
    std::vector<double> dx(x.size()), dh0(h0.size()), dc0(c0.size());
    s.backward(wy.data(), whT.data(), wcT.data(), dx.data(), dh0.data(), dc0.data());
    const std::vector<double> g(s.grads().begin(), s.grads().end());
    const double h = 1e-5;
    GradCheck check;
    auto probe = [&](double& v, const std::string& what, double analytic) {
      const double keep = v;
      v = keep + h;
      const double lp = loss();
      v = keep - h;
      const double lm = loss();
      v = keep;
      check.add(what, analytic, (lp - lm) / (2 * h));
    };
    // Every entry of small tensors; about 256 evenly spread entries of large ones.
    for (const auto& ti : s.param_info())
      for (size_t i = 0; i < ti.numel; i += std::max<size_t>(1, ti.numel / 256))
        probe(s.params()[ti.offset + i], ti.name + "[" + std::to_string(i) + "]", g[ti.offset + i]);
    for (size_t i = 0; i < x.size(); ++i) probe(x[i], "x[" + std::to_string(i) + "]", dx[i]);
    if (given)
      for (size_t i = 0; i < h0.size(); ++i) {
        probe(h0[i], "h0[" + std::to_string(i) + "]", dh0[i]);
        probe(c0[i], "c0[" + std::to_string(i) + "]", dc0[i]);
      }
    std::printf("[ gradcheck ] %-40s %-5s max rel err %.3e (at %s), max abs err %.3e\n",
                cc.name().c_str(), mode == Mode::train ? "train" : "infer", check.max_rel,
                check.worst.c_str(), check.max_abs);
    EXPECT_LT(check.max_rel, 1e-5) << check.worst;
  }
}

std::vector<CellCase> gradient_cases() {
  std::vector<CellCase> out;
  for (Cell cell : every_cell()) {
    CellCase a;  // 2 layers, uneven lengths, given initial state
    a.cell = cell;
    a.lengths = {5, 3, 5, 1};
    out.push_back(a);
    CellCase b;  // learned initial state
    b.cell = cell;
    b.T = 4;
    b.N = 3;
    b.C = 2;
    b.H = 3;
    b.lengths = {4, 2, 3};
    b.learn_init_state = true;
    b.given_state = false;
    out.push_back(b);
    CellCase w;  // several threads in the time loop
    w.cell = cell;
    w.T = 3;
    w.N = 8;  // enough rows per step that no BN feature has a near-zero batch variance
    w.C = 3;
    w.H = 33;
    w.L = 2;
    w.t_max = 3;
    w.lengths = {3, 1, 2, 3, 3, 2, 3, 3};
    out.push_back(w);
  }
  for (Cell cell : {Cell::lnlstm, Cell::lngru}) {
    CellCase e;
    e.cell = cell;
    e.ln_input = false;
    e.lengths = {2, 5, 4, 3};
    out.push_back(e);
  }
  for (Cell cell : all_gru_cells()) {
    CellCase p;  // one input feature (W x formed inside the time loop), 2 layers, ragged
    p.cell = cell;
    p.T = 4;
    p.N = 5;
    p.C = 1;
    p.H = 4;
    p.t_max = 4;
    p.lengths = {4, 2, 3, 4, 1};
    out.push_back(p);
  }
  for (Cell cell : every_cell()) {
    CellCase b;  // bidirectional, 2 layers, ragged: dx, dh0, dc0 and every parameter (enough
    b.cell = cell;  // rows per step that no BN feature has a near-zero batch variance)
    b.bidirectional = true;
    b.T = b.t_max = 4;
    b.N = 8;
    b.C = 2;
    b.H = 3;
    b.lengths = {4, 2, 3, 4, 4, 3, 4, 1};
    out.push_back(b);
  }
  // (not under BN of R h: one learned h0 makes R h0 the same in every row, a zero-variance batch
  // whose 1/sqrt(eps) leaves the finite differences' linear range)
  for (Cell cell : {Cell::bnx, Cell::lnlstm, Cell::gru, Cell::bnx_seq}) {
    CellCase b;  // bidirectional with learned initial states and one input feature
    b.cell = cell;
    b.bidirectional = true;
    b.T = b.t_max = 4;
    b.N = 8;
    b.C = 1;
    b.H = 3;
    b.lengths = {3, 4, 2, 4, 4, 3, 4, 1};
    b.learn_init_state = true;
    b.given_state = false;
    out.push_back(b);
  }
  for (const CellCase& o : one_hot_cases(4, 16, 3, {4, 2, 3, 4, 4, 3, 4, 1})) out.push_back(o);
  return out;
}

INSTANTIATE_TEST_SUITE_P(AllCells, CellGradient, ::testing::ValuesIn(gradient_cases()),
                         [](const auto& info) {
                           return info.param.name() + (info.param.learn_init_state ? "_learned" : "");
                         });

// ---- padding invariance ------------------------------------------------------------------

// (cell, bidirectional); the bidirectional stack's reverse direction starts at each row's own end,
// so neither extra steps nor extra rows may reach it either. With L = 2 * directions below, L
// counts the state rows [L*D,N,H] and Y the output width (D*H).
class CellPadding : public ::testing::TestWithParam<std::tuple<Cell, bool>> {};

TEST_P(CellPadding, PaddedStepsAndRowsChangeNothing) {
  const auto [cell, bidirectional] = GetParam();
  const int D = bidirectional ? 2 : 1;
  const int T = 5, N = 3, C = 2, H = 4, Y = D * H, L = 2 * D, T2 = 7, N2 = 5;
  StackConfig cfg;
  cfg.cell = cell;
  cfg.input_size = C;
  cfg.hidden_size = H;
  cfg.num_layers = 2;
  cfg.bidirectional = bidirectional;
  cfg.t_max = T2;
  Stack<double> a(cfg), b(cfg);
  randomize(a, 41);
  std::copy(a.params().begin(), a.params().end(), b.params().begin());
  std::copy(a.buffers().begin(), a.buffers().end(), b.buffers().begin());
  const std::vector<int32_t> la{5, 3, 2}, lb{5, 3, 2, 0, 0};
  auto xa = random_vec<double>(static_cast<size_t>(T) * N * C, 42);
  auto xb = random_vec<double>(static_cast<size_t>(T2) * N2 * C, 43, 100.0);  // junk padding
  for (int t = 0; t < T; ++t)
    for (int n = 0; n < N; ++n)
      for (int c = 0; c < C; ++c) xb[(t * N2 + n) * C + c] = xa[(t * N + n) * C + c];
  auto h0a = random_vec<double>(L * N * H, 44), c0a = random_vec<double>(L * N * H, 45);
  auto h0b = random_vec<double>(L * N2 * H, 46), c0b = random_vec<double>(L * N2 * H, 47);
  for (int k = 0; k < L; ++k)
    for (int n = 0; n < N; ++n)
      for (int j = 0; j < H; ++j) {
        h0b[(k * N2 + n) * H + j] = h0a[(k * N + n) * H + j];
        c0b[(k * N2 + n) * H + j] = c0a[(k * N + n) * H + j];
      }
  ForwardOptions opt;  // train mode, running statistics updated
  std::vector<double> ya(T * N * Y), yb(T2 * N2 * Y), hTa(L * N * H), cTa(L * N * H),
      hTb(L * N2 * H), cTb(L * N2 * H);
  a.forward(opt, T, N, {.x = xa.data(), .lengths = la.data(), .h0 = h0a.data(), .c0 = c0a.data()},
            {.y = ya.data(), .hT = hTa.data(), .cT = cTa.data()});
  b.forward(opt, T2, N2, {.x = xb.data(), .lengths = lb.data(), .h0 = h0b.data(), .c0 = c0b.data()},
            {.y = yb.data(), .hT = hTb.data(), .cT = cTb.data()});
  for (int t = 0; t < T2; ++t)
    for (int n = 0; n < N2; ++n)
      for (int j = 0; j < Y; ++j) {
        const double vb = yb[(t * N2 + n) * Y + j];
        if (t < T && n < N)
          EXPECT_NEAR(vb, ya[(t * N + n) * Y + j], 1e-12);
        else
          EXPECT_EQ(vb, 0.0) << "padded output must be 0";
      }
  for (int k = 0; k < L; ++k)
    for (int n = 0; n < N2; ++n)
      for (int j = 0; j < H; ++j) {
        const size_t ib = (k * N2 + n) * H + j;
        if (n < N) {
          EXPECT_NEAR(hTb[ib], hTa[(k * N + n) * H + j], 1e-12);
          EXPECT_NEAR(cTb[ib], cTa[(k * N + n) * H + j], 1e-12);
        } else {  // length 0: the final state is the initial state
          EXPECT_EQ(hTb[ib], h0b[ib]);
          EXPECT_EQ(cTb[ib], c0b[ib]);
        }
      }
  for (size_t i = 0; i < a.buffers().size(); ++i)
    EXPECT_NEAR(a.buffers()[i], b.buffers()[i], 1e-12) << "running statistics " << i;
  // gradients: loss weights with junk at padded positions
  auto wya = random_vec<double>(ya.size(), 48);
  auto wyb = random_vec<double>(yb.size(), 49, 100.0);
  for (int t = 0; t < T; ++t)
    for (int n = 0; n < N; ++n)
      for (int j = 0; j < Y; ++j) wyb[(t * N2 + n) * Y + j] = wya[(t * N + n) * Y + j];
  auto wha = random_vec<double>(hTa.size(), 50), whb = random_vec<double>(hTb.size(), 51);
  for (int k = 0; k < L; ++k)
    for (int n = 0; n < N; ++n)
      for (int j = 0; j < H; ++j) whb[(k * N2 + n) * H + j] = wha[(k * N + n) * H + j];
  std::vector<double> dxa(xa.size()), dxb(xb.size()), dh0a(h0a.size()), dh0b(h0b.size());
  a.zero_grad();
  b.zero_grad();
  a.backward(wya.data(), wha.data(), nullptr, dxa.data(), dh0a.data(), nullptr);
  b.backward(wyb.data(), whb.data(), nullptr, dxb.data(), dh0b.data(), nullptr);
  for (size_t i = 0; i < a.grads().size(); ++i)
    EXPECT_NEAR(a.grads()[i], b.grads()[i], 1e-10 * (1 + std::abs(a.grads()[i]))) << i;
  for (int t = 0; t < T2; ++t)
    for (int n = 0; n < N2; ++n)
      for (int c = 0; c < C; ++c) {
        const double vb = dxb[(t * N2 + n) * C + c];
        if (t < T && n < N)
          EXPECT_NEAR(vb, dxa[(t * N + n) * C + c], 1e-10);
        else
          EXPECT_EQ(vb, 0.0);
      }
  for (int k = 0; k < L; ++k)
    for (int n = 0; n < N; ++n)
      for (int j = 0; j < H; ++j)
        EXPECT_NEAR(dh0b[(k * N2 + n) * H + j], dh0a[(k * N + n) * H + j], 1e-10);
}

INSTANTIATE_TEST_SUITE_P(AllCells, CellPadding,
                         ::testing::Combine(::testing::ValuesIn(every_cell()), ::testing::Bool()),
                         [](const auto& info) {
                           std::string s = cell_name(std::get<0>(info.param));
                           std::replace(s.begin(), s.end(), '-', '_');
                           return s + (std::get<1>(info.param) ? "_bidir" : "");
                         });

// ---- properties of the normalizations ------------------------------------------------------

TEST(CellProperties, BatchNormOutputMomentsPerStep) {
  for (Cell cell : {Cell::bnlstm, Cell::bnx, Cell::bnx_seq, Cell::bngru}) {
    CellCase cc;
    cc.cell = cell;
    cc.T = 6;
    cc.N = 7;
    cc.L = 1;
    cc.t_max = 6;
    cc.lengths = {6, 6, 4, 2, 5, 6, 3};
    Stack<double> s(cc.config());
    randomize(s, 61);
    auto x = random_vec<double>(static_cast<size_t>(cc.T) * cc.N * cc.C, 62);
    FastRun<double> r = run_fast(s, cc, Mode::train, cc.T, x, cc.lens(), {}, {});
    auto want = ref::forward(cc.config(), to_tensors<double>(s.param_info(), s.params()),
                             to_tensors<double>(s.buffer_info(), s.buffers()),
                             {Mode::train, cc.T, cc.N, to_double(x), cc.lens(), {}, {}});
    const double eps = 1e-5;
    // bnlstm normalizes W x, R h and c; bngru W x and R h; bnx and bnx-seq only W x: the others
    // must be empty, and every normalized one is checked (a cell whose cache came back empty
    // would fail here).
    int checked = 0;
    for (const char* which : {"x", "h", "c"}) {
      auto xh = s.cached_normalized(0, which);
      const bool normalized = cell == Cell::bnlstm || std::string(which) == "x" ||
                              (cell == Cell::bngru && std::string(which) == "h");
      ASSERT_EQ(xh.empty(), !normalized) << cell_name(cell) << " " << which;
      if (!normalized) continue;
      ++checked;
      const int F = static_cast<int>(xh.size() / (cc.T * cc.N));
      ASSERT_GT(F, 0) << cell_name(cell) << " " << which;
      const auto& bvar = want.batch_var.at(std::string("rnn.0.bn_") + which);
      const bool seq = cell == Cell::bnx_seq;
      // groups: each step (or all steps for bnx-seq)
      for (int t0 = 0; t0 < cc.T; t0 += seq ? cc.T : 1) {
        const int t1 = seq ? cc.T : t0 + 1;
        for (int j = 0; j < F; ++j) {
          double s1 = 0, s2 = 0;
          int cnt = 0;
          for (int t = t0; t < t1; ++t)
            for (int n = 0; n < cc.N; ++n)
              if (t < cc.lens()[n]) {
                const double v = xh[(t * cc.N + n) * F + j];
                s1 += v;
                s2 += v * v;
                ++cnt;
              }
          const double mean = s1 / cnt, var = s2 / cnt - mean * mean;
          const double sigma2 = bvar[(seq ? 0 : t0) * F + j];
          EXPECT_NEAR(mean, 0.0, 1e-9) << cell_name(cell) << " " << which << " t" << t0;
          EXPECT_NEAR(var, sigma2 / (sigma2 + eps), 1e-9) << cell_name(cell) << " " << which;
        }
      }
    }
    EXPECT_EQ(checked, cell == Cell::bnlstm ? 3 : cell == Cell::bngru ? 2 : 1) << cell_name(cell);
  }
}

TEST(CellProperties, LayerNormSameInTrainingAndInference) {
  for (Cell cell : {Cell::lnlstm, Cell::lngru}) {
    CellCase cc;
    cc.cell = cell;
    cc.lengths = {5, 2, 4, 3};
    Stack<double> s(cc.config());
    randomize(s, 71);
    auto x = random_vec<double>(static_cast<size_t>(cc.T) * cc.N * cc.C, 72);
    auto h0 = random_vec<double>(cc.L * cc.N * cc.H, 73);
    auto c0 = random_vec<double>(cc.L * cc.N * cc.H, 74);
    FastRun<double> tr = run_fast(s, cc, Mode::train, cc.T, x, cc.lens(), h0, c0);
    FastRun<double> in = run_fast(s, cc, Mode::infer, cc.T, x, cc.lens(), h0, c0);
    EXPECT_EQ(tr.y, in.y) << cell_name(cell);
    EXPECT_EQ(tr.hT, in.hT) << cell_name(cell);
  }
}

// lngru normalizes the r, z blocks (2H) and the n block (H) of each term apart (Ba et al., eqs.
// 26-28): each part of each valid row has mean 0 and variance var / (var + eps) by itself.
TEST(CellProperties, LayerNormGruPartsHaveTheirOwnStatistics) {
  CellCase cc;
  cc.cell = Cell::lngru;
  cc.L = 1;
  cc.H = 5;
  cc.lengths = {5, 2, 4, 3};
  Stack<double> s(cc.config());
  randomize(s, 75);
  auto x = random_vec<double>(static_cast<size_t>(cc.T) * cc.N * cc.C, 76);
  auto h0 = random_vec<double>(cc.L * cc.N * cc.H, 77);  // R h of a zero state has no variance
  run_fast(s, cc, Mode::train, cc.T, x, cc.lens(), h0, {});
  const int H = cc.H, G = 3 * H;
  for (const char* which : {"x", "h"}) {
    auto xh = s.cached_normalized(0, which);
    ASSERT_EQ(xh.size(), static_cast<size_t>(cc.T) * cc.N * G) << which;
    for (int t = 0; t < cc.T; ++t)
      for (int n = 0; n < cc.N; ++n) {
        if (t >= cc.lens()[n]) continue;
        for (auto [j0, j1] : {std::pair{0, 2 * H}, std::pair{2 * H, G}}) {
          double s1 = 0, s2 = 0;
          for (int j = j0; j < j1; ++j) {
            const double v = xh[(static_cast<size_t>(t) * cc.N + n) * G + j];
            s1 += v;
            s2 += v * v;
          }
          const double mean = s1 / (j1 - j0), var = s2 / (j1 - j0) - mean * mean;
          EXPECT_NEAR(mean, 0.0, 1e-12) << which << " t" << t << " n" << n << " [" << j0 << "," << j1 << ")";
          EXPECT_GT(var, 0.9) << which << " t" << t << " n" << n;  // 1 - eps / (var + eps)
          EXPECT_LE(var, 1.0 + 1e-12) << which;
        }
      }
  }
}

// ---- population statistics ----------------------------------------------------------------

// Bidirectional: the reverse direction's tables (rnn.k.reverse.bn_*) against the reference's
// statistics of its own steps s = len - 1 - t, rows of steps no row reaches untouched.
TEST(PopulationStats, RunningAverageUpdate) {
  for (Cell cell : {Cell::bnlstm, Cell::bnx, Cell::bnx_seq, Cell::bngru})
  for (bool bidirectional : {false, true}) {
    CellCase cc;
    cc.cell = cell;
    cc.bidirectional = bidirectional;
    cc.T = 4;
    cc.t_max = 6;  // rows 4, 5 are not reached and keep their value
    cc.lengths = {4, 2, 3, 1};
    StackConfig cfg = cc.config();
    cfg.momentum = 0.25;
    Stack<double> s(cfg);
    randomize(s, 81);
    const auto before = to_tensors<double>(s.buffer_info(), s.buffers());
    auto x = random_vec<double>(static_cast<size_t>(cc.T) * cc.N * cc.C, 82);
    auto want = ref::forward(cfg, to_tensors<double>(s.param_info(), s.params()), before,
                             {Mode::train, cc.T, cc.N, to_double(x), cc.lens(), {}, {}});
    run_fast(s, cc, Mode::train, cc.T, x, cc.lens(), {}, {}, 0, true);
    const auto after = to_tensors<double>(s.buffer_info(), s.buffers());
    for (const auto& [name, vals] : after) {
      const bool var = name.ends_with("running_var");
      const std::string prefix = name.substr(0, name.rfind('.'));
      const auto& batch = var ? want.batch_var.at(prefix) : want.batch_mean.at(prefix);
      const size_t F = cell == Cell::bnx_seq ? vals.size() : vals.size() / cfg.t_max;
      for (size_t i = 0; i < vals.size(); ++i) {
        const size_t row = i / F;
        const double expect =
            i < batch.size() ? 0.75 * before.at(name)[i] + 0.25 * batch[i] : before.at(name)[i];
        EXPECT_NEAR(vals[i], expect, 1e-12) << name << " row " << row;
      }
    }
  }
}

TEST(PopulationStats, PassAveragesWeightedByValidRows) {
  for (Cell cell : {Cell::bnlstm, Cell::bnx, Cell::bnx_seq, Cell::bngru})
  for (bool bidirectional : {false, true}) {
    CellCase cc;
    cc.cell = cell;
    cc.bidirectional = bidirectional;
    cc.t_max = 6;
    cc.L = 2;
    StackConfig cfg = cc.config();
    Stack<double> s(cfg);
    randomize(s, 91);
    const auto before = to_tensors<double>(s.buffer_info(), s.buffers());
    const auto params = to_tensors<double>(s.param_info(), s.params());
    struct Batch {
      int T, N;
      std::vector<int> lens;
    };
    const std::vector<Batch> batches{{4, 3, {4, 2, 3}}, {5, 2, {5, 1}}, {2, 4, {2, 2, 1, 2}}};
    std::map<std::string, std::vector<double>> sum, cnt;
    s.popstats_begin();
    int seed = 100;
    for (const auto& b : batches) {
      auto x = random_vec<double>(static_cast<size_t>(b.T) * b.N * cc.C, ++seed);
      std::vector<int32_t> l32(b.lens.begin(), b.lens.end());
      s.popstats_feed(b.T, b.N, x.data(), l32.data());
      auto r = ref::forward(cfg, params, before, {Mode::train, b.T, b.N, to_double(x), b.lens, {}, {}});
      for (const auto& bi : s.buffer_info()) {
        const bool var = bi.name.ends_with("running_var");
        const std::string prefix = bi.name.substr(0, bi.name.rfind('.'));
        const auto& st = var ? r.batch_var.at(prefix) : r.batch_mean.at(prefix);
        auto& S = sum[bi.name];
        auto& Cn = cnt[bi.name];
        S.resize(bi.numel, 0.0);
        Cn.resize(bi.numel, 0.0);
        const size_t F = bi.shape.back();
        for (size_t i = 0; i < st.size() && i < bi.numel; ++i) {
          const size_t row = i / F;
          double c = 0;
          if (cell == Cell::bnx_seq) {
            for (int v : b.lens) c += v;
          } else {
            for (int v : b.lens) c += static_cast<int>(row) < v;
          }
          S[i] += c * st[i];
          Cn[i] += c;
        }
      }
    }
    s.popstats_finish();
    const auto after = to_tensors<double>(s.buffer_info(), s.buffers());
    for (const auto& [name, vals] : after)
      for (size_t i = 0; i < vals.size(); ++i) {
        const double expect = cnt[name][i] > 0 ? sum[name][i] / cnt[name][i] : before.at(name)[i];
        EXPECT_NEAR(vals[i], expect, 1e-12) << name << " " << i;
      }
  }
}

TEST(PopulationStats, StepsPastTmaxUseTheLastRow) {
  for (Cell cell : {Cell::bnlstm, Cell::bnx, Cell::bngru})
  for (bool bidirectional : {false, true}) {  // the reverse direction's steps s >= T_max too
    const int tmax = 3, steps = 6;
    CellCase cc;
    cc.cell = cell;
    cc.bidirectional = bidirectional;
    cc.lengths = {6, 4, 6, 5};
    cc.t_max = tmax;
    Stack<double> a(cc.config());
    randomize(a, 111);
    CellCase cl = cc;
    cl.t_max = steps;
    Stack<double> b(cl.config());
    std::copy(a.params().begin(), a.params().end(), b.params().begin());
    for (const auto& bi : a.buffer_info()) {
      const double* src = a.find(bi.name);
      double* dst = b.find(bi.name);
      const size_t F = bi.shape.back();
      for (int r = 0; r < steps; ++r)
        std::copy_n(src + std::min(r, tmax - 1) * F, F, dst + r * F);
    }
    auto x = random_vec<double>(static_cast<size_t>(steps) * cc.N * cc.C, 112);
    const std::vector<int> lens = cc.lens();
    FastRun<double> ra = run_fast(a, cc, Mode::infer, steps, x, lens, {}, {});
    FastRun<double> rb = run_fast(b, cl, Mode::infer, steps, x, lens, {}, {});
    EXPECT_EQ(ra.y, rb.y);
  }
}

// ---- the step API -------------------------------------------------------------------------

TEST(StepApi, ChunksCarryingStateEqualOneCall) {
  for (Cell cell : lstm_and_gru_cells())
    for (Mode mode : {Mode::train, Mode::infer}) {
      if (cell == Cell::bnx_seq && mode == Mode::train) continue;  // statistics span the call
      CellCase cc;
      cc.cell = cell;
      cc.T = 7;
      cc.t_max = 7;
      cc.lengths = {7, 3, 5, 6};
      Stack<double> s(cc.config());
      randomize(s, 121);
      auto x = random_vec<double>(static_cast<size_t>(cc.T) * cc.N * cc.C, 122);
      auto h0 = random_vec<double>(cc.L * cc.N * cc.H, 123);
      auto c0 = random_vec<double>(cc.L * cc.N * cc.H, 124);
      FastRun<double> whole = run_fast(s, cc, mode, cc.T, x, cc.lens(), h0, c0);
      std::vector<double> h = h0, c = c0, y;
      const size_t step_in = static_cast<size_t>(cc.N) * cc.C;
      for (auto [start, len] : {std::pair{0, 2}, std::pair{2, 1}, std::pair{3, 4}}) {
        std::vector<double> xs(x.begin() + start * step_in, x.begin() + (start + len) * step_in);
        std::vector<int> l;
        for (int v : cc.lens()) l.push_back(std::clamp(v - start, 0, len));
        FastRun<double> part = run_fast(s, cc, mode, len, xs, l, h, c, start);
        y.insert(y.end(), part.y.begin(), part.y.end());
        h = part.hT;
        c = part.cT;
      }
      EXPECT_LE(max_abs_diff(y, whole.y), 1e-12) << cell_name(cell);
      EXPECT_LE(max_abs_diff(h, whole.hT), 1e-12) << cell_name(cell);
      EXPECT_LE(max_abs_diff(c, whole.cT), 1e-12) << cell_name(cell);
    }
}

TEST(StepApi, InferenceChunkingMatchesKeptActivations) {
  // Long inference runs in chunks of time (O(N*H) memory): same result as with activations kept.
  for (Cell cell : lstm_and_gru_cells()) {
    CellCase cc;
    cc.cell = cell;
    cc.T = 100;
    cc.t_max = 10;
    cc.lengths = {100, 37, 64, 1};
    Stack<double> s(cc.config());
    randomize(s, 131);
    auto x = random_vec<double>(static_cast<size_t>(cc.T) * cc.N * cc.C, 132);
    std::vector<int32_t> l32(cc.lengths.begin(), cc.lengths.end());
    std::vector<double> y1(cc.T * cc.N * cc.H), y2(y1.size());
    ForwardOptions opt;
    opt.mode = Mode::infer;
    opt.need_backward = false;
    s.forward(opt, cc.T, cc.N, {.x = x.data(), .lengths = l32.data()}, {.y = y1.data()});
    opt.need_backward = true;
    s.forward(opt, cc.T, cc.N, {.x = x.data(), .lengths = l32.data()}, {.y = y2.data()});
    EXPECT_LE(max_abs_diff(y1, y2), 1e-12) << cell_name(cell);
  }
}

TEST(StepApi, ChunkedInferenceReusesPackedWeightsOnlyWithinACall) {
  // A chunked forward packs R once and reuses it in the call's later chunks (one layer: with more,
  // each layer's pack replaces the other's). The next call packs again: after new weights, and
  // after a training step whose backward wrote its own layout over the buffer. Compared with a
  // fresh stack holding the same weights (one unchunked call). Float on the process's backend,
  // two threads; fp32 and bf16 products (bf16 keeps R converted in each thread's operand).
  const int threads = omp_get_max_threads();
  omp_set_num_threads(2);
  auto to_double = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
  for (const bool bf16 : {false, true}) {
    std::optional<Bf16On> on;
    if (bf16) on.emplace();
    for (Cell cell : lstm_and_gru_cells()) {
      CellCase cc;
      cc.cell = cell;
      cc.T = 100;  // chunks of 32, 32, 32, 4 steps: each packs (at least kPackMinSteps)
      cc.t_max = 10;
      cc.L = 1;
      cc.H = 40;  // three blocks of 16 units: both threads own some
      cc.lengths = {100, 37, 64, 1};
      const std::string what = std::string(cell_name(cell)) + (bf16 ? " bf16" : " fp32");
      std::vector<int32_t> l32(cc.lengths.begin(), cc.lengths.end());
      const auto x = random_vec<float>(static_cast<size_t>(cc.T) * cc.N * cc.C, 161);
      const size_t TNH = static_cast<size_t>(cc.T) * cc.N * cc.H;
      auto infer = [&](Stack<float>& s, bool chunked) {
        std::vector<float> y(TNH);
        ForwardOptions opt;
        opt.mode = Mode::infer;
        opt.need_backward = !chunked;
        s.forward(opt, cc.T, cc.N, {.x = x.data(), .lengths = l32.data()}, {.y = y.data()});
        return to_double(y);
      };
      auto fresh = [&](uint64_t seed) {
        Stack<float> s(cc.config());
        randomize(s, seed);
        return infer(s, false);
      };
      Stack<float> s(cc.config());
      randomize(s, 162);
      EXPECT_LE(max_abs_diff(infer(s, true), fresh(162)), 1e-5) << what;
      randomize(s, 163);  // new weights, same buffers: the next call packs them
      const auto want = fresh(163);
      EXPECT_LE(max_abs_diff(infer(s, true), want), 1e-5) << what;
      ForwardOptions train;  // a training step: its backward packs R in its own layout
      train.update_running = false;  // (the population statistics stay as the fresh stack's)
      std::vector<float> y(TNH), dy(TNH, 0.01f);
      s.forward(train, cc.T, cc.N, {.x = x.data(), .lengths = l32.data()}, {.y = y.data()});
      s.backward(dy.data(), nullptr, nullptr, nullptr, nullptr, nullptr);
      EXPECT_LE(max_abs_diff(infer(s, true), want), 1e-5) << what;
    }
  }
  omp_set_num_threads(threads);
}

TEST(StepApi, TrainingWithoutBackwardRunsInChunks) {
  // Training mode without a backward to come (torch.no_grad, the statistics pass) runs in chunks
  // too: same outputs, states and running averages as with activations kept, a fraction of the
  // memory, and no backward afterwards. bnx-seq keeps the whole call (statistics over all steps).
  std::vector<Cell> cells = all_cells();
  for (Cell c : all_rnn_cells()) cells.push_back(c);
  for (Cell cell : cells) {
    CellCase cc;
    cc.cell = cell;
    cc.T = cc.t_max = 100;
    cc.lengths = {100, 37, 64, 1};
    const size_t NH = static_cast<size_t>(cc.N) * cc.H, LNH = cc.L * NH;
    auto x = random_vec<double>(static_cast<size_t>(cc.T) * cc.N * cc.C, 151);
    auto h0 = random_vec<double>(LNH, 152), c0 = random_vec<double>(LNH, 153);
    std::vector<int32_t> l32(cc.lengths.begin(), cc.lengths.end());
    struct Run {
      std::vector<double> y, hT, cT, buffers;
      size_t cache = 0;
    } run[2];
    for (int keep = 0; keep < 2; ++keep) {
      Stack<double> s(cc.config());
      randomize(s, 154);
      Run& r = run[keep];
      r.y.resize(cc.T * NH), r.hT.resize(LNH), r.cT.resize(LNH);
      ForwardOptions opt;  // train mode, running averages updated
      opt.need_backward = keep == 1;
      s.forward(opt, cc.T, cc.N, {.x = x.data(), .lengths = l32.data(), .h0 = h0.data(), .c0 = c0.data()},
                {.y = r.y.data(), .hT = r.hT.data(), .cT = r.cT.data()});
      r.buffers.assign(s.buffers().begin(), s.buffers().end());
      r.cache = s.cache_bytes();
      if (!keep) {
        EXPECT_THROW(s.backward(r.y.data(), nullptr, nullptr, nullptr, nullptr, nullptr), UsageError)
            << cell_name(cell);
      }
    }
    EXPECT_LE(max_abs_diff(run[0].y, run[1].y), 1e-12) << cell_name(cell);
    EXPECT_LE(max_abs_diff(run[0].hT, run[1].hT), 1e-12) << cell_name(cell);
    EXPECT_LE(max_abs_diff(run[0].cT, run[1].cT), 1e-12) << cell_name(cell);
    EXPECT_LE(max_abs_diff(run[0].buffers, run[1].buffers), 1e-12) << cell_name(cell);
    if (cell == Cell::bnx_seq)
      EXPECT_GT(run[0].cache * 2, run[1].cache) << "bnx-seq keeps the whole call in training mode";
    else
      EXPECT_LT(run[0].cache * 2, run[1].cache) << cell_name(cell);
  }
}

// The gradient probe (figure 1 of the paper) against the step API: splitting the sequence at t,
// the second chunk's dL/dh0 plus the direct gradient at t is dL/dh_t.
TEST(GradProbe, MatchesTheStepApi) {
  for (Cell cell : {Cell::lstm, Cell::bnrnn, Cell::bnlstm, Cell::gru, Cell::bngru, Cell::lngru}) {
    CellCase cc;
    cc.cell = cell;
    cc.T = 6;
    cc.N = 5;
    cc.L = 1;
    cc.H = 20;
    cc.t_max = 6;
    Stack<double> s(cc.config());
    randomize(s, 141);
    const size_t NH = static_cast<size_t>(cc.N) * cc.H;
    auto x = random_vec<double>(static_cast<size_t>(cc.T) * cc.N * cc.C, 142);
    auto wy = random_vec<double>(static_cast<size_t>(cc.T) * NH, 143);
    std::vector<double> y(cc.T * NH), norms;
    ForwardOptions opt;
    opt.update_running = false;
    s.forward(opt, cc.T, cc.N, {.x = x.data()}, {.y = y.data()});
    s.set_grad_probe(0, &norms);
    s.backward(wy.data(), nullptr, nullptr, nullptr, nullptr, nullptr);
    s.set_grad_probe(-1, nullptr);
    ASSERT_EQ(norms.size(), static_cast<size_t>(cc.T));
    const int split = 3;  // chunk 1: steps [0, 3], chunk 2: steps [4, 6)
    std::vector<double> hT(NH), cT(NH), y1((split + 1) * NH), y2((cc.T - split - 1) * NH);
    s.forward(opt, split + 1, cc.N, {.x = x.data()},
              {.y = y1.data(), .hT = hT.data(), .cT = cT.data()});
    ForwardOptions o2 = opt;
    o2.t0 = split + 1;
    s.forward(o2, cc.T - split - 1, cc.N,
              {.x = x.data() + (split + 1) * cc.N * cc.C, .h0 = hT.data(), .c0 = cT.data()},
              {.y = y2.data()});
    std::vector<double> dh0(NH), dc0(NH);
    s.backward(wy.data() + (split + 1) * NH, nullptr, nullptr, nullptr, dh0.data(), dc0.data());
    double mean = 0;
    for (int n = 0; n < cc.N; ++n) {
      double q = 0;
      for (int j = 0; j < cc.H; ++j) {
        const double g = dh0[n * cc.H + j] + wy[split * NH + n * cc.H + j];
        q += g * g;
      }
      mean += std::sqrt(q) / cc.N;
    }
    EXPECT_NEAR(norms[split], mean, 1e-10 * (1 + mean)) << cell_name(cell);
  }
}

// ---- bidirectional stacks ----------------------------------------------------------------

TEST(Bidirectional, TensorNamesOrderAndShapes) {
  CellCase cc;
  cc.cell = Cell::bnlstm;
  cc.bidirectional = true;
  cc.learn_init_state = true;
  Stack<float> s(cc.config());
  std::vector<std::string> names;
  for (const auto& ti : s.param_info()) names.push_back(ti.name);
  auto at = [&](const std::string& n) {
    return std::find(names.begin(), names.end(), n) - names.begin();
  };
  // layer 0 forward, layer 0 reverse, then layer 1 (PyTorch's nn.LSTM order, rbn's names)
  EXPECT_LT(at("rnn.0.c0"), at("rnn.0.reverse.weight_ih"));
  EXPECT_LT(at("rnn.0.reverse.c0"), at("rnn.1.weight_ih"));
  EXPECT_LT(at("rnn.1.c0"), at("rnn.1.reverse.weight_ih"));
  EXPECT_LT(at("rnn.1.reverse.c0"), static_cast<std::ptrdiff_t>(names.size()));
  EXPECT_EQ(s.find_info("rnn.1.weight_ih")->shape, (std::vector<int64_t>{4 * cc.H, 2 * cc.H}));
  EXPECT_EQ(s.find_info("rnn.1.reverse.weight_ih")->shape, (std::vector<int64_t>{4 * cc.H, 2 * cc.H}));
  EXPECT_EQ(s.find_info("rnn.0.reverse.weight_ih")->shape, (std::vector<int64_t>{4 * cc.H, cc.C}));
  EXPECT_EQ(s.find_info("rnn.0.reverse.bn_c.running_var")->shape,
            (std::vector<int64_t>{cc.t_max, cc.H}));
  // the two directions start from different draws
  EXPECT_NE(s.find("rnn.0.weight_hh")[0], s.find("rnn.0.reverse.weight_hh")[0]);
}

TEST(Bidirectional, StepApiIsRefused) {
  CellCase cc;
  cc.bidirectional = true;
  Stack<double> s(cc.config());
  auto x = random_vec<double>(static_cast<size_t>(cc.T) * cc.N * cc.C, 161);
  ForwardOptions opt;
  opt.t0 = 3;
  try {
    s.forward(opt, cc.T, cc.N, {.x = x.data()}, {});
    FAIL() << "expected an error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("step API"), std::string::npos) << e.what();
  }
}

// With two threads the directions run side by side (the reverse on a twin engine), with one in
// turn: the same numbers (the reference tests run with two threads).
TEST(Bidirectional, SideBySideEqualsInTurn) {
  for (Cell cell : {Cell::bnlstm, Cell::bnx_seq, Cell::lngru, Cell::gru}) {
    CellCase cc;
    cc.cell = cell;
    cc.bidirectional = true;
    cc.T = cc.t_max = 6;
    cc.N = 5;
    cc.H = 20;
    cc.learn_init_state = true;
    cc.lengths = {6, 2, 5, 6, 3};
    const size_t NH = static_cast<size_t>(cc.N) * cc.H;
    auto x = random_vec<double>(static_cast<size_t>(cc.T) * cc.N * cc.C, 171);
    auto dy = random_vec<double>(static_cast<size_t>(cc.T) * 2 * NH, 172);
    auto dhT = random_vec<double>(2 * cc.L * NH, 173);
    std::vector<int32_t> l32(cc.lengths.begin(), cc.lengths.end());
    const auto out = on_one_and_two_threads([&](std::vector<double>& o) {
      Stack<double> s(cc.config());
      randomize(s, 174);
      std::vector<double> y(dy.size()), hT(dhT.size()), dx(x.size()), dh0(dhT.size());
      ForwardOptions opt;  // train mode, running averages updated, h0 noise drawn per state
      opt.h0_noise = 0.1;
      opt.noise_seed = 3;
      for (int rep = 0; rep < 2; ++rep) {  // twice: the twin's tensors and statistics follow
        s.forward(opt, cc.T, cc.N, {.x = x.data(), .lengths = l32.data()},
                  {.y = y.data(), .hT = hT.data()});
        s.backward(dy.data(), dhT.data(), nullptr, dx.data(), dh0.data(), nullptr);
        for (size_t i = 0; i < s.params().size(); ++i) s.params()[i] -= 0.01 * s.grads()[i];
      }
      for (const auto* v : {&y, &hT, &dx, &dh0}) o.insert(o.end(), v->begin(), v->end());
      o.insert(o.end(), s.grads().begin(), s.grads().end());
      o.insert(o.end(), s.buffers().begin(), s.buffers().end());
    });
    ASSERT_EQ(out[0].size(), out[1].size());
    EXPECT_LT(relative_difference(out[0], out[1]).worst, 1e-10) << cell_name(cell);
  }
}

// An LSTM or GRU whose thread owns at most Engine::kFusedRowMaxUnits units runs each row's step
// in one pass, wider blocks in separate passes: H = 150 on one thread (150 units) against two
// (80 and 70), through a training step with padded rows, in double (the plain loops) and float
// (the vectors).
template <class T>
void expect_one_pass_rows_equal_separate_passes(double tolerance) {
  constexpr int most = cells::Engine<float>::kFusedRowMaxUnits;
  static_assert(80 <= most && most < 150, "the two threads' blocks on either side of the limit");
  for (Cell cell : {Cell::lstm, Cell::bnlstm, Cell::bnx, Cell::bnx_seq, Cell::gru, Cell::bngru}) {
    CellCase cc;
    cc.cell = cell;
    cc.T = cc.t_max = 5;
    cc.N = 12;  // BN over 8 or more valid rows a step: float's rounding not amplified by few rows
    cc.H = 150;
    cc.L = 1;
    cc.lengths = {5, 2, 5, 4, 5, 3, 5, 5, 5, 5, 5, 5};
    const size_t NH = static_cast<size_t>(cc.N) * cc.H;
    auto x = random_vec<T>(static_cast<size_t>(cc.T) * cc.N * cc.C, 181);
    auto dy = random_vec<T>(static_cast<size_t>(cc.T) * NH, 182);
    auto dhT = random_vec<T>(NH, 183);
    std::vector<int32_t> l32(cc.lengths.begin(), cc.lengths.end());
    const auto out = on_one_and_two_threads([&](std::vector<double>& o) {
      Stack<T> s(cc.config());
      randomize(s, 184);
      std::vector<T> y(dy.size()), hT(dhT.size()), dx(x.size()), dh0(dhT.size());
      s.forward({}, cc.T, cc.N, {.x = x.data(), .lengths = l32.data()},
                {.y = y.data(), .hT = hT.data()});
      s.backward(dy.data(), dhT.data(), nullptr, dx.data(), dh0.data(), nullptr);
      for (const auto* v : {&y, &hT, &dx, &dh0}) o.insert(o.end(), v->begin(), v->end());
      o.insert(o.end(), s.grads().begin(), s.grads().end());
    });
    ASSERT_EQ(out[0].size(), out[1].size());
    const RunDifference d = relative_difference(out[0], out[1]);
    EXPECT_LT(d.worst, tolerance) << cell_name(cell) << " at " << d.at << " of " << out[0].size()
                                  << ": " << out[0][d.at] << " against " << out[1][d.at];
  }
}
// (double: the two thread splits also sum the products in another order; bnlstm's BN backward
// made that 1.7e-12 on an Intel Xeon, as in the one-thread-against-two test above: 1e-10)
TEST(Cells, OnePassRowsEqualSeparatePassesDouble) {
  expect_one_pass_rows_equal_separate_passes<double>(1e-10);
}
// (float: the two round differently, and BN's backward over a dozen rows amplifies that to 1e-3
// in bnlstm's dh0; with 3 to 6 rows a step the two float paths were 2e-3 and 1e-2 off the double
// run's values; a wrong lane or offset shows as a difference of order 1)
TEST(Cells, OnePassRowsEqualSeparatePassesFloat) {
  expect_one_pass_rows_equal_separate_passes<float>(5e-3);
}

TEST(StackConfig, RejectsImpossibleValues) {
  StackConfig c;
  c.input_size = 1;
  c.hidden_size = 0;
  try {
    Stack<float> s(c);
    FAIL() << "expected an error";
  } catch (const UsageError& e) {  // the library names the field (the CLI maps it to --hidden)
    EXPECT_NE(std::string(e.what()).find("hidden_size"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(parse_cell("gruu").has_value());
  EXPECT_EQ(parse_cell("bnx-seq"), Cell::bnx_seq);
  for (Cell c : every_cell()) EXPECT_EQ(parse_cell(cell_name(c)), c);
}

}  // namespace
}  // namespace rbn::testing
