#include "train/trainer.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "data/seq.hpp"
#include "train/checkpoint.hpp"
#include "train/gemm_choice.hpp"
#include "train/group.hpp"
#include "train/optim.hpp"
#include "train/schedule.hpp"
#include "train/task.hpp"
#include "util/blas.hpp"
#include "util/error.hpp"
#include "util/platform.hpp"
#include "util/progress.hpp"

namespace rbn {

namespace {

std::atomic<int> g_stop_signal{0};
extern "C" void on_stop_signal(int sig) { g_stop_signal.store(sig); }

struct SignalGuard {
  struct sigaction old_int {}, old_term {};
  SignalGuard() {
    g_stop_signal.store(0);
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
  }
  ~SignalGuard() {
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
  }
};

std::vector<ParamRef> param_refs(Model& m) {
  std::vector<ParamRef> out;
  for (auto& p : m.parameters()) out.push_back({p.name, p.value, p.grad, p.numel});
  return out;
}

OptimConfig optim_config(const TrainConfig& c) {
  OptimConfig o;
  o.name = c.optimizer;
  o.lr = c.lr;
  o.momentum = c.momentum;
  o.dampening = c.dampening;
  o.nesterov = c.nesterov;
  o.centered = c.centered;
  o.alpha = c.alpha;
  o.eps = c.opt_eps;
  o.beta1 = c.beta1;
  o.beta2 = c.beta2;
  o.weight_decay = c.weight_decay;
  o.decay = c.decay;
  return o;
}

// Keep only the metrics lines of steps <= `step` (a resumed run rewrites what came after).
void truncate_metrics(const std::string& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::vector<std::string> keep;
  std::string line;
  while (std::getline(in, line)) {
    try {
      auto j = nlohmann::json::parse(line);
      if (j.value("step", int64_t{0}) <= step) keep.push_back(line);
    } catch (const nlohmann::json::exception&) {
      // a line torn by a kill: dropped
    }
  }
  in.close();
  std::ofstream out(path, std::ios::trunc);
  for (const auto& l : keep) out << l << '\n';
}

// metrics.jsonl, appended line by line; a disabled log (ranks other than 0) writes nothing.
class MetricsLog {
 public:
  MetricsLog(const std::string& path, bool enabled)
      : f_(enabled ? std::fopen(path.c_str(), "a") : nullptr), path_(path) {
    if (enabled && !f_) throw DataError(path + ": cannot open for writing: " + std::strerror(errno));
  }
  ~MetricsLog() {
    if (f_) std::fclose(f_);
  }
  void write(const nlohmann::json& j) {
    if (!f_) return;
    const std::string s = j.dump() + "\n";
    if (std::fwrite(s.data(), 1, s.size(), f_) != s.size() || std::fflush(f_) != 0)
      throw DataError(path_ + ": write failed: " + std::strerror(errno));
  }

