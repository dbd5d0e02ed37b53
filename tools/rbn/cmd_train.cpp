// rbn train: every hyperparameter a flag, or a JSON config (--config) that flags override.
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>

#include "commands.hpp"
#include "train/config.hpp"
#include "train/group.hpp"
#include "train/trainer.hpp"
#include "util/error.hpp"

namespace rbn::cli {

namespace {

struct TrainFlags {
  TrainConfig cfg;
  double forget_bias = 1.0;  // --forget-bias, copied into cfg.forget_bias only when given
  std::string config_file;
  bool resume = false, overwrite = false;
  std::map<std::string, CLI::Option*> given;  // field name -> option
};

void add_train_options(CLI::App* sub, TrainFlags& f) {
  TrainConfig& c = f.cfg;
  auto opt = [&](const char* field, const char* flag, auto& var, const char* help) {
    f.given[field] = sub->add_option(flag, var, help)->capture_default_str();
  };
  auto flag = [&](const char* field, const char* name, bool& var, const char* help) {
    f.given[field] = sub->add_option(name, var, help)->capture_default_str();
  };
  opt("task", "--task", c.task, "seqmnist | pmnist | ptb | text8 | text | seq (your own .npy sequences)");
  opt("data", "--data", c.data, "dataset directory (idx / PTB / seq .npy files) or text file");
  opt("valid_fraction", "--valid-fraction", c.valid_fraction,
      "seq without valid.x.npy: share of the training rows taken for validation");
  opt("test_fraction", "--test-fraction", c.test_fraction,
      "seq without test.x.npy: share of the training rows taken for testing (0: no test split)");
  opt("permutation", "--permutation", c.permutation, "pmnist pixel order: seeded | authors | FILE");
  opt("permutation_seed", "--permutation-seed", c.permutation_seed, "seed of the permutation (0: --seed)");
  opt("mnist_split_train", "--mnist-split-train", c.mnist_split_train,
      "only a test set present: images taken for training (e.g. 8000)");
  opt("mnist_split_valid", "--mnist-split-valid", c.mnist_split_valid,
      "only a test set present: images taken for validation (e.g. 1000)");
  f.given["cell"] = sub->add_option("--cell", c.cell, cell_list())->capture_default_str();
  opt("hidden", "--hidden", c.hidden, "hidden units H");
  opt("layers", "--layers", c.layers, "stacked layers L");
  opt("embed", "--embed", c.embed, "language models: embedding size (0 = one-hot input)");
  opt("eps", "--eps", c.eps, "epsilon inside the normalizations' square root");
  opt("gamma_x", "--gamma-x", c.gamma_x, "initial gain of the W x normalization (<0: cell default)");
  opt("gamma_h", "--gamma-h", c.gamma_h, "initial gain of the W h normalization (<0: cell default)");
  opt("gamma_c", "--gamma-c", c.gamma_c, "bnlstm, lnlstm: initial gain of the c normalization (<0: cell default)");
  f.given["forget_bias"] = sub->add_option("--forget-bias", f.forget_bias,
                                           "LSTMs: initial forget-gate bias (1 unless given; an error with a GRU)");
  flag("ln_input", "--ln-input", c.ln_input, "lnlstm, lngru: normalize W x (false: only W h, and c)");
  flag("learn_init_state", "--learn-init-state", c.learn_init_state, "learn h0 and c0 (GRUs: h0)");
  f.given["bidirectional"] = sub->add_flag(
      "--bidirectional", c.bidirectional,
      "a forward and a reverse direction per layer (classification tasks; the head reads both)");
  opt("init_recurrent", "--init-recurrent", c.init_recurrent,
      "orthogonal | identity (I on the g block; GRUs: on the n block)");
  opt("bn_momentum", "--bn-momentum", c.bn_momentum, "running-average rate m of the population statistics");
  opt("h0_noise", "--h0-noise", c.h0_noise, "std of Gaussian noise added to h0 in training");
  opt("dropout", "--dropout", c.dropout,
      "dropout probability on every layer's output but the top one's, training only (nn.LSTM's)");
  opt("zoneout_h", "--zoneout-h", c.zoneout_h,
      "zoneout probability of h: keep a unit's previous h in training (Krueger et al.)");
  opt("zoneout_c", "--zoneout-c", c.zoneout_c,
      "LSTMs: zoneout probability of the cell state c (a GRU or tanh RNN has none)");
  opt("popstats", "--popstats", c.popstats, "statistics for validation: pass | running");
  opt("popstats_batches", "--popstats-batches", c.popstats_batches, "batches in the statistics pass");
  opt("popstats_batch_size", "--popstats-batch-size", c.popstats_batch_size,
      "batch size of the statistics pass (0: --batch-size)");
  opt("optimizer", "--optimizer", c.optimizer, "sgd | rmsprop | adam | rmsprop-authors");
  opt("lr", "--lr", c.lr, "learning rate");
  opt("momentum", "--momentum", c.momentum, "SGD / RMSprop momentum");
  opt("dampening", "--dampening", c.dampening, "SGD dampening");
  flag("nesterov", "--nesterov", c.nesterov, "SGD: Nesterov momentum");
  flag("centered", "--centered", c.centered, "RMSprop: centered (divide by the variance)");
  opt("alpha", "--alpha", c.alpha, "RMSprop smoothing constant");
  opt("beta1", "--beta1", c.beta1, "Adam beta1");
  opt("beta2", "--beta2", c.beta2, "Adam beta2");
  opt("opt_eps", "--opt-eps", c.opt_eps, "optimizer epsilon");
  opt("weight_decay", "--weight-decay", c.weight_decay, "L2 weight decay (torch.optim semantics)");
  opt("decay", "--decay", c.decay, "rmsprop-authors decay d");
  opt("clip", "--clip", c.clip, "global gradient-norm clipping (0 = off)");
  opt("lr_schedule", "--lr-schedule", c.lr_schedule, "constant | step | exp | plateau");
  opt("lr_gamma", "--lr-gamma", c.lr_gamma, "learning-rate decay factor");
  opt("lr_step", "--lr-step", c.lr_step, "steps between decays (step schedule)");
  opt("lr_patience", "--lr-patience", c.lr_patience, "evaluations without improvement (plateau)");
  opt("lr_threshold", "--lr-threshold", c.lr_threshold, "plateau: relative improvement that counts");
  opt("lr_min", "--lr-min", c.lr_min, "plateau: lowest learning rate");
  flag("sync_bn", "--sync-bn", c.sync_bn,
       "mpirun: batch statistics over all ranks (false: each rank's own rows)");
  opt("batch_size", "--batch-size", c.batch_size, "batch size N");
  opt("seq_len", "--seq-len", c.seq_len, "language models: window length T (= T_max)");
  opt("steps", "--steps", c.steps, "training steps");
  opt("eval_every", "--eval-every", c.eval_every, "validate every this many steps (0: at the end)");
  opt("eval_batches", "--eval-batches", c.eval_batches, "validation batches (0: the whole split)");
  opt("log_every", "--log-every", c.log_every, "metrics line every this many steps");
  opt("checkpoint_every", "--checkpoint-every", c.checkpoint_every, "write last.safetensors every this many steps");
  opt("max_bad_steps", "--max-bad-steps", c.max_bad_steps, "non-finite steps in a row before stopping");
  opt("early_stop", "--early-stop", c.early_stop, "evaluations without improvement before stopping (0: never)");
  opt("seed", "--seed", c.seed, "random seed");
  opt("threads", "--threads", c.threads, "OpenMP / OpenBLAS threads (0: default)");
  opt("gemm", "--gemm", c.gemm,
      "float GEMM backend: auto (timed on the run's products, cached per machine) | openblas | "
      "onednn; default: RBN_GEMM, else auto; a resumed run keeps its own");
  opt("precision", "--precision", c.precision,
      "inputs of the float matrix products: fp32 | bf16 (bfloat16 inputs, fp32 accumulation, "
      "weights, optimizer and normalizations fp32; needs AVX512_BF16 or AMX)");
  opt("out", "--out", c.out, "output directory (metrics.jsonl, last/best.safetensors)");
}

}  // namespace

void register_train(CLI::App& app, int& exit_code) {
  auto* sub = app.add_subcommand("train", "train a model; writes metrics.jsonl and checkpoints");
  auto flags = std::make_shared<TrainFlags>();
  add_train_options(sub, *flags);
  sub->add_option("--config", flags->config_file, "JSON config (flags given on the line override it)");
  sub->add_flag("--resume", flags->resume,
                "continue the run in --out from last.safetensors; flags given must match the run, "
                "except --steps, --threads, --log-every, --eval-every, --eval-batches, "
                "--checkpoint-every, --max-bad-steps, --early-stop");
  sub->add_flag("--overwrite", flags->overwrite, "replace the run that --out holds (refused without it)");
  sub->footer("An --out that holds a run (last/best.safetensors, metrics.jsonl, config.json) is refused "
              "unless --resume or --overwrite.");
  sub->callback([flags, &exit_code]() {
    if (flags->given.at("forget_bias")->count() > 0) flags->cfg.forget_bias = flags->forget_bias;
    TrainRequest req;
    req.cfg = flags->cfg;
    req.resume = flags->resume;
    req.overwrite = flags->overwrite;
    for (const auto& [field, option] : flags->given)
      if (option->count() > 0) req.given.insert(field);
    if (!flags->config_file.empty()) {
      std::ifstream in(flags->config_file);
      if (!in) throw UsageError("--config: " + flags->config_file + ": no such file");
      const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
      if (j.is_discarded()) throw UsageError("--config: " + flags->config_file + ": not valid JSON");
      TrainConfig from_file = TrainConfig::from_json(j, flags->config_file);
      // flags given on the command line win over the file
      const nlohmann::json fj = flags->cfg.to_json();
      nlohmann::json merged = from_file.to_json();
      for (const auto& field : req.given) merged[field] = fj[field];
      req.cfg = TrainConfig::from_json(merged, flags->config_file);
      for (auto it = j.begin(); it != j.end(); ++it) req.given.insert(it.key());
    }
    TrainSummary s = run_training(req);
    exit_code = s.exit_code;
    if (s.exit_code == 0 && !s.best_checkpoint.empty() && Group::world().rank() == 0)
      std::fprintf(stderr, "done: %lld steps in %.1fs; best validation checkpoint %s\n",
                   static_cast<long long>(s.steps_done), s.seconds, s.best_checkpoint.c_str());
  });
}

}  // namespace rbn::cli
