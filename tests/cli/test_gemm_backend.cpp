// The GEMM backend of `rbn train`: --gemm and RBN_GEMM are honoured, recorded in config.json and
// in the checkpoint's gemm_backend, kept on --resume (a resumed oneDNN run ends bit-for-bit where
// the uninterrupted one does; asking for another backend is refused), and `auto` times the
// backends once and then reuses the cached choice (an unwritable cache only says so).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "io/safetensors.hpp"

namespace {

namespace fs = std::filesystem;

struct Outcome {
  int code = -1;
  std::string err;
};

// `env` prefixes the command (e.g. "RBN_GEMM=onednn"); stderr is returned.
Outcome run(const std::string& env, const std::string& args) {
  const std::string cmd = "env -u RBN_GEMM " + env + " timeout 300 " + std::string(RBN_CLI_PATH) + " " +
                          args + " 2>&1 >/dev/null";
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
  return fs::temp_directory_path() / ("rbn-gemm-cli-" + std::to_string(getpid())) / name;
}

std::string train(const fs::path& out, int steps) {
  return "train --task ptb --data " + std::string(RBN_SOURCE_DIR) + "/data/ptb --cell bnlstm --hidden 32 " +
         "--seq-len 20 --batch-size 8 --steps " + std::to_string(steps) +
         " --eval-every 0 --eval-batches 2 --popstats-batches 2 --checkpoint-every 5 --log-every 5 "
         "--threads 2 --out " + out.string();
}

std::vector<uint8_t> model_bytes(const fs::path& p) {
  const rbn::SafeTensors st = rbn::read_safetensors(p.string());
  std::vector<uint8_t> all;
  for (const auto& [name, t] : st.tensors()) all.insert(all.end(), t.data.begin(), t.data.end());
  return all;
}

std::string recorded_backend(const fs::path& out) {
  return rbn::read_safetensors((out / "last.safetensors").string()).metadata.at("gemm_backend");
}

TEST(GemmBackend, RecordedAndKeptOnResume) {
  const fs::path ref = tmp("ref"), cut = tmp("cut");
  fs::remove_all(ref.parent_path());
  Outcome o = run("", train(ref, 20) + " --gemm onednn");
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_NE(o.err.find("GEMM backend onednn: --gemm onednn"), std::string::npos) << o.err;
  EXPECT_EQ(recorded_backend(ref), "onednn");
  nlohmann::json cfg;
  std::ifstream(ref / "config.json") >> cfg;
  EXPECT_EQ(cfg["gemm"], "onednn");

  o = run("RBN_GEMM=onednn", train(cut, 10));
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_NE(o.err.find("GEMM backend onednn: RBN_GEMM=onednn"), std::string::npos) << o.err;
  // another backend on resume: refused, naming where the request came from
  o = run("RBN_GEMM=openblas", train(cut, 20) + " --resume");
  EXPECT_EQ(o.code, 2);
  EXPECT_NE(o.err.find("RBN_GEMM=openblas"), std::string::npos) << o.err;
  o = run("", train(cut, 20) + " --resume --gemm openblas");
  EXPECT_EQ(o.code, 2);
  EXPECT_NE(o.err.find("--gemm openblas (the run has onednn)"), std::string::npos) << o.err;
  // without a request, the run's own backend: bit-for-bit the uninterrupted run
  o = run("", train(cut, 20) + " --resume");
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_NE(o.err.find("GEMM backend onednn: the resumed run's"), std::string::npos) << o.err;
  EXPECT_EQ(recorded_backend(cut), "onednn");
  EXPECT_EQ(model_bytes(cut / "last.safetensors"), model_bytes(ref / "last.safetensors"));
  fs::remove_all(ref.parent_path());
}

TEST(GemmBackend, AutoTimesOnceThenUsesTheCache) {
  const fs::path base = tmp("auto"), cache = base / "cache";
  fs::remove_all(base);
  const std::string env = "XDG_CACHE_HOME=" + cache.string();
  Outcome o = run(env, train(base / "a", 2));
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_NE(o.err.find("auto: timed in"), std::string::npos) << o.err;
  EXPECT_TRUE(fs::exists(cache / "rbn" / "gemm-backend.json"));
  const std::string chosen = recorded_backend(base / "a");
  o = run(env, train(base / "b", 2));
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_NE(o.err.find("auto: the choice cached in"), std::string::npos) << o.err;
  EXPECT_EQ(recorded_backend(base / "b"), chosen);
  // a cache directory that cannot be made: still trains, and says the choice was not cached
  std::ofstream(base / "file") << "x";
  o = run("XDG_CACHE_HOME=" + (base / "file" / "sub").string(), train(base / "c", 2));
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_NE(o.err.find("not cached:"), std::string::npos) << o.err;
  fs::remove_all(base);
}

TEST(GemmBackend, UnknownNamesRefused) {
  Outcome o = run("RBN_GEMM=mkl", "info --help");
  EXPECT_EQ(o.code, 2);
  EXPECT_NE(o.err.find("RBN_GEMM=mkl: unknown GEMM backend"), std::string::npos) << o.err;
  o = run("", train(tmp("x"), 2) + " --gemm mkl");
  EXPECT_EQ(o.code, 2);
  EXPECT_NE(o.err.find("--gemm"), std::string::npos) << o.err;
  // a checkpoint whose recorded backend this build does not have: refused by the commands that
  // evaluate on the recorded backend, unless RBN_GEMM names one
  const fs::path run_dir = tmp("odd");
  fs::remove_all(run_dir);
  o = run("", train(run_dir, 2));
  ASSERT_EQ(o.code, 0) << o.err;
  rbn::SafeTensors st = rbn::read_safetensors((run_dir / "last.safetensors").string());
  st.metadata["gemm_backend"] = "mkl";
  const fs::path odd = run_dir / "odd.safetensors";
  rbn::write_safetensors(odd.string(), st);
  const std::string eval = "eval --checkpoint " + odd.string() + " --split valid --popstats running";
  o = run("", eval);
  EXPECT_NE(o.code, 0);
  EXPECT_NE(o.err.find(odd.string() + ": metadata 'gemm_backend' = 'mkl': unknown GEMM backend"),
            std::string::npos) << o.err;
  o = run("RBN_GEMM=openblas", eval);
  EXPECT_EQ(o.code, 0) << o.err;
  fs::remove_all(run_dir);
}

}  // namespace

