// rbn against golden fixtures written by PyTorch (tools/make_fixtures.py, modules written to the
// SPEC formulas in tools/torch_cells.py): outputs, every gradient, running statistics, inference
// with population statistics past T_max, the statistics pass, and three Adam steps. The GRU family's
// files (no cell state) have no input.c0, train.cT, loss.wcT, grad.c0, infer.cT; `gru`'s come from
// torch.nn.GRU itself. The bidirectional files (metadata bidirectional = true; SPEC 2b) hold
// y [T,N,2H] and states [2L,N,H], the reverse direction's tensors under rnn.k.reverse.*; their
// lstm and gru come from torch.nn.LSTM / torch.nn.GRU with bidirectional=True on packed input.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>

#include "io/safetensors.hpp"
#include "rbn/rbn.hpp"
#include "train/optim.hpp"

namespace rbn {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> fixture_files() {
  std::vector<std::string> v;
  for (const auto& e : fs::directory_iterator(fs::path(RBN_SOURCE_DIR) / "tests/fixtures/cells"))
    if (e.path().extension() == ".safetensors") v.push_back(e.path().string());
  std::sort(v.begin(), v.end());
  return v;
}

int meta_int(const SafeTensors& st, const char* k) { return std::stoi(st.metadata.at(k)); }

double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return INFINITY;
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

struct Worst {
  double fwd = 0, grad = 0, stats = 0, adam = 0;
};

class Fixture : public ::testing::TestWithParam<std::string> {};

TEST_P(Fixture, MatchesPyTorch) {
  const SafeTensors st = read_safetensors(GetParam());
  StackConfig c;
  const auto cell = parse_cell(st.metadata.at("cell"));
  ASSERT_TRUE(cell.has_value()) << "unknown cell " << st.metadata.at("cell");
  c.cell = *cell;
  c.input_size = meta_int(st, "input_size");
  c.hidden_size = meta_int(st, "hidden_size");
  c.num_layers = meta_int(st, "num_layers");
  c.t_max = meta_int(st, "t_max");
  c.eps = std::stod(st.metadata.at("eps"));
  c.momentum = std::stod(st.metadata.at("momentum"));
  c.ln_input = st.metadata.at("ln_input") == "true";
  c.bidirectional = st.metadata.contains("bidirectional") && st.metadata.at("bidirectional") == "true";
  Stack<double> s(c);
  auto load_params = [&](const std::string& prefix) {
    for (const auto& ti : s.param_info()) {
      auto v = st.get_f64(prefix + ti.name, ti.shape);
      std::copy(v.begin(), v.end(), s.find(ti.name));
    }
  };
  load_params("param.");
  // running statistics start at mean 0 / variance 1
  for (const auto& bi : s.buffer_info())
    std::fill_n(s.find(bi.name), bi.numel, bi.name.ends_with("running_var") ? 1.0 : 0.0);

  const auto& xs = st.shape_of("input.x");
  const int T = static_cast<int>(xs[0]), N = static_cast<int>(xs[1]);
  const int D = c.bidirectional ? 2 : 1;
  const int L = D * c.num_layers, H = c.hidden_size;  // state rows [L,N,H]; y [T,N,D*H]
  auto x = st.get_f64("input.x", {});
  auto len = st.get_i32("input.lengths", {});
  auto h0 = st.get_f64("input.h0", {});
  const bool has_c = st.has("input.c0");  // false for the GRU family
  ASSERT_EQ(has_c, !cell_is_gru(c.cell));
  auto c0 = has_c ? st.get_f64("input.c0", {}) : std::vector<double>();
  // data() of an empty vector may be non-null: say "no cell state" explicitly
  auto c_ptr = [&](std::vector<double>& v) { return has_c ? v.data() : nullptr; };
  std::vector<double> y(size_t(T) * N * D * H), hT(size_t(L) * N * H), cT(has_c ? hT.size() : 0);
  ForwardOptions opt;
  s.forward(opt, T, N, {.x = x.data(), .lengths = len.data(), .h0 = h0.data(), .c0 = c_ptr(c0)},
            {.y = y.data(), .hT = hT.data(), .cT = c_ptr(cT)});
  Worst w;
  w.fwd = std::max(max_diff(y, st.get_f64("train.y", {})), max_diff(hT, st.get_f64("train.hT", {})));
  if (has_c) w.fwd = std::max(w.fwd, max_diff(cT, st.get_f64("train.cT", {})));
  EXPECT_LT(w.fwd, 1e-10);
  auto wy = st.get_f64("loss.wy", {}), whT = st.get_f64("loss.whT", {});
  auto wcT = has_c ? st.get_f64("loss.wcT", {}) : std::vector<double>();
  double loss = 0;
  for (size_t i = 0; i < y.size(); ++i) loss += wy[i] * y[i];
  for (size_t i = 0; i < hT.size(); ++i) loss += whT[i] * hT[i] + (has_c ? wcT[i] * cT[i] : 0.0);
  EXPECT_NEAR(loss, st.get_f64("train.loss", {1})[0], 1e-9 * (1 + std::abs(loss)));
  std::vector<double> dx(x.size()), dh0(h0.size()), dc0(c0.size());
  s.zero_grad();
  s.backward(wy.data(), whT.data(), c_ptr(wcT), dx.data(), dh0.data(), c_ptr(dc0));
  for (const auto& ti : s.param_info()) {
    std::vector<double> g(s.grads().begin() + ti.offset, s.grads().begin() + ti.offset + ti.numel);
    const double d = max_diff(g, st.get_f64("grad." + ti.name, ti.shape));
    w.grad = std::max(w.grad, d);
    EXPECT_LT(d, 1e-9) << ti.name;
  }
  w.grad = std::max({w.grad, max_diff(dx, st.get_f64("grad.x", {})), max_diff(dh0, st.get_f64("grad.h0", {}))});
  if (has_c) w.grad = std::max(w.grad, max_diff(dc0, st.get_f64("grad.c0", {})));
  EXPECT_LT(w.grad, 1e-9);
  for (const auto& bi : s.buffer_info()) {
    std::vector<double> b(s.find(bi.name), s.find(bi.name) + bi.numel);
    const double d = max_diff(b, st.get_f64("train.running." + bi.name, bi.shape));
    w.stats = std::max(w.stats, d);
    EXPECT_LT(d, 1e-12) << bi.name;
  }
  // inference with given population statistics, past T_max
  for (const auto& bi : s.buffer_info()) {
    auto v = st.get_f64("infer.pop." + bi.name, bi.shape);
    std::copy(v.begin(), v.end(), s.find(bi.name));
  }
  {
    const auto& is = st.shape_of("infer.x");
    const int Ti = static_cast<int>(is[0]), Ni = static_cast<int>(is[1]);
    auto xi = st.get_f64("infer.x", {});
    auto li = st.get_i32("infer.lengths", {});
    std::vector<double> yi(size_t(Ti) * Ni * D * H), hi(size_t(L) * Ni * H), ci(has_c ? hi.size() : 0);
    ForwardOptions io;
    io.mode = Mode::infer;
    io.need_backward = false;
    s.forward(io, Ti, Ni, {.x = xi.data(), .lengths = li.data(), .h0 = h0.data(), .c0 = c_ptr(c0)},
              {.y = yi.data(), .hT = hi.data(), .cT = c_ptr(ci)});
    double d = std::max(max_diff(yi, st.get_f64("infer.y", {})), max_diff(hi, st.get_f64("infer.hT", {})));
    if (has_c) d = std::max(d, max_diff(ci, st.get_f64("infer.cT", {})));
    w.fwd = std::max(w.fwd, d);
    EXPECT_LT(d, 1e-10) << "inference";
  }
  // the statistics pass, from the infer.pop buffers
  if (!s.buffer_info().empty()) {
    s.popstats_begin();
    for (int k = 1; st.has("pass.batch" + std::to_string(k) + ".x"); ++k) {
      const std::string p = "pass.batch" + std::to_string(k);
      const auto& bs = st.shape_of(p + ".x");
      auto bx = st.get_f64(p + ".x", {});
      auto bl = st.get_i32(p + ".lengths", {});
      s.popstats_feed(static_cast<int>(bs[0]), static_cast<int>(bs[1]), bx.data(), bl.data());
    }
    s.popstats_finish();
    for (const auto& bi : s.buffer_info()) {
      std::vector<double> b(s.find(bi.name), s.find(bi.name) + bi.numel);
      const double d = max_diff(b, st.get_f64("pass.result." + bi.name, bi.shape));
      w.stats = std::max(w.stats, d);
      EXPECT_LT(d, 1e-12) << "pass " << bi.name;
    }
  }
  // three Adam steps on the training loss (rbn's optimizer runs in float: it updates float
  // parameters, so the double fixture is compared at float precision)
  if (st.has("adam.step1." + s.param_info().front().name)) {
    load_params("param.");
    std::vector<float> pf(s.params().begin(), s.params().end()), gf(pf.size());
    OptimConfig oc;
    oc.name = "adam";
    oc.lr = 0.01;
    auto adam = make_optimizer(oc);
    std::vector<ParamRef> refs;
    for (const auto& ti : s.param_info()) refs.push_back({ti.name, pf.data() + ti.offset, gf.data() + ti.offset, ti.numel});
    for (int k = 1; k <= 3; ++k) {
      std::copy(pf.begin(), pf.end(), s.params().begin());
      s.forward(opt, T, N, {.x = x.data(), .lengths = len.data(), .h0 = h0.data(), .c0 = c_ptr(c0)},
                {.y = y.data(), .hT = hT.data(), .cT = c_ptr(cT)});
      s.zero_grad();
      s.backward(wy.data(), whT.data(), c_ptr(wcT), nullptr, nullptr, nullptr);
      std::copy(s.grads().begin(), s.grads().end(), gf.begin());
      adam->step(refs, 0.01f);
      for (const auto& ti : s.param_info()) {
        std::vector<double> got(pf.begin() + ti.offset, pf.begin() + ti.offset + ti.numel);
        const double d = max_diff(got, st.get_f64("adam.step" + std::to_string(k) + "." + ti.name, ti.shape));
        w.adam = std::max(w.adam, d);
        EXPECT_LT(d, 1e-5) << "adam step " << k << " " << ti.name;
      }
    }
  }
  std::printf("[ fixture ] %-36s max |diff|: outputs %.2e, gradients %.2e, statistics %.2e, adam %.2e\n",
              fs::path(GetParam()).filename().c_str(), w.fwd, w.grad, w.stats, w.adam);
}

INSTANTIATE_TEST_SUITE_P(Torch, Fixture, ::testing::ValuesIn(fixture_files()), [](const auto& info) {
  std::string n = fs::path(info.param).stem().string();
  for (auto& ch : n)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return n;
});

}  // namespace
}  // namespace rbn
