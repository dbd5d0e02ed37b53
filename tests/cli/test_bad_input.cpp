// Bad input never crashes or hangs: each case below runs the rbn tool on a broken file or an
// impossible flag and expects one line naming the file or flag, and exit code 2 (usage) or 1 (data).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <zlib.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "io/atomic_file.hpp"
#include "io/npy.hpp"

namespace {

namespace fs = std::filesystem;

struct Outcome {
  int code = -1;
  std::string err;
};

Outcome run(const std::string& args) {
  const std::string cmd = std::string(RBN_CLI_PATH) + " " + args + " 2>&1 >/dev/null";
  Outcome o;
  FILE* p = popen(("timeout 120 " + cmd).c_str(), "r");
  if (!p) return o;
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) o.err.append(buf.data(), n);
  const int st = pclose(p);
  o.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return o;
}

// A .npy file's bytes: the header for `descr` and `shape` (Python tuple syntax), then `bytes`
// zero bytes of data.
std::string npy(const std::string& descr, const std::string& shape, size_t bytes, bool fortran = false) {
  std::string h = "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") +
                  ", 'shape': " + shape + ", }";
  while ((10 + h.size() + 1) % 64) h += ' ';
  h += '\n';
  std::string s("\x93NUMPY\x01\x00", 8);
  s += char(h.size() & 0xff);
  s += char(h.size() >> 8);
  return s + h + std::string(bytes, '\0');
}

class BadInput : public ::testing::Test {
 protected:
  static fs::path dir() {
    static const fs::path d = [] {
      fs::path p = fs::temp_directory_path() / ("rbn-bad-input-" + std::to_string(getpid()));
      fs::create_directories(p);
      return p;
    }();
    return d;
  }
  static std::string file(const std::string& name, const std::string& bytes) {
    const fs::path p = dir() / name;
    std::ofstream(p, std::ios::binary) << bytes;
    return p.string();
  }
  static std::string gz(const std::string& name, const std::string& bytes, size_t keep = std::string::npos) {
    const fs::path p = dir() / name;
    gzFile g = gzopen(p.c_str(), "wb");
    gzwrite(g, bytes.data(), static_cast<unsigned>(bytes.size()));
    gzclose(g);
    if (keep != std::string::npos) fs::resize_file(p, keep);
    return p.string();
  }
  static std::string be32(uint32_t v) {
    return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
  }
  static std::string idx_images(uint32_t n, int rows = 28, int cols = 28, uint32_t magic = 2051,
                                size_t data = std::string::npos) {
    std::string s = be32(magic) + be32(n) + be32(rows) + be32(cols);
    s += std::string(data == std::string::npos ? size_t(n) * rows * cols : data, '\x10');
    return s;
  }
  static std::string idx_labels(uint32_t n, uint8_t label = 3, uint32_t magic = 2049) {
    return be32(magic) + be32(n) + std::string(n, char(label));
  }
  // An MNIST-format directory whose files are given.
  static std::string mnist_dir(const std::string& name, const std::string& train_images,
                               const std::string& train_labels, const std::string& test_images,
                               const std::string& test_labels) {
    const fs::path d = dir() / name;
    fs::create_directories(d);
    std::ofstream(d / "train-images-idx3-ubyte", std::ios::binary) << train_images;
    std::ofstream(d / "train-labels-idx1-ubyte", std::ios::binary) << train_labels;
    std::ofstream(d / "t10k-images-idx3-ubyte", std::ios::binary) << test_images;
    std::ofstream(d / "t10k-labels-idx1-ubyte", std::ios::binary) << test_labels;
    return d.string();
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(dir(), ec);
  }
};

// stdout of a command (stderr dropped), and its exit code.
Outcome run_stdout(const std::string& args) {
  Outcome o;
  FILE* p = popen(("cd / && timeout 120 " + std::string(RBN_CLI_PATH) + " " + args + " 2>/dev/null").c_str(), "r");
  if (!p) return o;
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) o.err.append(buf.data(), n);
  const int st = pclose(p);
  o.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return o;
}

struct Case {
  std::string what;
  std::string args;
  int code;
  std::string mention;  // the file or flag the message must name
};

void expect_case(const Case& c) {
  SCOPED_TRACE(c.what + ": rbn " + c.args);
  const Outcome o = run(c.args);
  EXPECT_EQ(o.code, c.code) << o.err;
  // one line, no blank line before it (a progress line may precede it on stderr only when not a
  // terminal: none here; on a terminal the open progress line gets its newline as it unwinds)
  std::string err = o.err;
  while (!err.empty() && (err.back() == '\n')) err.pop_back();
  EXPECT_EQ(err.find('\n'), std::string::npos) << "more than one line:\n" << o.err;
  EXPECT_NE(o.err.find(c.mention), std::string::npos) << "message does not name '" << c.mention << "': " << o.err;
  for (const char* foreign : {"required but received", "not expected", "json.exception", "Could not convert",
                              "not in range", "is not an allowed value", "File does not exist", "[json"})
    EXPECT_EQ(o.err.find(foreign), std::string::npos) << "the parser's own words: " << o.err;
  std::printf("[ bad input ] %s -> exit %d: %s\n", c.what.c_str(), o.code, err.c_str());
}

