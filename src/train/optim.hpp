// Optimizers with torch.optim semantics (SGD with momentum, RMSprop, Adam), the authors' RMSProp
// (Blocks), and global-norm gradient clipping. They update named float tensors in place; their
// state is per parameter name, saved in checkpoints as optim.<slot>.<name> (torch's slot names).
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace rbn {

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
  double alpha = 0.99;        // rmsprop smoothing
  bool centered = false;      // rmsprop
  double eps = 1e-8;          // rmsprop, adam (outside the square root, as torch)
  double beta1 = 0.9, beta2 = 0.999;
  double weight_decay = 0.0;  // L2 added to the gradient, as torch
  double decay = 0.5;         // rmsprop-authors: ms <- d ms + (1-d) g^2
  // Throws UsageError naming the flag (--lr, --momentum, ...).
  void validate() const;
};

struct SlotView {
  std::string slot, param;
  float* data;
  size_t numel;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // One update of every parameter from its gradient, at learning rate lr.
  void step(std::span<const ParamRef> params, float lr);
  int64_t steps() const { return step_; }
  // State for checkpoints: tensors by (slot, parameter) and scalars.
  std::vector<SlotView> state_tensors();
  nlohmann::json scalar_state() const;
  void load_scalar_state(const nlohmann::json& j);
  void load_state_tensor(const std::string& slot, const std::string& param, const std::vector<float>& v);

 protected:
  explicit Optimizer(const OptimConfig& c) : cfg_(c) {}
  virtual std::vector<std::string> slots() const = 0;
  // Update one tensor; s[i] is slot i's state for it (zero-initialized on first use).
  virtual void update(const ParamRef& p, std::vector<float*>& s, float lr) = 0;
  OptimConfig cfg_;
  int64_t step_ = 0;
  std::map<std::string, std::map<std::string, std::vector<float>>> state_;  // slot -> param -> data
};

std::unique_ptr<Optimizer> make_optimizer(const OptimConfig& cfg);

// torch.nn.utils.clip_grad_norm_: the global L2 norm of all gradients (accumulated in double);
// when it exceeds max_norm, every gradient is scaled by max_norm / (norm + 1e-6). Returns the norm
// before clipping (non-finite norms are returned and nothing is scaled).
float clip_grad_norm(std::span<const ParamRef> params, float max_norm);

}  // namespace rbn
