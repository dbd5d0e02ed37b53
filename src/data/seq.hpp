// A user's own sequences from NumPy files (SPEC 5; docs/data.md): in a directory DIR,
// {train,valid,test}.x.npy — features [T,N,C] (float32/64) or token ids [T,N] (int32/64, fed
// one-hot) — {split}.y.npy — targets — and optional {split}.lengths.npy [N] (int; default T).
// Targets decide the head: int [N] a class per sequence (classify), int [T,N] a class per step
// (tag; -1 = not counted), float [N] or [N,D] values per sequence, float [T,N] or [T,N,D] values
// per step (regress, mean squared error). A float [T,N] array whose shape is also [N,D] is read as
// per step. A split whose files are absent is taken from the training rows (a fixed shuffle).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rbn {

enum class SeqTargets { classify, tag, regress_sequence, regress_step };
const char* seq_targets_name(SeqTargets t);

// One split, time-major as the files.
struct SeqSet {
  int64_t T = 0, N = 0;
  std::vector<float> x;          // features [T,N,C] (token ids: empty)
  std::vector<int32_t> ids;      // token ids [T,N] (features: empty)
  std::vector<int32_t> lengths;  // [N], each in [1, T]
  std::vector<int32_t> labels;   // classify [N], tag [T,N]
  std::vector<float> values;     // regress [N,D] or [T,N,D]
};

struct SeqData {
  SeqSet train, valid, test;  // test may be empty (no files, --test-fraction 0)
  bool ids = false;           // inputs are token ids
  int input_size = 0;         // C, or the number of token ids V (max id + 1)
  SeqTargets targets = SeqTargets::classify;
  int width = 0;              // classes K (max label + 1, at least 2) or values per target D
  std::string note;           // where the valid and test rows came from
};

// DataError naming the file for every defect (shape, dtype, range, non-finite values); UsageError
// naming --valid-fraction / --test-fraction when a split would be empty.
SeqData load_seq_data(const std::string& dir, double valid_fraction, double test_fraction);

// Whether DIR holds the files of a split ("valid", "test").
bool seq_split_present(const std::string& dir, const std::string& split);

}  // namespace rbn