TEST_F(BadInput, ImpossibleFlags) {
  const std::string d = "--task seqmnist --data " + dir().string() + " --out " + (dir() / "run").string();
  const std::vector<Case> cases{
      {"hidden size 0", "train " + d + " --hidden 0", 2, "--hidden"},
      {"negative hidden size", "train " + d + " --hidden -3", 2, "--hidden"},
      {"negative learning rate", "train " + d + " --lr -1", 2, "--lr"},
      {"zero learning rate", "train " + d + " --lr 0", 2, "--lr"},
      {"unknown cell", "train " + d + " --cell transformer", 2, "--cell"},
      {"forget bias with a GRU", "train " + d + " --cell gru --forget-bias 1", 2, "--forget-bias"},
      {"forget bias with a BN-GRU", "train " + d + " --cell bngru --forget-bias 0", 2, "--forget-bias"},
      {"cell-state gain with a GRU", "train " + d + " --cell lngru --gamma-c 1", 2, "--gamma-c"},
      {"dropout of 1", "train " + d + " --layers 2 --dropout 1", 2, "--dropout"},
      {"negative dropout", "train " + d + " --layers 2 --dropout -0.1", 2, "--dropout"},
      {"dropout with one layer", "train " + d + " --dropout 0.5", 2, "--dropout"},
      {"zoneout of h above 1", "train " + d + " --zoneout-h 1.5", 2, "--zoneout-h"},
      {"negative zoneout of c", "train " + d + " --zoneout-c -1", 2, "--zoneout-c"},
      {"zoneout of c with a GRU", "train " + d + " --cell gru --zoneout-c 0.5", 2, "--zoneout-c"},
      {"zoneout of c with an LN-GRU", "train " + d + " --cell lngru --zoneout-c 0.1", 2, "--zoneout-c"},
      {"unknown task", "train --task imagenet --out x", 2, "--task"},
      {"zero layers", "train " + d + " --layers 0", 2, "--layers"},
      {"zero batch", "train " + d + " --batch-size 0", 2, "--batch-size"},
      {"bad momentum", "train " + d + " --momentum 1.5", 2, "--momentum"},
      {"bad bn momentum", "train " + d + " --bn-momentum 0", 2, "--bn-momentum"},
      {"negative clip", "train " + d + " --clip -1", 2, "--clip"},
      {"bad popstats", "train " + d + " --popstats median", 2, "--popstats"},
      {"bad schedule", "train " + d + " --lr-schedule cosine", 2, "--lr-schedule"},
      {"bad init", "train " + d + " --init-recurrent zeros", 2, "--init-recurrent"},
      {"not a number", "train " + d + " --hidden abc", 2, "--hidden"},
      {"unknown flag", "train " + d + " --hiden 10", 2, "--hiden"},
      {"negative eps", "train " + d + " --eps -1", 2, "--eps"},
      {"nesterov with adam", "train " + d + " --nesterov true", 2, "--nesterov"},
      {"plateau floor above the rate", "train " + d + " --lr-schedule plateau --lr-min 1", 2, "--lr-min"},
      {"sync-bn not a boolean", "train " + d + " --sync-bn maybe", 2, "--sync-bn"},
      {"unknown subcommand", "fly", 2, "fly"},
      {"bench unknown shape", "bench --shapes imagenet --no-torch", 2, "--shapes"},
      {"bench unknown cell", "bench --cells transformer --no-torch", 2, "--cells"},
      {"sample zero temperature", "sample --checkpoint " + dir().string() + "/none.safetensors --temperature 0", 2, "--temperature"},
      {"missing config file", "train --config " + dir().string() + "/missing.json", 2, "--config"},
  };
  for (const auto& c : cases) expect_case(c);
}

TEST_F(BadInput, ConfigFiles) {
  const std::vector<Case> cases{
      {"config not JSON", "train --config " + file("bad.json", "{ not json"), 2, "bad.json"},
      {"config not an object", "train --config " + file("arr.json", "[1,2]"), 2, "arr.json"},
      {"config unknown key", "train --config " + file("key.json", R"({"hiden": 3})"), 2, "hiden"},
      {"config wrong type", "train --config " + file("type.json", R"({"hidden": "many"})"), 2, "hidden"},
      {"config impossible value", "train --config " + file("val.json", R"({"hidden": 0})"), 2, "--hidden"},
  };
  for (const auto& c : cases) expect_case(c);
}

