// A non-finite loss or gradient skips the update with a warning; --max-bad-steps in a row stop the
// run with a message naming the step, and the last checkpoint stays loadable.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>

#include "io/safetensors.hpp"

namespace {

namespace fs = std::filesystem;

TEST(NonFinite, SkipsThenStopsNamingTheStep) {
  const fs::path out = fs::temp_directory_path() / ("rbn-nan-" + std::to_string(getpid()));
  fs::remove_all(out);
  // SGD with an absurd learning rate and momentum: within a few updates the weights overflow, after
  // which every loss is non-finite.
  const std::string cmd = std::string(RBN_CLI_PATH) + " train --task ptb --data " + RBN_SOURCE_DIR +
                          "/data/ptb --cell lstm --hidden 8 --seq-len 10 --batch-size 4 --steps 50 "
                          "--optimizer sgd --lr 1e38 --momentum 0.9 --clip 0 --eval-every 0 --checkpoint-every 1 "
                          "--max-bad-steps 3 --out " + out.string() + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string text;
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) text.append(buf.data(), n);
  const int st = pclose(p);
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 1) << text;
  EXPECT_NE(text.find("update skipped"), std::string::npos) << text;
  EXPECT_NE(text.find("3 non-finite steps in a row, the last at step"), std::string::npos) << text;
  ASSERT_TRUE(fs::exists(out / "last.safetensors"));
  const rbn::SafeTensors st2 = rbn::read_safetensors((out / "last.safetensors").string());
  for (const auto& name : st2.names()) {
    if (st2.tensor(name).dtype != "F32") continue;
    for (float v : st2.get_f32(name, {})) ASSERT_TRUE(std::isfinite(v)) << name << ": the last checkpoint must be good";
  }
  fs::remove_all(out);
}

}  // namespace
