// Optimizers, gradient clipping and learning-rate schedules against torch (fixtures from
// tools/make_optim_fixtures.py: torch.optim, torch.nn.utils.clip_grad_norm_,
// torch.optim.lr_scheduler), the authors' RMSProp by hand, validation, and bit-identical
// continuation from saved state.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>
#include <omp.h>

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
  o.eps = k.value("eps", 1e-8);
  o.beta1 = k.value("beta1", 0.9);
  o.beta2 = k.value("beta2", 0.999);
  o.weight_decay = k.value("weight_decay", 0.0);
  return o;
}

using Tensors = std::map<std::string, std::vector<float>>;

// Difference from the fixture's value relative to 1 + |value|: a few float epsilons. Not ulps:
// torch's vector loops use fused multiply-adds, and values that are small differences of large
// ones (a momentum buffer near zero) lose their low bits either way.
double rel(float have, float want) { return std::abs(double(have) - double(want)) / (1 + std::abs(double(want))); }
constexpr double kTol = 1e-6;

// Every case, both parameters (7 values: a scalar loop; 21: a vector loop with a tail, a dotted
// name), five steps; then the optimizer state under torch's slot names. rbn does the float
// arithmetic in torch's order, so the results agree to float rounding.
TEST(Optim, MatchesTorchOptim) {
  const auto j = fixtures();
  double worst = 0;
  for (const auto& c : j["cases"]) {
    const OptimConfig oc = config_of(c);
    auto opt = make_optimizer(oc);
    Tensors p = c["params"].get<Tensors>(), g;
    for (size_t s = 0; s < c["grads"].size(); ++s) {
      g = c["grads"][s].get<Tensors>();
      std::vector<ParamRef> refs;
      for (auto& [name, v] : p) refs.push_back({name, v.data(), g.at(name).data(), v.size()});
      opt->step(refs, static_cast<float>(oc.lr));
      const auto want = c["after"][s].get<Tensors>();
      for (const auto& [name, v] : p)
        for (size_t i = 0; i < v.size(); ++i) {
          const double d = rel(v[i], want.at(name)[i]);
          worst = std::max(worst, d);
          EXPECT_LE(d, kTol) << c["optimizer"] << " " << c["config"].dump() << " step " << s << " " << name << "[" << i
                          << "]: " << v[i] << " vs " << want.at(name)[i];
        }
    }
    EXPECT_EQ(opt->step_count(), static_cast<int64_t>(c["grads"].size()));
    // state: exactly torch's slots, values as torch's
    size_t n_slots = 0;
    for (const auto& [slot, per_param] : c["state"].items()) {
      for (const auto& [name, want] : per_param.items()) {
        const float* have = opt->slot(slot, name);
        ASSERT_NE(have, nullptr) << c["optimizer"] << " slot " << slot << " " << name;
        const auto w = want.get<std::vector<float>>();
        for (size_t i = 0; i < w.size(); ++i) EXPECT_LE(rel(have[i], w[i]), kTol) << slot << " " << name << "[" << i << "]";
        ++n_slots;
      }
    }
    EXPECT_EQ(opt->state_tensors().size(), n_slots) << c["optimizer"] << " " << c["config"].dump();
  }
  std::printf("[ optim ] largest relative difference from torch.optim: %.2e\n", worst);
}

