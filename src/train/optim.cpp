#include "train/optim.hpp"

#include <algorithm>
#include <cmath>
#include <utility>

#include <fmt/format.h>

#include "util/error.hpp"

namespace rbn {

// Float arithmetic follows torch's CPU kernels so that results agree to the last bit or two:
// Python-float hyperparameters (and expressions of them like 1 - beta1) are computed in double,
// then cast to float once, as torch casts a Scalar to the tensor's type; addcmul is
// self + (value·t1)·t2 and addcdiv is self + (value·t1)/t2, in that order.

void OptimConfig::validate() const {
  auto bad = [](const char* flag, const char* what, double got) {
    throw UsageError(fmt::format("{}: {}, got {}", flag, what, got));
  };
  // Written as "!(ok)" so that NaN fails every check.
  if (name != "sgd" && name != "rmsprop" && name != "adam" && name != "rmsprop-authors")
    throw UsageError("--optimizer: unknown optimizer '" + name + "' (sgd, rmsprop, adam, rmsprop-authors)");
  if (!(lr > 0 && std::isfinite(lr))) bad("--lr", "must be positive", lr);
  if (!(momentum >= 0 && momentum < 1)) bad("--momentum", "must be in [0, 1)", momentum);
  if (!(dampening >= 0 && dampening <= 1)) bad("--dampening", "must be in [0, 1]", dampening);
  if (nesterov && name != "sgd") throw UsageError("--nesterov: only sgd has Nesterov momentum, this run uses " + name);
  if (nesterov && !(momentum > 0 && dampening == 0))
    throw UsageError(fmt::format("--nesterov: needs momentum > 0 and dampening 0, got momentum {} and dampening {}",
                                 momentum, dampening));
  if (!(alpha >= 0 && alpha < 1)) bad("--alpha", "must be in [0, 1)", alpha);
  if (!(eps > 0 && std::isfinite(eps))) bad("--opt-eps", "must be positive", eps);
  if (!(beta1 >= 0 && beta1 < 1)) bad("--beta1", "must be in [0, 1)", beta1);
  if (!(beta2 >= 0 && beta2 < 1)) bad("--beta2", "must be in [0, 1)", beta2);
  if (!(weight_decay >= 0 && std::isfinite(weight_decay))) bad("--weight-decay", "must be >= 0", weight_decay);
  if (!(decay >= 0 && decay < 1)) bad("--decay", "must be in [0, 1)", decay);
}

void Optimizer::step(std::span<const ParamRef> params, float lr) {
  ++step_;
  const auto names = slot_names();
  std::vector<float*> s(names.size());
  for (const auto& p : params) {
    bool fresh = false;
    for (size_t i = 0; i < names.size(); ++i) {
      auto& per_param = state_[names[i]];
      auto it = per_param.find(p.name);
      if (it == per_param.end()) {
        it = per_param.emplace(p.name, std::vector<float>(p.numel, 0.0f)).first;
        fresh = true;
      } else if (it->second.size() != p.numel) {
        // never silently restart: the state came from another model
        throw DataError(fmt::format("optimizer state {} has {} values, the parameter has {}",
                                    tensor_name(names[i], p.name), it->second.size(), p.numel));
      }
      s[i] = it->second.data();
    }
    update(p, s, fresh, lr);
  }
}

float* Optimizer::slot(std::string_view slot, std::string_view param) {
  return const_cast<float*>(std::as_const(*this).slot(slot, param));
}

const float* Optimizer::slot(std::string_view slot, std::string_view param) const {
  const auto a = state_.find(slot);
  if (a == state_.end()) return nullptr;
  const auto b = a->second.find(param);
  return b == a->second.end() ? nullptr : b->second.data();
}

std::vector<SlotView> Optimizer::state_tensors() {
  std::vector<SlotView> out;
  for (auto& [slot, m] : state_)
    for (auto& [param, v] : m) out.push_back({slot, param, v.data(), v.size()});
  return out;
}

Optimizer::State Optimizer::state() const {
  State s;
  s.step_count = step_;
  for (const auto& [slot, m] : state_)
    for (const auto& [param, v] : m) s.tensors.emplace(tensor_name(slot, param), v);
  return s;
}

void Optimizer::load_state(const State& s) {
  if (s.step_count < 0) throw DataError(fmt::format("optimizer state: negative step count {}", s.step_count));
  const auto names = slot_names();
  decltype(state_) fresh;
  for (const auto& [name, v] : s.tensors) {
    // optim.<slot>.<param>: slot names have no '.', parameter names do (rnn.0.weight_ih)
    const size_t dot = name.find('.', 6);
    const std::string slot = dot == std::string::npos ? "" : name.substr(6, dot - 6);
    if (!name.starts_with("optim.") || dot == std::string::npos || dot + 1 == name.size() ||
        std::find(names.begin(), names.end(), slot) == names.end())
      throw DataError("optimizer state: '" + name + "' is not optim.<slot>.<parameter> with a slot of " +
                      cfg_.name);
    fresh[slot][name.substr(dot + 1)] = v;
  }
  state_ = std::move(fresh);
  step_ = s.step_count;
}

nlohmann::json Optimizer::scalar_state() const { return {{"name", cfg_.name}, {"step", step_}}; }

void Optimizer::load_scalar_state(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer() || j["step"].get<int64_t>() < 0)
    throw DataError("optimizer state: no valid step count");
  if (j.contains("name") && (!j["name"].is_string() || j["name"].get<std::string>() != cfg_.name))
    throw DataError("optimizer state was written by '" + (j["name"].is_string() ? j["name"].get<std::string>() : j["name"].dump()) +
                    "', this run uses '" + cfg_.name + "'");
  step_ = j["step"].get<int64_t>();
}