TEST_F(BadInput, PixelDatasets) {
  const std::string ok_tr = idx_images(20), ok_trl = idx_labels(20), ok_te = idx_images(10),
                    ok_tel = idx_labels(10);
  auto train = [&](const std::string& dirpath) {
    return "train --task seqmnist --hidden 4 --batch-size 2 --steps 1 --data " + dirpath +
           " --out " + (dir() / "run-pix").string();
  };
  const std::vector<Case> cases{
      {"missing directory", train((dir() / "nowhere").string()), 1, "nowhere"},
      {"wrong image magic", train(mnist_dir("m1", idx_images(20, 28, 28, 1234), ok_trl, ok_te, ok_tel)), 1, "train-images"},
      {"wrong label magic", train(mnist_dir("m2", ok_tr, idx_labels(20, 3, 77), ok_te, ok_tel)), 1, "train-labels"},
      {"truncated images", train(mnist_dir("m3", idx_images(20, 28, 28, 2051, 100), ok_trl, ok_te, ok_tel)), 1, "train-images"},
      {"label out of range", train(mnist_dir("m4", ok_tr, idx_labels(20, 12), ok_te, ok_tel)), 1, "train-labels"},
      {"counts disagree", train(mnist_dir("m5", ok_tr, idx_labels(19), ok_te, ok_tel)), 1, "train"},
      {"empty image file", train(mnist_dir("m6", "", ok_trl, ok_te, ok_tel)), 1, "train-images"},
      {"header only", train(mnist_dir("m7", be32(2051), ok_trl, ok_te, ok_tel)), 1, "train-images"},
      {"absurd count", train(mnist_dir("m8", be32(2051) + be32(0xFFFFFFF0u) + be32(28) + be32(28), ok_trl, ok_te, ok_tel)), 1, "train-images"},
  };
  for (const auto& c : cases) expect_case(c);
}

TEST_F(BadInput, GzipAndText) {
  // a truncated .gz of a valid idx file
  const fs::path d = dir() / "gzdir";
  fs::create_directories(d);
  gz("gzdir/train-images-idx3-ubyte.gz", idx_images(20), 60);
  std::ofstream(d / "train-labels-idx1-ubyte", std::ios::binary) << idx_labels(20);
  std::ofstream(d / "t10k-images-idx3-ubyte", std::ios::binary) << idx_images(10);
  std::ofstream(d / "t10k-labels-idx1-ubyte", std::ios::binary) << idx_labels(10);
  const std::string out = " --out " + (dir() / "run-text").string();
  const std::vector<Case> cases{
      {"truncated gzip", "train --task seqmnist --hidden 4 --steps 1 --batch-size 2 --data " + d.string() + out, 1, "train-images"},
      {"corrupt gzip", "train --task text --hidden 4 --steps 1 --data " + file("junk.gz", "\x1f\x8b\x08\x00garbage-garbage") + out, 1, "junk.gz"},
      {"empty text file", "train --task text --hidden 4 --steps 1 --data " + file("empty.txt", "") + out, 1, "empty.txt"},
      {"one-character text", "train --task text --hidden 4 --steps 1 --data " + file("one.txt", "a") + out, 1, "one.txt"},
      {"text8 with bad symbols", "train --task text8 --hidden 4 --steps 1 --data " + file("t8.txt", std::string(2000, 'a') + "B!") + out, 1, "t8.txt"},
      {"missing text file", "train --task text --hidden 4 --steps 1 --data " + (dir() / "no.txt").string() + out, 1, "no.txt"},
      {"batch larger than data", "train --task text --hidden 4 --steps 1 --seq-len 50 --batch-size 1000 --data " + file("small.txt", std::string(3000, 'x') + "yz") + out, 2, "--batch-size"},
  };
  for (const auto& c : cases) expect_case(c);
}

