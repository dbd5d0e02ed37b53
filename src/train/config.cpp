#include "train/config.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <utility>

#include "util/error.hpp"

namespace rbn {

// One list of fields serves to_json, from_json and the unknown-key check.
#define RBN_TRAIN_FIELDS(X)                                                                     \
  X(task) X(data) X(permutation) X(permutation_seed) X(mnist_split_train) X(mnist_split_valid)  \
  X(valid_fraction) X(test_fraction)                                                            \
  X(cell) X(hidden) X(layers) X(embed) X(eps) X(gamma_x) X(gamma_h) X(gamma_c) X(forget_bias)   \
  X(ln_input) X(learn_init_state) X(bidirectional) X(init_recurrent) X(bn_momentum) X(h0_noise) \
  X(dropout) X(zoneout_h) X(zoneout_c) X(popstats)                                              \
  X(popstats_batches) X(popstats_batch_size) X(optimizer) X(lr) X(momentum) X(alpha) X(beta1)   \
  X(dampening) X(nesterov) X(centered) X(lr_threshold) X(lr_min) X(sync_bn)                  \
  X(beta2) X(opt_eps) X(weight_decay) X(decay) X(clip) X(lr_schedule) X(lr_gamma) X(lr_step)    \
  X(lr_patience) X(batch_size) X(seq_len) X(steps) X(eval_every) X(eval_batches) X(log_every)   \
  X(checkpoint_every) X(max_bad_steps) X(early_stop) X(seed) X(threads) X(gemm) X(precision) X(out)

namespace {
// JSON of a field; an unset optional number is null.
template <class T>
nlohmann::json json_of(const T& v) {
  return v;
}
nlohmann::json json_of(const std::optional<double>& v) { return v ? nlohmann::json(*v) : nlohmann::json(); }
template <class T>
void read_json(const nlohmann::json& j, T& v) {
  j.get_to(v);
}
void read_json(const nlohmann::json& j, std::optional<double>& v) {
  if (j.is_null())
    v.reset();
  else
    v = j.get<double>();
}
}  // namespace

nlohmann::json TrainConfig::to_json() const {
  nlohmann::json j;
#define X(f) j[#f] = json_of(f);
  RBN_TRAIN_FIELDS(X)
#undef X
  return j;
}

TrainConfig TrainConfig::from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) throw UsageError(source + ": a training config must be a JSON object");
  TrainConfig c;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    bool known = false;
    try {
#define X(f)                          \
  if (key == #f) {                    \
    read_json(it.value(), c.f);       \
    known = true;                     \
  }
      RBN_TRAIN_FIELDS(X)
#undef X
    } catch (const nlohmann::json::exception&) {
      throw UsageError(source + ": key '" + key + "' has the wrong type");
    }
    if (!known) throw UsageError(source + ": unknown key '" + key + "'");
  }
  return c;
}

const std::vector<std::string>& TrainConfig::field_names() {
  static const std::vector<std::string> names{
#define X(f) #f,
      RBN_TRAIN_FIELDS(X)
#undef X
  };
  return names;
}

std::string TrainConfig::flag_of(const std::string& field) {
  std::string f = "--" + field;
  std::replace(f.begin(), f.end(), '_', '-');
  return f;
}

std::set<std::string> TrainConfig::non_default_fields() const {
  const nlohmann::json mine = to_json(), defaults = TrainConfig{}.to_json();
  std::set<std::string> out;
  for (const auto& f : field_names())
    if (mine[f] != defaults[f]) out.insert(f);
  return out;
}

void TrainConfig::check_flags_used(const std::set<std::string>& given) const {
  std::set<std::string> set = non_default_fields();
  set.insert(given.begin(), given.end());
  // which optimizer / schedule reads each of these fields
  static const std::map<std::string, std::vector<std::string>> optimizer_of{
      {"momentum", {"sgd", "rmsprop"}}, {"dampening", {"sgd"}},          {"nesterov", {"sgd"}},
      {"alpha", {"rmsprop"}},           {"centered", {"rmsprop"}},       {"beta1", {"adam"}},
      {"beta2", {"adam"}},              {"opt_eps", {"rmsprop", "adam"}}, {"decay", {"rmsprop-authors"}}};
  static const std::map<std::string, std::vector<std::string>> schedule_of{
      {"lr_gamma", {"step", "exp", "plateau"}}, {"lr_step", {"step", "exp"}},
      {"lr_patience", {"plateau"}},             {"lr_threshold", {"plateau"}},
      {"lr_min", {"plateau"}}};
  auto check = [&](const auto& table, const std::string& chosen, const char* what) {
    for (const auto& [field, users] : table) {
      if (!set.count(field) || std::find(users.begin(), users.end(), chosen) != users.end()) continue;
      std::string list;
      for (const auto& u : users) list += (list.empty() ? "" : ", ") + u;
      throw UsageError(flag_of(field) + ": the " + what + " '" + chosen + "' has no such setting (" +
                       flag_of(field) + " belongs to " + list + ")");
    }
  };
  check(optimizer_of, optimizer, "optimizer");
  static const std::map<std::string, std::vector<std::string>> task_of{
      {"valid_fraction", {"seq"}}, {"test_fraction", {"seq"}}, {"embed", {"ptb", "text8", "text"}},
      {"seq_len", {"ptb", "text8", "text"}}, {"permutation", {"pmnist"}}, {"permutation_seed", {"pmnist"}},
      {"mnist_split_train", {"seqmnist", "pmnist"}}, {"mnist_split_valid", {"seqmnist", "pmnist"}}};
  check(task_of, task, "--task");
  check(schedule_of, lr_schedule, "--lr-schedule");
}

