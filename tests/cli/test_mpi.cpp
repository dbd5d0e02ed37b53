// Data-parallel training over MPI: `mpirun -np 2 rbn train` for 50 steps of every cell ends where
// the single-process run on the same global batches ends (parameters, population statistics,
// optimizer state, validation), to within float rounding; with the batch statistics left
// unsynchronized (--sync-bn false) a batch-normalized model does not. Skipped in builds without
// MPI (configure -DRBN_MPI=OFF).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "io/npy.hpp"
#include "io/safetensors.hpp"
#include "util/rng.hpp"

namespace {

namespace fs = std::filesystem;

#if RBN_WITH_MPI && defined(RBN_MPIEXEC)
constexpr bool kHaveMpi = true;
#else
constexpr bool kHaveMpi = false;
#define RBN_MPIEXEC ""
#endif

// The classification path (pmnist: the shards' labels, the head, the loss over the group's rows)
// runs with the plain LSTM: a BN-LSTM over 784 pixels with 12 rows is chaotic in float — one
// process with another BLAS kernel parts from itself by ~1e-1 after 50 Adam steps, as 2 ranks do,
// though their first step agrees to 1e-16 and 8 steps at lr 1e-9 to 5e-7 (docs/distributed.md).
//
// Relative tolerance of every checkpoint value after 50 steps: float sums taken in another order
// (per rank, then over the ranks) differ in the last bits, and Adam's normalized steps carry
// that forward. Measured: at most ~1e-5 (docs/distributed.md); unsynchronized statistics: ~1e-1.
constexpr double kTol = 1e-4;

// --task seq data for the data-parallel path: values per step [T,N,2] (the running sum of the
// inputs) with lengths of 10..20 steps, so that each rank's shard of x, lengths and values is cut.
std::string seq_data_dir() {
  static const std::string dir = [] {
    const fs::path d = fs::temp_directory_path() / ("rbn-mpi-seq-" + std::to_string(getpid()));
    fs::create_directories(d);
    const int T = 20, N = 240;
    rbn::Rng rng(7);
    std::vector<float> x(size_t(T) * N * 2), y(x.size());
    std::vector<int32_t> len(N);
    for (auto& v : x) v = static_cast<float>(rng.uniform() - 0.5);
    for (int n = 0; n < N; ++n) {
      len[n] = 10 + static_cast<int>(rng.below(11));
      for (int c = 0; c < 2; ++c) {
        float sum = 0;
        for (int t = 0; t < T; ++t) y[(size_t(t) * N + n) * 2 + c] = sum += x[(size_t(t) * N + n) * 2 + c];
      }
    }
    const std::vector<int64_t> sx{T, N, 2}, sl{N};
    rbn::write_npy((d / "train.x.npy").string(), "<f4", sx, x.data());
    rbn::write_npy((d / "train.y.npy").string(), "<f4", sx, y.data());
    rbn::write_npy((d / "train.lengths.npy").string(), "<i4", sl, len.data());
    return d.string();
  }();
  return dir;
}

std::string train_command(const std::string& cell, const fs::path& out, const std::string& extra) {
  if (cell == "seq" || cell == "seq-bidir")  // seq-bidir: each direction's statistics over the group
    return std::string(RBN_CLI_PATH) + " train --task seq --data " + seq_data_dir() +
           " --cell bnlstm --hidden 16 --batch-size 12 --popstats-batches 2 --eval-batches 2 --steps 50 "
           "--eval-every 25 --log-every 10 --checkpoint-every 50 --threads 1 --seed 3 --out " + out.string() + " " +
           (cell == "seq-bidir" ? "--bidirectional " : "") + extra;
  std::string task = cell == "pmnist"
                         ? "--task pmnist --data " + std::string(RBN_SOURCE_DIR) +
                               "/data/mnist --mnist-split-train 8000 --mnist-split-valid 1000 --cell lstm "
                               "--hidden 16 --batch-size 12 --popstats-batches 2 --eval-batches 2"
                         : "--task ptb --data " + std::string(RBN_SOURCE_DIR) + "/data/ptb --cell " + cell +
                               " --hidden 32 --layers 2 --seq-len 20 --batch-size 8 --popstats-batches 3 "
                               "--eval-batches 4";
  return std::string(RBN_CLI_PATH) + " train " + task + " --steps 50 --eval-every 25 --log-every 10 " +
         "--checkpoint-every 50 --threads 1 --seed 3 --out " + out.string() + " " + extra;
}

int run(const std::string& cmd, const fs::path& log) {
  const int st = std::system((cmd + " > " + log.string() + " 2>&1").c_str());
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

std::string mpirun(int np) {
  // loopback only; root allowed (containers, CI); no binding, so OpenMP threads are not pinned
  return std::string("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader "
                     "OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1 ") +
         RBN_MPIEXEC + " -np " + std::to_string(np) + " --bind-to none ";
}

// Largest |a - b| / (1 + |b|) over every float tensor of two checkpoints (names must agree).
double checkpoint_diff(const fs::path& a, const fs::path& b) {
  const rbn::SafeTensors ta = rbn::read_safetensors(a.string()), tb = rbn::read_safetensors(b.string());
  EXPECT_EQ(ta.names(), tb.names());
  double worst = 0;
  for (const auto& name : ta.names()) {
    if (!tb.has(name) || ta.tensor(name).dtype != "F32") continue;
    const auto va = ta.get_f32(name, {}), vb = tb.get_f32(name, {});
    EXPECT_EQ(va.size(), vb.size()) << name;
    for (size_t i = 0; i < std::min(va.size(), vb.size()); ++i)
      worst = std::max(worst, std::abs(double(va[i]) - vb[i]) / (1 + std::abs(double(vb[i]))));
  }
  return worst;
}

double last_valid(const fs::path& metrics, const char* key) {
  std::ifstream in(metrics);
  std::string line;
  double v = NAN;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j["split"] == "valid") v = j[key].get<double>();
  }
  return v;
}

