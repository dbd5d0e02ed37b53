// rbn eval | popstats | sample | forward | info: commands that start from a checkpoint.
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "data/text.hpp"
#include "io/npy.hpp"
#include "train/checkpoint.hpp"
#include "train/evaluate.hpp"
#include "train/task.hpp"
#include "util/blas.hpp"
#include "util/error.hpp"
#include "util/platform.hpp"
#include "util/progress.hpp"
#include "util/rng.hpp"

namespace rbn::cli {

namespace {

// The training config a checkpoint was made with, with the data path (and batch sizes) that the
// command line may override.
TrainConfig data_config(const LoadedCheckpoint& ck, const std::string& path, const std::string& data) {
  if (!ck.train_config)
    throw UsageError(path + ": the checkpoint has no training config; it cannot locate its data");
  TrainConfig cfg = *ck.train_config;
  if (!data.empty()) cfg.data = data;
  return cfg;
}

Split parse_split(const std::string& s) {
  if (s == "train") return Split::train;
  if (s == "valid") return Split::valid;
  if (s == "test") return Split::test;
  throw UsageError("--split: must be train, valid or test, got '" + s + "'");
}

struct EvalFlags {
  std::string checkpoint, split = "test", data, popstats = "auto", json, precision = "fp32";
  int popstats_batches = 0, popstats_batch_size = 0, batch_size = 0, streams = 1, chunk = 100,
      threads = 0;
  bool windows = false;
};

void run_popstats(Model& model, TaskData& data, int batches, int batch_size, uint64_t seed) {
  Progress bar("popstats", batches);
  popstats_pass(model, data, batches, batch_size, seed, [&](int64_t d, int64_t) { bar.update(d, ""); });
  bar.finish();
}

// Which population statistics eval uses, running the pass where that is the choice. Returns what
// the result line reports: "pass", "running", "checkpoint (pass)" or "none" (a cell without them).
std::string choose_popstats(const EvalFlags& f, LoadedCheckpoint& ck, TaskData& data, const TrainConfig& cfg) {
  const std::string& asked = f.popstats;
  if (asked != "auto" && asked != "pass" && asked != "running" && asked != "checkpoint")
    throw UsageError("--popstats: must be auto, pass, running or checkpoint, got '" + asked + "'");
  const Cell cell = ck.model->config().rnn.cell;
  if (!cell_has_population_stats(cell)) {
    if (asked != "auto")
      throw UsageError("--popstats " + asked + ": cell " + cell_name(cell) + " has no population statistics" +
                       (cell == Cell::lnlstm || cell == Cell::lngru ? " (layer normalization uses each row's own)" : ""));
    return "none";
  }
  const std::string& held = ck.state.popstats;  // what the checkpoint's buffers hold
  if (asked == "running" && held != "running")
    throw UsageError("--popstats running: " + f.checkpoint + " holds the statistics of a pass (they "
                     "replaced the running averages); use --popstats checkpoint or pass");
  std::string used = asked;
  if (used == "auto")
    used = held == "pass" && ck.state.popstats_data == data.train_fingerprint() ? "checkpoint" : "pass";
  if (used == "checkpoint") return "checkpoint (" + held + ")";
  if (used == "pass") {
    const int batches = f.popstats_batches > 0 ? f.popstats_batches : cfg.popstats_batches;
    const int bs = f.popstats_batch_size > 0 ? f.popstats_batch_size
                   : cfg.popstats_batch_size > 0 ? cfg.popstats_batch_size : cfg.batch_size;
    check_rows_for_batch_stats(cell, bs, "--popstats-batch-size " + std::to_string(bs));
    run_popstats(*ck.model, data, batches, bs, cfg.seed);
  }
  return used;
}

// Token ids [T,N] of a model trained on ids (--task seq): one-hot features [T,N,V].
std::vector<float> one_hot_ids(const NpyArray& in, const std::string& file, int V, int& T, int& N) {
  if (in.shape.size() != 2)
    throw DataError(file + ": this model takes token ids [T,N], got rank " + std::to_string(in.shape.size()));
  const std::vector<int32_t> ids = in.to_int32();
  T = static_cast<int>(in.shape[0]);
  N = static_cast<int>(in.shape[1]);
  std::vector<float> x(ids.size() * static_cast<size_t>(V), 0.0f);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= V)
      throw DataError(file + ": token id " + std::to_string(ids[i]) + " outside [0, " + std::to_string(V) + ")");
    x[i * V + ids[i]] = 1.0f;
  }
  return x;
}

