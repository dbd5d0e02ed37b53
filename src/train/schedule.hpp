// Learning-rate schedules: constant, step decay, exponential decay, and decay on a plateau of the
// validation metric (torch's ReduceLROnPlateau, mode 'min'). The state is a few numbers, saved in
// checkpoints so that a resumed run follows the same schedule.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace rbn {

struct TrainConfig;

class LrSchedule {
 public:
  LrSchedule() = default;
  LrSchedule(std::string kind, double lr0, double gamma, int64_t every, int patience);
  double lr(int64_t step) const;        // learning rate for the update at `step` (0-based)
  void on_eval(double metric);          // plateau: lower is better
  nlohmann::json state() const;
  void load_state(const nlohmann::json& j);

 private:
  std::string kind_ = "constant";
  double lr0_ = 1e-3, gamma_ = 0.5;
  int64_t every_ = 1000;
  int patience_ = 2;
  // plateau
  double scale_ = 1.0, best_ = 1e300;
  int bad_ = 0;
};

LrSchedule make_schedule(const TrainConfig& cfg);

}  // namespace rbn