class Mpi : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!kHaveMpi) GTEST_SKIP() << "built without MPI";
    base_ = fs::temp_directory_path() / ("rbn-mpi-" + std::to_string(getpid()) + "-" + GetParam());
    fs::remove_all(base_);
    fs::create_directories(base_);
  }
  void TearDown() override {
    if (!base_.empty()) fs::remove_all(base_);
  }
  fs::path base_;
};

TEST_P(Mpi, TwoRanksMatchOneProcess) {
  const std::string cell = GetParam();
  ASSERT_EQ(run(train_command(cell, base_ / "one", ""), base_ / "one.log"), 0);
  ASSERT_EQ(run(mpirun(2) + train_command(cell, base_ / "two", ""), base_ / "two.log"), 0)
      << std::ifstream(base_ / "two.log").rdbuf();
  const double d = checkpoint_diff(base_ / "two" / "last.safetensors", base_ / "one" / "last.safetensors");
  std::printf("[ mpi ] %s: 2 ranks vs 1 process after 50 steps: largest relative difference %.1e\n",
              cell.c_str(), d);
  EXPECT_LE(d, kTol);
  const char* key = cell == "pmnist" ? "accuracy" : cell.starts_with("seq") ? "mse" : "bpc";
  EXPECT_NEAR(last_valid(base_ / "two" / "metrics.jsonl", key), last_valid(base_ / "one" / "metrics.jsonl", key),
              1e-3);
  // rank 0 alone writes: one metrics line per event, not two
  std::ifstream one(base_ / "one" / "metrics.jsonl"), two(base_ / "two" / "metrics.jsonl");
  auto lines = [](std::ifstream& f) {
    int n = 0;
    for (std::string l; std::getline(f, l);) ++n;
    return n;
  };
  EXPECT_EQ(lines(two), lines(one));
}

INSTANTIATE_TEST_SUITE_P(Cells, Mpi, ::testing::Values("lstm", "bnlstm", "bnx", "bnx-seq", "lnlstm", "gru", "bngru", "lngru", "pmnist", "seq",
                                           "seq-bidir"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (auto& ch : s)
                             if (ch == '-') ch = '_';
                           return s;
                         });