TEST_F(BadInput, CheckpointsAndArrays) {
  auto le64 = [](uint64_t v) {
    std::string s(8, '\0');
    for (int i = 0; i < 8; ++i) s[i] = char(v >> (8 * i));
    return s;
  };
  auto st = [&](const std::string& header, const std::string& data) { return le64(header.size()) + header + data; };
  const std::string meta =
      R"("__metadata__":{"format":"rbn/1","cell":"lstm","input_size":"2","hidden_size":"3","num_layers":"1","t_max":"4","eps":"1e-05","popstats":"running","head":"none"})";
  auto tensor = [](const std::string& name, const std::string& shape, size_t b, size_t e, const char* dt = "F32") {
    return "\"" + name + "\":{\"dtype\":\"" + dt + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
           std::to_string(b) + "," + std::to_string(e) + "]}";
  };
  // a complete bare lstm: weight_ih [12,2] (96 B), weight_hh [12,3] (144 B), bias [12] (48 B)
  const std::string full = "{" + meta + "," + tensor("rnn.0.weight_ih", "[12,2]", 0, 96) + "," +
                           tensor("rnn.0.weight_hh", "[12,3]", 96, 240) + "," +
                           tensor("rnn.0.bias", "[12]", 240, 288) + "}";
  const std::string good = file("good.safetensors", st(full, std::string(288, '\0')));
  const std::string missing = "{" + meta + "," + tensor("rnn.0.weight_ih", "[12,2]", 0, 96) + "," +
                              tensor("rnn.0.weight_hh", "[12,3]", 96, 240) + "}";
  const std::string shape = "{" + meta + "," + tensor("rnn.0.weight_ih", "[12,3]", 0, 144) + "," +
                            tensor("rnn.0.weight_hh", "[12,3]", 144, 288) + "," +
                            tensor("rnn.0.bias", "[12]", 288, 336) + "}";
  const std::string dtype = "{" + meta + "," + tensor("rnn.0.weight_ih", "[12,2]", 0, 96, "I32") + "," +
                            tensor("rnn.0.weight_hh", "[12,3]", 96, 240) + "," +
                            tensor("rnn.0.bias", "[12]", 240, 288) + "}";
  const std::string overlap = "{" + meta + "," + tensor("rnn.0.weight_ih", "[12,2]", 0, 96) + "," +
                              tensor("rnn.0.weight_hh", "[12,3]", 48, 192) + "," +
                              tensor("rnn.0.bias", "[12]", 240, 288) + "}";
  const std::string range = "{" + meta + "," + tensor("rnn.0.weight_ih", "[12,2]", 0, 96) + "," +
                            tensor("rnn.0.weight_hh", "[12,3]", 96, 240) + "," +
                            tensor("rnn.0.bias", "[12]", 240, 9999) + "}";
  std::string contradict = full;
  contradict.replace(contradict.find(R"("hidden_size":"3")"), 17, R"("hidden_size":"5")");
  auto fwd = [&](const std::string& ck, const std::string& in) {
    return "forward --checkpoint " + ck + " --input " + in + " --output " + (dir() / "y.npy").string();
  };
  const std::string x_ok = file("x.npy", npy("<f4", "(4, 2, 2)", 64));
  const std::vector<Case> cases{
      {"missing checkpoint", fwd((dir() / "none.safetensors").string(), x_ok), 1, "none.safetensors"},
      {"header past end", fwd(file("past.safetensors", le64(1 << 20) + "{}"), x_ok), 1, "past.safetensors"},
      {"empty checkpoint", fwd(file("empty.safetensors", ""), x_ok), 1, "empty.safetensors"},
      {"header not JSON", fwd(file("nojson.safetensors", st("{oops", "")), x_ok), 1, "nojson.safetensors"},
      {"missing tensor", fwd(file("missing.safetensors", st(missing, std::string(240, '\0'))), x_ok), 1, "rnn.0.bias"},
      {"wrong shape", fwd(file("shape.safetensors", st(shape, std::string(336, '\0'))), x_ok), 1, "rnn.0.weight_ih"},
      {"wrong dtype", fwd(file("dtype.safetensors", st(dtype, std::string(288, '\0'))), x_ok), 1, "rnn.0.weight_ih"},
      {"overlapping offsets", fwd(file("overlap.safetensors", st(overlap, std::string(288, '\0'))), x_ok), 1, "overlap.safetensors"},
      {"offset out of range", fwd(file("range.safetensors", st(range, std::string(288, '\0'))), x_ok), 1, "range.safetensors"},
      {"config contradicts tensors", fwd(file("contra.safetensors", st(contradict, std::string(288, '\0'))), x_ok), 1, "contra.safetensors"},
      {"npy wrong dtype", fwd(good, file("xb.npy", npy("|b1", "(4, 2, 2)", 16))), 1, "xb.npy"},
      {"npy fortran order", fwd(good, file("xf.npy", npy("<f4", "(4, 2, 2)", 64, true))), 1, "xf.npy"},
      {"npy wrong rank", fwd(good, file("xr.npy", npy("<f4", "(4, 4)", 64))), 1, "xr.npy"},
      {"npy wrong features", fwd(good, file("xc.npy", npy("<f4", "(4, 2, 3)", 96))), 1, "xc.npy"},
      {"npy truncated", fwd(good, file("xt.npy", npy("<f4", "(4, 2, 2)", 10))), 1, "xt.npy"},
      {"npy not npy", fwd(good, file("xn.npy", "hello")), 1, "xn.npy"},
      {"npy big-endian", fwd(good, file("xe.npy", npy(">f4", "(4, 2, 2)", 64))), 1, "xe.npy"},
  };
  for (const auto& c : cases) expect_case(c);
  // and the good file runs
  const Outcome ok = run(fwd(good, x_ok));
  EXPECT_EQ(ok.code, 0) << ok.err;
}