// ", classes 10" / ", vocabulary 50" after the head's name; nothing for a bare stack.
std::string head_size(const ModelConfig& mc) {
  switch (mc.head) {
    case Head::none: return "";
    case Head::lm: return ", vocabulary " + std::to_string(mc.num_classes);
    case Head::tag: return ", classes " + std::to_string(mc.num_classes) + " per step";
    case Head::regress:
      return ", outputs " + std::to_string(mc.num_classes) + (mc.per_step ? " per step" : " per sequence");
    default: return ", classes " + std::to_string(mc.num_classes);
  }
}

}  // namespace

// --precision of eval and bench: fp32 | bf16 (refused on a CPU without bf16).
void set_precision_flag(const std::string& name) {
  const auto p = blas::parse_precision(name);
  if (!p) throw UsageError("--precision: must be fp32 or bf16, got '" + name + "'");
  blas::set_precision(*p, "--precision");
}

void register_eval(CLI::App& app, int& exit_code) {
  auto* sub = app.add_subcommand("eval", "evaluate a checkpoint with population statistics");
  auto f = std::make_shared<EvalFlags>();
  sub->add_option("--checkpoint", f->checkpoint, "a .safetensors checkpoint")->required();
  sub->add_option("--split", f->split, "train | valid | test (the training split too: a check of overfitting)")->capture_default_str();
  sub->add_option("--data", f->data, "dataset location (default: the one it was trained on)");
  sub->add_option("--popstats", f->popstats,
                  "auto (pass unless the checkpoint holds pass statistics of the same data) | pass | "
                  "running | checkpoint")->capture_default_str();
  sub->add_option("--popstats-batches", f->popstats_batches, "batches in the statistics pass (0: as trained)");
  sub->add_option("--popstats-batch-size", f->popstats_batch_size, "batch size of the pass (0: as trained)");
  sub->add_option("--batch-size", f->batch_size, "evaluation batch size (0: as trained)");
  sub->add_option("--streams", f->streams,
                  "language models: contiguous parts evaluated side by side (1 = the whole split as one "
                  "sequence, the authors' proper test)")->capture_default_str();
  sub->add_option("--chunk", f->chunk, "language models: steps per chunk, state carried")->capture_default_str();
  sub->add_flag("--windows", f->windows, "language models: non-overlapping windows of the training length");
  sub->add_option("--threads", f->threads, "threads (0: default)");
  sub->add_option("--json", f->json, "write the result as JSON here");
  sub->add_option("--precision", f->precision,
                  "inputs of the float matrix products: fp32 | bf16 (needs AVX512_BF16 or AMX)")
      ->capture_default_str();
  sub->callback([f, &exit_code]() {
    set_threads(f->threads);
    set_precision_flag(f->precision);
    LoadedCheckpoint ck = load_model_checkpoint(f->checkpoint);
    use_recorded_gemm_backend(ck, f->checkpoint);
    TrainConfig cfg = data_config(ck, f->checkpoint, f->data);
    if (f->batch_size > 0) cfg.batch_size = f->batch_size;
    auto data = load_task(cfg);
    Model& model = *ck.model;
    const Split split = parse_split(f->split);
    const std::string used = choose_popstats(*f, ck, *data, cfg);
    EvalResult r;
    const bool lm = data->head() == Head::lm;
    std::string how;
    if (lm && !f->windows) {
      const auto& ids = data->stream(split);
      Progress bar("eval " + f->split, static_cast<int64_t>(ids.size()));
      r = evaluate_stream(model, ids, f->streams, f->chunk, [&](int64_t d, int64_t) { bar.update(d, ""); });
      bar.finish();
      how = fmt::format("continuous sequence, {} stream(s), chunks of {}", f->streams, f->chunk);
    } else {
      Progress bar("eval " + f->split, data->eval_batches(split, cfg.batch_size));
      r = evaluate_batches(model, *data, split, cfg.batch_size, 0, [&](int64_t d, int64_t) { bar.update(d, ""); });
      bar.finish();
      how = lm ? fmt::format("non-overlapping windows of {}", data->seq_len()) : "batches";
    }
    nlohmann::json j{{"checkpoint", f->checkpoint}, {"split", f->split}, {"loss", r.loss},
                     {"count", r.count},            {"seconds", r.seconds}, {"popstats", used},
                     {"evaluation", how}, {"precision", blas::precision_name(blas::precision())}};
    const HeadMetric hm = head_metric(data->head(), r.loss, r.accuracy);
    j[hm.name] = hm.value;
    const char* items = lm ? "symbols" : data->head() == Head::tag ? "steps"
                        : data->head() == Head::regress ? "values" : "sequences";
    std::printf("%s %s: %s %.4f (loss %.4f%s, %lld %s; population statistics: %s; %s)\n",
                f->checkpoint.c_str(), f->split.c_str(), hm.name, hm.value, r.loss,
                data->head() == Head::regress ? "" : " nats", static_cast<long long>(r.count), items,
                used.c_str(), how.c_str());
    if (!f->json.empty()) {
      std::ofstream o(f->json);
      if (!o) throw DataError(f->json + ": cannot open for writing");
      o << j.dump(2) << '\n';
    }
    exit_code = 0;
  });
}

