#include "train/checkpoint.hpp"

#include <sys/stat.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "io/safetensors.hpp"
#include "train/optim.hpp"
#include "train/schedule.hpp"
#include "train/task.hpp"
#include "util/blas.hpp"
#include "util/error.hpp"
#include "util/platform.hpp"

namespace rbn {

namespace {

std::string num(double v) {
  std::ostringstream s;
  s.precision(17);
  s << v;
  return s.str();
}

// The SPEC metadata of a model (format, cell, sizes, eps, head...).
std::map<std::string, std::string> model_metadata(const Model& m) {
  const ModelConfig& mc = m.config();
  std::map<std::string, std::string> md;
  md["format"] = "rbn/1";
  md["cell"] = cell_name(mc.rnn.cell);
  md["input_size"] = std::to_string(mc.rnn.input_size);
  md["hidden_size"] = std::to_string(mc.rnn.hidden_size);
  md["num_layers"] = std::to_string(mc.rnn.num_layers);
  md["t_max"] = std::to_string(mc.rnn.t_max);
  md["eps"] = num(mc.rnn.eps);
  md["head"] = head_name(mc.head);
  if (mc.head != Head::none) md["num_classes"] = std::to_string(mc.num_classes);
  if (mc.head == Head::regress) md["per_step"] = mc.per_step ? "true" : "false";
  md["embed_dim"] = std::to_string(mc.embed_dim);
  md["ln_input"] = mc.rnn.ln_input ? "true" : "false";
  md["learn_init_state"] = mc.rnn.learn_init_state ? "true" : "false";
  md["bidirectional"] = mc.rnn.bidirectional ? "true" : "false";
  md["bn_momentum"] = num(mc.rnn.momentum);
  // the regularizers: zoneout acts at inference too (its expectation)
  md["dropout"] = num(mc.rnn.dropout);
  md["zoneout_h"] = num(mc.rnn.zoneout_h);
  md["zoneout_c"] = num(mc.rnn.zoneout_c);
  return md;
}

void add_model_tensors(SafeTensors& st, Model& m) {
  for (const auto& p : m.parameters()) st.add_f32(p.name, p.shape, p.value);
  const auto& rnn = m.rnn();
  for (const auto& bi : rnn.buffer_info())
    st.add_f32(bi.name, bi.shape, rnn.buffers().data() + bi.offset);
}

void add_state_metadata(std::map<std::string, std::string>& md, const CheckpointState& s) {
  md["popstats"] = s.popstats;
  if (!s.popstats_data.empty()) md["popstats_data"] = s.popstats_data;
  md["step"] = std::to_string(s.step);
  md["best_metric"] = num(s.best_metric);
  md["evals_without_improvement"] = std::to_string(s.evals_without_improvement);
}

const std::string& meta(const CheckpointMetadata& md, const std::string& path, const std::string& key) {
  auto it = md.find(key);
  if (it == md.end()) throw DataError(path + ": metadata key '" + key + "' missing");
  return it->second;
}

int64_t meta_int(const CheckpointMetadata& md, const std::string& path, const std::string& key) {
  const std::string& v = meta(md, path, key);
  try {
    size_t used = 0;
    const long long r = std::stoll(v, &used);
    if (used != v.size()) throw std::invalid_argument(v);
    return r;
  } catch (const std::exception&) {
    throw DataError(path + ": metadata '" + key + "' = '" + v + "' is not an integer");
  }
}

double meta_double(const CheckpointMetadata& md, const std::string& path, const std::string& key,
                   double fallback) {
  auto it = md.find(key);
  if (it == md.end()) return fallback;
  try {
    return std::stod(it->second);
  } catch (const std::exception&) {
    throw DataError(path + ": metadata '" + key + "' = '" + it->second + "' is not a number");
  }
}

CheckpointState read_state(const CheckpointMetadata& md, const std::string& path) {
  CheckpointState s;
  auto get = [&](const char* k, const std::string& d) {
    auto it = md.find(k);
    return it == md.end() ? d : it->second;
  };
  s.popstats = get("popstats", "running");
  if (s.popstats != "running" && s.popstats != "pass")
    throw DataError(path + ": metadata 'popstats' must be 'running' or 'pass', got '" + s.popstats + "'");
  s.popstats_data = get("popstats_data", "");
  s.step = md.count("step") ? meta_int(md, path, "step") : 0;
  s.best_metric = meta_double(md, path, "best_metric", INFINITY);
  s.evals_without_improvement = md.count("evals_without_improvement")
                                    ? static_cast<int>(meta_int(md, path, "evals_without_improvement"))
                                    : 0;
  return s;
}

// Copies every model tensor from the file, checking names, shapes and dtypes.
void load_model_tensors(const SafeTensors& st, const std::string& path, Model& m) {
  for (const auto& p : m.parameters()) {
    std::vector<float> v = st.get_f32(p.name, p.shape);
    std::copy(v.begin(), v.end(), p.value);
  }
  auto& rnn = m.rnn();
  for (const auto& bi : rnn.buffer_info()) {
    std::vector<float> v = st.get_f32(bi.name, bi.shape);
    std::copy(v.begin(), v.end(), rnn.buffers().data() + bi.offset);
  }
  (void)path;
}

}  // namespace

void save_checkpoint(const std::string& path, Model& model, const TrainConfig& cfg,
                     const TaskData& data, Optimizer* opt, LrSchedule* schedule,
                     const CheckpointState& s) {
  SafeTensors st;
  add_model_tensors(st, model);
  for (const auto& [name, v] : data.int_tensors())
    st.add_i32(name, {static_cast<int64_t>(v.size())}, v.data());
  st.metadata = model_metadata(model);
  for (const auto& [k, v] : data.metadata()) st.metadata[k] = v;
  add_state_metadata(st.metadata, s);
  st.metadata["config"] = cfg.to_json().dump();
  st.metadata["gemm_backend"] = blas::backend_name(blas::backend());  // what the run's floats used
  st.metadata["precision"] = blas::precision_name(blas::precision());  // the products' inputs
  st.metadata["denormals"] = denormal_mode();  // subnormals flushed or kept (--resume keeps it)
  if (opt) {
    for (const auto& slot : opt->state_tensors())
      st.add_f32(Optimizer::tensor_name(slot.slot, slot.param), {static_cast<int64_t>(slot.numel)}, slot.data);
    st.metadata["optim"] = opt->scalar_state().dump();
  }
  if (schedule) st.metadata["schedule"] = schedule->state().dump();
  write_safetensors(path, st);
}

CheckpointState load_checkpoint(const std::string& path, Model& model, Optimizer* opt,
                                LrSchedule* schedule) {
  const SafeTensors st = read_safetensors(path);
  // the stored architecture must be the one the model was built with
  const auto want = model_metadata(model);
  for (const char* k : {"cell", "input_size", "hidden_size", "num_layers", "head"})
    if (want.count(k) && meta(st.metadata, path, k) != want.at(k))
      throw DataError(path + ": metadata '" + k + "' = '" + meta(st.metadata, path, k) + "', the config says '" +
                      want.at(k) + "'");
  {  // files from before bidirectional stacks have no key: one-directional
    auto it = st.metadata.find("bidirectional");
    const std::string have = it == st.metadata.end() ? "false" : it->second;
    if (have != want.at("bidirectional"))
      throw DataError(path + ": metadata 'bidirectional' = '" + have + "', the config says '" +
                      want.at("bidirectional") + "'");
  }
  load_model_tensors(st, path, model);
  if (opt) {
    auto it = st.metadata.find("optim");
    if (it == st.metadata.end()) throw DataError(path + ": no optimizer state to resume from");
    nlohmann::json j = nlohmann::json::parse(it->second, nullptr, false);
    if (j.is_discarded()) throw DataError(path + ": metadata 'optim' is not JSON");
    opt->load_scalar_state(j);
    Optimizer::State state;
    state.step_count = opt->step_count();
    for (const auto& name : st.names())
      if (name.starts_with("optim.")) state.tensors.emplace(name, st.get_f32(name, {}));
    try {
      opt->load_state(state);  // checks each name against the optimizer's slots
    } catch (const DataError& e) {
      throw DataError(path + ": " + e.what());
    }
  }
  if (schedule) {
    auto it = st.metadata.find("schedule");
    if (it != st.metadata.end()) {
      nlohmann::json j = nlohmann::json::parse(it->second, nullptr, false);
      if (j.is_discarded()) throw DataError(path + ": metadata 'schedule' is not JSON");
      schedule->load_state(j);
    }
  }
  return read_state(st.metadata, path);
}

CheckpointMetadata read_checkpoint_metadata(const std::string& path) {
  return read_safetensors_metadata(path);
}

TrainConfig checkpoint_config(const CheckpointMetadata& md, const std::string& path) {
  const std::string& c = meta(md, path, "config");
  nlohmann::json j = nlohmann::json::parse(c, nullptr, false);
  if (j.is_discarded()) throw DataError(path + ": metadata 'config' is not JSON");
  try {
    return TrainConfig::from_json(j, path);
  } catch (const UsageError& e) {
    throw DataError(e.what());
  }
}

CheckpointState checkpoint_state(const CheckpointMetadata& md, const std::string& path) {
  return read_state(md, path);
}

LoadedCheckpoint load_model_checkpoint(const std::string& path) {
  const SafeTensors st = read_safetensors(path);
  LoadedCheckpoint ck;
  ck.metadata = st.metadata;
  std::error_code ec;
  ck.file_bytes = std::filesystem::file_size(path, ec);
  const std::string fmt = meta(st.metadata, path, "format");
  if (fmt != "rbn/1") throw DataError(path + ": unknown format '" + fmt + "' (expected rbn/1)");
  ModelConfig mc;
  auto cell = parse_cell(meta(st.metadata, path, "cell"));
  if (!cell) throw DataError(path + ": unknown cell '" + meta(st.metadata, path, "cell") + "'");
  mc.rnn.cell = *cell;
  auto positive = [&](const char* key) {
    const int64_t v = meta_int(st.metadata, path, key);
    if (v <= 0 || v > (int64_t{1} << 28))
      throw DataError(path + ": metadata '" + key + "' = " + std::to_string(v) + " is out of range");
    return static_cast<int>(v);
  };
  mc.rnn.input_size = positive("input_size");
  mc.rnn.hidden_size = positive("hidden_size");
  mc.rnn.num_layers = positive("num_layers");
  mc.rnn.t_max = positive("t_max");
  mc.rnn.eps = meta_double(st.metadata, path, "eps", 1e-5);
  if (!(mc.rnn.eps > 0)) throw DataError(path + ": metadata 'eps' must be positive");
  mc.rnn.momentum = meta_double(st.metadata, path, "bn_momentum", 0.1);
  mc.rnn.dropout = meta_double(st.metadata, path, "dropout", 0.0);
  mc.rnn.zoneout_h = meta_double(st.metadata, path, "zoneout_h", 0.0);
  mc.rnn.zoneout_c = meta_double(st.metadata, path, "zoneout_c", 0.0);
  auto flag = [&](const char* key, bool d) {
    auto it = st.metadata.find(key);
    return it == st.metadata.end() ? d : it->second == "true";
  };
  mc.rnn.ln_input = flag("ln_input", true);
  mc.rnn.learn_init_state = flag("learn_init_state", false) || st.has("rnn.0.h0");
  mc.rnn.bidirectional = flag("bidirectional", false) || st.has("rnn.0.reverse.weight_ih");
  if ((mc.rnn.cell == Cell::lnlstm || mc.rnn.cell == Cell::lngru) && !st.has("rnn.0.ln_x.weight"))
    mc.rnn.ln_input = false;
  try {
    mc.head = parse_head(meta(st.metadata, path, "head"));
  } catch (const UsageError&) {
    throw DataError(path + ": metadata 'head' = '" + meta(st.metadata, path, "head") +
                    "' is not none, classify, lm, tag or regress");
  }
  mc.per_step = flag("per_step", false);
  mc.num_classes = mc.head == Head::none ? 2 : positive("num_classes");
  mc.embed_dim = st.metadata.count("embed_dim") ? static_cast<int>(meta_int(st.metadata, path, "embed_dim")) : 0;
  if (mc.head == Head::lm && mc.embed_dim == 0 && mc.rnn.input_size != mc.num_classes)
    throw DataError(path + ": a one-hot language model needs input_size = num_classes");
  try {
    ck.model = std::make_unique<Model>(mc);
  } catch (const UsageError& e) {
    throw DataError(path + ": " + e.what());
  }
  load_model_tensors(st, path, *ck.model);
  ck.state = read_state(st.metadata, path);
  if (st.has("data.permutation")) ck.permutation = st.get_i32("data.permutation", {784});
  if (auto it = st.metadata.find("vocab"); it != st.metadata.end()) {
    ck.vocab = nlohmann::json::parse(it->second, nullptr, false);
    if (ck.vocab.is_discarded()) throw DataError(path + ": metadata 'vocab' is not JSON");
  }
  if (auto it = st.metadata.find("config"); it != st.metadata.end()) {
    nlohmann::json j = nlohmann::json::parse(it->second, nullptr, false);
    if (!j.is_discarded()) {
      try {
        ck.train_config = TrainConfig::from_json(j, path);
      } catch (const UsageError&) {
        // a config from a newer or older version: the model itself still loads
      }
    }
  }
  return ck;
}

void save_model_checkpoint(const std::string& path, const LoadedCheckpoint& ck,
                           const CheckpointState& s) {
  SafeTensors st;
  add_model_tensors(st, *ck.model);
  if (!ck.permutation.empty())
    st.add_i32("data.permutation", {static_cast<int64_t>(ck.permutation.size())}, ck.permutation.data());
  st.metadata = ck.metadata;
  // a model file: no optimizer or schedule state (their tensors are not carried over)
  for (const char* k : {"checksum", "optim", "schedule"}) st.metadata.erase(k);
  for (const auto& [k, v] : model_metadata(*ck.model)) st.metadata[k] = v;
  add_state_metadata(st.metadata, s);
  write_safetensors(path, st);
}

void check_resumed_denormal_mode(const CheckpointMetadata& md, const std::string& path) {
  const auto it = md.find("denormals");
  if (it == md.end()) return;  // written before the mode was recorded
  const std::string now = denormal_mode();
  if (it->second == now) return;
  const bool flushed = it->second == "flush";
  if (!flushed && it->second != "keep")
    throw DataError(path + ": metadata 'denormals' = '" + it->second + "': expected flush or keep");
  throw UsageError(std::string("RBN_DENORMALS=") + (flushed ? "keep" : "flush (the default)") +
                   ": the run was trained with subnormals " + (flushed ? "flushed to zero" : "kept") +
                   " (" + path + "), and --resume keeps that so that the run stays bit-reproducible (" +
                   (flushed ? "unset RBN_DENORMALS" : "set RBN_DENORMALS=keep") + ")");
}

void use_recorded_gemm_backend(const LoadedCheckpoint& ck, const std::string& path) {
  const char* env = std::getenv("RBN_GEMM");
  if (env && *env && std::string(env) != "auto") return;
  auto it = ck.metadata.find("gemm_backend");
  if (it == ck.metadata.end()) return;
  const auto b = blas::parse_backend(it->second);
  if (!b)
    throw DataError(path + ": metadata 'gemm_backend' = '" + it->second +
                    "': unknown GEMM backend (openblas, onednn); RBN_GEMM=openblas or onednn "
                    "evaluates the file on that one");
  blas::set_backend(*b);
}

}  // namespace rbn
