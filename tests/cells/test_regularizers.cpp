// Dropout between layers and zoneout (SPEC 2b; docs/cells.md, "Dropout and zoneout"): the masks'
// rates and their independence, dropout's scaling and zoneout's formula rebuilt by hand from
// the documented hash, the inference expectation, reproducibility and the same masks across
// chunked calls, the fast path against the reference with the same masks, finite differences in
// double with fixed masks for every cell, and the statistics pass in inference-mode
// regularizers. (Data-parallel shards: tests/cells/test_sync_stats.cpp runs with both on.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <omp.h>

#include "cell_cases.hpp"

namespace rbn::testing {
namespace {

std::vector<Cell> every_cell() {
  std::vector<Cell> v = all_cells();
  for (Cell c : all_rnn_cells()) v.push_back(c);
  for (Cell c : all_gru_cells()) v.push_back(c);
  return v;
}

bool has_cell_state(Cell c) { return cell_gates(c) == 4; }

// The case's config with the regularizers (zoneout_c only where there is a cell state).
StackConfig reg_config(const CellCase& cc, double p, double zh, double zc) {
  StackConfig c = cc.config();
  c.dropout = p;
  c.zoneout_h = zh;
  c.zoneout_c = has_cell_state(cc.cell) ? zc : 0.0;
  return c;
}

// |k - n p| within 5 standard deviations of the binomial (a false alarm about once in 3.5 million).
void expect_binomial(int64_t k, int64_t n, double p, const std::string& what) {
  const double sd = std::sqrt(n * p * (1 - p));
  EXPECT_LE(std::abs(k - n * p), 5 * sd) << what << ": " << k << " of " << n << ", p = " << p;
}

TEST(Masks, RatesWithinTheBinomialBound) {
  for (double p : {0.05, 0.3, 0.5, 0.9})
    for (auto kind : {mask::Kind::dropout, mask::Kind::zoneout_h, mask::Kind::zoneout_c}) {
      const mask::Stream st{7, 3, 1, 0, kind};
      int64_t k = 0, n = 0;
      std::vector<int64_t> by_feature(64, 0), by_step(50, 0);
      for (int64_t row = 0; row < 40; ++row)
        for (int64_t step = 0; step < 50; ++step) {
          const uint64_t key = mask::row_key(st, row, step);
          for (int j = 0; j < 64; ++j) {
            const bool d = mask::bernoulli(key, j, p);
            k += d;
            by_feature[j] += d;
            by_step[step] += d;
            ++n;
          }
        }
      expect_binomial(k, n, p, "all draws");
      for (int j = 0; j < 64; ++j) expect_binomial(by_feature[j], 40 * 50, p, "feature " + std::to_string(j));
      for (int s = 0; s < 50; ++s) expect_binomial(by_step[s], 40 * 64, p, "step " + std::to_string(s));
    }
}

TEST(Masks, EveryFieldChangesTheDraws) {
  // Two keys differing in one field agree on a Bernoulli(1/2) draw about half the time.
  const mask::Stream base{7, 3, 1, 0, mask::Kind::dropout};
  std::vector<std::pair<const char*, mask::Stream>> others{
      {"seed", {8, 3, 1, 0, mask::Kind::dropout}},       {"update", {7, 4, 1, 0, mask::Kind::dropout}},
      {"layer", {7, 3, 2, 0, mask::Kind::dropout}},      {"direction", {7, 3, 1, 1, mask::Kind::dropout}},
      {"kind", {7, 3, 1, 0, mask::Kind::zoneout_h}}};
  for (const auto& [what, other] : others) {
    int64_t same = 0, n = 0;
    for (int64_t row = 0; row < 20; ++row)
      for (int64_t step = 0; step < 20; ++step)
        for (int j = 0; j < 32; ++j, ++n)
          same += mask::bernoulli(mask::row_key(base, row, step), j, 0.5) ==
                  mask::bernoulli(mask::row_key(other, row, step), j, 0.5);
    expect_binomial(same, n, 0.5, what);
  }
  int64_t same = 0, n = 0;  // row and step: (r, s) against (s, r) must not collide
  for (int64_t row = 0; row < 20; ++row)
    for (int64_t step = 0; step < 20; ++step)
      if (row != step)
        for (int j = 0; j < 32; ++j, ++n)
          same += mask::bernoulli(mask::row_key(base, row, step), j, 0.5) ==
                  mask::bernoulli(mask::row_key(base, step, row), j, 0.5);
  expect_binomial(same, n, 0.5, "row <-> step");
}

// ---- dropout and zoneout rebuilt by hand -----------------------------------------------------

struct Outputs {
  std::vector<double> y, hT, cT;
};

Outputs forward(Stack<double>& s, const ForwardOptions& opt, int T, int N, const std::vector<double>& x,
            const std::vector<int32_t>& len, const double* h0, const double* c0) {
  const int L = s.config().num_layers, H = s.config().hidden_size, D = s.config().directions();
  Outputs r;
  r.y.assign(static_cast<size_t>(T) * N * D * H, 0.0);
  r.hT.assign(static_cast<size_t>(L) * D * N * H, 0.0);
  r.cT.assign(r.hT.size(), 0.0);
  s.forward(opt, T, N, {.x = x.data(), .lengths = len.data(), .h0 = h0, .c0 = c0},
            {.y = r.y.data(), .hT = r.hT.data(), .cT = r.cT.data()});
  return r;
}

// Layer k's tensors of a stack copied into a one-layer stack.
void copy_layer(const Stack<double>& from, int k, Stack<double>& to) {
  const std::string p = "rnn." + std::to_string(k) + ".";
  for (const auto* infos : {&to.param_info(), &to.buffer_info()})
    for (const auto& ti : *infos) {
      const TensorInfo* src = from.find_info(p + ti.name.substr(6));
      ASSERT_NE(src, nullptr) << ti.name;
      const bool buffer = infos == &to.buffer_info();
      const double* v = (buffer ? from.buffers() : from.params()).data() + src->offset;
      std::copy_n(v, ti.numel, (buffer ? to.buffers() : to.params()).data() + ti.offset);
    }
}

// Dropout: a two-layer stack in train mode = layer 0 alone, its output dropped by the documented
// masks (layer 0's, each kept value scaled by 1/(1-p)), then layer 1 alone on that input. And the
// share of dropped values within the binomial bound.
TEST(Dropout, IsTheDocumentedMaskAndScaling) {
  for (Cell cell : {Cell::lstm, Cell::bnlstm, Cell::gru, Cell::rnn}) {
    CellCase cc;
    cc.cell = cell;
    cc.T = cc.t_max = 6;
    cc.N = 5;
    cc.H = 24;
    cc.L = 2;
    const double p = 0.35;
    StackConfig cfg = reg_config(cc, p, 0, 0);
    Stack<double> two(cfg);
    randomize(two, 3);
    StackConfig one_cfg = cc.config();
    one_cfg.num_layers = 1;
    Stack<double> l0(one_cfg);
    one_cfg.input_size = cc.H;
    Stack<double> l1(one_cfg);
    copy_layer(two, 0, l0);
    copy_layer(two, 1, l1);
    const auto x = random_vec<double>(static_cast<size_t>(cc.T) * cc.N * cc.C, 4);
    const std::vector<int32_t> len(cc.N, cc.T);
    ForwardOptions opt;
    opt.update_running = false;
    opt.update = 11;
    opt.row0 = 40;
    const Outputs got = forward(two, opt, cc.T, cc.N, x, len, nullptr, nullptr);
    Outputs out0 = forward(l0, opt, cc.T, cc.N, x, len, nullptr, nullptr);
    int64_t dropped = 0;
    for (int t = 0; t < cc.T; ++t)
      for (int n = 0; n < cc.N; ++n) {
        const uint64_t key = mask::row_key({cfg.seed, 11, 0, 0, mask::Kind::dropout}, 40 + n, t);
        for (int j = 0; j < cc.H; ++j) {
          double& v = out0.y[(static_cast<size_t>(t) * cc.N + n) * cc.H + j];
          const bool d = mask::bernoulli(key, j, p);
          dropped += d;
          v = d ? 0.0 : v / (1 - p);
        }
      }
    expect_binomial(dropped, static_cast<int64_t>(cc.T) * cc.N * cc.H, p, "dropped");
    const Outputs want = forward(l1, opt, cc.T, cc.N, out0.y, len, nullptr, nullptr);
    EXPECT_LE(max_abs_diff(got.y, want.y), 1e-12) << cell_name(cell);
    // inference mode, or train mode without the regularizers: no dropout at all
    for (bool infer : {true, false}) {
      ForwardOptions o = opt;
      if (infer) o.mode = Mode::infer; else o.regularize = false;
      const Outputs a = forward(two, o, cc.T, cc.N, x, len, nullptr, nullptr);
      const Outputs b0 = forward(l0, o, cc.T, cc.N, x, len, nullptr, nullptr);
      const Outputs b = forward(l1, o, cc.T, cc.N, b0.y, len, nullptr, nullptr);
      EXPECT_LE(max_abs_diff(a.y, b.y), 1e-12) << cell_name(cell) << (infer ? " infer" : " no reg");
    }
  }
}

// Zoneout step by step: each step of a zoneout stack = one step of the same stack without zoneout
// from the carried (zoned) state, giving h~, c~ (h~ from the un-zoned c~), then
// h = d_h h_prev + (1 - d_h) h~ and c = d_c c_prev + (1 - d_c) c~ with d the documented draws
// (train mode) or z (inference). Padded rows carry their state.
void check_zoneout_by_hand(Cell cell, Mode mode) {
  CellCase cc;
  cc.cell = cell;
  cc.T = cc.t_max = 5;
  cc.N = 4;
  cc.H = 20;
  cc.L = 1;
  const double zh = 0.3, zc = 0.6;
  const StackConfig cfg = reg_config(cc, 0, zh, zc);
  Stack<double> zs(cfg), plain(cc.config());
  randomize(zs, 5);
  std::copy(zs.params().begin(), zs.params().end(), plain.params().begin());
  std::copy(zs.buffers().begin(), zs.buffers().end(), plain.buffers().begin());
  const int N = cc.N, H = cc.H, C = cc.C;
  const auto x = random_vec<double>(static_cast<size_t>(cc.T) * N * C, 6);
  const std::vector<int32_t> len{5, 2, 4, 5};
  auto h = random_vec<double>(static_cast<size_t>(N) * H, 7, 0.5);
  auto c = random_vec<double>(static_cast<size_t>(N) * H, 8, 0.5);
  ForwardOptions opt;
  opt.mode = mode;
  opt.update_running = false;
  opt.update = 3;
  opt.row0 = 10;
  const Outputs got = forward(zs, opt, cc.T, N, x, len, h.data(), c.data());
  std::vector<double> want_y(static_cast<size_t>(cc.T) * N * H, 0.0);
  int64_t kept_h = 0, kept_c = 0, draws = 0;
  for (int t = 0; t < cc.T; ++t) {
    std::vector<double> xt(x.begin() + static_cast<size_t>(t) * N * C, x.begin() + static_cast<size_t>(t + 1) * N * C);
    std::vector<int32_t> lt(N);
    for (int n = 0; n < N; ++n) lt[n] = t < len[n];
    ForwardOptions o = opt;
    o.t0 = t;
    const Outputs step = forward(plain, o, 1, N, xt, lt, h.data(), c.data());
    for (int n = 0; n < N; ++n) {
      if (!lt[n]) continue;
      const uint64_t kh = mask::row_key({cfg.seed, 3, 0, 0, mask::Kind::zoneout_h}, 10 + n, t);
      const uint64_t kc = mask::row_key({cfg.seed, 3, 0, 0, mask::Kind::zoneout_c}, 10 + n, t);
      for (int j = 0; j < H; ++j) {
        const size_t i = static_cast<size_t>(n) * H + j;
        const bool train = mode == Mode::train;
        const double dh = train ? mask::bernoulli(kh, j, zh) : zh;
        const double dc = train ? mask::bernoulli(kc, j, zc) : zc;
        kept_h += dh == 1.0;
        kept_c += dc == 1.0;
        ++draws;
        h[i] = dh * h[i] + (1 - dh) * step.hT[i];
        if (has_cell_state(cell)) c[i] = dc * c[i] + (1 - dc) * step.cT[i];
        want_y[(static_cast<size_t>(t) * N + n) * H + j] = h[i];
      }
    }
  }
  EXPECT_LE(max_abs_diff(got.y, want_y), 1e-12) << cell_name(cell);
  EXPECT_LE(max_abs_diff(got.hT, h), 1e-12) << cell_name(cell);
  EXPECT_LE(max_abs_diff(got.cT, c), 1e-12) << cell_name(cell);
  if (mode == Mode::train) {
    expect_binomial(kept_h, draws, zh, std::string(cell_name(cell)) + " zoneout_h");
    expect_binomial(kept_c, draws, zc, std::string(cell_name(cell)) + " zoneout_c");
  }
}

TEST(Zoneout, TrainModeIsTheDocumentedFormula) {
  for (Cell cell : every_cell())
    if (cell != Cell::bnx_seq)  // (its training statistics span the call: not step by step)
      check_zoneout_by_hand(cell, Mode::train);
}

TEST(Zoneout, InferenceIsTheExpectation) {
  for (Cell cell : every_cell()) check_zoneout_by_hand(cell, Mode::infer);
}

// ---- reproducibility, chunks ----------------------------------------------------------------

TEST(Regularizers, SameSeedAndUpdateSameMasksOtherwiseNot) {
  for (Cell cell : {Cell::bnlstm, Cell::lngru}) {
    CellCase cc;
    cc.cell = cell;
    cc.H = 16;
    const StackConfig cfg = reg_config(cc, 0.3, 0.2, 0.3);
    Stack<double> a(cfg), b(cfg);
    randomize(a, 9);
    randomize(b, 9);
    const auto x = random_vec<double>(static_cast<size_t>(cc.T) * cc.N * cc.C, 10);
    const std::vector<int32_t> len(cc.N, cc.T);
    ForwardOptions opt;
    opt.update_running = false;
    opt.update = 5;
    const Outputs ra = forward(a, opt, cc.T, cc.N, x, len, nullptr, nullptr);
    const Outputs rb = forward(b, opt, cc.T, cc.N, x, len, nullptr, nullptr);
    EXPECT_EQ(ra.y, rb.y) << "same seed, same update: bit-identical";
    opt.update = 6;
    const Outputs rc = forward(a, opt, cc.T, cc.N, x, len, nullptr, nullptr);
    EXPECT_GT(max_abs_diff(ra.y, rc.y), 1e-3) << "a new update draws new masks";
    StackConfig other = cfg;
    other.seed = cfg.seed + 1;
    Stack<double> d(other);
    std::copy(a.params().begin(), a.params().end(), d.params().begin());
    std::copy(a.buffers().begin(), a.buffers().end(), d.buffers().begin());
    opt.update = 5;
    const Outputs rd = forward(d, opt, cc.T, cc.N, x, len, nullptr, nullptr);
    EXPECT_GT(max_abs_diff(ra.y, rd.y), 1e-3) << "another seed draws other masks";
  }
}

TEST(Regularizers, ChunkedAndStepCallsDrawTheSameMasks) {
  // A training-mode forward without backward (chunks of 32 steps) and the step API (calls
  // carrying the state, t0 = the global step) draw what one call with activations kept draws.
  for (Cell cell : every_cell()) {
    if (cell == Cell::bnx_seq) continue;  // its training statistics span the whole call
    CellCase cc;
    cc.cell = cell;
    cc.T = cc.t_max = 70;
    cc.H = 8;
    cc.lengths = {70, 33, 64, 5};
    const StackConfig cfg = reg_config(cc, 0.25, 0.2, 0.4);
    Stack<double> s(cfg);
    randomize(s, 12);
    const auto x = random_vec<double>(static_cast<size_t>(cc.T) * cc.N * cc.C, 13);
    const std::vector<int32_t> len(cc.lengths.begin(), cc.lengths.end());
    ForwardOptions opt;
    opt.update_running = false;
    opt.update = 2;
    const Outputs whole = forward(s, opt, cc.T, cc.N, x, len, nullptr, nullptr);
    opt.need_backward = false;
    const Outputs chunked = forward(s, opt, cc.T, cc.N, x, len, nullptr, nullptr);
    EXPECT_LE(max_abs_diff(chunked.y, whole.y), 1e-12) << cell_name(cell);
    EXPECT_LE(max_abs_diff(chunked.hT, whole.hT), 1e-12) << cell_name(cell);
    std::vector<double> y, h(whole.hT.size(), 0.0), c(whole.cT.size(), 0.0);
    const size_t step_in = static_cast<size_t>(cc.N) * cc.C;
    opt.need_backward = true;
    for (auto [start, n] : {std::pair{0, 30}, std::pair{30, 1}, std::pair{31, 39}}) {
      std::vector<double> xs(x.begin() + start * step_in, x.begin() + (start + n) * step_in);
      std::vector<int32_t> l;
      for (int v : cc.lengths) l.push_back(std::clamp(v - start, 0, n));
      opt.t0 = start;
      const Outputs part = forward(s, opt, n, cc.N, xs, l, h.data(), c.data());
      y.insert(y.end(), part.y.begin(), part.y.end());
      h = part.hT;
      c = part.cT;
    }
    EXPECT_LE(max_abs_diff(y, whole.y), 1e-12) << cell_name(cell);
    EXPECT_LE(max_abs_diff(h, whole.hT), 1e-12) << cell_name(cell);
    EXPECT_LE(max_abs_diff(c, whole.cT), 1e-12) << cell_name(cell);
  }
}

// ---- the fast path against the reference with the same masks --------------------------------

template <class T>
void check_reference(const CellCase& cc, Mode mode, double tol) {
  const StackConfig cfg = reg_config(cc, 0.3, 0.25, 0.35);
  Stack<T> s(cfg);
  randomize(s, 14);
  const size_t NH = static_cast<size_t>(cc.N) * cc.H, LD = static_cast<size_t>(cc.L) * cc.D();
  const auto x = random_vec<T>(static_cast<size_t>(cc.T) * cc.N * cc.C, 15);
  const auto h0 = random_vec<T>(LD * NH, 16, 0.5), c0 = random_vec<T>(LD * NH, 17, 0.5);
  const std::vector<int> lens = cc.lens();
  std::vector<int32_t> l32(lens.begin(), lens.end());
  std::vector<T> y(cc.T * cc.D() * NH), hT(LD * NH), cT(LD * NH);
  const int t0 = cc.bidirectional ? 0 : 1;  // (a bidirectional stack reads whole sequences)
  ForwardOptions opt;
  opt.mode = mode;
  opt.update_running = false;
  opt.update = 21;
  opt.row0 = 6;
  opt.t0 = t0;
  s.forward(opt, cc.T, cc.N, {.x = x.data(), .lengths = l32.data(), .h0 = h0.data(), .c0 = c0.data()},
            {.y = y.data(), .hT = hT.data(), .cT = cT.data()});
  ref::Inputs in{mode, cc.T, cc.N, to_double(x), lens, to_double(h0), to_double(c0)};
  in.t0 = t0;
  in.update = 21;
  in.row0 = 6;
  const ref::Result want = ref::forward(cfg, to_tensors<T>(s.param_info(), s.params()),
                                        to_tensors<T>(s.buffer_info(), s.buffers()), in);
  EXPECT_LE(max_abs_diff(to_double(y), want.y), tol) << cc.name();
  EXPECT_LE(max_abs_diff(to_double(hT), want.hT), tol) << cc.name();
  EXPECT_LE(max_abs_diff(to_double(cT), want.cT), tol) << cc.name();
}

std::vector<CellCase> reg_cases() {
  std::vector<CellCase> out;
  for (Cell cell : every_cell()) {
    CellCase a;  // ragged, 2 layers
    a.cell = cell;
    a.T = a.t_max = 6;
    a.lengths = {6, 3, 5, 1};
    out.push_back(a);
    CellCase w;  // wide enough for several threads in the time loop; 3 layers; one input
    w.cell = cell;
    w.T = w.t_max = 4;
    w.N = 5;
    w.C = 1;
    w.H = 40;
    w.L = 3;
    w.lengths = {4, 1, 3, 4, 2};
    out.push_back(w);
  }
  // Bidirectional, 2 layers, ragged (dropout on layer 0's 2H output, zoneout in both directions
  // with the reverse's masks by direction 1 and its own step count); H = 20: two blocks of units.
  for (Cell cell : {Cell::lstm, Cell::bnlstm, Cell::lnlstm, Cell::gru, Cell::bngru, Cell::bnrnn}) {
    CellCase b;
    b.cell = cell;
    b.bidirectional = true;
    b.T = b.t_max = 6;
    b.N = 5;
    b.H = 20;
    b.lengths = {6, 3, 5, 1, 4};
    out.push_back(b);
  }
  return out;
}

class RegReference : public ::testing::TestWithParam<CellCase> {};
TEST_P(RegReference, TrainDouble) { check_reference<double>(GetParam(), Mode::train, 1e-10); }
TEST_P(RegReference, InferDouble) { check_reference<double>(GetParam(), Mode::infer, 1e-10); }
TEST_P(RegReference, TrainFloat) { check_reference<float>(GetParam(), Mode::train, 2e-4); }
TEST_P(RegReference, InferFloat) { check_reference<float>(GetParam(), Mode::infer, 2e-4); }
INSTANTIATE_TEST_SUITE_P(AllCells, RegReference, ::testing::ValuesIn(reg_cases()),
                         [](const auto& info) { return info.param.name(); });

// ---- finite differences in double with fixed masks --------------------------------------------

class RegGradient : public ::testing::TestWithParam<CellCase> {};

TEST_P(RegGradient, FiniteDifferences) {
  const CellCase cc = GetParam();
  for (Mode mode : {Mode::train, Mode::infer}) {
    Stack<double> s(reg_config(cc, 0.3, 0.25, 0.35));
    randomize(s, 22);
    const size_t NH = static_cast<size_t>(cc.N) * cc.H, LD = static_cast<size_t>(cc.L) * cc.D();
    auto x = random_vec<double>(static_cast<size_t>(cc.T) * cc.N * cc.C, 23);
    auto h0 = random_vec<double>(LD * NH, 24, 0.5), c0 = random_vec<double>(LD * NH, 25, 0.5);
    const auto wy = random_vec<double>(static_cast<size_t>(cc.T) * cc.D() * NH, 26);
    const auto whT = random_vec<double>(LD * NH, 27), wcT = random_vec<double>(LD * NH, 28);
    const std::vector<int> li = cc.lens();
    const std::vector<int32_t> len(li.begin(), li.end());
    ForwardOptions opt;
    opt.mode = mode;
    opt.update_running = false;
    opt.update = 4;  // the masks: fixed by (seed, update, layer, row, step, feature)
    auto loss = [&]() {
      const Outputs r = forward(s, opt, cc.T, cc.N, x, len, h0.data(), c0.data());
      double l = 0;
      for (size_t i = 0; i < r.y.size(); ++i) l += wy[i] * r.y[i];
      for (size_t i = 0; i < r.hT.size(); ++i) l += whT[i] * r.hT[i] + wcT[i] * r.cT[i];
      return l;
    };
    loss();
    s.zero_grad();
    std::vector<double> dx(x.size()), dh0(h0.size()), dc0(c0.size());
    s.backward(wy.data(), whT.data(), wcT.data(), dx.data(), dh0.data(), dc0.data());
    const std::vector<double> g(s.grads().begin(), s.grads().end());
    double worst = 0;
    std::string where;
    auto probe = [&](double& v, const std::string& what, double analytic) {
      const double keep = v, e = 1e-5;
      v = keep + e;
      const double lp = loss();
      v = keep - e;
      const double lm = loss();
      v = keep;
      const double numeric = (lp - lm) / (2 * e);
      const double rel = std::abs(analytic - numeric) / std::max(std::abs(analytic) + std::abs(numeric), 1e-3);
      if (rel > worst) worst = rel, where = what;
    };
    for (const auto& ti : s.param_info())
      for (size_t i = 0; i < ti.numel; i += std::max<size_t>(1, ti.numel / 64))
        probe(s.params()[ti.offset + i], ti.name + "[" + std::to_string(i) + "]", g[ti.offset + i]);
    for (size_t i = 0; i < x.size(); ++i) probe(x[i], "x[" + std::to_string(i) + "]", dx[i]);
    for (size_t i = 0; i < h0.size(); ++i) {
      probe(h0[i], "h0[" + std::to_string(i) + "]", dh0[i]);
      probe(c0[i], "c0[" + std::to_string(i) + "]", dc0[i]);
    }
    std::printf("[ gradcheck ] %-36s %-5s dropout+zoneout: max rel err %.3e (at %s)\n",
                cc.name().c_str(), mode == Mode::train ? "train" : "infer", worst, where.c_str());
    EXPECT_LT(worst, 1e-5) << where;
  }
}

std::vector<CellCase> reg_gradient_cases() {
  std::vector<CellCase> out;
  for (Cell cell : every_cell()) {
    CellCase a;  // 2 layers, ragged; W x inline (C <= 8)
    a.cell = cell;
    a.T = a.t_max = 4;
    a.N = 5;
    a.C = 2;
    a.H = 4;
    a.lengths = {4, 2, 4, 3, 4};  // (at least 3 rows per step: BN of 2 rows is ill-conditioned)
    out.push_back(a);
    CellCase w;  // several threads in the time loop; layer 1's W x by one GEMM (C = H > 8)
    w.cell = cell;
    w.T = w.t_max = 3;
    w.N = 8;
    w.C = 3;
    w.H = 20;
    w.lengths = {3, 1, 2, 3, 3, 2, 3, 3};
    out.push_back(w);
  }
  // Bidirectional 2-layer stacks: an LSTM-family cell with zoneout of c, a GRU, and their BN
  // forms (per-direction statistics); layer 1 reads the dropped 2H output of layer 0.
  for (Cell cell : {Cell::lstm, Cell::bnlstm, Cell::gru, Cell::bngru}) {
    CellCase b;
    b.cell = cell;
    b.bidirectional = true;
    b.T = b.t_max = 4;
    b.N = 5;
    b.C = 2;
    b.H = 4;
    b.lengths = {4, 2, 4, 3, 4};
    out.push_back(b);
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(AllCells, RegGradient, ::testing::ValuesIn(reg_gradient_cases()),
                         [](const auto& info) { return info.param.name(); });

// ---- the statistics pass and the configuration ------------------------------------------------

TEST(Regularizers, StatisticsPassUsesTheInferenceModeRegularizers) {
  // The pass's statistics are those of a training-mode forward without dropout and with zoneout's
  // expectation (the reference with regularize = false), not those of the masked forward.
  for (Cell cell : {Cell::bnlstm, Cell::bngru, Cell::bnrnn}) {
    CellCase cc;
    cc.cell = cell;
    cc.T = cc.t_max = 5;
    cc.N = 6;
    cc.H = 6;
    cc.lengths = {5, 4, 5, 2, 3, 5};
    const StackConfig cfg = reg_config(cc, 0.4, 0.3, 0.5);
    Stack<double> s(cfg);
    randomize(s, 31);
    const auto params = to_tensors<double>(s.param_info(), s.params());
    const auto before = to_tensors<double>(s.buffer_info(), s.buffers());
    const auto x = random_vec<double>(static_cast<size_t>(cc.T) * cc.N * cc.C, 32);
    const std::vector<int32_t> len(cc.lengths.begin(), cc.lengths.end());
    s.popstats_begin();
    s.popstats_feed(cc.T, cc.N, x.data(), len.data());
    s.popstats_finish();
    ref::Inputs in{Mode::train, cc.T, cc.N, x, cc.lengths, {}, {}};
    in.regularize = false;
    const ref::Result plain = ref::forward(cfg, params, before, in);
    in.regularize = true;
    const ref::Result masked = ref::forward(cfg, params, before, in);
    double off_plain = 0, off_masked = 0;
    for (const auto& bi : s.buffer_info()) {
      if (bi.name.find(".bn_h.") == std::string::npos) continue;  // what the state feeds
      const std::string prefix = bi.name.substr(0, bi.name.rfind('.'));
      const bool var = bi.name.ends_with("running_var");
      const auto& a = var ? plain.batch_var.at(prefix) : plain.batch_mean.at(prefix);
      const auto& b = var ? masked.batch_var.at(prefix) : masked.batch_mean.at(prefix);
      for (size_t i = 0; i < bi.numel; ++i) {
        off_plain = std::max(off_plain, std::abs(s.buffers()[bi.offset + i] - a[i]));
        off_masked = std::max(off_masked, std::abs(s.buffers()[bi.offset + i] - b[i]));
      }
    }
    EXPECT_LE(off_plain, 1e-12) << cell_name(cell);
    EXPECT_GT(off_masked, 1e-3) << cell_name(cell) << ": the masked statistics must differ";
  }
}

// A bidirectional stack with dropout and zoneout: the directions side by side (the reverse on its
// twin engine, which must receive the regularizers' mode, hash fields and layer) give what they
// give one after the other, forward, backward and two updates; and the statistics pass of a
// bidirectional stack uses the inference-mode regularizers in both directions.
TEST(Regularizers, BidirectionalSideBySideEqualsInTurn) {
  for (Cell cell : {Cell::bnlstm, Cell::lnlstm, Cell::bngru}) {
    CellCase cc;
    cc.cell = cell;
    cc.bidirectional = true;
    cc.T = cc.t_max = 6;
    cc.N = 5;
    cc.H = 20;
    cc.lengths = {6, 2, 5, 6, 3};
    const size_t NH = static_cast<size_t>(cc.N) * cc.H;
    auto x = random_vec<double>(static_cast<size_t>(cc.T) * cc.N * cc.C, 181);
    auto dy = random_vec<double>(static_cast<size_t>(cc.T) * 2 * NH, 182);
    auto dhT = random_vec<double>(2 * cc.L * NH, 183), dcT = random_vec<double>(2 * cc.L * NH, 184);
    std::vector<int32_t> l32(cc.lengths.begin(), cc.lengths.end());
    const auto out = on_one_and_two_threads([&](std::vector<double>& o) {
      Stack<double> s(reg_config(cc, 0.3, 0.25, 0.35));
      randomize(s, 185);
      std::vector<double> y(dy.size()), hT(dhT.size()), cT(dhT.size()), dx(x.size()),
          dh0(dhT.size()), dc0(dhT.size());
      ForwardOptions opt;  // train mode, masks drawn
      for (int rep = 0; rep < 2; ++rep) {  // two updates: new masks, the twin follows
        opt.update = 40 + rep;
        opt.row0 = 3;
        s.forward(opt, cc.T, cc.N, {.x = x.data(), .lengths = l32.data()},
                  {.y = y.data(), .hT = hT.data(), .cT = cT.data()});
        s.zero_grad();
        s.backward(dy.data(), dhT.data(), dcT.data(), dx.data(), dh0.data(), dc0.data());
        for (size_t i = 0; i < s.params().size(); ++i) s.params()[i] -= 0.01 * s.grads()[i];
      }
      ForwardOptions inf;
      inf.mode = Mode::infer;
      std::vector<double> yi(dy.size());
      s.forward(inf, cc.T, cc.N, {.x = x.data(), .lengths = l32.data()}, {.y = yi.data()});
      s.popstats_begin();
      s.popstats_feed(cc.T, cc.N, x.data(), l32.data());
      s.popstats_finish();
      for (const auto* v : {&y, &hT, &cT, &dx, &dh0, &dc0, &yi})
        o.insert(o.end(), v->begin(), v->end());
      o.insert(o.end(), s.grads().begin(), s.grads().end());
      o.insert(o.end(), s.buffers().begin(), s.buffers().end());
    });
    ASSERT_EQ(out[0].size(), out[1].size());
    EXPECT_LT(relative_difference(out[0], out[1]).worst, 1e-10) << cell_name(cell);
  }
}

TEST(Regularizers, BidirectionalStatisticsPassUsesTheInferenceModeRegularizers) {
  // As above, per direction: the pass's statistics are the reference's with regularize = false.
  for (Cell cell : {Cell::bnlstm, Cell::bngru}) {
    CellCase cc;
    cc.cell = cell;
    cc.bidirectional = true;
    cc.T = cc.t_max = 5;
    cc.N = 6;
    cc.H = 6;
    cc.lengths = {5, 4, 5, 2, 3, 5};
    const StackConfig cfg = reg_config(cc, 0.4, 0.3, 0.5);
    Stack<double> s(cfg);
    randomize(s, 33);
    const auto params = to_tensors<double>(s.param_info(), s.params());
    const auto before = to_tensors<double>(s.buffer_info(), s.buffers());
    const auto x = random_vec<double>(static_cast<size_t>(cc.T) * cc.N * cc.C, 34);
    const std::vector<int32_t> len(cc.lengths.begin(), cc.lengths.end());
    s.popstats_begin();
    s.popstats_feed(cc.T, cc.N, x.data(), len.data());
    s.popstats_finish();
    ref::Inputs in{Mode::train, cc.T, cc.N, x, cc.lengths, {}, {}};
    in.regularize = false;
    const ref::Result plain = ref::forward(cfg, params, before, in);
    in.regularize = true;
    const ref::Result masked = ref::forward(cfg, params, before, in);
    double off_plain = 0, off_masked = 0;
    int reverse_seen = 0;
    for (const auto& bi : s.buffer_info()) {
      if (bi.name.find(".bn_h.") == std::string::npos) continue;
      reverse_seen += bi.name.find(".reverse.") != std::string::npos;
      const std::string prefix = bi.name.substr(0, bi.name.rfind('.'));
      const bool var = bi.name.ends_with("running_var");
      const auto& a = var ? plain.batch_var.at(prefix) : plain.batch_mean.at(prefix);
      const auto& b = var ? masked.batch_var.at(prefix) : masked.batch_mean.at(prefix);
      for (size_t i = 0; i < bi.numel; ++i) {
        off_plain = std::max(off_plain, std::abs(s.buffers()[bi.offset + i] - a[i]));
        off_masked = std::max(off_masked, std::abs(s.buffers()[bi.offset + i] - b[i]));
      }
    }
    EXPECT_GT(reverse_seen, 0);
    EXPECT_LE(off_plain, 1e-12) << cell_name(cell);
    EXPECT_GT(off_masked, 1e-3) << cell_name(cell) << ": the masked statistics must differ";
  }
}

TEST(Regularizers, ConfigRefusesImpossibleValues) {
  auto refused = [](StackConfig c, const std::string& field) {
    try {
      Stack<float> s(c);
      ADD_FAILURE() << "expected an error for " << field;
    } catch (const UsageError& e) {
      EXPECT_TRUE(std::string(e.what()).starts_with(field + ":")) << e.what();
    }
  };
  StackConfig base;
  base.input_size = 2;
  base.hidden_size = 3;
  for (double v : {-0.1, 1.0, 1.5, std::nan("")}) {
    StackConfig c = base;
    c.dropout = v;
    refused(c, "dropout");
    c = base;
    c.zoneout_h = v;
    refused(c, "zoneout_h");
    c = base;
    c.zoneout_c = v;
    refused(c, "zoneout_c");
  }
  for (Cell cell : {Cell::gru, Cell::bngru, Cell::lngru, Cell::rnn, Cell::bnrnn}) {
    StackConfig c = base;
    c.cell = cell;
    c.zoneout_c = 0.1;
    refused(c, "zoneout_c");
    c.zoneout_c = 0;
    c.zoneout_h = 0.1;
    EXPECT_NO_THROW(Stack<float> s(c));
  }
}

}  // namespace
}  // namespace rbn::testing
