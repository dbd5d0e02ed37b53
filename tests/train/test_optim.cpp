// Optimizers against torch.optim (fixtures from tools/make_optim_fixtures.py), the authors'
// RMSProp by hand, gradient clipping, validation, and bit-identical continuation from saved state.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "train/optim.hpp"
#include "train/schedule.hpp"
#include "util/error.hpp"

namespace rbn {
namespace {

nlohmann::json fixtures() {
  std::ifstream in(std::string(RBN_SOURCE_DIR) + "/tests/fixtures/optim/optim.json");
  return nlohmann::json::parse(in);
}

OptimConfig config_of(const nlohmann::json& c) {
  OptimConfig o;
  o.name = c["optimizer"].get<std::string>();
  const auto& k = c["config"];
  o.lr = k.value("lr", 1e-3);
  o.momentum = k.value("momentum", 0.0);
  o.dampening = k.value("dampening", 0.0);
  o.nesterov = k.value("nesterov", false);
  o.alpha = k.value("alpha", 0.99);
  o.centered = k.value("centered", false);
  o.eps = k.value("eps", o.name == "rmsprop" ? 1e-8 : 1e-8);
  o.beta1 = k.value("beta1", 0.9);
  o.beta2 = k.value("beta2", 0.999);
  o.weight_decay = k.value("weight_decay", 0.0);
  return o;
}

TEST(Optim, MatchesTorchOptim) {
  const auto j = fixtures();
  double worst = 0;
  for (const auto& c : j["cases"]) {
    const OptimConfig oc = config_of(c);
    auto opt = make_optimizer(oc);
    std::vector<float> p = c["p0"].get<std::vector<float>>(), g(p.size());
    std::vector<ParamRef> refs{{"w", p.data(), g.data(), p.size()}};
    for (size_t s = 0; s < c["grads"].size(); ++s) {
      g = c["grads"][s].get<std::vector<float>>();
      refs[0].grad = g.data();
      opt->step(refs, static_cast<float>(oc.lr));
      const auto want = c["after"][s].get<std::vector<float>>();
      for (size_t i = 0; i < p.size(); ++i) {
        const double d = std::abs(p[i] - want[i]);
        worst = std::max(worst, d / (1 + std::abs(want[i])));
        EXPECT_NEAR(p[i], want[i], 2e-6 * (1 + std::abs(want[i]))) << c["config"].dump() << " step " << s;
      }
    }
  }
  std::printf("[ optim ] largest relative difference from torch.optim: %.2e\n", worst);
}

TEST(Optim, ClipGradNormMatchesTorch) {
  const auto c = fixtures()["clip"];
  auto a = c["grads"][0].get<std::vector<float>>(), b = c["grads"][1].get<std::vector<float>>();
  std::vector<float> pa(a.size()), pb(b.size());
  std::vector<ParamRef> refs{{"a", pa.data(), a.data(), a.size()}, {"b", pb.data(), b.data(), b.size()}};
  const float norm = clip_grad_norm(refs, c["max_norm"].get<float>());
  EXPECT_NEAR(norm, c["norm"].get<double>(), 1e-5);
  const auto wa = c["after"][0].get<std::vector<float>>(), wb = c["after"][1].get<std::vector<float>>();
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], wa[i], 1e-6);
  for (size_t i = 0; i < b.size(); ++i) EXPECT_NEAR(b[i], wb[i], 1e-6);
  // non-finite gradients: the norm says so and nothing is scaled
  b[0] = NAN;
  EXPECT_FALSE(std::isfinite(clip_grad_norm(refs, 1.0f)));
  EXPECT_EQ(a[1], wa[1]);
}

