// rbn — normalized recurrent networks (Cooijmans et al. 2017 and its baselines).
//
// Public API of the recurrent stack. Layout is time-major: x [T,N,C], h [T,N,H]; gate order i,f,g,o
// (GRUs: r,z,n); weights stored as PyTorch stores them (weight_ih [4H,C], weight_hh [4H,H]; GRUs
// [3H,C], [3H,H]). See docs/cells.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "rbn/error.hpp"

namespace rbn {

enum class Cell { lstm, bnlstm, bnx, bnx_seq, lnlstm, rnn, bnrnn, gru, bngru, lngru };

// "lstm", "bnlstm", "bnx", "bnx-seq", "lnlstm"; the tanh RNNs "rnn", "bnrnn" (the paper's
// gradient-flow experiment: h = tanh(BN_t(W x) + BN_t(R h) + b)); the GRUs "gru" (nn.GRU),
// "bngru" (BN_t of both terms), "lngru" (Ba et al.'s LN-GRU).
std::optional<Cell> parse_cell(std::string_view name);
const char* cell_name(Cell cell);
const std::vector<Cell>& all_cells();       // the five LSTM cells
const std::vector<Cell>& all_rnn_cells();   // rnn, bnrnn
const std::vector<Cell>& all_gru_cells();   // gru, bngru, lngru
bool cell_has_population_stats(Cell cell);  // bnlstm, bnx, bnx-seq, bnrnn, bngru
bool cell_is_gru(Cell cell);                // gru, bngru, lngru: two biases, no cell state
int cell_gates(Cell cell);                  // 4 (i, f, g, o) LSTMs, 3 (r, z, n) GRUs, 1 tanh RNNs

enum class Mode { train, infer };
enum class RecurrentInit { orthogonal, identity };

struct StackConfig {
  Cell cell = Cell::lstm;
  int input_size = 0;     // C
  int hidden_size = 0;    // H
  int num_layers = 1;     // L
  int t_max = 1;          // rows of per-step population statistics (longest training length)
  double eps = 1e-5;      // inside the square root of every normalization
  // Initial gains; a negative value means the cell's default (0.1 for BN: Cooijmans; 1 for LN: Ba).
  double gamma_x = -1, gamma_h = -1, gamma_c = -1;
  // Initial b_f of the LSTMs; unset: 1. A GRU has no forget gate: setting it there is an error.
  std::optional<double> forget_bias;
  double momentum = 0.1;     // running average: pop <- (1-m) pop + m batch
  bool ln_input = true;      // lnlstm only: normalize W_x x (off: only W_h h and c)
  bool learn_init_state = false;  // learned h0, c0 [H] per layer (rnn.k.h0, rnn.k.c0)
  RecurrentInit recurrent_init = RecurrentInit::orthogonal;
  uint64_t seed = 1;         // initialization; also the seed of the dropout and zoneout masks
  // Per layer a forward and a reverse direction (D = 2), each with its own tensors (the reverse's
  // under "rnn.k.reverse.") and statistics; the reverse reads each row's valid steps backwards,
  // its statistics indexed by its own step count. y [T,N,2H], states [2L,N,H] (PyTorch's order:
  // index 2k forward, 2k+1 reverse), layers above the first read 2H inputs. docs/cells.md.
  bool bidirectional = false;
  int directions() const { return bidirectional ? 2 : 1; }  // D
  // Regularizers (docs/cells.md, "Dropout and zoneout"), each a probability in [0, 1):
  // dropout on every layer's output h but the top layer's (nn.LSTM's meaning: training only,
  // kept values scaled by 1/(1-p)); zoneout (Krueger et al. 2016) keeps each unit's previous h
  // (c) with probability zoneout_h (zoneout_c), the expectation at inference. zoneout_c needs a
  // cell state (the LSTMs). Dropout on a one-layer stack does nothing (nn.LSTM warns; the CLI
  // refuses --dropout with --layers 1).
  double dropout = 0.0;
  double zoneout_h = 0.0;
  double zoneout_c = 0.0;

