// Bidirectional models (SPEC section 2b): the classifier reads [forward h at the last valid step ‖
// reverse h after x[0]]; a bidirectional language model is refused; a bidirectional run trains,
// checkpoints with the reverse tensors and the `bidirectional` key, and resumes bit for bit.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "io/safetensors.hpp"
#include "train/checkpoint.hpp"
#include "train/config.hpp"
#include "train/model.hpp"
#include "train/optim.hpp"
#include "train/trainer.hpp"
#include "util/rng.hpp"

namespace rbn {
namespace {

namespace fs = std::filesystem;

ModelConfig bidir_classifier(Cell cell) {
  ModelConfig mc;
  mc.rnn.cell = cell;
  mc.rnn.input_size = 3;
  mc.rnn.hidden_size = 16;
  mc.rnn.num_layers = 2;
  mc.rnn.t_max = 10;
  mc.rnn.bidirectional = true;
  mc.head = Head::classify;
  mc.num_classes = 4;
  return mc;
}

TEST(BidirectionalModel, HeadReadsForwardLastAndReverseFirst) {
  for (Cell cell : {Cell::bnlstm, Cell::gru}) {
    const ModelConfig mc = bidir_classifier(cell);
    Model m(mc);
    const int T = 10, N = 5, H = mc.rnn.hidden_size, K = mc.num_classes;
    Rng rng(3);
    std::vector<float> x(T * N * 3);
    for (auto& v : x) v = static_cast<float>(rng.normal());
    const std::vector<int32_t> len{10, 4, 7, 1, 9};
    ForwardOptions fo;
    fo.mode = Mode::infer;
    fo.need_backward = false;
    std::vector<float> logits(N * K);
    m.logits(fo, T, N, x.data(), nullptr, len.data(), nullptr, nullptr, logits.data(), nullptr,
             nullptr);
    // the same from the stack's outputs: y [T,N,2H] holds the forward h at len-1 in its first
    // half and the reverse h after x[0] (at position 0) in its second
    std::vector<float> y(static_cast<size_t>(T) * N * 2 * H);
    m.rnn().forward(fo, T, N, {.x = x.data(), .lengths = len.data()}, {.y = y.data()});
    const float* W = nullptr;
    const float* b = nullptr;
    for (const auto& p : m.parameters()) {
      if (p.name == "head.weight") {
        EXPECT_EQ(p.shape, (std::vector<int64_t>{K, 2 * H}));
        W = p.value;
      }
      if (p.name == "head.bias") b = p.value;
    }
    ASSERT_TRUE(W && b);
    for (int n = 0; n < N; ++n)
      for (int k = 0; k < K; ++k) {
        double want = b[k];
        for (int j = 0; j < H; ++j) {
          want += W[k * 2 * H + j] * y[((len[n] - 1) * N + n) * 2 * H + j];
          want += W[k * 2 * H + H + j] * y[(0 * N + n) * 2 * H + H + j];
        }
        EXPECT_NEAR(logits[n * K + k], want, 1e-4) << cell_name(cell) << " row " << n;
      }
  }
}

// A few sequences with random labels and ragged lengths, memorized through both directions and
// the head (the gradients of the whole model flow).
TEST(BidirectionalModel, LearnsAFewSequences) {
  for (Cell cell : {Cell::bnlstm, Cell::lngru}) {
    Model m(bidir_classifier(cell));
    Rng rng(5);
    const int T = 10, N = 16;
    std::vector<float> x(T * N * 3);
    for (auto& v : x) v = static_cast<float>(rng.normal());
    std::vector<int32_t> labels(N), lengths(N);
    for (int n = 0; n < N; ++n) {
      labels[n] = static_cast<int32_t>(rng.below(4));
      lengths[n] = 4 + static_cast<int32_t>(rng.below(7));
    }
    std::vector<ParamRef> refs;
    for (auto& p : m.parameters()) refs.push_back({p.name, p.value, p.grad, p.numel});
    OptimConfig oc;
    oc.lr = 0.02;
    auto opt = make_optimizer(oc);
    double first = 0, last = 0;
    for (int s = 0; s < 200; ++s) {
      m.zero_grad();
      ForwardOptions fo;
      const StepResult r = m.classify_step(fo, T, N, x.data(), lengths.data(), labels.data(), true);
      clip_grad_norm(refs, 5.0f);
      opt->step(refs, 0.02f);
      last = r.loss_sum / r.count;
      if (s == 0) first = last;
    }
    EXPECT_LT(last, 0.05) << cell_name(cell) << " from " << first;
  }
}

TEST(BidirectionalModel, LanguageModelIsRefused) {
  ModelConfig mc = bidir_classifier(Cell::bnlstm);
  mc.head = Head::lm;
  mc.num_classes = 5;
  try {
    Model m(mc);
    FAIL() << "expected an error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--bidirectional"), std::string::npos) << e.what();
  }
  TrainConfig c;
  c.task = "ptb";
  c.bidirectional = true;
  try {
    c.validate();
    FAIL() << "expected an error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--bidirectional"), std::string::npos) << e.what();
  }
}

