// A run killed with SIGKILL at random moments, then resumed, ends bit-for-bit where the
// uninterrupted run ends; SIGTERM stops cleanly after writing a checkpoint.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <random>
#include <string>
#include <thread>

#include "io/safetensors.hpp"

namespace {

namespace fs = std::filesystem;

std::vector<std::string> train_args(const fs::path& out) {
  return {RBN_CLI_PATH, "train", "--task", "ptb", "--data", std::string(RBN_SOURCE_DIR) + "/data/ptb",
          "--cell", "bnlstm", "--hidden", "32", "--layers", "2", "--seq-len", "20", "--batch-size", "8",
          "--steps", "400", "--eval-every", "100", "--eval-batches", "2", "--popstats-batches", "2",
          "--checkpoint-every", "7", "--log-every", "10", "--threads", "1", "--out", out.string()};
}

pid_t spawn(std::vector<std::string> args, bool resume) {
  // a run killed before its first checkpoint left metrics.jsonl: starting again replaces it
  args.push_back(resume ? "--resume" : "--overwrite");
  const pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    freopen("/dev/null", "w", stderr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

int wait_exit(pid_t pid) {
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

std::vector<uint8_t> model_bytes(const fs::path& p) {
  const rbn::SafeTensors st = rbn::read_safetensors(p.string());
  std::vector<uint8_t> all;
  for (const auto& [name, t] : st.tensors()) all.insert(all.end(), t.data.begin(), t.data.end());
  return all;
}

TEST(KillResume, SigkillAtRandomMomentsThenResume) {
  const fs::path base = fs::temp_directory_path() / ("rbn-kill-" + std::to_string(getpid()));
  fs::remove_all(base);
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(wait_exit(spawn(train_args(base / "ref"), false)), 0);
  const double run_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::mt19937 gen(12345);
  std::uniform_real_distribution<double> frac(0.05, 0.9);
  int kills = 0;
  bool resume = false;
  for (int attempt = 0; attempt < 12; ++attempt) {
    const pid_t pid = spawn(train_args(base / "killed"), resume);
    if (kills < 4) {
      std::this_thread::sleep_for(std::chrono::microseconds(static_cast<int64_t>(frac(gen) * run_ms * 1000 / 2)));
      if (kill(pid, SIGKILL) == 0) {
        const int code = wait_exit(pid);
        if (code == 128 + SIGKILL) {
          ++kills;
          resume = fs::exists(base / "killed/last.safetensors");
          // never a half-written checkpoint: whatever is there loads
          if (resume) {
            EXPECT_NO_THROW(rbn::read_safetensors((base / "killed/last.safetensors").string()));
          }
          continue;
        }
        if (code == 0) break;  // finished before the signal
      }
    }
    ASSERT_EQ(wait_exit(pid), 0);
    break;
  }
  std::printf("[ kill/resume ] %d SIGKILLs at random moments (uninterrupted run %.0f ms)\n", kills, run_ms);
  EXPECT_GE(kills, 1);
  EXPECT_EQ(model_bytes(base / "ref/last.safetensors"), model_bytes(base / "killed/last.safetensors"));
  EXPECT_EQ(model_bytes(base / "ref/best.safetensors"), model_bytes(base / "killed/best.safetensors"));
  fs::remove_all(base);
}

// Dropout and zoneout masks are a hash of (seed, update index, layer, row, step, feature): a run
// stopped and resumed draws what the uninterrupted run draws, so it ends on the same bytes; and
// the checkpoint says which regularizers it was trained with.
TEST(KillResume, ResumeWithDropoutAndZoneoutIsBitExact) {
  const fs::path base = fs::temp_directory_path() / ("rbn-reg-resume-" + std::to_string(getpid()));
  fs::remove_all(base);
  auto args = [&](const fs::path& out, const char* steps) {
    auto a = train_args(out);
    a[std::find(a.begin(), a.end(), "--steps") - a.begin() + 1] = steps;
    a[std::find(a.begin(), a.end(), "--eval-every") - a.begin() + 1] = "10";
    for (const char* extra : {"--dropout", "0.3", "--zoneout-h", "0.05", "--zoneout-c", "0.5"}) a.push_back(extra);
    return a;
  };
  ASSERT_EQ(wait_exit(spawn(args(base / "ref", "30"), false)), 0);
  ASSERT_EQ(wait_exit(spawn(args(base / "split", "20"), false)), 0);
  ASSERT_EQ(wait_exit(spawn(args(base / "split", "30"), true)), 0);
  EXPECT_EQ(model_bytes(base / "ref/last.safetensors"), model_bytes(base / "split/last.safetensors"));
  EXPECT_EQ(model_bytes(base / "ref/best.safetensors"), model_bytes(base / "split/best.safetensors"));
  const rbn::SafeTensors st = rbn::read_safetensors((base / "ref/last.safetensors").string());
  EXPECT_EQ(st.metadata.at("dropout"), "0.29999999999999999");
  EXPECT_EQ(st.metadata.at("zoneout_h"), "0.050000000000000003");
  EXPECT_EQ(st.metadata.at("zoneout_c"), "0.5");
  // and without the regularizers the run is another one (the masks did something)
  auto plain = train_args(base / "plain");
  plain[std::find(plain.begin(), plain.end(), "--steps") - plain.begin() + 1] = "30";
  plain[std::find(plain.begin(), plain.end(), "--eval-every") - plain.begin() + 1] = "10";
  ASSERT_EQ(wait_exit(spawn(plain, false)), 0);
  EXPECT_NE(model_bytes(base / "ref/last.safetensors"), model_bytes(base / "plain/last.safetensors"));
  fs::remove_all(base);
}

TEST(KillResume, SigtermWritesACheckpointAndStops) {
  const fs::path base = fs::temp_directory_path() / ("rbn-term-" + std::to_string(getpid()));
  fs::remove_all(base);
  auto args = train_args(base / "run");
  args[std::find(args.begin(), args.end(), "--steps") - args.begin() + 1] = "100000";
  const pid_t pid = spawn(args, false);
  // wait until training has logged its first steps (data loading can be slow on a loaded machine)
  const fs::path metrics = base / "run/metrics.jsonl";
  for (int i = 0; i < 600 && !(fs::exists(metrics) && fs::file_size(metrics) > 0); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  kill(pid, SIGTERM);
  EXPECT_EQ(wait_exit(pid), 128 + SIGTERM);
  ASSERT_TRUE(fs::exists(base / "run/last.safetensors"));
  const rbn::SafeTensors st = rbn::read_safetensors((base / "run/last.safetensors").string());
  EXPECT_GT(std::stoll(st.metadata.at("step")), 0);
  fs::remove_all(base);
}

}  // namespace