  // Throws rbn::UsageError (rbn/error.hpp) with a one-line message naming the offending field
  // (e.g. "hidden_size: must be positive, got 0"); the CLI names its flags instead.
  void validate() const;
  double gamma_x_or_default() const;
  double gamma_h_or_default() const;
  double gamma_c_or_default() const;
  double forget_bias_or_default() const;  // 1 unless set
};

// A named tensor inside a flat buffer.
struct TensorInfo {
  std::string name;            // SPEC section 5 name, e.g. "rnn.0.weight_ih"
  std::vector<int64_t> shape;  // e.g. {4H, C}
  size_t offset = 0;           // elements from the start of the flat buffer
  size_t numel = 0;
};

struct ForwardOptions {
  Mode mode = Mode::train;
  int t0 = 0;                   // global time index of x[0] (step API: statistics row t0 + t;
                                // a bidirectional stack reads whole sequences: t0 must be 0)
  bool update_running = true;   // train mode: update the running-average population statistics
  bool need_backward = true;    // keep activations so that backward() can run; false: memory
                                // O(N·H·chunk) instead of O(T·N·H) (not bnx-seq in train mode)
  double h0_noise = 0.0;        // train mode: add N(0, h0_noise^2) to h0 (Cooijmans, sequential MNIST)
  uint64_t noise_seed = 0;
  // Index of row 0 in the global batch (data-parallel shards): the h0 noise of a row depends on
  // (noise_seed, layer, row0 + n) only, so a shard draws what one process draws for those rows.
  int64_t row0 = 0;
  // Train mode: draw the dropout and zoneout masks (false: the inference-mode regularizers, no
  // dropout and the zoneout expectation, as the statistics pass and evaluations want). Inference
  // mode always uses the inference-mode regularizers.
  bool regularize = true;
  // Index of the training update: the masks are a hash of (StackConfig::seed, update, layer,
  // direction, row0 + n, t0 + t, feature), so a chunked, recomputed, resumed or sharded forward
  // draws the same masks (a new update index draws new ones).
  uint64_t update = 0;
};

// The arrays of one Stack::forward call; nullptr where not given. D = config().directions().
template <class T>
struct StackInput {
  const T* x = nullptr;              // [T,N,C]
  const int32_t* lengths = nullptr;  // [N] (nullptr: every row has T valid steps; 0 <= len <= T)
  const T* h0 = nullptr;             // [L*D,N,H] (nullptr: learned initial state if configured, else 0)
  const T* c0 = nullptr;             // [L*D,N,H] (cells without a cell state carry it unchanged)
};
template <class T>
struct StackOutput {
  T* y = nullptr;   // [T,N,D*H] top layer's h (forward ‖ reverse), 0 at padded positions
  T* hT = nullptr;  // [L*D,N,H] state after each row's last valid step (the reverse direction's:
  T* cT = nullptr;  //   after reading x[0]; the given initial state for rows of length 0)
};

// A stack of L recurrent layers of one cell kind, with fused forward and backward through time.
// Accumulation contract: backward() adds (+=) into the parameter gradients and writes (=) the
// activation gradients dx, dh0, dc0.
template <class T>
class Stack {
 public:
  explicit Stack(const StackConfig& config);
  ~Stack();
  Stack(Stack&&) noexcept;
  Stack& operator=(Stack&&) noexcept;

  const StackConfig& config() const;

  // Trainable parameters and their gradients: one flat buffer each, the same layout.
  std::span<T> params();
  std::span<const T> params() const;
  std::span<T> grads();
  const std::vector<TensorInfo>& param_info() const;
  // Non-trainable buffers (population statistics running_mean / running_var).
  std::span<T> buffers();
  std::span<const T> buffers() const;
  const std::vector<TensorInfo>& buffer_info() const;
  // Pointer to a named parameter or buffer, or nullptr.
  T* find(std::string_view name);
  const TensorInfo* find_info(std::string_view name) const;
  void zero_grad();
  // Re-initialize parameters and population statistics from config().seed.
  void reset_parameters();

  // `steps` steps of N rows: in.x [steps,N,C] and the optional arrays of StackInput; writes the
  // arrays of `out` that are given. E.g. s.forward(opt, T, N, {.x = x, .lengths = len}, {.y = y}).
  void forward(const ForwardOptions& opt, int steps, int N, const StackInput<T>& in,
               const StackOutput<T>& out);

  // After forward() with activations kept. dy [T,N,D*H], dhT, dcT [L*D,N,H] are nullable (zero).
  // Writes dx [T,N,C], dh0, dc0 [L*D,N,H] where non-null; adds into grads().
  void backward(const T* dy, const T* dhT, const T* dcT, T* dx, T* dh0, T* dc0);

  // Population statistics, the authors' way (SPEC section 3b): begin, feed batches (train-mode
  // forward, no parameter change), finish. Each batch's per-step mean and biased variance are
  // weighted by the step's count of valid rows; steps no batch reaches keep their value.
  void popstats_begin();
  void popstats_feed(int steps, int N, const T* x, const int32_t* lengths, const T* h0 = nullptr,
                     const T* c0 = nullptr);
  void popstats_finish();

  // Normalized values before the affine (x_hat) of the last forward (before any backward, which
  // overwrites W x with its gradient), for tests and tools: which is "x", "h" or "c"; returns
  // [T,N,F] (0 at padded positions; valid until the next call) or empty when the cell has no
  // such norm. Bidirectional: the forward direction's.
  std::span<const T> cached_normalized(int layer, std::string_view which) const;
  // Gradient probe (the gradient-flow figure): when set, backward() writes the batch mean of
  // ||dL/dh_t|| over the valid rows, for every step of layer `layer`, into *norms ([T]).
  // Bidirectional: of the layer's forward direction.
  void set_grad_probe(int layer, std::vector<double>* norms);

  // Data-parallel training (synchronized batch normalization): when set, every batch statistic
  // is computed from sums over the whole group — each rank's sums of z and z^2 over its valid
  // rows, and in backward its sums of dy and dy*x_hat, are passed to `allreduce`, which must
  // replace buf[0..n) by their sum over all ranks (every rank calls it in the same order with
  // the same n; it is called from one thread). K ranks with N/K rows each then compute what one
  // process computes with all N rows. Parameter gradients stay local (sum them afterwards).
  // Every rank must run the same calls (train-mode forward, backward, statistics pass) with the
  // same T, or the ranks wait for each other forever.
  // Empty: statistics of this process's rows only.
  using Allreduce = std::function<void(double* buf, size_t n)>;
  void set_stat_allreduce(Allreduce allreduce);

  // How the last forward formed layer `layer`'s input projection W x (bidirectional: the forward
  // direction's), for tests and tools: "hoisted" (one product over all steps before the time
  // loop), "inline" (per step from few input features) or "sparse" (gathered per step from input
  // rows of at most a few nonzeros each, such as one-hot symbols); empty before any forward.
  std::string_view input_projection(int layer) const;

  // Bytes of activations that backward reads (for memory reporting).
  size_t cache_bytes() const;
  size_t workspace_bytes() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

extern template class Stack<float>;
extern template class Stack<double>;

}  // namespace rbn
