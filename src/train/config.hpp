// Every hyperparameter of a training run: a flag of `rbn train` and a key of its JSON config.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "rbn/rbn.hpp"

namespace rbn {

struct TrainConfig {
  // task and data
  std::string task = "seqmnist";  // seqmnist | pmnist | ptb | text8 | text | seq
  std::string data;               // directory (idx files, ptb files) or file (text8, text)
  std::string permutation = "seeded";  // pmnist: seeded | authors | FILE of 784 indices
  uint64_t permutation_seed = 0;  // 0: derived from --seed
  int mnist_split_train = 0;      // >0: only a test set present: take this many for training...
  int mnist_split_valid = 0;      // ...and this many for validation (the rest is the test set)
  double valid_fraction = 0.1;    // seq without valid.x.npy: this share of the training rows
  double test_fraction = 0.1;     // seq without test.x.npy: this share (0: no test split)

  // model
  std::string cell = "bnlstm";
  int hidden = 100;
  int layers = 1;
  int embed = 0;  // language models: 0 = one-hot input
  double eps = 1e-5;
  double gamma_x = -1, gamma_h = -1, gamma_c = -1;
  // LSTMs' initial forget-gate bias (unset: 1); the GRUs have none, and setting it there is an
  // error (SPEC 2b). In JSON: a number, or null for unset.
  std::optional<double> forget_bias;
  bool ln_input = true;
  bool learn_init_state = false;
  bool bidirectional = false;  // classification and per-sequence tasks; not a language model
  std::string init_recurrent = "orthogonal";  // orthogonal | identity
  double bn_momentum = 0.1;
  double h0_noise = 0.0;
  // regularizers (SPEC 2b): dropout between layers, zoneout of h and (LSTMs) c
  double dropout = 0.0;
  double zoneout_h = 0.0;
  double zoneout_c = 0.0;

  // population statistics for evaluation
  std::string popstats = "pass";  // pass | running
  int popstats_batches = 20;
  int popstats_batch_size = 0;  // 0: the training batch size

  // optimization
  std::string optimizer = "adam";  // sgd | rmsprop | adam | rmsprop-authors
  double lr = 1e-3;
  double momentum = 0.0;
  double dampening = 0.0;  // sgd
  bool nesterov = false;   // sgd
  bool centered = false;   // rmsprop
  double alpha = 0.99;    // rmsprop
  double beta1 = 0.9, beta2 = 0.999;
  double opt_eps = 1e-8;
  double weight_decay = 0.0;
  double decay = 0.5;     // rmsprop-authors
  double clip = 1.0;      // global gradient norm; 0 = off
  std::string lr_schedule = "constant";  // constant | step | exp | plateau
  double lr_gamma = 0.5;
  int lr_step = 1000;     // steps between decays (step schedule)
  int lr_patience = 2;    // evaluations without improvement (plateau)
  double lr_threshold = 1e-4;  // plateau: relative improvement that counts
  double lr_min = 0.0;         // plateau: floor of the rate

  // data-parallel (mpirun): sum the batch statistics over the ranks (SyncBatchNorm); false: each
  // rank normalizes with its own rows' statistics (what DDP without SyncBatchNorm does)
  bool sync_bn = true;

  // loop
  int batch_size = 100;
  int seq_len = 100;       // language models: input steps per window (T); T_max = seq_len
  int64_t steps = 1000;
  int eval_every = 200;    // steps; 0 = only at the end
  int eval_batches = 0;    // 0: the whole validation split
  int log_every = 10;
  int checkpoint_every = 100;
  int max_bad_steps = 5;   // consecutive non-finite steps before the run stops
  int early_stop = 0;      // evaluations without improvement before stopping; 0 = never
  uint64_t seed = 1;
  int threads = 0;
  // float GEMM backend: auto (timed on the run's products, cached per machine) | openblas | onednn;
  // a run records what it used here and in its checkpoints' gemm_backend, and keeps it on --resume
  std::string gemm = "auto";
  // inputs of the float matrix products: fp32 | bf16 (rounded to bfloat16, fp32 accumulation,
  // everything else fp32; refused on a CPU without AVX512_BF16 or AMX). Recorded in checkpoints.
  std::string precision = "fp32";
  std::string out = "runs/run";

  nlohmann::json to_json() const;
  // Unknown keys are an error naming the key (a typo must not pass silently).
  static TrainConfig from_json(const nlohmann::json& j, const std::string& source);
  // Throws UsageError naming the flag for impossible values.
  void validate() const;
  // Flags that the chosen optimizer or learning-rate schedule does not have are an error when they
  // were given (`given`: field names set on the command line or in --config) or differ from the
  // default.
  void check_flags_used(const std::set<std::string>& given) const;
  // Fields whose value differs from a default-constructed config.
  std::set<std::string> non_default_fields() const;
  // Every field, in the order of the JSON config.
  static const std::vector<std::string>& field_names();
  // The flag of a field: batch_size -> --batch-size.
  static std::string flag_of(const std::string& field);
  // Fields that a resumed run may change (the rest must match the saved run).
  static const std::set<std::string>& resumable_fields();
  // The config of a resumed run: the saved one, with the resumable fields that were given taken
  // from `asked` (and always its --out). A given field that differs from the saved run and may not
  // change is a UsageError listing every such difference.
  static TrainConfig for_resume(const TrainConfig& saved, const TrainConfig& asked,
                                const std::set<std::string>& given, const std::string& checkpoint);
  bool is_lm() const { return task == "ptb" || task == "text8" || task == "text"; }
  StackConfig stack_config(int input_size) const;
};

// Every cell `--cell` takes, comma-separated: the five LSTMs, then the GRUs (gru, bngru, lngru).
std::string cell_list();

// Cells whose batch normalization at each time step is over the batch's rows (bnlstm, bnx, bnrnn,
// bngru): with one row every variance is 0. Throws UsageError naming the cell and `flag` when `rows` is 1.
void check_rows_for_batch_stats(Cell cell, int64_t rows, const std::string& flag);

}  // namespace rbn