 private:
  std::FILE* f_;
  std::string path_;
};

// The files of a run in an output directory (those present).
std::vector<std::string> run_files(const std::string& out) {
  std::vector<std::string> found;
  for (const char* f : {"last.safetensors", "best.safetensors", "metrics.jsonl", "config.json"})
    if (std::filesystem::is_regular_file(std::filesystem::path(out) / f)) found.push_back(f);
  return found;
}

// A fresh run never replaces an earlier one unless asked to (--overwrite removes its files).
void claim_output_dir(const std::string& out, bool overwrite) {
  const auto found = run_files(out);
  if (found.empty()) return;
  const bool resumable = found.front() == "last.safetensors";
  if (!overwrite)
    throw UsageError(fmt::format("--out: {} already holds a run ({}); {}replace it with --overwrite, or "
                                 "choose another --out", out, fmt::join(found, ", "),
                                 resumable ? "continue it with --resume, " : ""));
  for (const auto& f : found) {
    std::error_code ec;
    std::filesystem::remove(std::filesystem::path(out) / f, ec);
    if (ec) throw DataError(out + "/" + f + ": cannot remove it for --overwrite: " + ec.message());
  }
}

TrainSummary train_loop(TrainConfig cfg, bool resume, const std::string& gemm_source, int64_t& checkpoint_step);

// Every rank must treat subnormals alike (each process reads its own RBN_DENORMALS): ranks that
// differ would compute the same sums differently, and the checkpoint records one mode.
void check_same_denormal_mode(Group& group) {
  if (!group.distributed()) return;
  double flushing = denormals_flushed() ? 1 : 0;
  group.sum(&flushing, 1);
  if (flushing != 0 && flushing != group.size())
    throw UsageError(fmt::format("RBN_DENORMALS: {} of the {} ranks flush subnormals and the others keep "
                                 "them; give every rank the same value (mpirun -x RBN_DENORMALS)",
                                 static_cast<int>(flushing), group.size()));
}

// Every rank initializes its own copy of the model from the seed, but the orthogonal blocks come
// from LAPACK's QR on each machine's own OpenBLAS kernels, which may round differently on nodes of
// different CPUs: a fresh run starts every rank from rank 0's weights (a sum in which the other
// ranks add zeros: the same bits everywhere).
void start_from_root_weights(Group& group, const std::vector<ParamRef>& params) {
  if (!group.distributed()) return;
  for (const ParamRef& p : params) {
    if (group.rank() != 0) std::fill_n(p.value, p.numel, 0.0f);
    group.sum(p.value, p.numel);
  }
}

}  // namespace

TrainSummary run_training(TrainConfig cfg, bool resume) {
  TrainRequest r;
  r.cfg = std::move(cfg);
  r.resume = resume;
  r.given = r.cfg.non_default_fields();
  return run_training(r);
}

TrainSummary run_training(const TrainRequest& req) {
  if (req.resume && req.overwrite)
    throw UsageError("--overwrite: cannot be combined with --resume (one continues the run, the other replaces it)");
  TrainConfig cfg = req.cfg;
  const std::string last_path = cfg.out + "/last.safetensors";
  // the GEMM backend: --gemm, else RBN_GEMM, else auto; a resumed run keeps its own
  const char* env = std::getenv("RBN_GEMM");
  const std::string env_gemm = env && *env ? env : "";
  if (!env_gemm.empty() && env_gemm != "auto" && !blas::parse_backend(env_gemm))
    throw UsageError("RBN_GEMM=" + env_gemm + ": unknown GEMM backend (openblas, onednn or auto)");
  std::string gemm_source = "--gemm " + cfg.gemm;
  if (req.resume) {
    if (!std::filesystem::exists(last_path)) throw UsageError("--resume: no checkpoint at " + last_path);
    const CheckpointMetadata last_md = read_checkpoint_metadata(last_path);
    cfg = TrainConfig::for_resume(checkpoint_config(last_md, last_path), req.cfg, req.given, last_path);
    if (cfg.gemm == "auto") cfg.gemm = "openblas";  // a run from before the GEMM backends
    if (!req.given.count("gemm") && !env_gemm.empty() && env_gemm != "auto" && env_gemm != cfg.gemm)
      throw UsageError(fmt::format("RBN_GEMM={}: the run in {} was trained with the {} GEMM backend, and "
                                   "--resume keeps it so that the run stays bit-reproducible (unset RBN_GEMM)",
                                   env_gemm, cfg.out, cfg.gemm));
    gemm_source = "the resumed run's";
    check_resumed_denormal_mode(last_md, last_path);
    const int64_t reached = checkpoint_state(last_md, last_path).step;
    if (cfg.steps <= reached)
      throw UsageError(fmt::format("--steps: the run in {} is already at step {}; give more steps to continue",
                                   cfg.out, reached));
  } else if (!req.given.count("gemm") && !env_gemm.empty()) {
    cfg.gemm = env_gemm;
    gemm_source = "RBN_GEMM=" + env_gemm;
  }
  cfg.validate();
  cfg.check_flags_used(req.given);
  // before anything is written: a CPU without bf16 refuses here
  blas::set_precision(*blas::parse_precision(cfg.precision), "--precision");
  if (cfg.task == "seq")  // a fraction given for a split that has its own files would mean nothing
    for (const auto& [field, split] : {std::pair<const char*, const char*>{"valid_fraction", "valid"}, {"test_fraction", "test"}})
      if (req.given.count(field) && seq_split_present(cfg.data, split))
        throw UsageError(TrainConfig::flag_of(field) + ": " + cfg.data + " has " + split +
                         ".x.npy; the fraction applies only where a split's files are absent");
  if (!req.resume && Group::world().rank() == 0) claim_output_dir(cfg.out, req.overwrite);
  int64_t checkpoint_step = -1;  // the step of the last good checkpoint (-1: none yet)
  try {
    return train_loop(cfg, req.resume, gemm_source, checkpoint_step);
  } catch (const Error& e) {
    if (checkpoint_step < 0) throw;
    // the run is not lost: say where it is
    throw Error(fmt::format("{}; the last good checkpoint is {} (step {}; continue with --resume)", e.what(),
                            last_path, checkpoint_step),
                e.exit_code());
  } catch (const std::bad_alloc&) {
    if (checkpoint_step < 0) throw;
    throw DataError(fmt::format("out of memory; the last good checkpoint is {} (step {}; continue with --resume)",
                                last_path, checkpoint_step));
  }
}

namespace {

TrainSummary train_loop(TrainConfig cfg, bool resume, const std::string& gemm_source, int64_t& checkpoint_step) {
  namespace fs = std::filesystem;
  const auto t_start = std::chrono::steady_clock::now();
  const std::string last_path = cfg.out + "/last.safetensors";
  const std::string best_path = cfg.out + "/best.safetensors";
  const std::string metrics_path = cfg.out + "/metrics.jsonl";

  SignalGuard signals;  // from here on SIGINT/SIGTERM stop the run at the next step boundary
  // Data-parallel: every rank runs this loop on its rows of each global batch; rank 0 alone
  // writes files and progress. Every decision below depends only on values summed over the
  // group, so all ranks take the same branches.
  Group& group = Group::world();
  const bool root = group.rank() == 0;
  std::FILE* progress_out = root ? stderr : nullptr;
  optim_config(cfg).validate();  // flag errors before any data is read or directory made
  (void)make_schedule(cfg);
  if (cfg.batch_size < group.size())
    throw UsageError(fmt::format("--batch-size: {} rows cannot be split over {} ranks", cfg.batch_size, group.size()));
  if (cfg.popstats_batch_size > 0 && cfg.popstats_batch_size < group.size())
    throw UsageError(fmt::format("--popstats-batch-size: {} rows cannot be split over {} ranks",
                                 cfg.popstats_batch_size, group.size()));
  {
    const Cell cell = *parse_cell(cfg.cell);
    // the rows one normalization sees: the global batch, or each rank's own without --sync-bn
    const bool own_rows = group.distributed() && !cfg.sync_bn;
    check_rows_for_batch_stats(cell, own_rows ? cfg.batch_size / group.size() : cfg.batch_size,
                               own_rows ? fmt::format("--sync-bn false with --batch-size {} over {} ranks",
                                                      cfg.batch_size, group.size())
                                        : fmt::format("--batch-size {}", cfg.batch_size));
    const int pop_rows = cfg.popstats_batch_size > 0 ? cfg.popstats_batch_size : cfg.batch_size;
    if (cfg.popstats == "pass")
      check_rows_for_batch_stats(cell, pop_rows, fmt::format("--popstats-batch-size {}", pop_rows));
  }
  set_threads(cfg.threads);
  check_same_denormal_mode(group);
  if (root) {
    std::error_code ec;
    fs::create_directories(cfg.out, ec);
    if (ec) throw DataError(cfg.out + ": cannot create the output directory: " + ec.message());
  }

  auto data = load_task(cfg);
  ModelConfig mc;
  mc.rnn = cfg.stack_config(data->input_size());
  mc.rnn.t_max = data->seq_len();
  mc.head = data->head();
  mc.num_classes = data->num_classes();
  mc.embed_dim = cfg.embed;
  mc.per_step = data->per_step();
  if (root && (mc.rnn.cell == Cell::lnlstm || mc.rnn.cell == Cell::lngru) && mc.rnn.ln_input &&
      data->input_size() == 1)
    std::fprintf(stderr,
                 "warning: %s with one input feature: LN(W x) loses the pixel's magnitude and "
                 "is 0/0 at x = 0; consider --ln-input off\n",
                 cell_name(mc.rnn.cell));
  if (root && mc.rnn.cell == Cell::bnx_seq && data->head() == Head::lm)
    std::fprintf(stderr,
                 "warning: bnx-seq in a language model: sequence-wise statistics see the whole "
                 "window, so later characters leak into earlier steps during training\n");
  Model model(mc);
  if (group.distributed()) {
    model.set_group_count([&group](int64_t n) {
      double v = static_cast<double>(n);
      group.sum(&v, 1);
      return static_cast<int64_t>(v);
    });
    if (cfg.sync_bn) model.rnn().set_stat_allreduce([&group](double* buf, size_t n) { group.sum(buf, n); });
  }
  const int gemm_rows = (cfg.batch_size + group.size() - 1) / group.size();  // rank 0's share
  const GemmChoice gemm = resolve_gemm_backend(cfg.gemm, gemm_source, mc, mc.rnn.t_max, gemm_rows, group);
  cfg.gemm = blas::backend_name(gemm.backend);  // config.json and the checkpoints record it
  auto params = param_refs(model);
  auto optimizer = make_optimizer(optim_config(cfg));
  LrSchedule schedule = make_schedule(cfg);

  TrainSummary summary;
  int64_t step = 0;
  double best_metric = INFINITY;  // lower is better: error rate or bpc
  int evals_without_improvement = 0;
  if (resume) {
    CheckpointState st = load_checkpoint(last_path, model, optimizer.get(), &schedule);
    step = st.step;
    checkpoint_step = step;
    best_metric = st.best_metric;
    evals_without_improvement = st.evals_without_improvement;
    if (root) truncate_metrics(metrics_path, step);
    if (root) std::fprintf(stderr, "resumed %s at step %lld\n", last_path.c_str(),
                 static_cast<long long>(step));
  } else {
    start_from_root_weights(group, params);
    if (root) {
      std::ofstream(metrics_path, std::ios::trunc);
      std::ofstream(cfg.out + "/config.json") << cfg.to_json().dump(2) << '\n';
    }
  }
  const int N = cfg.batch_size;
  const int64_t per_epoch = data->batches_per_epoch(N);
  if (per_epoch <= 0)
    throw UsageError("--batch-size: " + std::to_string(N) + " is larger than the training set");
  MetricsLog metrics(metrics_path, root);
  if (root)
    std::fprintf(stderr, "GEMM backend %s: %s (%s)\n", cfg.gemm.c_str(), gemm.how.c_str(),
                 blas::backend_description(gemm.backend).c_str());
  if (root) {
    size_t n_params = 0;
    for (auto& p : params) n_params += p.numel;
    std::string shape = fmt::format("H={}, L={}", cfg.hidden, cfg.layers);
    if (cfg.bidirectional) shape += ", bidirectional";
    if (cfg.dropout > 0) shape += fmt::format(", dropout {:g}", cfg.dropout);
    if (cfg.zoneout_h > 0 || cfg.zoneout_c > 0)
      shape += fmt::format(", zoneout h {:g} c {:g}", cfg.zoneout_h, cfg.zoneout_c);
    const std::string ranks =
        group.distributed()
            ? fmt::format(" per rank; {}, {} rows per rank, statistics {}", group.describe(),
                          cfg.batch_size / group.size(), cfg.sync_bn ? "synchronized" : "per rank")
            : "";
    std::fprintf(stderr, "rbn train: %s, cell %s, %s, %zu parameters, BLAS %s, %d threads%s\n",
                 data->describe().c_str(), cfg.cell.c_str(), shape.c_str(), n_params,
                 blas_description().c_str(), num_threads(), ranks.c_str());
  }

  const int pop_n = cfg.popstats_batch_size > 0 ? cfg.popstats_batch_size : N;
  const bool has_pop = cell_has_population_stats(mc.rnn.cell);

  auto save_last = [&](int64_t at_step) {
    if (!root) return;
    // never replace a good checkpoint with non-finite parameters
    for (const auto& p : params)
      for (size_t i = 0; i < p.numel; ++i)
        if (!std::isfinite(p.value[i])) {
          std::fprintf(stderr, "\nwarning: step %lld: non-finite parameter %s; checkpoint not written\n",
                       static_cast<long long>(at_step), p.name.c_str());
          return;
        }
    CheckpointState st;
    st.step = at_step;
    st.best_metric = best_metric;
    st.evals_without_improvement = evals_without_improvement;
    st.popstats = "running";
    save_checkpoint(last_path, model, cfg, *data, optimizer.get(), &schedule, st);
    checkpoint_step = at_step;
  };

  // Validation with population statistics. The pass replaces the running averages for the
  // evaluation only: they are restored afterwards, so training (and resume) never depend on it.
  auto validate = [&](int64_t at_step, double lr, bool counts) {
    std::vector<float> running(model.rnn().buffers().begin(), model.rnn().buffers().end());
    if (has_pop && cfg.popstats == "pass") {
      Progress pp("popstats", cfg.popstats_batches, progress_out);
      popstats_pass(model, *data, cfg.popstats_batches, pop_n, cfg.seed,
                    [&](int64_t d, int64_t) { pp.update(d, ""); }, &group);
      pp.finish();
    }
    const int64_t total = data->eval_batches(Split::valid, N);
    Progress pe("valid", cfg.eval_batches > 0 ? std::min<int64_t>(total, cfg.eval_batches) : total,
                progress_out);
    EvalResult r = evaluate_batches(model, *data, Split::valid, N, cfg.eval_batches,
                                    [&](int64_t d, int64_t) { pe.update(d, ""); }, &group);
    pe.finish();
    const HeadMetric hm = head_metric(data->head(), r.loss, r.accuracy);
    const double metric = hm.to_minimize;
    nlohmann::json j{{"step", at_step},   {"split", "valid"}, {"loss", r.loss},
                     {"lr", lr},          {"count", r.count},
                     {"popstats", has_pop ? cfg.popstats : "none"},
                     {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count()}};
    j[hm.name] = hm.value;
    metrics.write(j);
    if (root)
      std::fprintf(stderr, "step %lld valid: loss %.4f %s %.4f (%lld items, %.1fs)\n",
                 static_cast<long long>(at_step), r.loss, hm.name, hm.value, static_cast<long long>(r.count),
                 r.seconds);
    summary.final_valid = r;
    if (metric < best_metric) {
      best_metric = metric;
      if (counts) evals_without_improvement = 0;
      summary.best_valid = r;
      CheckpointState st;
      st.step = at_step;
      st.best_metric = best_metric;
      st.popstats = has_pop ? cfg.popstats : "running";
      if (has_pop && cfg.popstats == "pass") st.popstats_data = data->train_fingerprint();
      if (root) save_checkpoint(best_path, model, cfg, *data, nullptr, nullptr, st);
      summary.best_checkpoint = best_path;
    } else if (counts) {
      ++evals_without_improvement;
    }
    if (counts) schedule.on_eval(metric);
    std::copy(running.begin(), running.end(), model.rnn().buffers().begin());
  };

  Batch b;
  int bad_in_row = 0;
  Progress bar("train", cfg.steps, progress_out);
  std::vector<float> flat;  // all gradients in one buffer for the group's sum
  bar.begin_at(step);  // a resumed run: its rate and ETA count only this run's steps
  double loss_acc = 0, acc_acc = 0;
  int64_t acc_count = 0, log_n = 0;
  auto t_log = std::chrono::steady_clock::now();
  while (step < cfg.steps) {
    int sig = g_stop_signal.load();
    if (group.distributed()) {  // stop together: a signal reaching any rank stops all of them
      double s = sig;
      group.sum(&s, 1);
      sig = s > 0 ? (sig ? sig : SIGTERM) : 0;
    }
    if (sig) {
      save_last(step);
      bar.finish();
      if (root)
        std::fprintf(stderr, "stopped by signal %d at step %lld; checkpoint %s (continue with --resume)\n",
                   sig, static_cast<long long>(step), last_path.c_str());
      summary.exit_code = 128 + sig;
      summary.steps_done = step;
      return summary;
    }
    const int64_t epoch = step / per_epoch, index = step % per_epoch;
    data->train_batch(cfg.seed, epoch, index, N, b);
    const int64_t row0 = group.take_rows(b);  // this rank's rows of the global batch
    model.zero_grad();
    ForwardOptions opt;
    opt.mode = Mode::train;
    opt.h0_noise = cfg.h0_noise;
    opt.noise_seed = cfg.seed * 0x100000001b3ULL + static_cast<uint64_t>(step);
    opt.row0 = row0;  // a row's noise is the same on whichever rank it lands
    opt.update = static_cast<uint64_t>(step);  // dropout and zoneout masks: new each update
    StepResult r = run_batch(model, opt, b, true);
    if (group.distributed()) {
      // The gradients of the shards' losses (each over the group's count) add up to the
      // gradient of the global batch: one sum over one flat buffer; then the metrics.
      size_t total = 0;
      for (const auto& p : params) total += p.numel;
      flat.resize(total);
      size_t o = 0;
      for (const auto& p : params) {
        std::copy_n(p.grad, p.numel, flat.data() + o);
        o += p.numel;
      }
      group.sum(flat.data(), flat.size());
      o = 0;
      for (const auto& p : params) {
        std::copy_n(flat.data() + o, p.numel, p.grad);
        o += p.numel;
      }
      double m[3] = {r.loss_sum, static_cast<double>(r.count), static_cast<double>(r.correct)};
      group.sum(m, 3);
      r.loss_sum = m[0];
      r.count = static_cast<int64_t>(m[1]);
      r.correct = static_cast<int64_t>(m[2]);
    }
    const double loss = r.count ? r.loss_sum / r.count : 0.0;
    const double gnorm = cfg.clip > 0 ? clip_grad_norm(params, static_cast<float>(cfg.clip))
                                      : clip_grad_norm(params, INFINITY);
    const double lr = schedule.lr(step);
    ++step;
    if (!std::isfinite(loss) || !std::isfinite(gnorm)) {
      ++bad_in_row;
      if (root)
        std::fprintf(stderr, "\nwarning: step %lld: non-finite %s; update skipped (%d in a row)\n",
                   static_cast<long long>(step), std::isfinite(loss) ? "gradient" : "loss",
                   bad_in_row);
      if (bad_in_row >= cfg.max_bad_steps) {
        bar.finish();
        if (root)
          std::fprintf(stderr,
                     "error: %d non-finite steps in a row, the last at step %lld; stopping. The "
                     "last good checkpoint is %s\n",
                     bad_in_row, static_cast<long long>(step), last_path.c_str());
        summary.exit_code = 1;
        summary.steps_done = step;
        return summary;
      }
    } else {
      bad_in_row = 0;
      optimizer->step(params, static_cast<float>(lr));
      loss_acc += loss;
      acc_acc += r.count ? static_cast<double>(r.correct) / r.count : 0.0;
      ++log_n;
    }
    acc_count += r.count;
    if (step % cfg.log_every == 0 || step == cfg.steps) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_log).count();
      const HeadMetric hm = head_metric(data->head(), log_n ? loss_acc / log_n : NAN, log_n ? acc_acc / log_n : NAN);
      nlohmann::json j{{"step", step},
                       {"split", "train"},
                       {"loss", log_n ? loss_acc / log_n : NAN},
                       {"lr", lr},
                       {"grad_norm", gnorm},
                       {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count()},
                       {"items_per_second", secs > 0 ? acc_count / secs : 0.0}};
      j[hm.name] = hm.value;
      metrics.write(j);
      bar.update(step, fmt::format("loss {:.4f} {} {:.4f}", log_n ? loss_acc / log_n : NAN,
                                   std::string(hm.name) == "accuracy" ? "acc" : hm.name, hm.value));
      loss_acc = acc_acc = 0;
      acc_count = log_n = 0;
      t_log = std::chrono::steady_clock::now();
    }
    const bool scheduled = cfg.eval_every > 0 && step % cfg.eval_every == 0;
    if (scheduled || step == cfg.steps) {
      // An end-of-budget evaluation off the schedule reports, but changes nothing that training
      // depends on (schedule, early stopping): a run extended with --resume stays bit-exact.
      validate(step, lr, scheduled || cfg.eval_every == 0);
      if (cfg.early_stop > 0 && evals_without_improvement >= cfg.early_stop) {
        save_last(step);
        if (root)
          std::fprintf(stderr, "early stop at step %lld: %d evaluations without improvement\n",
                     static_cast<long long>(step), evals_without_improvement);
        break;
      }
    }
    if ((cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0) || step == cfg.steps)
      save_last(step);
  }
  bar.finish();
  if (root && group.distributed()) {
    const auto& tr = group.traffic();
    const double run_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    std::fprintf(stderr, "group sums (rank 0): %llu calls, %.1f MB, %.1f s (%.1f%% of the run's %.1f s)\n",
                 static_cast<unsigned long long>(tr.calls), tr.bytes / 1e6, tr.seconds,
                 100.0 * tr.seconds / std::max(run_s, 1e-9), run_s);
  }
  summary.steps_done = step;
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return summary;
}

}  // namespace

}  // namespace rbn