TEST(Optim, ClipGradNormMatchesTorch) {
  const auto j = fixtures();  // (the range of a range-for must outlive the loop)
  for (const auto& c : j["clip"]) {
    Tensors g = c["grads"].get<Tensors>(), p;
    std::vector<ParamRef> refs;
    for (auto& [name, v] : g) {
      p[name].assign(v.size(), 0.0f);
      refs.push_back({name, p[name].data(), v.data(), v.size()});
    }
    const float norm = clip_grad_norm(refs, c["max_norm"].get<float>());
    EXPECT_NEAR(norm, c["norm"].get<double>(), 1e-6 * c["norm"].get<double>());
    const auto want = c["after"].get<Tensors>();
    for (const auto& [name, v] : g)
      for (size_t i = 0; i < v.size(); ++i) EXPECT_LE(rel(v[i], want.at(name)[i]), kTol) << name << "[" << i << "]";
  }
  // non-finite gradients: the norm says so and nothing is scaled
  std::vector<float> a{3.0f, 4.0f}, b{NAN}, pa(2), pb(1);
  std::vector<ParamRef> refs{{"a", pa.data(), a.data(), 2}, {"b", pb.data(), b.data(), 1}};
  EXPECT_FALSE(std::isfinite(clip_grad_norm(refs, 1.0f)));
  EXPECT_EQ(a[1], 4.0f);
  EXPECT_THROW(clip_grad_norm(refs, 0.0f), UsageError);
}

TEST(Schedule, MatchesTorchLrScheduler) {
  const auto j = fixtures();
  for (const auto& c : j["schedules"]) {
    ScheduleConfig sc;
    sc.kind = c["kind"].get<std::string>();
    sc.lr = c["lr"].get<double>();
    sc.gamma = c.value("gamma", 0.5);
    sc.every = c.value("every", int64_t{1});
    sc.patience = c.value("patience", 2);
    sc.min_lr = c.value("min_lr", 0.0);
    LrSchedule s(sc);
    const auto want = c["lrs"].get<std::vector<double>>();
    for (size_t i = 0; i < want.size(); ++i) {
      double have;
      if (sc.kind == "plateau") {  // the rate after each validation result (null: NaN)
        const auto& m = c["metrics"][i];
        s.on_eval(m.is_null() ? NAN : m.get<double>());
        have = s.lr(static_cast<int64_t>(i));
      } else {
        have = s.lr(static_cast<int64_t>(i));
      }
      EXPECT_NEAR(have, want[i], 1e-12 * want[i]) << c.dump() << " at " << i;
    }
  }
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
  c.lr = NAN;
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
  c = {};
  c.nesterov = true;  // adam has none
  expect_flag(c, "--nesterov");
  c.name = "sgd";  // needs momentum
  expect_flag(c, "--nesterov");
  c = {};
  c.dampening = 2;
  expect_flag(c, "--dampening");
  c = {};
  c.eps = 0;
  expect_flag(c, "--opt-eps");
}

TEST(Optim, StateOfAnotherModelIsRejected) {
  OptimConfig oc;
  oc.name = "adam";
  auto opt = make_optimizer(oc);
  std::vector<float> p(4, 1.0f), g(4, 0.5f);
  std::vector<ParamRef> refs{{"w", p.data(), g.data(), 4}};
  opt->step(refs, 0.01f);
  auto other = make_optimizer(oc);
  Optimizer::State s = opt->state();
  s.tensors["optim.exp_avg.w"].resize(3);
  other->load_state(s);
  EXPECT_THROW(other->step(refs, 0.01f), DataError);
  s.tensors["optim.momentum_buffer.w"] = {1};
  EXPECT_THROW(other->load_state(s), DataError);
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
        for (size_t i = 0; i < g.size(); ++i) g[i] = std::sin(float(o.step_count() * 7 + i));
        o.step(refs, 0.01f);
      }
    };
    auto a = make_optimizer(oc);
    std::vector<float> pa(5, 1.0f);
    run(6, *a, pa);
    auto b = make_optimizer(oc);
    std::vector<float> pb(5, 1.0f);
    run(3, *b, pb);
    auto c = make_optimizer(oc);  // restore b's state into a fresh optimizer, as a checkpoint does
    c->load_scalar_state(b->scalar_state());
    Optimizer::State saved;
    saved.step_count = c->step_count();
    for (const auto& t : b->state_tensors())
      saved.tensors.emplace(Optimizer::tensor_name(t.slot, t.param), std::vector<float>(t.data, t.data + t.numel));
    c->load_state(saved);
    run(3, *c, pb);
    EXPECT_EQ(pa, pb) << name;
    auto d = make_optimizer(oc);  // and through the whole-state API
    std::vector<float> pd(5, 1.0f);
    run(3, *d, pd);
    auto e = make_optimizer(oc);
    e->load_state(d->state());
    run(3, *e, pd);
    EXPECT_EQ(pa, pd) << name;
  }
}

