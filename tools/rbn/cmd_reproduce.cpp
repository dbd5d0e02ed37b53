// rbn reproduce NAME: the paper's measurements that are not plain training runs.
//   gradflow   figure 1: ||dL/dh_t|| against t at initialization, for gamma_0 = 0.1 ... 1.0, for a
//              batch-normalized tanh RNN (the paper's model) and for the BN-LSTM, on sequential
//              MNIST-format pixels (784 steps).
//   longer     figure 3b: a language model trained on windows of T evaluated on longer windows with
//              the last step's population statistics.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "data/pixels.hpp"
#include "train/checkpoint.hpp"
#include "train/evaluate.hpp"
#include "train/model.hpp"
#include "train/task.hpp"
#include "util/error.hpp"
#include "util/platform.hpp"
#include "util/progress.hpp"

namespace rbn::cli {

namespace {

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct ReproFlags {
  // the MNIST files shipped in the repository, wherever the command is run from
  std::string name, data = shipped_data_dir() + "/mnist", out = "runs/reproduce", checkpoints, lengths = "100,200,500,1000";
  int hidden = 100, batch_size = 100, threads = 0, steps = 784;
  double h0_noise = 0.1;
  uint64_t seed = 1;
};

void gradflow(const ReproFlags& f) {
  namespace fs = std::filesystem;
  fs::create_directories(f.out);
  TrainConfig tc;
  tc.task = "seqmnist";
  tc.data = f.data;
  tc.seed = f.seed;
  if (!fs::exists(fs::path(f.data) / "train-images-idx3-ubyte.gz") &&
      !fs::exists(fs::path(f.data) / "train-images-idx3-ubyte")) {
    tc.mnist_split_train = 8000;  // only the test set is present: its first 8,000 images
    tc.mnist_split_valid = 1000;
  }
  auto data = load_task(tc);
  Batch b;
  data->train_batch(f.seed, 0, 0, f.batch_size, b);
  const int T = std::min(f.steps, b.T);
  nlohmann::json out;
  out["data"] = data->describe();
  out["batch_size"] = f.batch_size;
  out["hidden"] = f.hidden;
  out["steps"] = T;
  out["h0_noise"] = f.h0_noise;
  for (Cell cell : {Cell::bnrnn, Cell::bnlstm}) {
    for (int gi = 1; gi <= 10; ++gi) {
      const double gamma = gi / 10.0;
      ModelConfig mc;
      mc.rnn.cell = cell;
      mc.rnn.input_size = 1;
      mc.rnn.hidden_size = f.hidden;
      mc.rnn.t_max = T;
      mc.rnn.gamma_x = mc.rnn.gamma_h = mc.rnn.gamma_c = gamma;
      mc.rnn.seed = f.seed;
      mc.head = Head::classify;
      mc.num_classes = 10;
      Model m(mc);
      std::vector<double> norms;
      m.rnn().set_grad_probe(0, &norms);
      ForwardOptions opt;
      opt.update_running = false;
      // h0 noise as the authors used on sequential MNIST: without it every row of the first (black)
      // steps is identical, the batch variance is 0 and BN's backward multiplies by gamma/sqrt(eps)
      opt.h0_noise = f.h0_noise;
      opt.noise_seed = f.seed;
      m.zero_grad();
      m.classify_step(opt, T, b.N, b.x.data(), nullptr, b.labels.data(), true);
      m.rnn().set_grad_probe(-1, nullptr);
      out["curves"][cell_name(cell)][fmt::format("{:.1f}", gamma)] = norms;
      std::fprintf(stderr, "%s gamma %.1f: ||dL/dh_1|| = %.3e, ||dL/dh_T|| = %.3e\n", cell_name(cell),
                   gamma, norms.front(), norms.back());
    }
  }
  const std::string json = f.out + "/gradflow.json";
  std::ofstream(json) << out.dump() << '\n';
  const std::string png = f.out + "/gradflow.png";
  const std::string cmd = "/usr/bin/python3 " + quote(RBN_SOURCE_DIR "/tools/plot_gradflow.py") + " " +
                          quote(json) + " --out " + quote(png);
  if (std::system(cmd.c_str()) != 0) throw DataError("reproduce gradflow: plotting failed");
  std::printf("wrote %s and %s\n", json.c_str(), png.c_str());
}

void longer(const ReproFlags& f) {
  if (f.checkpoints.empty())
    throw UsageError("--checkpoints: comma-separated language-model checkpoints to evaluate");
  std::vector<int> lengths;
  for (size_t pos = 0; pos < f.lengths.size();) {
    size_t e = f.lengths.find(',', pos);
    if (e == std::string::npos) e = f.lengths.size();
    try {
      lengths.push_back(std::stoi(f.lengths.substr(pos, e - pos)));
    } catch (const std::exception&) {
      throw UsageError("--lengths: not a number list: " + f.lengths);
    }
    if (lengths.back() <= 1) throw UsageError("--lengths: each length must be > 1");
    pos = e + 1;
  }
  std::filesystem::create_directories(f.out);
  nlohmann::json out;
  std::printf("%-34s %8s", "checkpoint (cell)", "T_train");
  for (int L : lengths) std::printf(" %8d", L);
  std::printf("   (test bpc over non-overlapping windows of each length; population statistics,\n"
              "%44s steps >= T_train use the last row)\n", "");
  for (size_t pos = 0; pos < f.checkpoints.size();) {
    size_t e = f.checkpoints.find(',', pos);
    if (e == std::string::npos) e = f.checkpoints.size();
    const std::string path = f.checkpoints.substr(pos, e - pos);
    pos = e + 1;
    LoadedCheckpoint ck = load_model_checkpoint(path);
    if (!ck.train_config || ck.model->config().head != Head::lm)
      throw UsageError(path + ": not a language model trained by rbn");
    use_recorded_gemm_backend(ck, path);
    TrainConfig cfg = *ck.train_config;
    auto data = load_task(cfg);
    if (cell_has_population_stats(ck.model->config().rnn.cell) && ck.state.popstats != "pass")
      popstats_pass(*ck.model, *data, cfg.popstats_batches, cfg.batch_size, cfg.seed);
    const auto& ids = data->stream(Split::test);
    std::printf("%-34s %8d", (path + " (" + cell_name(ck.model->config().rnn.cell) + ")").c_str(),
                ck.model->config().rnn.t_max);
    nlohmann::json row{{"checkpoint", path}, {"cell", cell_name(ck.model->config().rnn.cell)},
                       {"t_max", ck.model->config().rnn.t_max}};
    for (int L : lengths) {
      // windows of L: `streams` = number of windows, each its own sequence from a zero state
      // in groups of at most 128 windows (memory), each window from a zero state
      const int64_t windows = (static_cast<int64_t>(ids.size()) - 1) / L;
      double loss_sum = 0;
      int64_t count = 0;
      for (int64_t w0 = 0; w0 < windows; w0 += 128) {
        const int64_t nw = std::min<int64_t>(128, windows - w0);
        std::vector<int32_t> cut(ids.begin() + w0 * L, ids.begin() + (w0 + nw) * L + 1);
        // nw streams over nw*L predictions: each stream is exactly one window
        EvalResult r = evaluate_stream(*ck.model, cut, static_cast<int>(nw), L);
        loss_sum += r.loss * r.count;
        count += r.count;
      }
      const double bpc = count ? loss_sum / count / std::log(2.0) : 0.0;
      row["bpc"][std::to_string(L)] = bpc;
      std::printf(" %8.4f", bpc);
      std::fflush(stdout);
    }
    std::printf("\n");
    out["results"].push_back(row);
  }
  std::ofstream(f.out + "/longer.json") << out.dump(2) << '\n';
}

}  // namespace

void register_reproduce(CLI::App& app, int& exit_code) {
  auto* sub = app.add_subcommand("reproduce", "the paper's measurements: gradflow, longer");
  auto f = std::make_shared<ReproFlags>();
  sub->add_option("name", f->name, "gradflow | longer")->required();
  sub->add_option("--data", f->data, "gradflow: an MNIST-format directory")->capture_default_str();
  sub->add_option("--out", f->out, "output directory")->capture_default_str();
  sub->add_option("--hidden", f->hidden, "gradflow: hidden units")->capture_default_str();
  sub->add_option("--batch-size", f->batch_size, "gradflow: batch size")->capture_default_str();
  sub->add_option("--steps", f->steps, "gradflow: sequence length (<= 784)")->capture_default_str();
  sub->add_option("--seed", f->seed, "seed")->capture_default_str();
  sub->add_option("--h0-noise", f->h0_noise, "gradflow: std of the noise on h0")->capture_default_str();
  sub->add_option("--checkpoints", f->checkpoints, "longer: comma-separated LM checkpoints");
  sub->add_option("--lengths", f->lengths, "longer: evaluation window lengths")->capture_default_str();
  sub->add_option("--threads", f->threads, "threads (0: default)");
  sub->callback([f, &exit_code]() {
    set_threads(f->threads);
    if (f->name == "gradflow")
      gradflow(*f);
    else if (f->name == "longer")
      longer(*f);
    else
      throw UsageError("reproduce: unknown experiment '" + f->name + "' (gradflow, longer)");
    exit_code = 0;
  });
}

}  // namespace rbn::cli
