// --task seq: a user's own sequences from NumPy files. Each kind of target (a class per sequence,
// a class per step, values per sequence [N] and [N,D], values per step [T,N] and [T,N,D]) and token
// id inputs load, train to better than a constant guess, and round-trip through the checkpoint;
// the heads' gradients match finite differences; the loader names the file of every defect.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "data/seq.hpp"
#include "io/npy.hpp"
#include "train/checkpoint.hpp"
#include "train/trainer.hpp"
#include "util/error.hpp"
#include "util/rng.hpp"

namespace rbn {
namespace {

namespace fs = std::filesystem;

fs::path fresh_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("rbn-seq-" + std::to_string(getpid()) + "-" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void save_f(const fs::path& p, std::vector<int64_t> shape, const std::vector<float>& v) {
  write_npy(p.string(), "<f4", shape, v.data());
}
void save_i(const fs::path& p, std::vector<int64_t> shape, const std::vector<int32_t>& v) {
  write_npy(p.string(), "<i4", shape, v.data());
}

// A learnable toy: x [T,N,2] uniform in [-1,1); lengths in [T/2, T]. Targets by kind:
//   classify: x[0,n,0] > 0; tag: x[t,n,0] > 0; regress [N]: x[0,n,0]; [N,2]: x[0,n,:];
//   [T,N]: x[t,n,0]; [T,N,2]: x[t,n,:]. Token ids: ids = (x[t,n,0] > 0), same targets.
struct Toy {
  int T = 8, N = 400;
  std::vector<float> x;
  std::vector<int32_t> ids, lengths;
};

Toy make_toy(uint64_t seed, int N) {
  Toy t;
  t.N = N;
  Rng rng(seed);
  t.x.resize(size_t(t.T) * N * 2);
  for (auto& v : t.x) v = static_cast<float>(2 * rng.uniform() - 1);
  t.ids.resize(size_t(t.T) * N);
  for (size_t i = 0; i < t.ids.size(); ++i) t.ids[i] = t.x[2 * i] > 0 ? 1 : 0;
  t.lengths.resize(N);
  for (auto& l : t.lengths) l = t.T / 2 + static_cast<int>(rng.below(t.T / 2 + 1));
  return t;
}

void write_split(const fs::path& dir, const std::string& split, const Toy& t, const std::string& kind, bool ids) {
  const int T = t.T, N = t.N;
  if (ids)
    save_i(dir / (split + ".x.npy"), {T, N}, t.ids);
  else
    save_f(dir / (split + ".x.npy"), {T, N, 2}, t.x);
  save_i(dir / (split + ".lengths.npy"), {N}, t.lengths);
  const fs::path y = dir / (split + ".y.npy");
  std::vector<float> f;
  std::vector<int32_t> l;
  if (kind == "classify") {
    for (int n = 0; n < N; ++n) l.push_back(t.x[2 * n] > 0);
    save_i(y, {N}, l);
  } else if (kind == "tag") {
    for (size_t i = 0; i < size_t(T) * N; ++i) l.push_back(t.x[2 * i] > 0);
    save_i(y, {T, N}, l);
  } else if (kind == "regress-n") {
    for (int n = 0; n < N; ++n) f.push_back(t.x[2 * n]);
    save_f(y, {N}, f);
  } else if (kind == "regress-nd") {
    f.assign(t.x.begin(), t.x.begin() + 2 * N);
    save_f(y, {N, 2}, f);
  } else if (kind == "regress-tn") {
    for (size_t i = 0; i < size_t(T) * N; ++i) f.push_back(t.x[2 * i]);
    save_f(y, {T, N}, f);
  } else {  // regress-tnd
    save_f(y, {T, N, 2}, t.x);
  }
}

TrainConfig seq_config(const fs::path& data, const fs::path& out, const std::string& cell) {
  TrainConfig c;
  c.task = "seq";
  c.data = data.string();
  c.out = out.string();
  c.cell = cell;
  c.hidden = 16;
  c.batch_size = 20;
  c.steps = 150;
  c.eval_every = 150;
  c.log_every = 50;
  c.popstats_batches = 4;
  c.lr = 0.01;
  return c;
}

double last_valid(const fs::path& metrics, const std::string& key) {
  std::ifstream in(metrics);
  double v = NAN;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j["split"] == "valid") v = j[key].get<double>();
  }
  return v;
}

struct Kind {
  std::string name;
  Head head;
  bool per_step;
  int width;
  std::string metric;
  double goal;  // better than a constant guess (accuracy 0.5; mse ~1/3 of the uniform values)
};

void PrintTo(const Kind& k, std::ostream* os) { *os << k.name; }

class SeqKinds : public ::testing::TestWithParam<std::tuple<Kind, bool>> {};

TEST_P(SeqKinds, LoadsTrainsAndRoundTrips) {
  const auto& [k, ids] = GetParam();
  const fs::path dir = fresh_dir(k.name + (ids ? "-ids" : ""));
  write_split(dir / "", "train", make_toy(1, 400), k.name, ids);
  write_split(dir / "", "test", make_toy(2, 100), k.name, ids);
  SeqData d = load_seq_data(dir.string(), 0.1, 0.0);
  EXPECT_EQ(d.train.N, 360);
  EXPECT_EQ(d.valid.N, 40);  // 10 % of the training rows
  EXPECT_EQ(d.test.N, 100);  // from test.*.npy
  EXPECT_EQ(d.ids, ids);
  EXPECT_EQ(d.input_size, 2);
  EXPECT_EQ(d.width, k.width);
  TrainConfig c = seq_config(dir, dir / "run", "bnlstm");
  ASSERT_EQ(run_training(c, false).exit_code, 0);
  const double v = last_valid(dir / "run" / "metrics.jsonl", k.metric);
  std::printf("[ seq ] %s%s: valid %s %.4f\n", k.name.c_str(), ids ? " (ids)" : "", k.metric.c_str(), v);
  if (k.metric == "accuracy")
    EXPECT_GT(v, k.goal);
  else
    EXPECT_LT(v, k.goal);
  LoadedCheckpoint ck = load_model_checkpoint((dir / "run" / "best.safetensors").string());
  EXPECT_EQ(ck.model->config().head, k.head);
  EXPECT_EQ(ck.model->config().per_step, k.per_step);
  EXPECT_EQ(ck.model->config().num_classes, k.width);
  EXPECT_EQ(ck.metadata.at("data.input"), ids ? "ids" : "features");
  fs::remove_all(dir);
}

// Features for every kind of target; token ids (which carry only the sign) for the classes.
std::vector<std::tuple<Kind, bool>> kinds() {
  const Kind classify{"classify", Head::classify, false, 2, "accuracy", 0.8}, tag{"tag", Head::tag, false, 2, "accuracy", 0.8};
  return {{classify, false},
          {tag, false},
          {Kind{"regress-n", Head::regress, false, 1, "mse", 0.1}, false},
          {Kind{"regress-nd", Head::regress, false, 2, "mse", 0.1}, false},
          {Kind{"regress-tn", Head::regress, true, 1, "mse", 0.1}, false},
          {Kind{"regress-tnd", Head::regress, true, 2, "mse", 0.1}, false},
          {classify, true},
          {tag, true}};
}

INSTANTIATE_TEST_SUITE_P(Targets, SeqKinds, ::testing::ValuesIn(kinds()), [](const auto& info) {
  std::string s = std::get<0>(info.param).name + (std::get<1>(info.param) ? "_ids" : "");
  for (auto& ch : s)
    if (ch == '-') ch = '_';
  return s;
});

// Every cell trains on values per step (the per-step head through each cell's backward).
TEST(Seq, EveryCellTrainsOnValuesPerStep) {
  const fs::path dir = fresh_dir("cells");
  write_split(dir / "", "train", make_toy(3, 300), "regress-tn", false);
  for (const char* cell : {"lstm", "bnlstm", "bnx", "bnx-seq", "lnlstm", "rnn", "bnrnn"}) {
    TrainConfig c = seq_config(dir, dir / cell, cell);
    c.steps = 60;
    c.eval_every = 60;
    if (std::string(cell) == "lnlstm") c.ln_input = false;  // two features: LN(W x) would be coarse
    ASSERT_EQ(run_training(c, false).exit_code, 0) << cell;
    const double v = last_valid(dir / cell / "metrics.jsonl", "mse");
    std::printf("[ seq ] %s, values per step: valid mse %.4f (constant guess ~0.33)\n", cell, v);
    EXPECT_LT(v, 0.25) << cell;
  }
  fs::remove_all(dir);
}

// The new heads' gradients against central differences of the loss (lstm cell, double-checked in
// float with a loose tolerance: the model is float).
TEST(Seq, HeadGradientsMatchFiniteDifferences) {
  for (const auto& [head, per_step] : {std::pair<Head, bool>{Head::tag, true}, {Head::regress, false}, {Head::regress, true}}) {
    ModelConfig mc;
    mc.rnn.cell = Cell::lstm;
    mc.rnn.input_size = 2;
    mc.rnn.hidden_size = 5;
    mc.rnn.t_max = 4;
    mc.head = head;
    mc.per_step = per_step;
    mc.num_classes = 3;
    Model m(mc);
    const int T = 4, N = 3;
    Toy t = make_toy(5, N);
    std::vector<float> x(t.x.begin(), t.x.begin() + T * N * 2);
    std::vector<int32_t> len{4, 2, 3}, labels(T * N);
    for (int i = 0; i < T * N; ++i) labels[i] = i % 3;
    labels[1] = -1;
    std::vector<float> values((per_step ? T : 1) * N * 3);
    for (size_t i = 0; i < values.size(); ++i) values[i] = 0.1f * static_cast<float>(i % 7) - 0.3f;
    ForwardOptions opt;
    opt.mode = Mode::train;
    auto loss = [&] {
      const StepResult r = m.seq_step(opt, T, N, x.data(), len.data(), labels.data(), values.data(), false);
      return r.loss_sum / static_cast<double>(r.count);
    };
    m.zero_grad();
    m.seq_step(opt, T, N, x.data(), len.data(), labels.data(), values.data(), true);
    for (auto& p : m.parameters()) {
      if (p.name != "head.weight" && p.name != "head.bias" && p.name != "rnn.0.weight_hh") continue;
      for (size_t i = 0; i < p.numel; i += 3) {
        const float keep = p.value[i];
        const float h = 1e-2f;
        p.value[i] = keep + h;
        const double up = loss();
        p.value[i] = keep - h;
        const double down = loss();
        p.value[i] = keep;
        const double fd = (up - down) / (2 * h);
        EXPECT_NEAR(p.grad[i], fd, 2e-3 + 2e-2 * std::abs(fd)) << head_name(head) << per_step << " " << p.name << "[" << i << "]";
      }
    }
  }
}

void expect_data_error(const std::function<void()>& f, const std::string& mention) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one naming " << mention;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(mention), std::string::npos) << e.what();
  }
}