// A small UTF-8 text (multi-byte characters) for runs that the cases below start from.
std::string utf8_text() {
  std::string s;
  const char* words[] = {"héllo ", "wörld ", "日本語 ", "abc ", "\n"};
  uint32_t r = 1;
  for (int i = 0; i < 3000; ++i) {
    r = r * 1664525u + 1013904223u;
    s += words[(r >> 16) % 5];
  }
  return s;
}

std::string tiny_run(const std::string& data, const std::string& out, const std::string& more = "",
                     int checkpoint_every = 10) {
  return "train --task text --data " + data + " --seq-len 20 --batch-size 4 --hidden 8 --steps 20 --eval-every 10 "
         "--checkpoint-every " + std::to_string(checkpoint_every) +
         " --eval-batches 2 --popstats-batches 2 --log-every 5 --out " + out + " " + more;
}

// Items 3-5 of "no silent surprises": a run is never replaced or continued with other settings,
// every flag means what it says, and the parser's words stay inside.
TEST_F(BadInput, NoSilentSurprises) {
  const std::string text = file("utf8.txt", utf8_text());
  const std::string run_a = (dir() / "run-a").string(), run_ln = (dir() / "run-ln").string();
  ASSERT_EQ(run(tiny_run(text, run_a)).code, 0);
  ASSERT_EQ(run(tiny_run(text, run_ln, "--cell lnlstm")).code, 0);
  const std::string best = run_a + "/best.safetensors", ln_best = run_ln + "/best.safetensors";
  const std::string one_row = file("ids1.npy", npy("<i4", "(5, 1)", 20));
  const std::string d = "--task seqmnist --data " + dir().string() + " --out " + (dir() / "run-x").string();
  const std::vector<Case> cases{
      {"--out holds a run", tiny_run(text, run_a), 2, "--out"},
      {"--overwrite with --resume", "train --out " + run_a + " --resume --overwrite", 2, "--overwrite"},
      {"resume with other settings", "train --out " + run_a + " --resume --hidden 32 --lr 0.01 --steps 40", 2, "--hidden 32 (the run has 8)"},
      {"resume with another setting in --config", "train --config " + file("resume.json", R"({"cell": "lstm"})") + " --out " + run_a + " --resume --steps 40", 2, "--cell lstm"},
      {"resume a finished run", "train --out " + run_a + " --resume", 2, "--steps"},
      {"resume without a run", "train --out " + (dir() / "nothing").string() + " --resume", 2, "--resume"},
      {"eval running statistics on pass statistics", "eval --checkpoint " + best + " --popstats running", 2, "--popstats running"},
      {"eval pass statistics on lnlstm", "eval --checkpoint " + ln_best + " --popstats pass", 2, "lnlstm"},
      {"eval unknown statistics", "eval --checkpoint " + best + " --popstats median", 2, "--popstats"},
      {"adam flag with sgd", "train " + d + " --optimizer sgd --beta1 0.5", 2, "--beta1"},
      {"sgd flag with adam", "train " + d + " --dampening 0.1", 2, "--dampening"},
      {"rmsprop flag with adam", "train " + d + " --alpha 0.9", 2, "--alpha"},
      {"plateau flag with step schedule", "train " + d + " --lr-schedule step --lr-patience 3", 2, "--lr-patience"},
      {"one row per batch, bnlstm", "train " + d + " --batch-size 1", 2, "bnlstm"},
      {"one row per batch, bnx", "train " + d + " --cell bnx --batch-size 1", 2, "--batch-size 1"},
      {"one-row statistics pass", "train " + d + " --popstats-batch-size 1", 2, "--popstats-batch-size"},
      {"popstats command over one row", "popstats --checkpoint " + best + " --batch-size 1 --out " + (dir() / "p.safetensors").string(), 2, "--batch-size 1"},
      {"eval statistics pass over one row", "eval --checkpoint " + best + " --popstats pass --popstats-batch-size 1", 2, "--popstats-batch-size 1"},
      {"forward --train-mode on one row", "forward --checkpoint " + best + " --input " + one_row + " --output " + (dir() / "y1.npy").string() + " --train-mode", 2, "--train-mode"},
      {"sample length 0", "sample --checkpoint " + best + " --length 0", 2, "--length"},
      {"flag given twice", "train " + d + " --hidden 3 --hidden 4", 2, "--hidden"},
      {"misspelled flag", "train " + d + " --hiden 10", 2, "--hidden?"},
      {"misspelled flag with a value", "train " + d + " --dropoutt 0.5", 2, "--dropoutt"},
      {"flag without its value", "train " + d + " --hidden", 2, "--hidden"},
      {"unexpected argument", "train " + d + " 0.5", 2, "0.5"},
      {"missing required flag", "eval --split test", 2, "--checkpoint"},
      {"missing positional", "plot --out x.png", 2, "files"},
      {"unsigned flag negative", "train " + d + " --seed -1", 2, "--seed"},
      {"integer out of range", "train " + d + " --hidden 99999999999", 2, "--hidden"},
      {"bench repeats 0", "bench --repeats 0 --no-torch", 2, "--repeats"},
      {"plot missing file", "plot " + (dir() / "none.jsonl").string(), 1, "none.jsonl"},
      {"data path not UTF-8", "train --task text --data " + dir().string() + "/\xff.txt --out " + (dir() / "run-y").string(), 2, "--data"},
  };
  for (const auto& c : cases) expect_case(c);
  // every difference is listed, each with the run's value
  const Outcome both = run("train --out " + run_a + " --resume --hidden 32 --lr 0.01 --steps 40");
  EXPECT_NE(both.err.find("--lr 0.01 (the run has 0.001)"), std::string::npos) << both.err;
}

