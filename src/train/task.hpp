// What the trainer needs from a dataset: deterministic batches for (epoch, index), evaluation
// batches, and what goes into the checkpoint (vocabulary, permutation).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "train/config.hpp"
#include "train/model.hpp"

namespace rbn {

enum class Split { train, valid, test };
const char* split_name(Split s);

// A batch, time-major. Classification: x [T,N,C], labels [N]. Language model: ids [T,N] inputs,
// targets [T,N] next symbols (-1 where nothing is predicted). Tagging: x, targets [T,N] classes
// (-1 = not counted). Regression: x, values [N,D] (per sequence) or [T,N,D] (values_per_step).
struct Batch {
  int T = 0, N = 0;
  std::vector<float> x;
  std::vector<int32_t> ids, targets, labels, lengths;
  std::vector<float> values;
  bool values_per_step = false;
};

class TaskData {
 public:
  virtual ~TaskData() = default;
  virtual Head head() const = 0;
  virtual bool per_step() const { return false; }  // regress: values per step
  virtual int num_classes() const = 0;  // classes, or the vocabulary size
  virtual int input_size() const = 0;   // C for classification (LM: the vocabulary size)
  virtual int seq_len() const = 0;      // T of training batches
  virtual std::string describe() const = 0;
  // Training batches of one epoch, in a seeded order: index in [0, batches_per_epoch).
  virtual int64_t batches_per_epoch(int N) const = 0;
  virtual void train_batch(uint64_t seed, int64_t epoch, int64_t index, int N, Batch& b) = 0;
  // Evaluation in batches: [0, eval_batches(split, N)).
  virtual int64_t eval_batches(Split s, int N) const = 0;
  virtual void eval_batch(Split s, int64_t index, int N, Batch& b) = 0;
  // Language models: the whole split as one sequence of ids (empty for classification).
  virtual const std::vector<int32_t>& stream(Split s) const = 0;
  // Checkpoint content: metadata entries and int32 tensors (e.g. data.permutation).
  virtual std::map<std::string, std::string> metadata() const = 0;
  virtual std::map<std::string, std::vector<int32_t>> int_tensors() const { return {}; }
  // A fingerprint of the training data (for "pass statistics of the same training data").
  virtual std::string train_fingerprint() const = 0;
};

// One batch through the model with the step its head needs (classify_step, lm_step, seq_step).
StepResult run_batch(Model& m, const ForwardOptions& opt, const Batch& b, bool backward);

// Load the data of a training config (task, data path, permutation...). Throws DataError /
// UsageError with one line naming the file or flag.
std::unique_ptr<TaskData> load_task(const TrainConfig& cfg);

}  // namespace rbn