// Dropout and zoneout masks are drawn by each row's index in the global batch: 2 ranks draw what
// one process draws.
TEST(MpiRegularizers, TwoRanksDrawWhatOneProcessDraws) {
  if (!kHaveMpi) GTEST_SKIP() << "built without MPI";
  const fs::path base = fs::temp_directory_path() / ("rbn-mpi-reg-" + std::to_string(getpid()));
  fs::remove_all(base);
  fs::create_directories(base);
  const std::string reg = "--dropout 0.3 --zoneout-h 0.1 --zoneout-c 0.5";
  ASSERT_EQ(run(train_command("bnlstm", base / "one", reg), base / "one.log"), 0);
  ASSERT_EQ(run(mpirun(2) + train_command("bnlstm", base / "two", reg), base / "two.log"), 0)
      << std::ifstream(base / "two.log").rdbuf();
  ASSERT_EQ(run(train_command("bnlstm", base / "plain", ""), base / "plain.log"), 0);
  const double d = checkpoint_diff(base / "two" / "last.safetensors", base / "one" / "last.safetensors");
  const double off = checkpoint_diff(base / "plain" / "last.safetensors", base / "one" / "last.safetensors");
  std::printf("[ mpi ] bnlstm with dropout and zoneout: 2 ranks vs 1 process %.1e (without them: %.1e)\n",
              d, off);
  EXPECT_LE(d, kTol);
  EXPECT_GT(off, 10 * kTol) << "the regularizers should change the run";
  fs::remove_all(base);
}

// The same with a bidirectional 2-layer stack: dropout on layer 0's 2H output and zoneout in both
// directions (the reverse's masks by direction 1), each direction's statistics over the group.
TEST(MpiRegularizers, BidirectionalTwoRanksDrawWhatOneProcessDraws) {
  if (!kHaveMpi) GTEST_SKIP() << "built without MPI";
  const fs::path base = fs::temp_directory_path() / ("rbn-mpi-bireg-" + std::to_string(getpid()));
  fs::remove_all(base);
  fs::create_directories(base);
  const std::string reg = "--layers 2 --dropout 0.3 --zoneout-h 0.1 --zoneout-c 0.5";
  ASSERT_EQ(run(train_command("seq-bidir", base / "one", reg), base / "one.log"), 0)
      << std::ifstream(base / "one.log").rdbuf();
  ASSERT_EQ(run(mpirun(2) + train_command("seq-bidir", base / "two", reg), base / "two.log"), 0)
      << std::ifstream(base / "two.log").rdbuf();
  ASSERT_EQ(run(train_command("seq-bidir", base / "plain", "--layers 2"), base / "plain.log"), 0);
  const double d = checkpoint_diff(base / "two" / "last.safetensors", base / "one" / "last.safetensors");
  const double off = checkpoint_diff(base / "plain" / "last.safetensors", base / "one" / "last.safetensors");
  std::printf("[ mpi ] bidirectional bnlstm with dropout and zoneout: 2 ranks vs 1 process %.1e "
              "(without them: %.1e)\n", d, off);
  EXPECT_LE(d, kTol);
  EXPECT_GT(off, 10 * kTol) << "the regularizers should change the run";
  fs::remove_all(base);
}

// Why the feature exists: each rank normalizing by its own 4 rows trains another model.
TEST(MpiUnsynchronized, BatchNormWithoutSynchronizationDiffers) {
  if (!kHaveMpi) GTEST_SKIP() << "built without MPI";
  const fs::path base = fs::temp_directory_path() / ("rbn-mpi-nosync-" + std::to_string(getpid()));
  fs::remove_all(base);
  fs::create_directories(base);
  ASSERT_EQ(run(train_command("bnlstm", base / "one", ""), base / "one.log"), 0);
  ASSERT_EQ(run(mpirun(2) + train_command("bnlstm", base / "two", "--sync-bn false"), base / "two.log"), 0);
  const double d = checkpoint_diff(base / "two" / "last.safetensors", base / "one" / "last.safetensors");
  std::printf("[ mpi ] bnlstm, statistics not synchronized: largest relative difference %.1e\n", d);
  EXPECT_GT(d, 100 * kTol);
  fs::remove_all(base);
}