void register_popstats(CLI::App& app, int& exit_code) {
  auto* sub = app.add_subcommand("popstats", "run the statistics pass and store it in a checkpoint");
  struct Flags {
    std::string checkpoint, out, data;
    int batches = 0, batch_size = 0, threads = 0;
  };
  auto f = std::make_shared<Flags>();
  sub->add_option("--checkpoint", f->checkpoint, "a .safetensors checkpoint")->required();
  sub->add_option("--out", f->out, "where to write (default: overwrite --checkpoint)");
  sub->add_option("--data", f->data, "dataset location (default: the one it was trained on)");
  sub->add_option("--batches", f->batches, "batches in the pass (0: as trained)");
  sub->add_option("--batch-size", f->batch_size, "batch size (0: as trained)");
  sub->add_option("--threads", f->threads, "threads (0: default)");
  sub->callback([f, &exit_code]() {
    set_threads(f->threads);
    LoadedCheckpoint ck = load_model_checkpoint(f->checkpoint);
    use_recorded_gemm_backend(ck, f->checkpoint);
    if (!cell_has_population_stats(ck.model->config().rnn.cell))
      throw UsageError(f->checkpoint + ": cell '" + cell_name(ck.model->config().rnn.cell) +
                       "' has no population statistics");
    TrainConfig cfg = data_config(ck, f->checkpoint, f->data);
    auto data = load_task(cfg);
    const int batches = f->batches > 0 ? f->batches : cfg.popstats_batches;
    const int bs = f->batch_size > 0 ? f->batch_size : cfg.batch_size;
    check_rows_for_batch_stats(ck.model->config().rnn.cell, bs, "--batch-size " + std::to_string(bs));
    run_popstats(*ck.model, *data, batches, bs, cfg.seed);
    CheckpointState st = ck.state;
    st.popstats = "pass";
    st.popstats_data = data->train_fingerprint();
    const std::string out = f->out.empty() ? f->checkpoint : f->out;
    save_model_checkpoint(out, ck, st);
    std::printf("statistics pass over %d batches of %d written to %s\n", batches, bs, out.c_str());
    exit_code = 0;
  });
}

