// File formats and datasets: npy and safetensors round trips and corrupt inputs, atomic writes,
// the IDX loader and the character corpora on the real files shipped in data/ (and on Debian's
// Fashion-MNIST where it is installed).
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <set>

#include "data/idx.hpp"
#include "data/pixels.hpp"
#include "data/text.hpp"
#include "io/atomic_file.hpp"
#include "io/npy.hpp"
#include "io/safetensors.hpp"
#include "util/error.hpp"

namespace rbn {
namespace {

namespace fs = std::filesystem;

fs::path tmpdir() {
  static const fs::path d = [] {
    fs::path p = fs::temp_directory_path() / ("rbn-io-" + std::to_string(getpid()));
    fs::create_directories(p);
    return p;
  }();
  return d;
}

std::string data_dir() { return std::string(RBN_SOURCE_DIR) + "/data"; }

template <class F>
void expect_data_error(F&& f, const std::string& mention) {
  try {
    f();
    ADD_FAILURE() << "no error (expected one naming " << mention << ")";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(mention), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "one line: " << e.what();
  }
}

TEST(Npy, RoundTripsEveryDtype) {
  const std::vector<int64_t> shape{2, 3, 1};
  std::vector<float> f{1, 2, 3, 4, 5, 6};
  write_npy((tmpdir() / "f.npy").string(), "<f4", shape, f.data());
  NpyArray a = read_npy((tmpdir() / "f.npy").string());
  EXPECT_EQ(a.shape, shape);
  EXPECT_EQ(a.to_float(), f);
  std::vector<int64_t> l{7, -8, 9};
  const std::vector<int64_t> s1{3};
  write_npy((tmpdir() / "l.npy").string(), "<i8", s1, l.data());
  EXPECT_EQ(read_npy((tmpdir() / "l.npy").string()).to_int32(), (std::vector<int32_t>{7, -8, 9}));
  std::vector<double> d{0.5, 0.25};
  const std::vector<int64_t> s2{2};
  write_npy((tmpdir() / "d.npy").string(), "<f8", s2, d.data());
  EXPECT_EQ(read_npy((tmpdir() / "d.npy").string()).to_float(), (std::vector<float>{0.5f, 0.25f}));
}

TEST(Npy, CorruptInputsNameTheFile) {
  std::vector<float> f(8, 1.0f);
  const std::vector<int64_t> shape{2, 4};
  write_npy((tmpdir() / "ok.npy").string(), "<f4", shape, f.data());
  const std::string good = read_file((tmpdir() / "ok.npy").string());
  auto check = [&](const std::string& name, const std::string& bytes, const std::string& what) {
    const std::string p = (tmpdir() / name).string();
    std::ofstream(p, std::ios::binary) << bytes;
    expect_data_error([&] { read_npy(p); }, name);
    (void)what;
  };
  check("trunc-data.npy", good.substr(0, good.size() - 4), "truncated");
  check("trunc-head.npy", good.substr(0, 12), "truncated");
  check("magic.npy", "XNUMPY" + good.substr(6), "magic");
  check("empty.npy", "", "magic");
  std::string fortran = good;
  fortran.replace(fortran.find("False"), 5, "True ");
  check("fortran.npy", fortran, "Fortran");
  std::string big = good;
  big.replace(big.find("<f4"), 3, ">f4");
  check("big.npy", big, "dtype");
  std::string obj = good;
  obj.replace(obj.find("<f4"), 3, "|O8");
  check("object.npy", obj, "dtype");
  check("trailing.npy", good + "xxxx", "trailing");
  std::string shp = good;
  shp.replace(shp.find("(2, 4)"), 6, "(2, 9)");
  check("shape.npy", shp, "truncated");
  std::string ver = good;
  ver[6] = 9;
  check("version.npy", ver, "version");
  std::string notdict = good;
  notdict.replace(notdict.find('{'), 1, "[");
  notdict.replace(notdict.find('}'), 1, "]");
  check("notdict.npy", notdict, "dict");
  std::string badshape = good;
  badshape.replace(badshape.find("(2, 4)"), 6, "(2,x4)");
  check("badshape.npy", badshape, "shape");
  // wrong dtype for the use
  expect_data_error([&] { read_npy((tmpdir() / "ok.npy").string()).to_int32(); }, "ok.npy");
}

TEST(SafeTensors, RoundTripWithChecksumAndDeterministicBytes) {
  SafeTensors st;
  std::vector<float> a{1, 2, 3, 4};
  std::vector<int32_t> b{5, 6};
  st.add_f32("z.a", {2, 2}, a.data());
  st.add_i32("a.b", {2}, b.data());
  st.metadata["format"] = "rbn/1";
  const std::string p = (tmpdir() / "t.safetensors").string();
  write_safetensors(p, st);
  const SafeTensors r = read_safetensors(p);
  EXPECT_EQ(r.get_f32("z.a", {2, 2}), a);
  EXPECT_EQ(r.get_i32("a.b", {2}), b);
  EXPECT_EQ(r.metadata.at("format"), "rbn/1");
  EXPECT_TRUE(r.metadata.at("checksum").starts_with("crc32:"));
  EXPECT_EQ(read_safetensors_metadata(p), r.metadata);  // the header alone gives the same keys
  EXPECT_EQ(serialize_safetensors(st), serialize_safetensors(st));
  expect_data_error([&] { r.get_f32("z.a", {4}); }, "z.a");
  expect_data_error([&] { r.get_f32("missing", {}); }, "missing");
  expect_data_error([&] { r.get_f32("a.b", {}); }, "a.b");
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

TEST(SafeTensors, CorruptInputsNameTheFile) {
  SafeTensors st;
  std::vector<float> a{1, 2, 3, 4};
  st.add_f32("w", {4}, a.data());
  const std::string p = (tmpdir() / "c.safetensors").string();
  write_safetensors(p, st);
  const std::string good = read_file(p);
  auto with_header = [](const std::string& h, const std::string& data) { return le64(h.size()) + h + data; };
  const std::string data16(16, '\x01');
  const std::map<std::string, std::string> cases{
      {"short.st", "abc"},
      {"past.st", le64(1 << 30) + "{}"},
      {"notjson.st", with_header("{oops", "")},
      {"array.st", with_header("[1,2]", "")},
      {"nodtype.st", with_header(R"({"w":{"shape":[4],"data_offsets":[0,16]}})", data16)},
      {"baddtype.st", with_header(R"({"w":{"dtype":"Q7","shape":[4],"data_offsets":[0,16]}})", data16)},
      {"badshape.st", with_header(R"({"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", data16)},
      {"size.st", with_header(R"({"w":{"dtype":"F32","shape":[5],"data_offsets":[0,16]}})", data16)},
      {"range.st", with_header(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"v":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}})", data16)},
      {"backwards.st", with_header(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[16,0]}})", data16)},
      {"overlap.st", with_header(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"v":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", data16)},
      {"meta.st", with_header(R"({"__metadata__":{"a":3}})", "")},
      {"checksum.st", good.substr(0, good.size() - 1) + "\x7f"},
      {"truncated.st", good.substr(0, good.size() - 5)},
  };
  for (const auto& [name, bytes] : cases) {
    SCOPED_TRACE(name);
    const std::string f = (tmpdir() / name).string();
    std::ofstream(f, std::ios::binary) << bytes;
    expect_data_error([&] { read_safetensors(f); }, name);
  }
  // the header-only reader refuses every bad header the same way, naming the file
  for (const char* name : {"short.st", "past.st", "notjson.st", "array.st", "meta.st"}) {
    SCOPED_TRACE(name);
    expect_data_error([&] { read_safetensors_metadata((tmpdir() / name).string()); }, name);
  }
  expect_data_error([&] { read_safetensors_metadata((tmpdir() / "absent.st").string()); }, "absent.st");
  expect_data_error([&] { read_safetensors_metadata(tmpdir().string()); }, "is a directory");
  // it does not read the data: a corrupted data region still gives the header's metadata (the
  // tensors' reader checks the checksum)
  EXPECT_TRUE(read_safetensors_metadata((tmpdir() / "checksum.st").string()).count("checksum"));
  // a file from another tool, without a checksum, loads
  const std::string other = (tmpdir() / "other.st").string();
  std::ofstream(other, std::ios::binary) << with_header(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data16);
  EXPECT_EQ(read_safetensors(other).get_f32("w", {4}).size(), 4u);
}

TEST(AtomicFile, FailureLeavesThePreviousFileIntact) {
  const std::string p = (tmpdir() / "keep.bin").string();
  const std::vector<uint8_t> v1{1, 2, 3};
  write_file_atomic(p, v1);
  // a directory in the way of the rename, and a directory that does not exist
  fs::create_directories(tmpdir() / "isdir");
  expect_data_error([&] { write_file_atomic((tmpdir() / "isdir").string(), v1); }, "isdir");
  expect_data_error([&] { write_file_atomic((tmpdir() / "nodir/x.bin").string(), v1); }, "nodir");
  EXPECT_EQ(read_file(p), std::string("\x01\x02\x03"));
  for (const auto& e : fs::directory_iterator(tmpdir()))
    EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << "temporary file left: " << e.path();
}

TEST(Idx, ShippedMnistTestSetAndLabels) {
  int rows = 0, cols = 0;
  PixelSet s = load_pixel_set(data_dir() + "/mnist/t10k-images-idx3-ubyte.gz",
                              data_dir() + "/mnist/t10k-labels-idx1-ubyte.gz", rows, cols);
  EXPECT_EQ(s.count, 10000);
  EXPECT_EQ(rows, 28);
  EXPECT_EQ(cols, 28);
  EXPECT_EQ(s.images.size(), 10000u * 784);
  EXPECT_GE(*std::min_element(s.images.begin(), s.images.end()), 0.0f);
  EXPECT_LE(*std::max_element(s.images.begin(), s.images.end()), 1.0f);
  IdxArray tl = read_idx(data_dir() + "/mnist/train-labels-idx1-ubyte.gz");
  ASSERT_EQ(tl.dims[0], 60000u);
  std::vector<int> counts(10, 0);
  for (uint8_t v : tl.data) counts[v]++;
  EXPECT_EQ(counts, (std::vector<int>{5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949}));
  // the test set split when no training images are present
  PixelSplits sp = load_pixel_splits(data_dir() + "/mnist", 8000, 1000);
  EXPECT_EQ(sp.train.count, 8000);
  EXPECT_EQ(sp.valid.count, 1000);
  EXPECT_EQ(sp.test.count, 1000);
  expect_data_error([&] { load_pixel_splits(data_dir() + "/mnist"); }, "train-images");
}

TEST(Idx, FashionMnistFromDebian) {
  const std::string d = "/usr/share/datasets/fashion-mnist";
  if (!fs::exists(d + "/train-images-idx3-ubyte.gz")) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  PixelSplits sp = load_pixel_splits(d);
  EXPECT_EQ(sp.train.count, 50000);
  EXPECT_EQ(sp.valid.count, 10000);
  EXPECT_EQ(sp.test.count, 10000);
  std::vector<int> counts(10, 0);
  for (auto l : sp.train.labels) counts[l]++;
  for (auto l : sp.valid.labels) counts[l]++;
  EXPECT_EQ(counts, std::vector<int>(10, 6000));
}

TEST(Idx, CorruptFiles) {
  auto be32 = [](uint32_t v) { return std::string{char(v >> 24), char(v >> 16), char(v >> 8), char(v)}; };
  auto parse = [&](const std::string& b) {
    return parse_idx({reinterpret_cast<const uint8_t*>(b.data()), b.size()}, "f.idx");
  };
  expect_data_error([&] { parse(be32(2051) + be32(2) + be32(2) + be32(2) + std::string(7, 'x')); }, "truncated");
  expect_data_error([&] { parse(be32(2051) + be32(1) + be32(2) + be32(2) + std::string(5, 'x')); }, "trailing");
  expect_data_error([&] { parse(be32(7) + be32(1) + "x"); }, "magic");
  expect_data_error([&] { parse("ab"); }, "short");
  expect_data_error([&] { parse(be32(2051) + be32(0xFFFFFFFF) + be32(0xFFFFFFFF) + be32(28)); }, "truncated");
  EXPECT_EQ(parse(be32(2049) + be32(3) + "abc").dims[0], 3u);
  // a truncated gzip stream
  const std::string gz = (tmpdir() / "t.gz").string();
  gzFile g = gzopen(gz.c_str(), "wb");
  const std::string payload(5000, 'q');
  gzwrite(g, payload.data(), static_cast<unsigned>(payload.size()));
  gzclose(g);
  fs::resize_file(gz, 20);
  expect_data_error([&] { read_maybe_gz(gz); }, "t.gz");
}

TEST(PixelOrder, PermutationsAndTheAuthorsIndices) {
  auto p = seeded_permutation(784, 3);
  std::vector<int32_t> sorted = p;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int32_t> iota(784);
  std::iota(iota.begin(), iota.end(), 0);
  EXPECT_EQ(sorted, iota);
  EXPECT_EQ(p, seeded_permutation(784, 3));
  EXPECT_NE(p, seeded_permutation(784, 4));
  auto a = read_pixel_order(authors_indices_path(), 784);
  EXPECT_EQ(std::set<int32_t>(a.begin(), a.end()).size(), 501u);
}

TEST(Text, PennTreebankCharacters) {
  CharCorpus c = load_char_corpus("ptb", data_dir() + "/ptb");
  EXPECT_EQ(c.vocab.size(), 50);  // 49 symbols + end of line
  EXPECT_EQ(c.train.size(), 4975414u + 42068u);
  EXPECT_EQ(c.valid.size(), 389672u + 3370u);
  EXPECT_EQ(c.test.size(), 438662u + 3761u);
  const Vocab v = Vocab::from_json(c.vocab.to_json());
  EXPECT_EQ(v.size(), 50);
  EXPECT_EQ(v.decode(v.encode_text("the cat", "prime")), "the cat");
}

TEST(Text, Text8FormatAndBytes) {
  const std::string t8 = (tmpdir() / "text8").string();
  std::string content;
  for (int i = 0; i < 2000; ++i) content += "anarchism originated as a term ";
  std::ofstream(t8) << content;
  CharCorpus c = load_char_corpus("text8", t8);
  EXPECT_EQ(c.vocab.size(), 27);
  EXPECT_EQ(c.train.size() + c.valid.size() + c.test.size(), content.size());
  EXPECT_EQ(c.train.size(), content.size() * 9 / 10);
  std::ofstream(t8 + ".bad") << content << "X";
  expect_data_error([&] { load_char_corpus("text8", t8 + ".bad"); }, "text8.bad");
  const std::string tx = (tmpdir() / "any.txt").string();
  std::ofstream(tx) << std::string(900, 'a') + std::string(100, 'b') + "Z";
  CharCorpus b = load_char_corpus("text", tx);
  EXPECT_GE(b.vocab.unk(), 0);
  EXPECT_EQ(b.test.back(), b.vocab.unk());  // 'Z' unseen in training
  std::ofstream((tmpdir() / "empty.txt").string());
  expect_data_error([&] { load_char_corpus("text", (tmpdir() / "empty.txt").string()); }, "empty.txt");
  std::ofstream((tmpdir() / "one.txt").string()) << "a";
  expect_data_error([&] { load_char_corpus("text", (tmpdir() / "one.txt").string()); }, "one.txt");
  expect_data_error([&] { load_char_corpus("ptb", (tmpdir() / "nothing").string()); }, "nothing");
}

// Text of any bytes (SPEC 5): one-byte symbols are stored as integers, so every byte value,
// 0x80 alone or NUL included, survives the checkpoint's JSON; <unk> stays a string.
TEST(Text, EveryByteValueRoundTripsThroughTheVocabulary) {
  std::string bin;
  for (int rep = 0; rep < 8; ++rep)
    for (int b = 0; b < 256; ++b) bin += static_cast<char>((b * 7 + rep) & 0xff);
  const std::string path = (tmpdir() / "binary.bin").string();
  std::ofstream(path, std::ios::binary) << bin;
  CharCorpus c = load_char_corpus("text", path);
  EXPECT_EQ(c.vocab.size(), 257);  // every byte value seen in training, and <unk>
  const nlohmann::json j = c.vocab.to_json();
  const std::string dumped = j.dump();  // threw type_error 316 when bytes were JSON strings
  const Vocab back = Vocab::from_json(nlohmann::json::parse(dumped));
  EXPECT_EQ(back.symbols(), c.vocab.symbols());
  std::vector<int32_t> all;
  for (auto* s : {&c.train, &c.valid, &c.test}) all.insert(all.end(), s->begin(), s->end());
  EXPECT_EQ(back.decode(all), bin);  // the file, byte for byte
  EXPECT_EQ(back.decode(back.encode_text(std::string("\0\x80\xff", 3), "prime")), std::string("\0\x80\xff", 3));
}

TEST(Text, Utf8MultiByteCharactersAreBytesThatRoundTrip) {
  std::string text;
  for (int i = 0; i < 200; ++i) text += "naïve café — 日本語 ";
  const std::string path = (tmpdir() / "utf8.txt").string();
  std::ofstream(path, std::ios::binary) << text;
  CharCorpus c = load_char_corpus("text", path);
  const Vocab back = Vocab::from_json(nlohmann::json::parse(c.vocab.to_json().dump()));
  std::vector<int32_t> all;
  for (auto* s : {&c.train, &c.valid, &c.test}) all.insert(all.end(), s->begin(), s->end());
  EXPECT_EQ(back.decode(all), text);
  EXPECT_EQ(back.decode(back.encode_text("日本", "prime")), "日本");
  // a checkpoint written before byte values (every symbol a string) still loads
  const Vocab old = Vocab::from_json(nlohmann::json{{"kind", "bytes"}, {"symbols", {"<unk>", "a", "b"}}});
  EXPECT_EQ(old.size(), 3);
  EXPECT_EQ(old.unk(), 0);
  EXPECT_EQ(old.decode({1, 2, 0}), "ab?");
  EXPECT_THROW(Vocab::from_json(nlohmann::json{{"kind", "bytes"}, {"symbols", {1, 256}}}), DataError);
}

}  // namespace
}  // namespace rbn