namespace {

float f32(double x) { return static_cast<float>(x); }

// The updates are elementwise: each value's result is the same whichever thread computes it, so
// large parameters are split over the threads (a PTB step's Adam update is memory-bound: 4.3M
// values, 28 bytes each). Small ones stay on one thread (a parallel region costs microseconds).
// (optim.cpp is compiled with -fno-math-errno so that std::sqrt vectorizes; the results are
// the same, only errno is not set.)
constexpr size_t kParallelMin = size_t{1} << 15;

// torch.optim.SGD: d = g + wd·p; with momentum, buf = d on the first update, then
// buf = momentum·buf + (1 − dampening)·d; d = nesterov ? d + momentum·buf : buf; p += (−lr)·d.
class Sgd final : public Optimizer {
 public:
  explicit Sgd(const OptimConfig& c) : Optimizer(c) {}
  std::vector<std::string> slot_names() const override {
    return cfg_.momentum > 0 ? std::vector<std::string>{"momentum_buffer"} : std::vector<std::string>{};
  }
  void update(const ParamRef& p, std::span<float* const> s, bool fresh, float lr) override {
    const float wd = f32(cfg_.weight_decay), mom = f32(cfg_.momentum), one_m_damp = f32(1 - cfg_.dampening);
    const bool use_wd = cfg_.weight_decay != 0, use_mom = cfg_.momentum != 0, nesterov = cfg_.nesterov;
    float* buf = use_mom ? s[0] : nullptr;
#pragma omp parallel for simd schedule(static) if (p.numel >= kParallelMin)
    for (size_t i = 0; i < p.numel; ++i) {
      float d = p.grad[i];
      if (use_wd) d = d + wd * p.value[i];
      if (use_mom) {
        buf[i] = fresh ? d : buf[i] * mom + one_m_damp * d;  // torch: clone(d) when no buffer yet
        d = nesterov ? d + mom * buf[i] : buf[i];
      }
      p.value[i] = p.value[i] + (-lr) * d;
    }
  }
};

// torch.optim.RMSprop: g += wd·p; v = α·v + (1−α)·g²; avg = √v + eps (centered: ḡ = α·ḡ + (1−α)·g,
// avg = √(v − ḡ²) + eps); with momentum, buf = m·buf + g/avg, p += (−lr)·buf; else
// p += (−lr)·g/avg. eps is outside the square root.
class RmsProp final : public Optimizer {
 public:
  explicit RmsProp(const OptimConfig& c) : Optimizer(c) {}
  std::vector<std::string> slot_names() const override {
    std::vector<std::string> v{"square_avg"};
    if (cfg_.momentum > 0) v.push_back("momentum_buffer");
    if (cfg_.centered) v.push_back("grad_avg");
    return v;
  }
  void update(const ParamRef& p, std::span<float* const> s, bool, float lr) override {
    const float a = f32(cfg_.alpha), one_m_a = f32(1 - cfg_.alpha), eps = f32(cfg_.eps),
                wd = f32(cfg_.weight_decay), mom = f32(cfg_.momentum);
    const bool use_wd = cfg_.weight_decay != 0;
    float* sq = s[0];
    float* buf = cfg_.momentum > 0 ? s[1] : nullptr;
    float* ga = cfg_.centered ? s.back() : nullptr;
#pragma omp parallel for simd schedule(static) if (p.numel >= kParallelMin)
    for (size_t i = 0; i < p.numel; ++i) {
      float g = p.grad[i];
      if (use_wd) g = g + wd * p.value[i];
      sq[i] = sq[i] * a + one_m_a * g * g;
      float avg;
      if (ga) {
        ga[i] = ga[i] * a + one_m_a * g;
        avg = std::sqrt(sq[i] - ga[i] * ga[i]) + eps;
      } else {
        avg = std::sqrt(sq[i]) + eps;
      }
      if (buf) {
        buf[i] = buf[i] * mom + g / avg;
        p.value[i] = p.value[i] + (-lr) * buf[i];
      } else {
        p.value[i] = p.value[i] + (-lr) * g / avg;
      }
    }
  }
};

// torch.optim.Adam (amsgrad off): g += wd·p; m = β₁·m + (1−β₁)·g; v = β₂·v + (1−β₂)·g²;
// p += −(lr / (1−β₁ᵗ))·m / (√v / √(1−β₂ᵗ) + eps), the bias corrections in double.
class Adam final : public Optimizer {
 public:
  explicit Adam(const OptimConfig& c) : Optimizer(c) {}
  std::vector<std::string> slot_names() const override { return {"exp_avg", "exp_avg_sq"}; }
  void update(const ParamRef& p, std::span<float* const> s, bool, float lr) override {
    const float b1 = f32(cfg_.beta1), one_m_b1 = f32(1 - cfg_.beta1), b2 = f32(cfg_.beta2),
                one_m_b2 = f32(1 - cfg_.beta2), eps = f32(cfg_.eps), wd = f32(cfg_.weight_decay);
    const bool use_wd = cfg_.weight_decay != 0;
    const double t = static_cast<double>(step_);
    const double bc1 = 1 - std::pow(cfg_.beta1, t), bc2 = 1 - std::pow(cfg_.beta2, t);
    const float neg_step_size = f32(-(static_cast<double>(lr) / bc1));
    const float bc2_sqrt = f32(std::sqrt(bc2));
    float* m = s[0];
    float* v = s[1];
#pragma omp parallel for simd schedule(static) if (p.numel >= kParallelMin)
    for (size_t i = 0; i < p.numel; ++i) {
      float g = p.grad[i];
      if (use_wd) g = g + wd * p.value[i];
      m[i] = m[i] * b1 + one_m_b1 * g;
      v[i] = v[i] * b2 + one_m_b2 * g * g;
      const float denom = std::sqrt(v[i]) / bc2_sqrt + eps;
      p.value[i] = p.value[i] + neg_step_size * m[i] / denom;
    }
  }
};

// The authors' RMSProp (Blocks' RMSProp step rule, max_scaling 1e5): ms = d·ms + (1−d)·g²
// from ms = 0; p −= lr·g / max(√ms, 1e-5). Weight decay, if asked for, is L2 on g as elsewhere.
class RmsPropAuthors final : public Optimizer {
 public:
  explicit RmsPropAuthors(const OptimConfig& c) : Optimizer(c) {}
  std::vector<std::string> slot_names() const override { return {"square_avg"}; }
  void update(const ParamRef& p, std::span<float* const> s, bool, float lr) override {
    // Blocks keeps the decay rate as a float32 shared variable: 1 − d is a float subtraction.
    const float d = f32(cfg_.decay), one_m_d = 1.0f - d, wd = f32(cfg_.weight_decay);
    const bool use_wd = cfg_.weight_decay != 0;
    float* ms = s[0];
#pragma omp parallel for simd schedule(static) if (p.numel >= kParallelMin)
    for (size_t i = 0; i < p.numel; ++i) {
      float g = p.grad[i];
      if (use_wd) g = g + wd * p.value[i];
      ms[i] = d * ms[i] + one_m_d * (g * g);
      p.value[i] -= lr * (g / std::max(std::sqrt(ms[i]), 1e-5f));
    }
  }
};

}  // namespace

