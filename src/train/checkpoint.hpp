// Checkpoints (SPEC section 5): one .safetensors file, written atomically, with the model's
// tensors under their SPEC names, the population statistics, optimizer state
// (optim.<slot>.<param>), the training config and the data's vocabulary / permutation.
#pragma once

#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/config.hpp"
#include "train/model.hpp"

namespace rbn {

class Optimizer;
class LrSchedule;
class TaskData;

struct CheckpointState {
  int64_t step = 0;
  double best_metric = INFINITY;
  int evals_without_improvement = 0;
  std::string popstats = "running";  // what the population-statistics buffers hold: running | pass
  std::string popstats_data;         // fingerprint of the data a pass ran over
};

// Everything of a training run (resume) or of a finished model.
void save_checkpoint(const std::string& path, Model& model, const TrainConfig& cfg,
                     const TaskData& data, Optimizer* opt, LrSchedule* schedule,
                     const CheckpointState& st);

// Restores parameters, buffers, optimizer and schedule state into a model built from the same
// config (resume). Throws DataError naming the file on any mismatch.
CheckpointState load_checkpoint(const std::string& path, Model& model, Optimizer* opt,
                                LrSchedule* schedule);

// A checkpoint's metadata alone (the header, not the tensors: --resume decides from it before
// load_checkpoint reads the file whole). `path` names the file in errors below.
using CheckpointMetadata = std::map<std::string, std::string>;
CheckpointMetadata read_checkpoint_metadata(const std::string& path);
// The training config stored in a checkpoint written by `rbn train`.
TrainConfig checkpoint_config(const CheckpointMetadata& md, const std::string& path);
// Its step, best metric and kind of population statistics.
CheckpointState checkpoint_state(const CheckpointMetadata& md, const std::string& path);

// A model from a checkpoint alone (eval, forward, sample, info): config from the metadata
// (SPEC keys), tensors checked against it.
struct LoadedCheckpoint {
  std::unique_ptr<Model> model;
  std::map<std::string, std::string> metadata;
  std::optional<TrainConfig> train_config;
  std::vector<int32_t> permutation;  // data.permutation, where used
  nlohmann::json vocab;              // language models: the vocabulary (null otherwise)
  CheckpointState state;
  size_t file_bytes = 0;
};
LoadedCheckpoint load_model_checkpoint(const std::string& path);

// Matrix products on the backend the checkpoint's run used (its gemm_backend metadata), so an
// evaluation repeats the run's numbers bit for bit; RBN_GEMM, when set to a backend, wins. A file
// without the key (from before the backends, or from Python) leaves the process's backend as is;
// a value that names no backend of this build is a DataError naming `path`.
void use_recorded_gemm_backend(const LoadedCheckpoint& ck, const std::string& path);

// --resume: the process must treat subnormals as the run did (the checkpoint's `denormals`
// metadata, flush or keep), else a resumed run would part from the uninterrupted one wherever a
// value falls below the normal range. A mismatch is a UsageError saying which RBN_DENORMALS to
// use; a file without the key (written before it was recorded) is not checked.
void check_resumed_denormal_mode(const CheckpointMetadata& md, const std::string& path);

// Rewrite a loaded checkpoint's model (e.g. after a statistics pass), keeping its metadata.
void save_model_checkpoint(const std::string& path, const LoadedCheckpoint& ck,
                           const CheckpointState& st);

}  // namespace rbn
