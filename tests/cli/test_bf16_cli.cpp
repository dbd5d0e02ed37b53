// --precision of rbn train, eval and bench: bf16 refused in one line on a CPU without bf16 (before
// anything is written), and, through the test override RBN_TEST_BF16=emulate, a bf16 run that
// trains, records its precision in config.json and in its checkpoints, and evaluates.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "io/safetensors.hpp"
#include "util/blas.hpp"

namespace {

namespace fs = std::filesystem;

struct Outcome {
  int code = -1;
  std::string err;
};

// `env` prefixes the command; stderr is returned.
Outcome run(const std::string& env, const std::string& args) {
  const std::string cmd = "env -u RBN_TEST_BF16 " + env + " timeout 300 " + std::string(RBN_CLI_PATH) +
                          " " + args + " 2>&1 >/dev/null";
  Outcome o;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return o;
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) o.err.append(buf.data(), n);
  const int st = pclose(p);
  o.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return o;
}

fs::path tmp(const std::string& name) {
  return fs::temp_directory_path() / ("rbn-bf16-cli-" + std::to_string(getpid())) / name;
}

std::string train(const fs::path& out) {
  return "train --task ptb --data " + std::string(RBN_SOURCE_DIR) + "/data/ptb --cell bnlstm --hidden 32 " +
         "--seq-len 20 --batch-size 8 --steps 6 --eval-every 0 --eval-batches 2 --popstats-batches 2 "
         "--checkpoint-every 3 --log-every 3 --threads 2 --gemm openblas --out " + out.string();
}

TEST(Bf16Cli, RefusedWithoutBf16) {
  const fs::path out = tmp("refused");
  fs::remove_all(out.parent_path());
  Outcome o = run("", train(out) + " --precision bf16");
  if (rbn::blas::cpu_has_bf16()) {  // a CPU with bf16 runs it
    EXPECT_EQ(o.code, 0) << o.err;
    fs::remove_all(out.parent_path());
    return;
  }
  EXPECT_EQ(o.code, 2) << o.err;
  const std::string line = o.err.substr(o.err.find_first_not_of('\n'));  // (the tool starts stderr on a fresh line)
  EXPECT_EQ(line.rfind("rbn: error: --precision: bf16 needs a CPU with AVX512_BF16 or AMX", 0), 0u) << o.err;
  EXPECT_EQ(line.find('\n'), line.size() - 1) << "one line: " << o.err;
  EXPECT_FALSE(fs::exists(out)) << "a refused run wrote " << out;
  o = run("", "bench --precision bf16 --shapes ptb --cells lstm --no-torch");
  EXPECT_EQ(o.code, 2) << o.err;
  EXPECT_NE(o.err.find("--precision: bf16 needs"), std::string::npos) << o.err;
  o = run("", train(out) + " --precision fp16");
  EXPECT_EQ(o.code, 2) << o.err;
  EXPECT_NE(o.err.find("--precision: must be fp32 or bf16, got 'fp16'"), std::string::npos) << o.err;
  fs::remove_all(out.parent_path());
}

TEST(Bf16Cli, OverrideTrainsRecordsAndEvaluates) {
  const fs::path out = tmp("emulated");
  fs::remove_all(out.parent_path());
  Outcome o = run("RBN_TEST_BF16=emulate", train(out) + " --precision bf16");
  ASSERT_EQ(o.code, 0) << o.err;
  nlohmann::json cfg;
  std::ifstream(out / "config.json") >> cfg;
  EXPECT_EQ(cfg["precision"], "bf16");
  const auto meta = rbn::read_safetensors((out / "last.safetensors").string()).metadata;
  EXPECT_EQ(meta.at("precision"), "bf16");
  o = run("RBN_TEST_BF16=emulate", "eval --checkpoint " + (out / "last.safetensors").string() +
                                       " --precision bf16 --split valid --chunk 50");
  EXPECT_EQ(o.code, 0) << o.err;
  o = run("", "eval --checkpoint " + (out / "last.safetensors").string() + " --precision bf17");
  EXPECT_EQ(o.code, 2) << o.err;
  EXPECT_NE(o.err.find("--precision: must be fp32 or bf16"), std::string::npos) << o.err;
  // an fp32 run records fp32
  o = run("", train(out.parent_path() / "fp32"));
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(rbn::read_safetensors((out.parent_path() / "fp32" / "last.safetensors").string()).metadata.at("precision"),
            "fp32");
  fs::remove_all(out.parent_path());
}

}  // namespace