void register_sample(CLI::App& app, int& exit_code) {
  auto* sub = app.add_subcommand("sample", "generate text from a language model");
  struct Flags {
    std::string checkpoint, prime;
    int length = 500;
    double temperature = 1.0;
    uint64_t seed = 1;
  };
  auto f = std::make_shared<Flags>();
  sub->add_option("--checkpoint", f->checkpoint, "a language-model checkpoint")->required();
  sub->add_option("--length", f->length, "symbols to generate (> 0)")->capture_default_str();
  sub->add_option("--temperature", f->temperature, "softmax temperature (> 0)")->capture_default_str();
  sub->add_option("--seed", f->seed, "random seed")->capture_default_str();
  sub->add_option("--prime", f->prime, "text to start from (symbols of the vocabulary)");
  sub->callback([f, &exit_code]() {
    if (f->length <= 0) throw UsageError("--length: must be positive, got " + std::to_string(f->length));
    if (!(f->temperature > 0)) throw UsageError("--temperature: must be positive");
    LoadedCheckpoint ck = load_model_checkpoint(f->checkpoint);
    use_recorded_gemm_backend(ck, f->checkpoint);
    Model& m = *ck.model;
    if (m.config().rnn.bidirectional)
      throw UsageError(f->checkpoint + ": a bidirectional model cannot sample: sampling steps left "
                       "to right (the step API), and its reverse direction needs the whole sequence");
    if (m.config().head != Head::lm || ck.vocab.is_null())
      throw UsageError(f->checkpoint + ": not a language model (head '" +
                       std::string(head_name(m.config().head)) + "')");
    const Vocab vocab = [&] {
      try {
        return Vocab::from_json(ck.vocab);
      } catch (const DataError& e) {
        throw DataError(f->checkpoint + ": metadata 'vocab': " + e.what());
      }
    }();
    if (vocab.size() != m.config().num_classes)
      throw DataError(f->checkpoint + ": metadata 'vocab' has " + std::to_string(vocab.size()) +
                      " symbols, the model " + std::to_string(m.config().num_classes));
    const int L = m.config().rnn.num_layers, H = m.config().rnn.hidden_size, K = m.config().num_classes;
    std::vector<float> h(size_t(L) * H, 0.f), c(size_t(L) * H, 0.f), hT(h.size()), cT(c.size()),
        logits(K);
    std::vector<int32_t> prime = vocab.encode_text(f->prime.empty() ? vocab.default_prime() : f->prime,
                                                   "--prime");
    ForwardOptions opt;
    opt.mode = Mode::infer;
    opt.need_backward = false;
    Rng rng(f->seed);
    std::string out = vocab.decode(prime);
    int32_t cur = prime.back();
    // feed the prime, one step at a time (the step API carries (h, c, t))
    int t = 0;
    for (size_t i = 0; i < prime.size(); ++i, ++t) {
      opt.t0 = t;
      m.logits(opt, 1, 1, nullptr, &prime[i], nullptr, h.data(), c.data(), logits.data(), hT.data(), cT.data());
      h.swap(hT);
      c.swap(cT);
    }
    std::vector<double> p(K);  // the step's probabilities (unnormalized): a step allocates nothing
    for (int i = 0; i < f->length; ++i, ++t) {
      double mx = -1e300;
      for (float v : logits) mx = std::max(mx, static_cast<double>(v));
      double sum = 0;
      for (int k = 0; k < K; ++k) sum += p[k] = std::exp((logits[k] - mx) / f->temperature);
      double u = rng.uniform() * sum;
      cur = K - 1;
      for (int k = 0; k < K; ++k) {
        u -= p[k];
        if (u <= 0) {
          cur = k;
          break;
        }
      }
      out += vocab.decode({cur});
      opt.t0 = t;
      m.logits(opt, 1, 1, nullptr, &cur, nullptr, h.data(), c.data(), logits.data(), hT.data(), cT.data());
      h.swap(hT);
      c.swap(cT);
    }
    // the bytes as they are (a NUL or a lone 0x80 included)
    out += '\n';
    if (std::fwrite(out.data(), 1, out.size(), stdout) != out.size())
      throw DataError("sample: writing to standard output failed");
    exit_code = 0;
  });
}

