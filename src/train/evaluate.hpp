// Evaluation with population statistics, and the statistics pass that produces them.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "train/model.hpp"
#include "train/task.hpp"

namespace rbn {

class Group;

struct EvalResult {
  double loss = 0;      // mean -ln p per counted item (nats)
  double accuracy = 0;  // fraction of argmax hits
  double bpc = 0;       // loss / ln 2 (language models)
  int64_t count = 0;    // sequences or predicted symbols
  double seconds = 0;
};

// The figure a head is judged by: bits per character (lm), the mean squared error (regress, the
// mean loss) or the accuracy (classify, tag); `to_minimize` orders checkpoints (lower is better).
struct HeadMetric {
  const char* name;
  double value;
  double to_minimize;
};
HeadMetric head_metric(Head head, double mean_loss, double accuracy);

using ProgressFn = std::function<void(int64_t done, int64_t total)>;

// The authors' statistics pass (SPEC 3b): `batches` training batches of `N` rows in training mode,
// per-step statistics averaged weighted by valid rows. The batches are a fixed seeded sample.
// With a group (data-parallel training), each rank feeds its rows of every batch; the model's
// statistics must then be synchronized (Stack::set_stat_allreduce), so all ranks get the same.
void popstats_pass(Model& m, TaskData& data, int batches, int N, uint64_t seed,
                   const ProgressFn& progress = {}, Group* group = nullptr);

// Batched evaluation in inference mode: classification over the split's images; language models
// over non-overlapping windows of seq_len. max_batches 0 = all.
// With a group, each rank evaluates its rows of every batch and the sums are combined: every
// rank returns the result of the whole split.
EvalResult evaluate_batches(Model& m, TaskData& data, Split split, int N, int64_t max_batches,
                            const ProgressFn& progress = {}, Group* group = nullptr);

// A language model over the split as one continuous sequence (the authors' "proper test"):
// `streams` contiguous parts evaluated side by side (1 = the whole split as one sequence), each in
// chunks of `chunk` steps with the state carried across chunks; steps past T_max use the last
// statistics row.
EvalResult evaluate_stream(Model& m, const std::vector<int32_t>& ids, int streams, int chunk,
                           const ProgressFn& progress = {});

}  // namespace rbn