// A parameter large enough to be updated by several threads gets, value for value, what one
// thread computes; the gradient norm is the same sum whatever the thread count.
TEST(Optim, ThreadCountDoesNotChangeResults) {
  const size_t n = 100003;  // above the parallel threshold, not a multiple of the vector width
  std::vector<float> g0(n);
  for (size_t i = 0; i < n; ++i) g0[i] = std::sin(float(i) * 0.37f) * (i % 7 == 0 ? 30.0f : 1.0f);
  const int threads_before = omp_get_max_threads();
  for (const char* name : {"sgd", "rmsprop", "adam", "rmsprop-authors"}) {
    OptimConfig oc;
    oc.name = name;
    oc.lr = 0.01;
    oc.weight_decay = 1e-3;
    oc.momentum = std::string(name) == "sgd" || std::string(name) == "rmsprop" ? 0.9 : 0.0;
    oc.centered = std::string(name) == "rmsprop";
    std::vector<float> result[2];
    float norm[2];
    for (int threads : {1, 2}) {
      omp_set_num_threads(threads);
      auto o = make_optimizer(oc);
      std::vector<float> p(n, 0.5f), g = g0;
      std::vector<ParamRef> refs{{"w", p.data(), g.data(), n}};
      for (int s = 0; s < 3; ++s) {
        g = g0;
        norm[threads - 1] = clip_grad_norm(refs, 10.0f);
        o->step(refs, 0.01f);
      }
      result[threads - 1] = p;
    }
    omp_set_num_threads(threads_before);
    EXPECT_EQ(result[0], result[1]) << name;
    EXPECT_EQ(norm[0], norm[1]) << name;
    long double sq = 0;
    for (float v : g0) sq += static_cast<long double>(v) * v;
    EXPECT_NEAR(norm[0], std::sqrt(static_cast<double>(sq)), 1e-6 * std::sqrt(static_cast<double>(sq)));
  }
}

TEST(Schedule, StepExpPlateauAndState) {
  LrSchedule s("step", 1.0, 0.5, 10, 0);
  EXPECT_DOUBLE_EQ(s.lr(9), 1.0);
  EXPECT_DOUBLE_EQ(s.lr(10), 0.5);
  LrSchedule e("exp", 1.0, 0.5, 10, 0);
  EXPECT_NEAR(e.lr(5), std::sqrt(0.5), 1e-12);
  ScheduleConfig ec;
  ec.kind = "step";
  ec.lr = 1.0;
  ec.every = 2;
  ec.unit = "epochs";
  ec.steps_per_epoch = 100;
  LrSchedule se(ec);
  EXPECT_DOUBLE_EQ(se.lr(199), 1.0);
  EXPECT_DOUBLE_EQ(se.lr(200), 0.5);
  LrSchedule p("plateau", 1.0, 0.1, 1, 1);
  p.on_eval(1.0);
  p.on_eval(1.0);  // 1 bad: within patience
  EXPECT_DOUBLE_EQ(p.lr(0), 1.0);
  p.on_eval(1.0);  // 2 bad: decay
  EXPECT_DOUBLE_EQ(p.lr(0), 0.1);
  LrSchedule q("plateau", 1.0, 0.1, 1, 1);
  q.load_state(p.state());
  EXPECT_DOUBLE_EQ(q.lr(0), 0.1);
  EXPECT_EQ(q.best(), p.best());
  EXPECT_THROW(LrSchedule("cosine", 1, 0.5, 1, 1), UsageError);
  EXPECT_THROW(LrSchedule("step", 1, 0.5, 0, 1), UsageError);
  LrSchedule other("step", 1.0, 0.5, 10, 0);
  EXPECT_THROW(other.load_state(p.state()), DataError);
}

}  // namespace
}  // namespace rbn
