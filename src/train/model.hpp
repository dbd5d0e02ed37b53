// A model = embedding or one-hot input, the recurrent stack, and a head (SPEC section 4):
// classification on the last valid step, or a per-step language-model softmax.
#pragma once

#include <algorithm>
#include <functional>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "rbn/rbn.hpp"

namespace rbn {

// classify: a class per sequence (last valid step); lm: the next symbol per step; tag: a class per
// step; regress: real values per sequence [N,D] or per step [T,N,D] (mean squared error).
enum class Head { none, classify, lm, tag, regress };
const char* head_name(Head h);
Head parse_head(const std::string& s);  // throws UsageError

struct ModelConfig {
  StackConfig rnn;
  Head head = Head::classify;
  int num_classes = 10;  // K (classify, tag), vocabulary size V (lm) or target width D (regress)
  int embed_dim = 0;     // lm input: 0 = one-hot (C = V), else an embedding [V,E] (C = E)
  bool per_step = false;  // regress: targets per step [T,N,D] (false: per sequence [N,D])
};

// A named parameter with its gradient (both owned by the model).
struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  float* value;
  float* grad;
  size_t numel;
};

struct StepResult {
  double loss_sum = 0;  // sum over counted items of -ln p (nats)
  int64_t count = 0;    // items counted (sequences or predicted symbols)
  int64_t correct = 0;  // argmax == target
};

// A language-model batch: ids [T,N] inputs, targets [T,N] (-1 = not counted), lengths [N]
// (nullable); h0/c0 [L,N,H] nullable (a language model is never bidirectional), hT/cT written if non-null (state carried across chunks).
struct LmBatch {
  const int32_t* ids = nullptr;
  const int32_t* targets = nullptr;
  const int32_t* lengths = nullptr;
  const float* h0 = nullptr;
  const float* c0 = nullptr;
  float* hT = nullptr;
  float* cT = nullptr;
};

class Model {
 public:
  explicit Model(const ModelConfig& cfg);
  const ModelConfig& config() const { return cfg_; }
  Stack<float>& rnn() { return rnn_; }
  const Stack<float>& rnn() const { return rnn_; }

  // Every trainable tensor (rnn.*, embed.weight, head.*), SPEC names.
  std::vector<NamedTensor> parameters();
  void zero_grad();
  void reset_parameters(uint64_t seed);

  // Classification: x [T,N,C] features, lengths [N] (nullable), labels [N].
  // With backward = true (train mode), gradients of the mean loss are accumulated.
  StepResult classify_step(const ForwardOptions& opt, int T, int N, const float* x,
                           const int32_t* lengths, const int32_t* labels, bool backward);

  // Language model on a batch of T steps of N rows (LmBatch).
  StepResult lm_step(const ForwardOptions& opt, int T, int N, const LmBatch& batch, bool backward);

  // A user's sequences, heads tag and regress (classify goes to classify_step): x [T,N,C],
  // lengths [N] (nullable; steps t >= length are not counted). tag: labels [T,N] (-1 = not
  // counted), softmax cross-entropy per step. regress: values [N,D] (per sequence, at the last
  // valid step) or [T,N,D] (per_step); loss_sum = the sum of squared errors, count = the values
  // counted (so loss_sum / count is the mean squared error), correct = 0.
  StepResult seq_step(const ForwardOptions& opt, int T, int N, const float* x, const int32_t* lengths,
                      const int32_t* labels, const float* values, bool backward);

  // Logits for a classification batch [N,K] or a language-model chunk [T,N,K] (inference); tag:
  // [T,N,K]; regress: [N,D] or [T,N,D].
  void logits(const ForwardOptions& opt, int T, int N, const float* x_or_null, const int32_t* ids,
              const int32_t* lengths, const float* h0, const float* c0, float* out, float* hT,
              float* cT);

  // Input features of a language model for ids [T,N] -> [T,N,C] (one-hot or embedding).
  void embed(int T, int N, const int32_t* ids, float* x) const;
  int input_size() const { return cfg_.rnn.input_size; }
  // Width F of what the head reads: D*H (bidirectional: forward ‖ reverse).
  int features() const { return cfg_.rnn.directions() * cfg_.rnn.hidden_size; }

  // Data-parallel training: the loss is the mean over the items of the whole group's batch, so
  // the gradients of every rank's shard add up to the gradient of that mean. `count` maps this
  // process's number of counted items to the group's (called in every training step, on every
  // rank). Empty: this process's batch alone.
  void set_group_count(std::function<int64_t(int64_t)> count) { group_count_ = std::move(count); }

  // Reusable scratch sizes for memory reports.
  size_t workspace_bytes() const;

 private:
  void head_forward(int rows, const float* h, float* logits) const;  // h [rows,F]
  const float* last_features(int N);
  void last_features_grad(const float* dlog, int N);
  ModelConfig cfg_;
  Stack<float> rnn_;
  std::vector<float> head_w_, head_b_, embed_w_;     // [K,F], [K], [V,E]
  std::vector<float> dhead_w_, dhead_b_, dembed_w_;  // gradients
  // scratch
  std::vector<float> x_, y_, logits_, dy_, dx_, hT_, cT_, dhT_, dyh_;
  std::vector<float> feat_, dfeat_;  // [N,2H] bidirectional head input and its gradient
  std::vector<int32_t> tgt_;
  std::function<int64_t(int64_t)> group_count_;
  // The loss's denominator: items counted here, or over the group when training data-parallel.
  float inv_count(int64_t local, bool backward) const {
    const int64_t n = backward && group_count_ ? group_count_(local) : local;
    return 1.0f / static_cast<float>(std::max<int64_t>(n, 1));
  }
};

}  // namespace rbn