TEST_F(BadInput, RunsAreReplacedOnlyWhenAsked) {
  const std::string text = file("utf8b.txt", utf8_text());
  const std::string out = (dir() / "run-b").string();
  ASSERT_EQ(run(tiny_run(text, out)).code, 0);
  const auto mtime = fs::last_write_time(fs::path(out) / "last.safetensors");
  EXPECT_EQ(run(tiny_run(text, out)).code, 2);
  EXPECT_EQ(fs::last_write_time(fs::path(out) / "last.safetensors"), mtime) << "a refused run touched the files";
  // a flag that may change on resume
  Outcome more = run("train --out " + out + " --resume --steps 30 --threads 1 --log-every 2");
  EXPECT_EQ(more.code, 0) << more.err;
  EXPECT_NE(more.err.find("resumed"), std::string::npos) << more.err;
  Outcome again = run(tiny_run(text, out, "--overwrite --cell lstm"));
  EXPECT_EQ(again.code, 0) << again.err;
  std::ifstream cfg(fs::path(out) / "config.json");
  std::string all((std::istreambuf_iterator<char>(cfg)), std::istreambuf_iterator<char>());
  EXPECT_NE(all.find("\"lstm\""), std::string::npos) << all;
}

// --resume decides from the checkpoint's header (config, step, subnormal mode) before reading the
// tensors; a damaged data region is still caught when they are loaded, before anything is written.
TEST_F(BadInput, ResumeFromADamagedCheckpointWritesNothing) {
  const std::string text = file("utf8d.txt", utf8_text());
  const fs::path out = dir() / "run-d";
  ASSERT_EQ(run(tiny_run(text, out.string())).code, 0);
  auto bytes = [](const fs::path& p) { return rbn::read_file(p.string()); };
  std::string ck = bytes(out / "last.safetensors");
  ck.back() = static_cast<char>(ck.back() ^ 0x55);  // one byte of the last tensor
  std::ofstream(out / "last.safetensors", std::ios::binary | std::ios::trunc) << ck;
  const std::string metrics = bytes(out / "metrics.jsonl");
  const Outcome o = run("train --out " + out.string() + " --resume --steps 30");
  EXPECT_NE(o.code, 0);
  EXPECT_EQ(o.err, "rbn: error: " + (out / "last.safetensors").string() + ": checksum mismatch (file corrupted?)\n");
  EXPECT_EQ(bytes(out / "last.safetensors"), ck);
  EXPECT_EQ(bytes(out / "metrics.jsonl"), metrics);
}

TEST_F(BadInput, AnErrorAfterTrainingBeganNamesTheLastGoodCheckpoint) {
  const std::string text = file("utf8c.txt", utf8_text());
  const fs::path out = dir() / "run-c";
  // best.safetensors cannot be written (a directory with a file in it): the first validation
  // (step 10) fails after the checkpoint of step 5
  fs::create_directories(out / "best.safetensors");
  std::ofstream(out / "best.safetensors" / "keep") << "x";
  const Outcome o = run(tiny_run(text, out.string(), "", 5));
  EXPECT_EQ(o.code, 1) << o.err;
  EXPECT_NE(o.err.find("the last good checkpoint is " + (out / "last.safetensors").string() + " (step 5"),
            std::string::npos) << o.err;
  EXPECT_TRUE(fs::exists(out / "last.safetensors"));
}

