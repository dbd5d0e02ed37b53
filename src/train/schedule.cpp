#include "train/schedule.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "train/config.hpp"
#include "util/error.hpp"

namespace rbn {

void ScheduleConfig::validate() const {
  if (kind != "constant" && kind != "step" && kind != "exp" && kind != "plateau")
    throw UsageError("--lr-schedule: must be constant, step, exp or plateau, got '" + kind + "'");
  if (!(lr > 0 && std::isfinite(lr))) throw UsageError(fmt::format("--lr: must be positive, got {}", lr));
  if (!(gamma > 0 && gamma <= 1)) throw UsageError(fmt::format("--lr-gamma: must be in (0, 1], got {}", gamma));
  if (every <= 0) throw UsageError(fmt::format("--lr-step: must be positive, got {}", every));
  if (unit != "steps" && unit != "epochs")
    throw UsageError("--lr-unit: must be steps or epochs, got '" + unit + "'");
  if (steps_per_epoch <= 0)
    throw UsageError(fmt::format("--batch-size: an epoch must hold at least one step, got {}", steps_per_epoch));
  if (patience < 0) throw UsageError(fmt::format("--lr-patience: must be >= 0, got {}", patience));
  if (!(threshold >= 0 && threshold < 1))
    throw UsageError(fmt::format("--lr-threshold: must be in [0, 1), got {}", threshold));
  if (!(min_lr >= 0 && min_lr <= lr)) throw UsageError(fmt::format("--lr-min: must be in [0, lr], got {}", min_lr));
}

LrSchedule::LrSchedule(const ScheduleConfig& cfg) : cfg_(cfg), lr_(cfg.lr) { cfg_.validate(); }

LrSchedule::LrSchedule(std::string kind, double lr0, double gamma, int64_t every, int patience)
    : LrSchedule([&] {
        ScheduleConfig c;
        c.kind = std::move(kind);
        c.lr = lr0;
        c.gamma = gamma;
        c.every = every;
        c.patience = patience;
        return c;
      }()) {}

double LrSchedule::lr(int64_t step) const {
  const bool epochs = cfg_.unit == "epochs";
  if (cfg_.kind == "step") {
    const int64_t s = epochs ? step / cfg_.steps_per_epoch : step;
    return cfg_.lr * std::pow(cfg_.gamma, static_cast<double>(s / cfg_.every));
  }
  if (cfg_.kind == "exp") {
    const double s = epochs ? static_cast<double>(step) / static_cast<double>(cfg_.steps_per_epoch)
                            : static_cast<double>(step);
    return cfg_.lr * std::pow(cfg_.gamma, s / static_cast<double>(cfg_.every));
  }
  if (cfg_.kind == "plateau") return lr_;
  return cfg_.lr;
}

void LrSchedule::on_eval(double metric) {
  if (cfg_.kind != "plateau") return;
  // torch: is_better(a, best) = a < best·(1 − threshold); NaN is never better.
  if (metric < best_ * (1.0 - cfg_.threshold)) {
    best_ = metric;
    bad_ = 0;
  } else {
    ++bad_;
  }
  if (bad_ > cfg_.patience) {
    const double next = std::max(lr_ * cfg_.gamma, cfg_.min_lr);
    if (lr_ - next > 1e-8) lr_ = next;  // torch's eps: changes smaller than this are skipped
    bad_ = 0;
  }
}

nlohmann::json LrSchedule::state() const {
  nlohmann::json j{{"kind", cfg_.kind}, {"lr", lr_}, {"bad", bad_}};
  // JSON has no infinity: "no evaluation yet" is null
  j["best"] = std::isfinite(best_) ? nlohmann::json(best_) : nlohmann::json(nullptr);
  return j;
}

void LrSchedule::load_state(const nlohmann::json& j) {
  auto malformed = [] { throw DataError("learning-rate schedule state is malformed"); };
  if (!j.is_object() || !j.contains("kind") || !j["kind"].is_string()) malformed();
  if (j["kind"].get<std::string>() != cfg_.kind)
    throw DataError("learning-rate schedule in the checkpoint is '" + j["kind"].get<std::string>() +
                    "', the config says '" + cfg_.kind + "'");
  double lr = cfg_.lr, best = INFINITY;
  int bad = 0;
  if (j.contains("lr")) {
    if (!j["lr"].is_number()) malformed();
    lr = j["lr"].get<double>();
  } else if (j.contains("scale")) {  // written before the rate itself was kept
    if (!j["scale"].is_number()) malformed();
    lr = cfg_.lr * j["scale"].get<double>();
  }
  if (j.contains("best") && !j["best"].is_null()) {
    if (!j["best"].is_number()) malformed();
    best = j["best"].get<double>();
    if (best >= 1e300) best = INFINITY;  // the old sentinel
  }
  if (j.contains("bad")) {
    if (!j["bad"].is_number_integer()) malformed();
    bad = j["bad"].get<int>();
  }
  if (!(lr > 0 && std::isfinite(lr)) || bad < 0) malformed();
  lr_ = lr;
  best_ = best;
  bad_ = bad;
}

LrSchedule make_schedule(const TrainConfig& cfg) {
  ScheduleConfig s;
  s.kind = cfg.lr_schedule;
  s.lr = cfg.lr;
  s.gamma = cfg.lr_gamma;
  s.every = cfg.lr_step;
  s.patience = cfg.lr_patience;
  s.threshold = cfg.lr_threshold;
  s.min_lr = cfg.lr_min;
  return LrSchedule(s);
}

}  // namespace rbn