const std::set<std::string>& TrainConfig::resumable_fields() {
  static const std::set<std::string> f{"steps",      "threads",       "log_every",
                                       "eval_every", "eval_batches",  "checkpoint_every",
                                       "max_bad_steps", "early_stop", "out"};
  return f;
}

TrainConfig TrainConfig::for_resume(const TrainConfig& saved, const TrainConfig& asked,
                                    const std::set<std::string>& given, const std::string& checkpoint) {
  const nlohmann::json s = saved.to_json(), a = asked.to_json();
  nlohmann::json merged = s;
  std::string differences;
  for (const auto& f : field_names()) {
    if (!given.count(f) && f != "out") continue;
    if (resumable_fields().count(f)) {
      merged[f] = a[f];
    } else if (a[f] != s[f]) {
      differences += (differences.empty() ? "" : ", ") + flag_of(f) + " " +
                     (a[f].is_string() ? a[f].get<std::string>() : a[f].dump()) + " (the run has " +
                     (s[f].is_string() ? s[f].get<std::string>() : s[f].dump()) + ")";
    }
  }
  if (!differences.empty())
    throw UsageError("--resume: " + checkpoint + " was trained otherwise: " + differences +
                     "; only --steps, --threads, --log-every, --eval-every, --eval-batches, "
                     "--checkpoint-every, --max-bad-steps and --early-stop may change on resume");
  return from_json(merged, checkpoint);
}

std::string cell_list() {
  std::string s;
  for (const auto* cells : {&all_cells(), &all_gru_cells()})
    for (Cell c : *cells) s += (s.empty() ? "" : ", ") + std::string(cell_name(c));
  return s;
}

void check_rows_for_batch_stats(Cell cell, int64_t rows, const std::string& flag) {
  if (rows != 1 ||
      !(cell == Cell::bnlstm || cell == Cell::bnx || cell == Cell::bnrnn || cell == Cell::bngru))
    return;
  throw UsageError(flag + ": cell " + cell_name(cell) +
                   " normalizes each time step over the batch's rows, and the variance of one row "
                   "is 0; use 2 rows or more");
}

namespace {
// Strings of the config are stored as JSON (config.json, the checkpoint): they must be UTF-8.
bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t more = c < 0x80 ? 0 : (c >> 5) == 0x6 ? 1 : (c >> 4) == 0xE ? 2 : (c >> 3) == 0x1E ? 3 : 9;
    if (more == 9 || i + more >= s.size()) return false;  // a lead byte not followed by its tail
    for (size_t k = 1; k <= more; ++k)
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 0x2) return false;
    i += more + 1;
  }
  return true;
}
}  // namespace