// Text of any bytes: a UTF-8 file with multi-byte characters and a binary file train past their
// checkpoints, and `sample` writes bytes as they are.
TEST_F(BadInput, TextOfAnyBytesTrainsAndSamples) {
  std::string bin;
  for (int rep = 0; rep < 12; ++rep)
    for (int b = 0; b < 256; ++b) bin += static_cast<char>((b * 13 + rep) & 0xff);
  for (const auto& [name, content] : {std::pair<std::string, std::string>{"multi.txt", utf8_text()},
                                      {"binary.bin", bin}}) {
    const std::string out = (dir() / ("run-" + name)).string();
    const Outcome o = run(tiny_run(file(name, content), out));
    ASSERT_EQ(o.code, 0) << name << ": " << o.err;
    ASSERT_TRUE(fs::exists(out + "/best.safetensors")) << name;
    // the sample's stdout, bytes as they are: the prime comes back verbatim
    const std::string prime = name == "multi.txt" ? "日本語" : "\x80\xfe";
    const std::string cmd = std::string(RBN_CLI_PATH) + " sample --checkpoint " + out +
                            "/best.safetensors --length 50 --prime '" + prime + "' 2>/dev/null";
    FILE* p = popen(cmd.c_str(), "r");
    ASSERT_NE(p, nullptr);
    std::string got;
    std::array<char, 4096> buf{};
    while (size_t n = fread(buf.data(), 1, buf.size(), p)) got.append(buf.data(), n);
    EXPECT_EQ(pclose(p), 0) << name;
    EXPECT_EQ(got.substr(0, prime.size()), prime) << name;
    EXPECT_EQ(got.size(), prime.size() + 50 + 1) << name;  // one byte per symbol, and a newline
  }
}

// plot, info and eval say only true things.
TEST_F(BadInput, PlotInfoAndEvalSayOnlyTrueThings) {
  const std::string text = file("utf8d.txt", utf8_text());
  const std::string lm = (dir() / "run-d").string(), ln = (dir() / "run-dln").string();
  ASSERT_EQ(run(tiny_run(text, lm)).code, 0);
  ASSERT_EQ(run(tiny_run(text, ln, "--cell lnlstm")).code, 0);
  const std::vector<Case> cases{
      {"plot accuracy of a language model", "plot " + lm + "/metrics.jsonl --metric accuracy --out " + (dir() / "a.png").string(), 2, "--metric accuracy"},
      {"plot an unknown metric", "plot " + lm + "/metrics.jsonl --metric f1 --out " + (dir() / "b.png").string(), 2, "--metric"},
      {"info without a checkpoint", "info", 2, "--checkpoint"},
  };
  for (const auto& c : cases) expect_case(c);
  EXPECT_FALSE(fs::exists(dir() / "a.png")) << "a refused plot wrote its file";
  const Outcome info_ln = run_stdout("info " + ln + "/best.safetensors");
  EXPECT_EQ(info_ln.code, 0);
  EXPECT_NE(info_ln.err.find("population statistics: none (cell lnlstm has none)"), std::string::npos) << info_ln.err;
  const Outcome info_lm = run_stdout("info --checkpoint " + lm + "/best.safetensors");
  EXPECT_NE(info_lm.err.find("population statistics: pass"), std::string::npos) << info_lm.err;
  EXPECT_NE(info_lm.err.find("head lm, vocabulary "), std::string::npos) << info_lm.err;
  EXPECT_EQ(info_lm.err.find(", classes"), std::string::npos) << info_lm.err;
  // the checkpoint is listed once in the help
  const Outcome help = run_stdout("info --help");
  size_t listed = 0;
  for (size_t at = help.err.find("checkpoint TEXT"); at != std::string::npos; at = help.err.find("checkpoint TEXT", at + 1))
    ++listed;
  EXPECT_EQ(listed, 1u) << help.err;
  // the default MNIST directory of `reproduce` does not depend on the working directory (run from /)
  const Outcome repro = run_stdout("reproduce --help");
  const size_t at = repro.err.find("--data TEXT=");
  ASSERT_NE(at, std::string::npos) << repro.err;
  const std::string path = repro.err.substr(at + 12, repro.err.find_first_of(" \n", at + 12) - at - 12);
  EXPECT_TRUE(fs::path(path).is_absolute()) << path;
  EXPECT_TRUE(fs::exists(path)) << path;
}

