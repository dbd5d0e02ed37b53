// Learning-rate schedules: constant; step decay (×gamma every k steps or epochs, torch's StepLR);
// exponential decay (×gamma per k steps or epochs, continuously); and decay on a plateau of the
// validation metric (torch's ReduceLROnPlateau, mode 'min', threshold_mode 'rel', cooldown 0).
// The state is a few numbers, saved in checkpoints so that a resumed run follows the same schedule.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace rbn {

struct TrainConfig;

struct ScheduleConfig {
  std::string kind = "constant";  // constant | step | exp | plateau
  double lr = 1e-3;               // the initial learning rate
  double gamma = 0.5;             // step, exp: the multiplier per period; plateau: torch's `factor`
  int64_t every = 1000;           // step, exp: the period, in `unit`s
  std::string unit = "steps";     // steps | epochs
  int64_t steps_per_epoch = 1;    // converts epochs to steps when unit = epochs
  int patience = 2;               // plateau: evaluations without improvement that are tolerated
  double threshold = 1e-4;        // plateau: improvement means metric < best·(1 − threshold)
  double min_lr = 0.0;            // plateau: never below this
  // Throws UsageError naming the flag: --lr-schedule, --lr, --lr-gamma, --lr-step, --lr-unit,
  // --lr-patience, --lr-threshold, --lr-min (steps_per_epoch: --batch-size, it comes from there).
  void validate() const;
};

class LrSchedule {
 public:
  LrSchedule() = default;
  explicit LrSchedule(const ScheduleConfig& cfg);
  // Shorthand for a schedule counted in steps.
  LrSchedule(std::string kind, double lr0, double gamma, int64_t every, int patience);

  // The learning rate of the update with 0-based index `step`.
  //   constant: lr;  step: lr·gamma^⌊s/k⌋;  exp: lr·gamma^(s/k);  plateau: the current rate,
  // where s is the step, or the epoch ⌊step/steps_per_epoch⌋ (fractional for exp) with unit epochs.
  double lr(int64_t step) const;

  // A validation result (lower is better). Only the plateau schedule uses it:
  // torch's ReduceLROnPlateau.step(metric): after more than `patience` evaluations in a row
  // without improvement, lr ← max(lr·gamma, min_lr) (unless that changes it by ≤ 1e-8).
  void on_eval(double metric);

  // Plateau bookkeeping (also kept, unused, by the other kinds).
  double best() const { return best_; }
  int bad_evals() const { return bad_; }
  const ScheduleConfig& config() const { return cfg_; }

  // {"kind", "lr", "best", "bad"} (best = null while no evaluation has been seen). Loading checks
  // the kind; exact, since JSON numbers round-trip doubles.
  nlohmann::json state() const;
  void load_state(const nlohmann::json& j);

 private:
  ScheduleConfig cfg_;
  double lr_ = 1e-3;         // plateau: the current rate
  double best_ = INFINITY;   // plateau: the best metric so far (torch's mode_worse to start)
  int bad_ = 0;              // plateau: evaluations since the last improvement
};

LrSchedule make_schedule(const TrainConfig& cfg);

}  // namespace rbn