// A data-parallel run stopped and resumed (every rank reads rank 0's checkpoint) ends bit for bit
// where the uninterrupted data-parallel run ends.
TEST(MpiResume, ResumedRunEndsWhereTheUninterruptedOneEnds) {
  if (!kHaveMpi) GTEST_SKIP() << "built without MPI";
  const fs::path base = fs::temp_directory_path() / ("rbn-mpi-resume-" + std::to_string(getpid()));
  fs::remove_all(base);
  fs::create_directories(base);
  const std::string np2 = mpirun(2);
  ASSERT_EQ(run(np2 + train_command("bnlstm", base / "straight", ""), base / "a.log"), 0);
  std::string cmd = train_command("bnlstm", base / "resumed", "");
  const size_t ck = cmd.find("--checkpoint-every 50");
  ASSERT_NE(ck, std::string::npos);
  cmd.replace(ck, 21, "--checkpoint-every 10");
  const size_t at = cmd.find("--steps 50");
  ASSERT_NE(at, std::string::npos);
  ASSERT_EQ(run(np2 + std::string(cmd).replace(at, 10, "--steps 30"), base / "b.log"), 0);
  ASSERT_EQ(run(np2 + cmd + " --resume", base / "c.log"), 0) << std::ifstream(base / "c.log").rdbuf();
  EXPECT_EQ(checkpoint_diff(base / "resumed" / "last.safetensors", base / "straight" / "last.safetensors"), 0.0);
  fs::remove_all(base);
}

// Each rank normalizing its own rows (--sync-bn false) with one row per rank: variance 0 by
// construction, refused before training with a line naming the flags and the cell.
TEST(MpiUnsynchronized, OneRowPerRankIsRefused) {
  if (!kHaveMpi) GTEST_SKIP() << "built without MPI";
  const fs::path base = fs::temp_directory_path() / ("rbn-mpi-onerow-" + std::to_string(getpid()));
  fs::remove_all(base);
  fs::create_directories(base);
  std::string cmd = train_command("bnlstm", base / "run", "--sync-bn false");
  cmd.replace(cmd.find("--batch-size 8"), 14, "--batch-size 2");
  EXPECT_NE(run(mpirun(2) + cmd, base / "log"), 0);
  std::ifstream in(base / "log");
  const std::string log((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(log.find("--sync-bn false with --batch-size 2 over 2 ranks: cell bnlstm"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(base / "run" / "metrics.jsonl"));
  fs::remove_all(base);
}

// Each process reads its own RBN_DENORMALS: ranks that flush subnormals and ranks that keep them
// would sum the same rows differently, so such a group is refused before training.
TEST(MpiDenormals, RanksThatTreatSubnormalsDifferentlyAreRefused) {
  if (!kHaveMpi) GTEST_SKIP() << "built without MPI";
#if !defined(__x86_64__)
  GTEST_SKIP() << "subnormals are flushed only on x86-64";
#endif
  const fs::path base = fs::temp_directory_path() / ("rbn-mpi-denormals-" + std::to_string(getpid()));
  fs::remove_all(base);
  fs::create_directories(base);
  const std::string cmd = train_command("lstm", base / "run", "");
  // one rank keeps subnormals, the other flushes them (MPMD: one command per rank)
  const std::string mpmd = mpirun(1) + "env RBN_DENORMALS=keep " + cmd + " : -np 1 " + cmd;
  EXPECT_NE(run(mpmd, base / "log"), 0);
  std::ifstream in(base / "log");
  const std::string log((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(log.find("RBN_DENORMALS: 1 of the 2 ranks flush subnormals and the others keep them"),
            std::string::npos) << log;
  EXPECT_FALSE(fs::exists(base / "run" / "metrics.jsonl"));
  EXPECT_FALSE(fs::exists(base / "run" / "last.safetensors"));
  // the same mode on both ranks trains
  EXPECT_EQ(run(mpirun(2) + "env RBN_DENORMALS=keep " + cmd + " --overwrite", base / "log2"), 0);
  EXPECT_TRUE(fs::exists(base / "run" / "last.safetensors"));
  fs::remove_all(base);
}

}  // namespace