TrainConfig tiny_bidir_mnist(const std::string& out) {
  TrainConfig c;
  c.task = "seqmnist";
  c.data = std::string(RBN_SOURCE_DIR) + "/data/mnist";
  c.mnist_split_train = 8000;
  c.mnist_split_valid = 100;
  c.cell = "bnlstm";
  c.bidirectional = true;
  c.hidden = 8;
  c.batch_size = 4;
  c.steps = 8;
  c.eval_every = 4;
  c.eval_batches = 2;
  c.popstats_batches = 2;
  c.checkpoint_every = 2;
  c.log_every = 2;
  c.h0_noise = 0.1;
  c.out = out;
  return c;
}

std::vector<uint8_t> tensor_bytes(const std::string& path) {
  const SafeTensors st = read_safetensors(path);
  std::vector<uint8_t> all;
  for (const auto& [name, t] : st.tensors()) all.insert(all.end(), t.data.begin(), t.data.end());
  return all;
}

// Trains config(base/"full") for its 8 steps, and config(base/"half") for 4 steps then resumed to
// 8; both runs' last and best checkpoints must hold the same bytes.
template <class MakeConfig>
void expect_resume_bit_for_bit(const fs::path& base, MakeConfig config) {
  ASSERT_EQ(run_training(config(base / "full"), false).exit_code, 0);
  TrainConfig half = config(base / "half");
  half.steps = 4;
  ASSERT_EQ(run_training(half, false).exit_code, 0);
  half.steps = 8;
  ASSERT_EQ(run_training(half, true).exit_code, 0);
  for (const char* f : {"last.safetensors", "best.safetensors"})
    EXPECT_EQ(tensor_bytes((base / "full" / f).string()), tensor_bytes((base / "half" / f).string()))
        << f;
}

TEST(BidirectionalModel, TrainsCheckpointsAndResumesBitForBit) {
  const fs::path base = fs::temp_directory_path() / ("rbn-bidir-" + std::to_string(getpid()));
  fs::remove_all(base);
  ASSERT_NO_FATAL_FAILURE(
      expect_resume_bit_for_bit(base, [](const fs::path& out) { return tiny_bidir_mnist(out.string()); }));
  const SafeTensors st = read_safetensors((base / "full/best.safetensors").string());
  EXPECT_EQ(st.metadata.at("bidirectional"), "true");
  for (const char* name : {"rnn.0.reverse.weight_ih", "rnn.0.reverse.bn_c.bias",
                           "rnn.0.reverse.bn_x.running_mean"})
    EXPECT_TRUE(st.has(name)) << name;
  const SafeTensors last = read_safetensors((base / "full/last.safetensors").string());
  EXPECT_TRUE(last.has("optim.exp_avg.rnn.0.reverse.weight_hh"));
  LoadedCheckpoint ck = load_model_checkpoint((base / "full/best.safetensors").string());
  EXPECT_TRUE(ck.model->config().rnn.bidirectional);
  EXPECT_EQ(ck.model->features(), 16);
  fs::remove_all(base);
}

// The same with two bidirectional layers under dropout and zoneout: each direction's masks come
// from the counter-based hash (direction, update, row, step), so the resumed run draws what the
// uninterrupted one draws; without the regularizers the run ends elsewhere (the masks acted).
TEST(BidirectionalModel, ResumesBitForBitUnderDropoutAndZoneout) {
  const fs::path base = fs::temp_directory_path() / ("rbn-bidir-reg-" + std::to_string(getpid()));
  fs::remove_all(base);
  auto config = [](const fs::path& out, bool regularized) {
    TrainConfig c = tiny_bidir_mnist(out.string());
    c.layers = 2;
    if (regularized) c.dropout = 0.3, c.zoneout_h = 0.1, c.zoneout_c = 0.5;
    return c;
  };
  ASSERT_NO_FATAL_FAILURE(
      expect_resume_bit_for_bit(base, [&](const fs::path& out) { return config(out, true); }));
  ASSERT_EQ(run_training(config(base / "plain", false), false).exit_code, 0);
  EXPECT_NE(tensor_bytes((base / "full/last.safetensors").string()),
            tensor_bytes((base / "plain/last.safetensors").string()));
  const SafeTensors st = read_safetensors((base / "full/last.safetensors").string());
  EXPECT_EQ(st.metadata.at("zoneout_c"), "0.5");
  EXPECT_TRUE(st.has("rnn.1.reverse.weight_ih"));
  fs::remove_all(base);
}

}  // namespace
}  // namespace rbn