void register_forward(CLI::App& app, int& exit_code) {
  auto* sub = app.add_subcommand("forward", "run a checkpoint on a .npy input");
  struct Flags {
    std::string checkpoint, input, output, lengths;
    bool train_mode = false;
    int threads = 0;
  };
  auto f = std::make_shared<Flags>();
  sub->add_option("--checkpoint", f->checkpoint, "a .safetensors checkpoint")->required();
  sub->add_option("--input", f->input, "X.npy: features [T,N,C] (float32/64) or token ids [T,N] (int32/64)")->required();
  sub->add_option("--output", f->output, "Y.npy: h [T,N,H] (no head; bidirectional [T,N,2H]), logits [N,K] (classify) / [T,N,K] (lm, tag), values [N,D] / [T,N,D] (regress)")->required();
  sub->add_option("--lengths", f->lengths, "L.npy: valid steps per row [N] (int32/64)");
  sub->add_flag("--train-mode", f->train_mode, "batch statistics instead of population statistics");
  sub->add_option("--threads", f->threads, "threads (0: default)");
  sub->callback([f, &exit_code]() {
    set_threads(f->threads);
    LoadedCheckpoint ck = load_model_checkpoint(f->checkpoint);
    use_recorded_gemm_backend(ck, f->checkpoint);
    Model& m = *ck.model;
    const auto& mc = m.config();
    NpyArray in = read_npy(f->input);
    const bool lm = mc.head == Head::lm;
    int T = 0, N = 0;
    std::vector<float> x;
    std::vector<int32_t> ids;
    if (lm) {
      if (in.shape.size() != 2)
        throw DataError(f->input + ": a language model takes token ids [T,N], got rank " +
                        std::to_string(in.shape.size()));
      ids = in.to_int32();
      for (auto v : ids)
        if (v < 0 || v >= mc.num_classes)
          throw DataError(f->input + ": token id " + std::to_string(v) + " outside the vocabulary [0, " +
                          std::to_string(mc.num_classes) + ")");
      T = static_cast<int>(in.shape[0]);
      N = static_cast<int>(in.shape[1]);
    } else if (ck.metadata.count("data.input") && ck.metadata.at("data.input") == "ids") {
      x = one_hot_ids(in, f->input, mc.rnn.input_size, T, N);  // --task seq on token ids
    } else {
      if (in.shape.size() != 3 || in.shape[2] != mc.rnn.input_size)
        throw DataError(f->input + ": expected features [T,N," + std::to_string(mc.rnn.input_size) + "]");
      x = in.to_float();
      T = static_cast<int>(in.shape[0]);
      N = static_cast<int>(in.shape[1]);
    }
    std::vector<int32_t> lengths;
    if (!f->lengths.empty()) {
      NpyArray l = read_npy(f->lengths);
      if (l.shape.size() != 1 || l.shape[0] != N)
        throw DataError(f->lengths + ": expected lengths [" + std::to_string(N) + "]");
      lengths = l.to_int32();
      for (auto v : lengths)
        if (v < 0 || v > T)
          throw DataError(f->lengths + ": length " + std::to_string(v) + " outside [0, " + std::to_string(T) + "]");
    }
    if (f->train_mode) check_rows_for_batch_stats(mc.rnn.cell, N, "--train-mode on one row (" + f->input + ")");
    ForwardOptions opt;
    opt.mode = f->train_mode ? Mode::train : Mode::infer;
    opt.update_running = false;
    opt.need_backward = false;
    opt.regularize = false;  // batch statistics, but no dropout and zoneout's expectation (SPEC 2b)
    const int32_t* len = lengths.empty() ? nullptr : lengths.data();
    std::vector<float> out;
    std::vector<int64_t> shape;
    if (mc.head == Head::none) {  // the top layer's h (bidirectional: forward ‖ reverse)
      out.resize(size_t(T) * N * m.features());
      m.logits(opt, T, N, x.data(), nullptr, len, nullptr, nullptr, out.data(), nullptr, nullptr);
      shape = {T, N, m.features()};
    } else if (lm) {
      out.resize(size_t(T) * N * mc.num_classes);
      m.logits(opt, T, N, nullptr, ids.data(), len, nullptr, nullptr, out.data(), nullptr, nullptr);
      shape = {T, N, mc.num_classes};
    } else if (mc.head == Head::tag || (mc.head == Head::regress && mc.per_step)) {
      out.resize(size_t(T) * N * mc.num_classes);
      m.logits(opt, T, N, x.data(), nullptr, len, nullptr, nullptr, out.data(), nullptr, nullptr);
      shape = {T, N, mc.num_classes};
    } else {
      out.resize(size_t(N) * mc.num_classes);
      m.logits(opt, T, N, x.data(), nullptr, len, nullptr, nullptr, out.data(), nullptr, nullptr);
      shape = {N, mc.num_classes};
    }
    write_npy(f->output, "<f4", shape, out.data());
    std::printf("wrote %s [%s]\n", f->output.c_str(),
                fmt::format("{}", fmt::join(shape, ",")).c_str());
    exit_code = 0;
  });
}

