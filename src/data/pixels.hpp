// Pixel-by-pixel classification data (MNIST, Fashion-MNIST): images as float in [0, 1], labels,
// the authors' split (validation = the last 10,000 training images), pixel orders.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rbn {

struct PixelSet {
  std::vector<float> images;   // [count, rows*cols], x / 255
  std::vector<int32_t> labels;  // [count], < 10
  int64_t count = 0;
};

struct PixelSplits {
  PixelSet train, valid, test;
  int rows = 28, cols = 28;
  std::string note;  // how the splits were made (for logs and checkpoints)
};

// A directory with train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],
// t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]. Validation = the last 10,000 training
// images (the authors' code). When the training images are missing (MNIST as shipped here), pass
// n_train, n_valid > 0: the test set's first n_train images train, the next n_valid validate and
// the rest test; without them that is an error naming the missing file.
PixelSplits load_pixel_splits(const std::string& dir, int n_train = 0, int n_valid = 0);

// One split of images and labels from two files (checks counts, sizes, label range).
PixelSet load_pixel_set(const std::string& images_path, const std::string& labels_path, int& rows, int& cols);

// A true permutation of [0, n) from a seed (rbn::Rng), for permuted MNIST.
std::vector<int32_t> seeded_permutation(int n, uint64_t seed);
// A pixel order from a text file of n indices in [0, n) (one per line; repeats allowed: the
// authors' order samples with replacement).
std::vector<int32_t> read_pixel_order(const std::string& path, int n);
// data/pmnist/authors_indices.txt of this source tree.
std::string authors_indices_path();
// The repository's data/ directory (shipped datasets).
std::string shipped_data_dir();

}  // namespace rbn