std::unique_ptr<Optimizer> make_optimizer(const OptimConfig& cfg) {
  cfg.validate();
  if (cfg.name == "sgd") return std::make_unique<Sgd>(cfg);
  if (cfg.name == "rmsprop") return std::make_unique<RmsProp>(cfg);
  if (cfg.name == "adam") return std::make_unique<Adam>(cfg);
  return std::make_unique<RmsPropAuthors>(cfg);
}

namespace {

// The sum of squares of g [n] in double, in fixed chunks summed in order: the same value whatever
// the number of threads (the chunks run in parallel when there are many).
double sum_of_squares(const float* g, size_t n) {
  constexpr size_t kChunk = size_t{1} << 14;
  const size_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(chunks);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (size_t c = 0; c < chunks; ++c) {
    const float* x = g + c * kChunk;
    const size_t m = std::min(kChunk, n - c * kChunk);
    double sq = 0;
#pragma omp simd reduction(+ : sq)
    for (size_t i = 0; i < m; ++i) sq += static_cast<double>(x[i]) * x[i];
    part[c] = sq;
  }
  double sq = 0;
  for (double v : part) sq += v;
  return sq;
}

}  // namespace

float clip_grad_norm(std::span<const ParamRef> params, float max_norm) {
  if (!(max_norm > 0)) throw UsageError(fmt::format("--clip: must be positive, got {}", max_norm));
  double sq = 0;
  for (const auto& p : params) sq += sum_of_squares(p.grad, p.numel);
  const float norm = static_cast<float>(std::sqrt(sq));
  if (!std::isfinite(norm) || std::isinf(max_norm)) return norm;
  // torch: clip_coef = max_norm / (total_norm + 1e-6) on a float tensor, clamped to 1.
  const float coef = max_norm / (norm + 1e-6f);
  if (coef < 1.0f)
    for (const auto& p : params) {
#pragma omp parallel for simd schedule(static) if (p.numel >= kParallelMin)
      for (size_t i = 0; i < p.numel; ++i) p.grad[i] *= coef;
    }
  return norm;
}

}  // namespace rbn