void register_info(CLI::App& app, int& exit_code) {
  auto* sub = app.add_subcommand("info", "a checkpoint's config, sizes, step and metrics");
  struct Flags {
    std::string checkpoint, positional;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  // `rbn info FILE` or `rbn info --checkpoint FILE` (as the other commands), listed once
  sub->add_option("checkpoint", f->positional, "a .safetensors checkpoint (or --checkpoint FILE)");
  sub->add_option("--checkpoint", f->checkpoint)->group("");
  sub->add_flag("--json", f->json, "print JSON");
  sub->callback([f, &exit_code]() {
    if (!f->checkpoint.empty() && !f->positional.empty() && f->checkpoint != f->positional)
      throw UsageError("--checkpoint: two checkpoints given (" + f->checkpoint + " and " + f->positional + "); give one");
    if (f->checkpoint.empty()) f->checkpoint = f->positional;
    if (f->checkpoint.empty()) throw UsageError("--checkpoint: required (a .safetensors checkpoint)");
    LoadedCheckpoint ck = load_model_checkpoint(f->checkpoint);
    const bool has_pop = cell_has_population_stats(ck.model->config().rnn.cell);
    const std::string popstats = has_pop ? ck.state.popstats : "none";
    const auto& mc = ck.model->config();
    size_t nparams = 0;
    for (auto& p : ck.model->parameters()) nparams += p.numel;
    nlohmann::json j;
    j["file"] = f->checkpoint;
    j["bytes"] = ck.file_bytes;
    j["metadata"] = ck.metadata;
    j["parameters"] = nparams;
    j["step"] = ck.state.step;
    j["popstats"] = popstats;
    // the run's last metrics, when the checkpoint sits in its output directory
    const auto dir = std::filesystem::path(f->checkpoint).parent_path();
    std::ifstream mf(dir / "metrics.jsonl");
    std::string line, last_train, last_valid;
    while (std::getline(mf, line)) {
      if (line.find("\"split\":\"valid\"") != std::string::npos) last_valid = line;
      if (line.find("\"split\":\"train\"") != std::string::npos) last_train = line;
    }
    if (!last_train.empty()) j["last_train"] = nlohmann::json::parse(last_train, nullptr, false);
    if (!last_valid.empty()) j["last_valid"] = nlohmann::json::parse(last_valid, nullptr, false);
    if (f->json) {
      // metadata written by other tools may hold any bytes: replaced, never an exception
      std::printf("%s\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else {
      std::printf("%s (%zu bytes)\n", f->checkpoint.c_str(), ck.file_bytes);
      std::printf("  cell %s%s, input %d, hidden %d, layers %d, t_max %d, eps %g, head %s%s\n",
                  cell_name(mc.rnn.cell), mc.rnn.bidirectional ? " (bidirectional)" : "",
                  mc.rnn.input_size, mc.rnn.hidden_size, mc.rnn.num_layers, mc.rnn.t_max,
                  mc.rnn.eps, head_name(mc.head), head_size(mc).c_str());
      if (mc.rnn.dropout > 0 || mc.rnn.zoneout_h > 0 || mc.rnn.zoneout_c > 0)
        std::printf("  regularizers: dropout %g, zoneout_h %g, zoneout_c %g (inference: no dropout, "
                    "zoneout's expectation)\n",
                    mc.rnn.dropout, mc.rnn.zoneout_h, mc.rnn.zoneout_c);
      std::printf("  %zu parameters; step %lld; population statistics: %s\n", nparams,
                  static_cast<long long>(ck.state.step),
                  has_pop ? ck.state.popstats.c_str()
                          : fmt::format("none (cell {} has none)", cell_name(mc.rnn.cell)).c_str());
      if (ck.train_config)
        std::printf("  trained on: task %s, data %s, optimizer %s, lr %g, batch %d\n",
                    ck.train_config->task.c_str(), ck.train_config->data.c_str(),
                    ck.train_config->optimizer.c_str(), ck.train_config->lr, ck.train_config->batch_size);
      if (!last_valid.empty()) std::printf("  last validation: %s\n", last_valid.c_str());
      for (const auto& [k, v] : ck.metadata)
        if (k != "config" && k != "vocab") std::printf("  %s = %s\n", k.c_str(), v.c_str());
    }
    exit_code = 0;
  });
}

}  // namespace rbn::cli
