#include "train/optim.hpp"

#include <cmath>

#include "util/error.hpp"

namespace rbn {

void OptimConfig::validate() const {
  auto bad = [](const char* flag, const std::string& what) { throw UsageError(std::string(flag) + ": " + what); };
  if (name != "sgd" && name != "rmsprop" && name != "adam" && name != "rmsprop-authors")
    bad("--optimizer", "unknown optimizer '" + name + "' (sgd, rmsprop, adam, rmsprop-authors)");
  if (!(lr > 0) || !std::isfinite(lr)) bad("--lr", "must be positive");
  if (momentum < 0 || momentum >= 1) bad("--momentum", "must be in [0, 1)");
  if (nesterov && (momentum <= 0 || dampening != 0)) bad("--nesterov", "needs momentum > 0 and no dampening");
  if (!(alpha >= 0 && alpha < 1)) bad("--alpha", "must be in [0, 1)");
  if (!(eps > 0)) bad("--opt-eps", "must be positive");
  if (!(beta1 >= 0 && beta1 < 1)) bad("--beta1", "must be in [0, 1)");
  if (!(beta2 >= 0 && beta2 < 1)) bad("--beta2", "must be in [0, 1)");
  if (weight_decay < 0) bad("--weight-decay", "must be >= 0");
  if (!(decay >= 0 && decay < 1)) bad("--decay", "must be in [0, 1)");
}

void Optimizer::step(std::span<const ParamRef> params, float lr) {
  ++step_;
  const auto names = slots();
  std::vector<float*> s(names.size());
  for (const auto& p : params) {
    for (size_t i = 0; i < names.size(); ++i) {
      auto& v = state_[names[i]][p.name];
      if (v.size() != p.numel) v.assign(p.numel, 0.0f);
      s[i] = v.data();
    }
    update(p, s, lr);
  }
}

std::vector<SlotView> Optimizer::state_tensors() {
  std::vector<SlotView> out;
  for (auto& [slot, m] : state_)
    for (auto& [param, v] : m) out.push_back({slot, param, v.data(), v.size()});
  return out;
}

nlohmann::json Optimizer::scalar_state() const { return {{"name", cfg_.name}, {"step", step_}}; }

void Optimizer::load_scalar_state(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer())
    throw DataError("optimizer state: no step count");
  if (j.value("name", cfg_.name) != cfg_.name)
    throw DataError("optimizer state was written by '" + j.value("name", std::string()) + "', not '" +
                    cfg_.name + "'");
  step_ = j["step"].get<int64_t>();
}

void Optimizer::load_state_tensor(const std::string& slot, const std::string& param,
                                  const std::vector<float>& v) {
  const auto names = slots();
  if (std::find(names.begin(), names.end(), slot) == names.end())
    throw DataError("optimizer state: slot '" + slot + "' does not belong to " + cfg_.name);
  state_[slot][param] = v;
}

