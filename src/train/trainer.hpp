// The training loop: batches, optimizer, clipping, evaluation with population statistics,
// metrics.jsonl, the last and the best checkpoint, bit-exact resume, signals.
#pragma once

#include <set>
#include <string>

#include "train/config.hpp"
#include "train/evaluate.hpp"

namespace rbn {

struct TrainSummary {
  int exit_code = 0;
  int64_t steps_done = 0;
  double seconds = 0;
  EvalResult best_valid;
  EvalResult final_valid;
  std::string best_checkpoint;
};

// What `rbn train` asks for.
struct TrainRequest {
  TrainConfig cfg;
  bool resume = false;     // continue the run in cfg.out from last.safetensors
  bool overwrite = false;  // replace a run found in cfg.out (without it, such an --out is refused)
  // Config fields given explicitly (command line or --config): on resume each must match the
  // saved run unless it is one of TrainConfig::resumable_fields(); a flag of an optimizer or
  // schedule other than the chosen one is an error.
  std::set<std::string> given;
};

// Runs (or, with resume, continues from <out>/last.safetensors) a training run. An --out that
// already holds a run is refused unless resume or overwrite. An error once training has begun
// names the last good checkpoint.
TrainSummary run_training(const TrainRequest& request);
// The same with `given` = the fields that differ from the defaults (tests, library callers).
TrainSummary run_training(TrainConfig cfg, bool resume);

}  // namespace rbn
