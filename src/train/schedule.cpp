#include "train/schedule.hpp"

#include <cmath>

#include "train/config.hpp"
#include "util/error.hpp"

namespace rbn {

LrSchedule::LrSchedule(std::string kind, double lr0, double gamma, int64_t every, int patience)
    : kind_(std::move(kind)), lr0_(lr0), gamma_(gamma), every_(every), patience_(patience) {
  if (kind_ != "constant" && kind_ != "step" && kind_ != "exp" && kind_ != "plateau")
    throw UsageError("--lr-schedule: must be constant, step, exp or plateau");
  if (!(gamma_ > 0 && gamma_ <= 1)) throw UsageError("--lr-gamma: must be in (0, 1]");
  if (every_ <= 0) throw UsageError("--lr-step: must be positive");
  if (patience_ < 0) throw UsageError("--lr-patience: must be >= 0");
}

double LrSchedule::lr(int64_t step) const {
  if (kind_ == "step") return lr0_ * std::pow(gamma_, static_cast<double>(step / every_));
  if (kind_ == "exp") return lr0_ * std::pow(gamma_, static_cast<double>(step) / every_);
  if (kind_ == "plateau") return lr0_ * scale_;
  return lr0_;
}

void LrSchedule::on_eval(double metric) {
  if (kind_ != "plateau") return;
  // torch's default threshold: relative 1e-4
  if (metric < best_ * (1 - 1e-4)) {
    best_ = metric;
    bad_ = 0;
  } else if (++bad_ > patience_) {
    scale_ *= gamma_;
    bad_ = 0;
  }
}

nlohmann::json LrSchedule::state() const {
  return {{"kind", kind_}, {"scale", scale_}, {"best", best_}, {"bad", bad_}};
}

void LrSchedule::load_state(const nlohmann::json& j) {
  try {
    if (j.at("kind").get<std::string>() != kind_)
      throw DataError("learning-rate schedule in the checkpoint is '" + j.at("kind").get<std::string>() +
                      "', the config says '" + kind_ + "'");
    scale_ = j.at("scale").get<double>();
    best_ = j.at("best").get<double>();
    bad_ = j.at("bad").get<int>();
  } catch (const nlohmann::json::exception&) {
    throw DataError("learning-rate schedule state is malformed");
  }
}

LrSchedule make_schedule(const TrainConfig& cfg) {
  return LrSchedule(cfg.lr_schedule, cfg.lr, cfg.lr_gamma, cfg.lr_step, cfg.lr_patience);
}

}  // namespace rbn