namespace {

// torch.optim.SGD: d = g + wd p; buf = momentum buf + (1 - dampening) d (buf = d at first);
// d = nesterov ? d + momentum buf : buf; p -= lr d.
class Sgd final : public Optimizer {
 public:
  explicit Sgd(const OptimConfig& c) : Optimizer(c) {}
  std::vector<std::string> slots() const override {
    return cfg_.momentum > 0 ? std::vector<std::string>{"momentum_buffer"} : std::vector<std::string>{};
  }
  void update(const ParamRef& p, std::vector<float*>& s, float lr) override {
    const float wd = static_cast<float>(cfg_.weight_decay), mom = static_cast<float>(cfg_.momentum),
                damp = static_cast<float>(cfg_.dampening);
    const bool first = step_ == 1;
    for (size_t i = 0; i < p.numel; ++i) {
      float d = p.grad[i] + wd * p.value[i];
      if (mom > 0) {
        float& b = s[0][i];
        b = first ? d : mom * b + (1 - damp) * d;
        d = cfg_.nesterov ? d + mom * b : b;
      }
      p.value[i] -= lr * d;
    }
  }
};

// torch.optim.RMSprop: v = alpha v + (1-alpha) g^2; (centered: ga = alpha ga + (1-alpha) g,
// avg = sqrt(v - ga^2) + eps, else sqrt(v) + eps); momentum: buf = m buf + g/avg, p -= lr buf;
// else p -= lr g/avg.
class RmsProp final : public Optimizer {
 public:
  explicit RmsProp(const OptimConfig& c) : Optimizer(c) {}
  std::vector<std::string> slots() const override {
    std::vector<std::string> v{"square_avg"};
    if (cfg_.momentum > 0) v.push_back("momentum_buffer");
    if (cfg_.centered) v.push_back("grad_avg");
    return v;
  }
  void update(const ParamRef& p, std::vector<float*>& s, float lr) override {
    const float a = static_cast<float>(cfg_.alpha), eps = static_cast<float>(cfg_.eps),
                wd = static_cast<float>(cfg_.weight_decay), mom = static_cast<float>(cfg_.momentum);
    float* sq = s[0];
    float* buf = cfg_.momentum > 0 ? s[1] : nullptr;
    float* ga = cfg_.centered ? s.back() : nullptr;
    for (size_t i = 0; i < p.numel; ++i) {
      const float g = p.grad[i] + wd * p.value[i];
      sq[i] = a * sq[i] + (1 - a) * g * g;
      float avg;
      if (ga) {
        ga[i] = a * ga[i] + (1 - a) * g;
        avg = std::sqrt(sq[i] - ga[i] * ga[i]) + eps;
      } else {
        avg = std::sqrt(sq[i]) + eps;
      }
      if (buf) {
        buf[i] = mom * buf[i] + g / avg;
        p.value[i] -= lr * buf[i];
      } else {
        p.value[i] -= lr * g / avg;
      }
    }
  }
};

// torch.optim.Adam (amsgrad off): m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).
class Adam final : public Optimizer {
 public:
  explicit Adam(const OptimConfig& c) : Optimizer(c) {}
  std::vector<std::string> slots() const override { return {"exp_avg", "exp_avg_sq"}; }
  void update(const ParamRef& p, std::vector<float*>& s, float lr) override {
    const float b1 = static_cast<float>(cfg_.beta1), b2 = static_cast<float>(cfg_.beta2),
                eps = static_cast<float>(cfg_.eps), wd = static_cast<float>(cfg_.weight_decay);
    const double bc1 = 1 - std::pow(cfg_.beta1, static_cast<double>(step_));
    const double bc2 = 1 - std::pow(cfg_.beta2, static_cast<double>(step_));
    const float step_size = static_cast<float>(lr / bc1);
    const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
    float* m = s[0];
    float* v = s[1];
    for (size_t i = 0; i < p.numel; ++i) {
      const float g = p.grad[i] + wd * p.value[i];
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      p.value[i] -= step_size * m[i] / (std::sqrt(v[i]) / bc2_sqrt + eps);
    }
  }
};

// The authors' RMSProp (Blocks): ms = d ms + (1-d) g^2; p -= lr g / max(sqrt(ms), 1e-5).
class RmsPropAuthors final : public Optimizer {
 public:
  explicit RmsPropAuthors(const OptimConfig& c) : Optimizer(c) {}
  std::vector<std::string> slots() const override { return {"square_avg"}; }
  void update(const ParamRef& p, std::vector<float*>& s, float lr) override {
    const float d = static_cast<float>(cfg_.decay), wd = static_cast<float>(cfg_.weight_decay);
    float* ms = s[0];
    for (size_t i = 0; i < p.numel; ++i) {
      const float g = p.grad[i] + wd * p.value[i];
      ms[i] = d * ms[i] + (1 - d) * g * g;
      p.value[i] -= lr * g / std::max(std::sqrt(ms[i]), 1e-5f);
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

float clip_grad_norm(std::span<const ParamRef> params, float max_norm) {
  double sq = 0;
  for (const auto& p : params)
    for (size_t i = 0; i < p.numel; ++i) sq += static_cast<double>(p.grad[i]) * p.grad[i];
  const double norm = std::sqrt(sq);
  if (std::isfinite(norm) && std::isfinite(max_norm) && norm > max_norm) {
    const float scale = static_cast<float>(max_norm / (norm + 1e-6));
    for (const auto& p : params)
      for (size_t i = 0; i < p.numel; ++i) p.grad[i] *= scale;
  }
  return static_cast<float>(norm);
}

}  // namespace rbn