TEST(Seq, TheLoaderNamesTheFileOfEveryDefect) {
  const fs::path dir = fresh_dir("bad");
  const Toy t = make_toy(1, 50);
  write_split(dir / "", "train", t, "classify", false);
  auto load = [&] { load_seq_data(dir.string(), 0.1, 0.1); };
  EXPECT_NO_THROW(load());
  save_i(dir / "train.y.npy", {3}, {0, 1, 0});  // wrong N
  expect_data_error(load, "train.y.npy");
  save_f(dir / "train.y.npy", {4, 4, 4, 4}, std::vector<float>(256));
  expect_data_error(load, "train.y.npy");
  write_split(dir / "", "train", t, "classify", false);
  save_i(dir / "train.lengths.npy", {50}, std::vector<int32_t>(50, 9));  // > T
  expect_data_error(load, "train.lengths.npy");
  write_split(dir / "", "train", t, "classify", false);
  std::vector<float> x = t.x;
  x[7] = NAN;
  save_f(dir / "train.x.npy", {8, 50, 2}, x);
  expect_data_error(load, "train.x.npy");
  write_split(dir / "", "train", t, "classify", false);
  write_split(dir / "", "valid", make_toy(2, 10), "regress-n", false);  // other targets than train
  expect_data_error(load, "valid.y.npy");
  fs::remove(dir / "valid.x.npy");
  expect_data_error([&] { load_seq_data(dir.string(), 0.0, 0.1); }, "--valid-fraction");
  save_i(dir / "train.y.npy", {50}, std::vector<int32_t>(50, -2));
  expect_data_error(load, "train.y.npy");
  expect_data_error([&] { load_seq_data((dir / "none").string(), 0.1, 0.1); }, "none");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace rbn