// RBN_DENORMALS (util/platform.hpp: the tool flushes subnormals unless told to keep them): an
// unknown value is refused in one line naming the variable, before anything is written.
TEST(GemmBackend, UnknownDenormalModeIsRefused) {
  const fs::path out = tmp("denormals");
  fs::remove_all(out.parent_path());
  const Outcome o = run("RBN_DENORMALS=fast", train(out, 5));
  EXPECT_EQ(o.code, 2) << o.err;
  EXPECT_EQ(o.err, "rbn: error: RBN_DENORMALS=fast: expected flush (the default) or keep\n");
  EXPECT_FALSE(fs::exists(out));
  for (const char* mode : {"RBN_DENORMALS=keep", "RBN_DENORMALS=flush"}) {
    const Outcome ok = run(mode, train(out, 5) + " --overwrite");
    EXPECT_EQ(ok.code, 0) << mode << ": " << ok.err;
  }
  fs::remove_all(out.parent_path());
}

// RBN_HUGE_PAGES (util/line_vector.hpp: rbn's large buffers on transparent huge pages unless
// off): an unknown value is refused in one line naming the variable, before anything is written;
// on and off train. Pages do not change results: both runs end on the same bytes (a model whose
// gates and packed R, of 4 MiB and more each, take huge pages).
TEST(GemmBackend, HugePagesSettingIsCheckedAndChangesNoResult) {
  const fs::path out = tmp("hugepages"), off = tmp("hugepages-off");
  fs::remove_all(out.parent_path());
  const auto big = [](const fs::path& dir) {
    return "train --task ptb --data " + std::string(RBN_SOURCE_DIR) + "/data/ptb --cell bnlstm " +
           "--hidden 512 --seq-len 20 --batch-size 32 --steps 3 --eval-every 0 --eval-batches 1 " +
           "--popstats-batches 1 --log-every 3 --threads 2 --out " + dir.string();
  };
  const Outcome o = run("RBN_HUGE_PAGES=yes", big(out));
  EXPECT_EQ(o.code, 2) << o.err;
  EXPECT_EQ(o.err, "rbn: error: RBN_HUGE_PAGES=yes: expected on (the default) or off\n");
  EXPECT_FALSE(fs::exists(out));
  Outcome ok = run("RBN_HUGE_PAGES=on", big(out));
  ASSERT_EQ(ok.code, 0) << ok.err;
  ok = run("RBN_HUGE_PAGES=off", big(off));
  ASSERT_EQ(ok.code, 0) << ok.err;
  EXPECT_EQ(model_bytes(out / "last.safetensors"), model_bytes(off / "last.safetensors"));
  fs::remove_all(out.parent_path());
}

// The subnormal mode is recorded in each checkpoint (`denormals`) and --resume keeps it: a
// resumed run must treat values below the normal range as the run did, else it parts from the
// uninterrupted run there. A mismatch is refused in one line saying what to set; nothing is written.
TEST(GemmBackend, DenormalModeRecordedAndKeptOnResume) {
  const fs::path kept = tmp("kept"), flushed = tmp("flushed");
  fs::remove_all(kept.parent_path());
  const auto denormals = [](const fs::path& out) {
    return rbn::read_safetensors((out / "last.safetensors").string()).metadata.at("denormals");
  };
  Outcome o = run("RBN_DENORMALS=keep", train(kept, 5));
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(denormals(kept), "keep");
  const auto kept_bytes = model_bytes(kept / "last.safetensors");
#if defined(__x86_64__)
  o = run("", train(kept, 10) + " --resume");
  EXPECT_EQ(o.code, 2) << o.err;
  EXPECT_EQ(o.err, "rbn: error: RBN_DENORMALS=flush (the default): the run was trained with subnormals kept (" +
                       (kept / "last.safetensors").string() +
                       "), and --resume keeps that so that the run stays bit-reproducible (set RBN_DENORMALS=keep)\n");
  EXPECT_EQ(model_bytes(kept / "last.safetensors"), kept_bytes);  // the run is untouched

  o = run("", train(flushed, 5));
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(denormals(flushed), "flush");
  o = run("RBN_DENORMALS=keep", train(flushed, 10) + " --resume");
  EXPECT_EQ(o.code, 2) << o.err;
  EXPECT_NE(o.err.find("RBN_DENORMALS=keep: the run was trained with subnormals flushed to zero"),
            std::string::npos) << o.err;
  EXPECT_NE(o.err.find("(unset RBN_DENORMALS)"), std::string::npos) << o.err;
  o = run("", train(flushed, 10) + " --resume");
  EXPECT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(denormals(flushed), "flush");
#endif
  o = run("RBN_DENORMALS=keep", train(kept, 10) + " --resume");
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(denormals(kept), "keep");
  EXPECT_NE(model_bytes(kept / "last.safetensors"), kept_bytes);  // trained on to step 10
  fs::remove_all(kept.parent_path());
}
