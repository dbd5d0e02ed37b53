// Optimizers with torch.optim (1.13) semantics — SGD (momentum, dampening, Nesterov), RMSprop
// (eps outside the square root, momentum, centered), Adam — plus the authors' RMSProp (Blocks),
// and global-norm gradient clipping (torch.nn.utils.clip_grad_norm_). They update named float
// tensors in place. Their state is per parameter name, under torch's slot names, so a checkpoint
// stores it as `optim.<slot>.<parameter name>` with the step count in the metadata (SPEC 5).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace rbn {

// One parameter tensor and its gradient (both `numel` floats, owned by the model).
struct ParamRef {
  std::string name;
  float* value;
  float* grad;
  size_t numel;
};

struct OptimConfig {
  std::string name = "adam";  // sgd | rmsprop | adam | rmsprop-authors
  double lr = 1e-3;
  double momentum = 0.0;      // sgd, rmsprop
  double dampening = 0.0;     // sgd
  bool nesterov = false;      // sgd
  double alpha = 0.99;        // rmsprop smoothing constant
  bool centered = false;      // rmsprop
  double eps = 1e-8;          // rmsprop, adam: added outside the square root, as torch
  double beta1 = 0.9, beta2 = 0.999;  // adam
  double weight_decay = 0.0;  // L2: wd·p added to the gradient before the update, as torch
  double decay = 0.5;         // rmsprop-authors: ms <- d·ms + (1-d)·g²
  // Throws UsageError naming the flag (--optimizer, --lr, --momentum, --dampening, --nesterov,
  // --alpha, --opt-eps, --beta1, --beta2, --weight-decay, --decay) and the rejected value.
  void validate() const;
};

// One state tensor: slot `slot` (torch's name) of parameter `param`.
struct SlotView {
  std::string slot, param;
  float* data;
  size_t numel;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  const OptimConfig& config() const { return cfg_; }

  // One update of every parameter from its gradient at learning rate lr (the schedule's value;
  // cfg.lr is only the validated default). State is created lazily, per parameter, on its first
  // update, as torch does. Throws DataError when loaded state does not fit a parameter's size.
  void step(std::span<const ParamRef> params, float lr);

  // Updates done so far (torch's `step` state; Adam's bias correction uses it).
  int64_t step_count() const { return step_; }

  // The slots this optimizer keeps per parameter, under torch's names: sgd with momentum
  // {momentum_buffer}; rmsprop {square_avg[, momentum_buffer][, grad_avg]}; adam {exp_avg,
  // exp_avg_sq}; rmsprop-authors {square_avg}.
  virtual std::vector<std::string> slot_names() const = 0;

  // Slot tensor of a parameter, or nullptr before that parameter's first update.
  float* slot(std::string_view slot, std::string_view param);
  const float* slot(std::string_view slot, std::string_view param) const;

  // Every state tensor that exists, ordered by (slot, parameter).
  std::vector<SlotView> state_tensors();

  // The whole state for a checkpoint: tensors named `optim.<slot>.<param>` and the step count.
  struct State {
    int64_t step_count = 0;
    std::map<std::string, std::vector<float>> tensors;
  };
  State state() const;
  // Replaces the whole state. Throws DataError for a name that is not `optim.<slot>.<param>` with
  // one of this optimizer's slots, or a negative step count.
  void load_state(const State& s);

  // Checkpoint metadata: {"name": optimizer, "step": count}; loading checks the name.
  nlohmann::json scalar_state() const;
  void load_scalar_state(const nlohmann::json& j);

  static std::string tensor_name(std::string_view slot, std::string_view param) {
    return "optim." + std::string(slot) + "." + std::string(param);
  }

 protected:
  explicit Optimizer(const OptimConfig& c) : cfg_(c) {}
  // Update one tensor. s[i] is slot_names()[i]'s state for it; `fresh` says the state was just
  // created (zero-filled), i.e. this is the parameter's first update.
  virtual void update(const ParamRef& p, std::span<float* const> s, bool fresh, float lr) = 0;

  OptimConfig cfg_;
  int64_t step_ = 0;

 private:
  std::map<std::string, std::map<std::string, std::vector<float>, std::less<>>, std::less<>> state_;
};

// Validates cfg (UsageError naming the flag) and builds the optimizer.
std::unique_ptr<Optimizer> make_optimizer(const OptimConfig& cfg);

// torch.nn.utils.clip_grad_norm_ (L2): the global norm of all gradients (accumulated in double);
// every gradient is multiplied by min(1, max_norm / (norm + 1e-6)) when that is below 1, i.e.
// when the norm exceeds max_norm (or is within 1e-6 of it, as torch). Returns the norm before
// clipping. A non-finite norm is returned as is and nothing is scaled (the caller skips the
// update). max_norm = +inf only measures. UsageError ("--clip") unless max_norm > 0.
float clip_grad_norm(std::span<const ParamRef> params, float max_norm);

}  // namespace rbn
