// `rbn bench --json`: every cell's `x base` and `x dnnl` are medians of same-round ratios against
// its family's base cell and oneDNN's RNN (lbr_gru for the GRUs; rbn's layer alone against it),
// with their quartiles beside them and the ratio of the medians; each row's thread counts are
// among --threads. (The timings themselves are not checked: machines are noisy.)
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

namespace {

namespace fs = std::filesystem;

TEST(BenchCli, PairedRatioAgainstBaseCell) {
  const fs::path json = fs::temp_directory_path() / ("rbn-bench-cli-" + std::to_string(getpid()) + ".json");
  const std::string cmd = "env -u RBN_GEMM timeout 300 " + std::string(RBN_CLI_PATH) +
                          " bench --shapes smnist --cells gru,lngru --gemm openblas --threads 1,2 "
                          "--repeats 3 --warmup 0 --no-torch --bidir-cells '' --json " +
                          json.string() + " >/dev/null 2>&1";
  const int st = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << cmd;
  nlohmann::json j;
  std::ifstream(json) >> j;
  fs::remove(json);
  ASSERT_EQ(j["results"].size(), 2u);
  for (const auto& row : j["results"]) {
    EXPECT_EQ(row["onednn_rnn"], "lbr_gru");
    for (const char* mode : {"train", "infer"}) {
      const std::string dkey = std::string("vs_onednn_") + mode;
      ASSERT_TRUE(row.contains(dkey)) << row.dump();
      EXPECT_LE(row[dkey + "_quartiles"][0].get<double>(), row[dkey].get<double>());
      EXPECT_LE(row[dkey].get<double>(), row[dkey + "_quartiles"][1].get<double>());
      const int dth = row[std::string("onednn_") + mode + "_threads"];
      EXPECT_TRUE(dth == 1 || dth == 2);
      // x dnnl is rbn's layer alone against oneDNN's; the whole step's ratio beside it
      const double layer_ms = row[std::string("rbn_layer_") + mode + "_ms"];
      EXPECT_GT(layer_ms, 0);
      const int lth = row[std::string("rbn_layer_") + mode + "_threads"];
      EXPECT_TRUE(lth == 1 || lth == 2);
      EXPECT_DOUBLE_EQ(row[dkey + "_of_medians"].get<double>(),
                       layer_ms / row[std::string("onednn_") + mode + "_ms"].get<double>());
      ASSERT_TRUE(row.contains(std::string("step_vs_onednn_") + mode)) << row.dump();
      EXPECT_GT(row[std::string("step_vs_onednn_") + mode].get<double>(), 0);
      const std::string key = std::string(mode) + "_vs_rbn_gru";
      ASSERT_TRUE(row.contains(key)) << row.dump();
      const double x = row[key], q1 = row[key + "_quartiles"][0], q3 = row[key + "_quartiles"][1];
      const double of_medians = row[key + "_of_medians"];
      const int th = row[std::string("rbn_") + mode + "_threads"];
      EXPECT_TRUE(th == 1 || th == 2);
      EXPECT_GT(x, 0);
      EXPECT_LE(q1, x);
      EXPECT_LE(x, q3);
      EXPECT_GT(of_medians, 0);
      if (row["cell"] == "gru") {  // against itself: every round's ratio is 1
        EXPECT_EQ(x, 1.0);
        EXPECT_EQ(q1, 1.0);
        EXPECT_EQ(q3, 1.0);
      }
    }
  }
}

}  // namespace
