#include "data/pixels.hpp"

#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

#include "data/idx.hpp"
#include "util/error.hpp"
#include "util/rng.hpp"

namespace rbn {

namespace {
std::string find_file(const std::string& dir, const std::string& stem) {
  namespace fs = std::filesystem;
  for (const char* ext : {"", ".gz"}) {
    const fs::path p = fs::path(dir) / (stem + ext);
    if (fs::exists(p)) return p.string();
  }
  return {};
}
}  // namespace

PixelSet load_pixel_set(const std::string& ipath, const std::string& lpath, int& rows, int& cols) {
  IdxArray im = read_idx(ipath);
  if (im.magic != 2051) throw DataError(ipath + ": holds labels (magic 2049), images expected");
  IdxArray lb = read_idx(lpath);
  if (lb.magic != 2049) throw DataError(lpath + ": holds images (magic 2051), labels expected");
  if (im.dims[0] != lb.dims[0])
    throw DataError(ipath + ": " + std::to_string(im.dims[0]) + " images but " + lpath + " has " +
                    std::to_string(lb.dims[0]) + " labels");
  rows = static_cast<int>(im.dims[1]);
  cols = static_cast<int>(im.dims[2]);
  PixelSet s;
  s.count = im.dims[0];
  s.images.resize(im.data.size());
  for (size_t i = 0; i < im.data.size(); ++i) s.images[i] = im.data[i] / 255.0f;
  s.labels.resize(lb.data.size());
  for (size_t i = 0; i < lb.data.size(); ++i) {
    if (lb.data[i] >= 10)
      throw DataError(lpath + ": label " + std::to_string(lb.data[i]) + " of item " + std::to_string(i) +
                      " outside [0, 10)");
    s.labels[i] = lb.data[i];
  }
  return s;
}

namespace {
PixelSet slice(const PixelSet& s, int64_t from, int64_t n, int64_t npix) {
  PixelSet o;
  o.count = n;
  o.images.assign(s.images.begin() + from * npix, s.images.begin() + (from + n) * npix);
  o.labels.assign(s.labels.begin() + from, s.labels.begin() + from + n);
  return o;
}
}  // namespace

PixelSplits load_pixel_splits(const std::string& dir, int n_train, int n_valid) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir)) throw DataError(dir + ": no such directory (an MNIST-format directory expected)");
  PixelSplits sp;
  const std::string tri = find_file(dir, "train-images-idx3-ubyte");
  const std::string trl = find_file(dir, "train-labels-idx1-ubyte");
  const std::string tei = find_file(dir, "t10k-images-idx3-ubyte");
  const std::string tel = find_file(dir, "t10k-labels-idx1-ubyte");
  if (tei.empty()) throw DataError(dir + "/t10k-images-idx3-ubyte[.gz]: missing");
  if (tel.empty()) throw DataError(dir + "/t10k-labels-idx1-ubyte[.gz]: missing");
  int r2 = 0, c2 = 0;
  PixelSet test = load_pixel_set(tei, tel, r2, c2);
  const int64_t npix = static_cast<int64_t>(r2) * c2;
  if (!tri.empty() && n_train == 0) {
    if (trl.empty()) throw DataError(dir + "/train-labels-idx1-ubyte[.gz]: missing");
    PixelSet train = load_pixel_set(tri, trl, sp.rows, sp.cols);
    if (sp.rows != r2 || sp.cols != c2)
      throw DataError(tri + ": images are " + std::to_string(sp.rows) + "x" + std::to_string(sp.cols) +
                      ", the test images " + std::to_string(r2) + "x" + std::to_string(c2));
    const int64_t nv = train.count > 20000 ? 10000 : train.count / 6;  // the authors' last 10,000
    if (train.count - nv < 1) throw DataError(tri + ": too few training images");
    sp.train = slice(train, 0, train.count - nv, npix);
    sp.valid = slice(train, train.count - nv, nv, npix);
    sp.test = std::move(test);
    sp.note = "validation = the last " + std::to_string(nv) + " training images";
  } else {
    if (n_train <= 0 || n_valid <= 0) {
      throw DataError(dir + "/train-images-idx3-ubyte[.gz]: missing (to split the test set instead, give "
                      "--mnist-split-train and --mnist-split-valid)");
    }
    if (n_train + n_valid >= test.count)
      throw UsageError("--mnist-split-train: " + std::to_string(n_train) + " + " + std::to_string(n_valid) +
                       " leaves no test images of " + std::to_string(test.count));
    sp.rows = r2;
    sp.cols = c2;
    sp.train = slice(test, 0, n_train, npix);
    sp.valid = slice(test, n_train, n_valid, npix);
    sp.test = slice(test, n_train + n_valid, test.count - n_train - n_valid, npix);
    sp.note = "the test set split " + std::to_string(n_train) + " train / " + std::to_string(n_valid) +
              " valid / " + std::to_string(sp.test.count) + " test (no training images present)";
  }
  return sp;
}

std::vector<int32_t> seeded_permutation(int n, uint64_t seed) {
  std::vector<int32_t> p(n);
  std::iota(p.begin(), p.end(), 0);
  Rng rng(seed ^ 0x9e37'79b9'7f4a'7c15ULL);
  rng.shuffle(p.begin(), static_cast<uint64_t>(n));
  return p;
}

std::vector<int32_t> read_pixel_order(const std::string& path, int n) {
  std::ifstream in(path);
  if (!in) throw DataError(path + ": cannot open the pixel order file");
  std::vector<int32_t> v;
  std::string tok;
  while (in >> tok) {
    long x;
    try {
      size_t used = 0;
      x = std::stol(tok, &used);
      if (used != tok.size()) throw std::invalid_argument(tok);
    } catch (const std::exception&) {
      throw DataError(path + ": '" + tok + "' is not an integer");
    }
    if (x < 0 || x >= n) throw DataError(path + ": index " + tok + " outside [0, " + std::to_string(n) + ")");
    v.push_back(static_cast<int32_t>(x));
  }
  if (static_cast<int>(v.size()) != n)
    throw DataError(path + ": " + std::to_string(v.size()) + " indices, expected " + std::to_string(n));
  return v;
}

std::string shipped_data_dir() { return RBN_DATA_DIR; }
std::string authors_indices_path() { return shipped_data_dir() + "/pmnist/authors_indices.txt"; }

}  // namespace rbn
