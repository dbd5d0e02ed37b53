// The training loop: batches, optimizer, clipping, evaluation with population statistics,
// metrics.jsonl, the last and the best checkpoint, bit-exact resume, signals.
#pragma once

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

// Runs (or, with resume, continues from <out>/last.safetensors) a training run.
TrainSummary run_training(TrainConfig cfg, bool resume);

}  // namespace rbn