// --task seq through the command line: train, eval (mean squared error), forward (the head's
// shape), and the flags that mean nothing for it refused.
TEST_F(BadInput, SeqThroughTheCommandLine) {
  const fs::path data = dir() / "seqdata";
  fs::create_directories(data);
  const int T = 6, N = 60;
  std::vector<float> x(size_t(T) * N * 2), y(N);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 37 % 101) / 101.0 - 0.5);
  for (int n = 0; n < N; ++n) y[n] = x[2 * n];
  std::vector<int32_t> tags(size_t(T) * N);
  for (size_t i = 0; i < tags.size(); ++i) tags[i] = x[2 * i] > 0;
  const std::vector<int64_t> sx{T, N, 2}, sy{N}, st{T, N};
  rbn::write_npy((data / "train.x.npy").string(), "<f4", sx, x.data());
  rbn::write_npy((data / "train.y.npy").string(), "<f4", sy, y.data());
  const fs::path tagdata = dir() / "tagdata";
  fs::create_directories(tagdata);
  rbn::write_npy((tagdata / "train.x.npy").string(), "<f4", sx, x.data());
  rbn::write_npy((tagdata / "train.y.npy").string(), "<i4", st, tags.data());
  rbn::write_npy((tagdata / "valid.x.npy").string(), "<f4", sx, x.data());
  rbn::write_npy((tagdata / "valid.y.npy").string(), "<i4", st, tags.data());
  const std::string xin = (data / "train.x.npy").string();
  auto train = [&](const fs::path& d, const std::string& out, const std::string& more) {
    return "train --task seq --data " + d.string() + " --hidden 8 --batch-size 10 --steps 10 --eval-every 10 "
           "--popstats-batches 2 --out " + (dir() / out).string() + " " + more;
  };
  ASSERT_EQ(run(train(data, "seq-reg", "--test-fraction 0.2")).code, 0);
  ASSERT_EQ(run(train(tagdata, "seq-tag", "--test-fraction 0")).code, 0);
  const std::string reg = (dir() / "seq-reg" / "best.safetensors").string(), tag = (dir() / "seq-tag" / "best.safetensors").string();
  const Outcome ev = run_stdout("eval --checkpoint " + reg + " --split test");
  EXPECT_EQ(ev.code, 0);
  EXPECT_NE(ev.err.find(": mse "), std::string::npos) << ev.err;
  EXPECT_NE(ev.err.find("12 values"), std::string::npos) << ev.err;  // 20 % of 60 rows, one value each
  const Outcome fr = run_stdout("forward --checkpoint " + reg + " --input " + xin + " --output " + (dir() / "yr.npy").string());
  EXPECT_NE(fr.err.find("[60,1]"), std::string::npos) << fr.err;
  const Outcome ft = run_stdout("forward --checkpoint " + tag + " --input " + xin + " --output " + (dir() / "yt.npy").string());
  EXPECT_NE(ft.err.find("[6,60,2]"), std::string::npos) << ft.err;
  // a model trained on token ids takes token ids in forward (fed one-hot as in training)
  const fs::path idsdata = dir() / "idsdata";
  fs::create_directories(idsdata);
  std::vector<int32_t> ids(size_t(T) * N), ylab(N);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i * 7 % 5);
  for (int n = 0; n < N; ++n) ylab[n] = ids[n] > 2;
  rbn::write_npy((idsdata / "train.x.npy").string(), "<i4", st, ids.data());
  rbn::write_npy((idsdata / "train.y.npy").string(), "<i4", sy, ylab.data());
  ASSERT_EQ(run(train(idsdata, "seq-ids", "")).code, 0);
  const Outcome fi = run_stdout("forward --checkpoint " + (dir() / "seq-ids" / "best.safetensors").string() +
                                " --input " + (idsdata / "train.x.npy").string() + " --output " + (dir() / "yi.npy").string());
  EXPECT_NE(fi.err.find("[60,2]"), std::string::npos) << fi.err;
  const Outcome info = run_stdout("info " + tag);
  EXPECT_NE(info.err.find("head tag, classes 2 per step"), std::string::npos) << info.err;
  const std::vector<Case> cases{
      {"fraction for a split that has files", train(tagdata, "seq-x", "--valid-fraction 0.2"), 2, "--valid-fraction"},
      {"language-model window with seq", train(data, "seq-y", "--seq-len 50"), 2, "--seq-len"},
      {"embedding with seq", train(data, "seq-y", "--embed 4"), 2, "--embed"},
      {"seq fraction with another task", "train --task ptb --data x --valid-fraction 0.2 --out " + (dir() / "seq-z").string(), 2, "--valid-fraction"},
      {"eval a split that does not exist", "eval --checkpoint " + tag + " --split test", 2, "--split test"},
      {"seq data directory missing", train(dir() / "nothing-here", "seq-w", ""), 1, "nothing-here"},
  };
  for (const auto& c : cases) expect_case(c);
}

}  // namespace