void TrainConfig::validate() const {
  auto bad = [](const char* flag, const std::string& what) {
    throw UsageError(std::string(flag) + ": " + what);
  };
  if (task != "seqmnist" && task != "pmnist" && task != "ptb" && task != "text8" && task != "text" &&
      task != "seq")
    bad("--task", "unknown task '" + task + "' (seqmnist, pmnist, ptb, text8, text, seq)");
  if (!(valid_fraction >= 0 && valid_fraction < 1)) bad("--valid-fraction", "must be in [0, 1)");
  if (!(test_fraction >= 0 && test_fraction < 1)) bad("--test-fraction", "must be in [0, 1)");
  if (!(valid_fraction + test_fraction < 1)) bad("--test-fraction", "with --valid-fraction must leave training rows");
  if (!parse_cell(cell)) bad("--cell", "unknown cell '" + cell + "' (" + cell_list() + ")");
  if (cell_is_gru(*parse_cell(cell)) && gamma_c >= 0)
    bad("--gamma-c", "cell " + cell + " has no cell state to normalize (its norms are of W x and W h)");
  if (hidden <= 0) bad("--hidden", "must be positive, got " + std::to_string(hidden));
  if (layers <= 0) bad("--layers", "must be positive, got " + std::to_string(layers));
  if (embed < 0) bad("--embed", "must be >= 0");
  if (!(eps > 0)) bad("--eps", "must be positive");
  if (!(lr > 0) || !std::isfinite(lr)) bad("--lr", "must be positive, got " + std::to_string(lr));
  if (momentum < 0 || momentum >= 1) bad("--momentum", "must be in [0, 1)");
  if (!(bn_momentum > 0 && bn_momentum <= 1)) bad("--bn-momentum", "must be in (0, 1]");
  if (h0_noise < 0) bad("--h0-noise", "must be >= 0");
  if (dropout > 0 && layers == 1)  // nn.LSTM only warns; a flag that does nothing is refused here
    bad("--dropout", "acts between stacked layers (not on the top layer's output): needs --layers >= 2");
  if (weight_decay < 0) bad("--weight-decay", "must be >= 0");
  if (clip < 0) bad("--clip", "must be >= 0 (0 = off)");
  if (batch_size <= 0) bad("--batch-size", "must be positive, got " + std::to_string(batch_size));
  if (seq_len <= 0) bad("--seq-len", "must be positive, got " + std::to_string(seq_len));
  if (steps < 0) bad("--steps", "must be >= 0");
  if (eval_every < 0) bad("--eval-every", "must be >= 0");
  if (log_every <= 0) bad("--log-every", "must be positive");
  if (checkpoint_every < 0) bad("--checkpoint-every", "must be >= 0");
  if (max_bad_steps <= 0) bad("--max-bad-steps", "must be positive");
  if (popstats != "pass" && popstats != "running") bad("--popstats", "must be 'pass' or 'running'");
  if (popstats_batches <= 0) bad("--popstats-batches", "must be positive");
  if (popstats_batch_size < 0) bad("--popstats-batch-size", "must be >= 0");
  if (init_recurrent != "orthogonal" && init_recurrent != "identity")
    bad("--init-recurrent", "must be 'orthogonal' or 'identity'");
  if (lr_schedule != "constant" && lr_schedule != "step" && lr_schedule != "exp" &&
      lr_schedule != "plateau")
    bad("--lr-schedule", "must be constant, step, exp or plateau");
  if (threads < 0) bad("--threads", "must be >= 0");
  if (gemm != "auto" && gemm != "openblas" && gemm != "onednn")
    bad("--gemm", "must be auto, openblas or onednn, got '" + gemm + "'");
  if (precision != "fp32" && precision != "bf16")
    bad("--precision", "must be fp32 or bf16, got '" + precision + "'");
  if (out.empty()) bad("--out", "must not be empty");
  for (const auto& [flag, value] : {std::pair<const char*, const std::string*>{"--data", &data},
                                    {"--out", &out}, {"--permutation", &permutation}})
    if (!valid_utf8(*value)) bad(flag, "the path is not valid UTF-8 (rbn stores it in JSON)");
  if (!is_lm() && task != "seqmnist" && task != "pmnist" && task != "seq") bad("--task", "unknown");
  if (bidirectional && is_lm())
    bad("--bidirectional", "task " + task + " is a left-to-right language model: a reverse "
                           "direction would read the symbol it is asked to predict");
  // The stack's own checks (gains, forget bias, sizes) name its fields: here, the flags.
  static const std::pair<const char*, const char*> kFlagOfField[] = {
      {"hidden_size", "--hidden"},   {"num_layers", "--layers"},       {"eps", "--eps"},
      {"momentum", "--bn-momentum"}, {"forget_bias", "--forget-bias"}, {"gamma_x", "--gamma-x"},
      {"gamma_h", "--gamma-h"},      {"gamma_c", "--gamma-c"},         {"t_max", "--seq-len"},
      {"input_size", "--embed"},     {"dropout", "--dropout"},         {"zoneout_h", "--zoneout-h"},
      {"zoneout_c", "--zoneout-c"}};
  try {
    stack_config(1).validate();
  } catch (const UsageError& e) {
    std::string msg = e.what();
    for (const auto& [field, flag] : kFlagOfField)
      if (msg.starts_with(std::string(field) + ":")) msg = flag + msg.substr(std::strlen(field));
    throw UsageError(msg);
  }
}

StackConfig TrainConfig::stack_config(int input_size) const {
  StackConfig s;
  s.cell = *parse_cell(cell);
  s.input_size = input_size;
  s.hidden_size = hidden;
  s.num_layers = layers;
  s.t_max = is_lm() ? seq_len : 784;
  s.eps = eps;
  s.gamma_x = gamma_x;
  s.gamma_h = gamma_h;
  s.gamma_c = gamma_c;
  s.forget_bias = forget_bias;  // unset unless given: the stack refuses one on a GRU
  s.momentum = bn_momentum;
  s.ln_input = ln_input;
  s.learn_init_state = learn_init_state;
  s.bidirectional = bidirectional;
  s.recurrent_init = init_recurrent == "identity" ? RecurrentInit::identity : RecurrentInit::orthogonal;
  s.seed = seed;
  s.dropout = dropout;
  s.zoneout_h = zoneout_h;
  s.zoneout_c = zoneout_c;
  return s;
}

}  // namespace rbn