TEST(Optim, AuthorsRmsPropByHand) {
  OptimConfig oc;
  oc.name = "rmsprop-authors";
  oc.lr = 0.1;
  oc.decay = 0.5;
  auto opt = make_optimizer(oc);
  std::vector<float> p{1.0f, -2.0f, 0.0f}, g{0.5f, -1.0f, 0.0f};
  std::vector<ParamRef> refs{{"w", p.data(), g.data(), 3}};
  opt->step(refs, 0.1f);
  // ms = 0.5 * g^2; step = lr g / max(sqrt(ms), 1e-5)
  EXPECT_NEAR(p[0], 1.0 - 0.1 * 0.5 / std::sqrt(0.5 * 0.25), 1e-6);
  EXPECT_NEAR(p[1], -2.0 + 0.1 * 1.0 / std::sqrt(0.5), 1e-6);
  EXPECT_EQ(p[2], 0.0f);
  opt->step(refs, 0.1f);  // ms = 0.5 ms + 0.5 g^2 = 0.75 g^2
  EXPECT_NEAR(p[0], 1.0 - 0.1 * 0.5 / std::sqrt(0.125) - 0.1 * 0.5 / std::sqrt(0.1875), 1e-6);
}

TEST(Optim, InvalidConfigsNameTheFlag) {
  auto expect_flag = [](OptimConfig c, const char* flag) {
    try {
      make_optimizer(c);
      ADD_FAILURE() << "no error for " << flag;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(flag), std::string::npos) << e.what();
    }
  };
  OptimConfig c;
  c.lr = -1;
  expect_flag(c, "--lr");
  c = {};
  c.name = "adagrad";
  expect_flag(c, "--optimizer");
  c = {};
  c.momentum = 1.5;
  expect_flag(c, "--momentum");
  c = {};
  c.beta2 = 1.0;
  expect_flag(c, "--beta2");
}

TEST(Optim, SavedStateContinuesBitIdentically) {
  for (const char* name : {"sgd", "rmsprop", "adam", "rmsprop-authors"}) {
    OptimConfig oc;
    oc.name = name;
    oc.lr = 0.01;
    oc.momentum = std::string(name) == "rmsprop-authors" || std::string(name) == "adam" ? 0.0 : 0.9;
    auto run = [&](int steps, Optimizer& o, std::vector<float>& p) {
      std::vector<float> g(p.size());
      std::vector<ParamRef> refs{{"w", p.data(), g.data(), p.size()}};
      for (int s = 0; s < steps; ++s) {
        for (size_t i = 0; i < g.size(); ++i) g[i] = std::sin(float(o.steps() * 7 + i));
        o.step(refs, 0.01f);
      }
    };
    auto a = make_optimizer(oc);
    std::vector<float> pa(5, 1.0f);
    run(6, *a, pa);
    auto b = make_optimizer(oc);
    std::vector<float> pb(5, 1.0f);
    run(3, *b, pb);
    auto c = make_optimizer(oc);  // restore b's state into a fresh optimizer
    c->load_scalar_state(b->scalar_state());
    for (const auto& t : b->state_tensors())
      c->load_state_tensor(t.slot, t.param, std::vector<float>(t.data, t.data + t.numel));
    run(3, *c, pb);
    EXPECT_EQ(pa, pb) << name;
  }
}

TEST(Schedule, StepExpAndPlateau) {
  LrSchedule s("step", 1.0, 0.5, 10, 0);
  EXPECT_DOUBLE_EQ(s.lr(9), 1.0);
  EXPECT_DOUBLE_EQ(s.lr(10), 0.5);
  LrSchedule e("exp", 1.0, 0.5, 10, 0);
  EXPECT_NEAR(e.lr(5), std::sqrt(0.5), 1e-12);
  LrSchedule p("plateau", 1.0, 0.1, 1, 1);
  p.on_eval(1.0);
  p.on_eval(1.0);  // 1 bad: within patience
  EXPECT_DOUBLE_EQ(p.lr(0), 1.0);
  p.on_eval(1.0);  // 2 bad: decay
  EXPECT_DOUBLE_EQ(p.lr(0), 0.1);
  LrSchedule q("plateau", 1.0, 0.1, 1, 1);
  q.load_state(p.state());
  EXPECT_DOUBLE_EQ(q.lr(0), 0.1);
  EXPECT_THROW(LrSchedule("cosine", 1, 0.5, 1, 1), UsageError);
}

}  // namespace
}  // namespace rbn
