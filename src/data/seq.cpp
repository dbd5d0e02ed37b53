#include "data/seq.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "io/npy.hpp"
#include "util/error.hpp"
#include "util/rng.hpp"

namespace rbn {

const char* seq_targets_name(SeqTargets t) {
  switch (t) {
    case SeqTargets::classify: return "a class per sequence";
    case SeqTargets::tag: return "a class per step";
    case SeqTargets::regress_sequence: return "values per sequence";
    case SeqTargets::regress_step: return "values per step";
  }
  return "?";
}

namespace {

std::string path_of(const std::string& dir, const std::string& split, const char* what) {
  return (std::filesystem::path(dir) / (split + "." + what + ".npy")).string();
}

bool is_int(const NpyArray& a) { return a.dtype == "<i4" || a.dtype == "<i8"; }
bool is_float(const NpyArray& a) { return a.dtype == "<f4" || a.dtype == "<f8"; }

std::string shape_str(const std::vector<int64_t>& s) {
  return fmt::format("[{}]", fmt::join(s, ","));
}

void check_finite(const std::vector<float>& v, const std::string& file) {
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i]))
      throw DataError(file + ": non-finite value at flat index " + std::to_string(i));
}

// What a targets array holds, from its dtype and shape against T and N; D for regression.
SeqTargets target_kind(const NpyArray& y, int64_t T, int64_t N, int& D, const std::string& file) {
  const auto& s = y.shape;
  const std::string got = " (got " + y.dtype + " " + shape_str(s) + "; T=" + std::to_string(T) +
                          ", N=" + std::to_string(N) + ")";
  D = 1;
  if (is_int(y)) {
    if (s.size() == 1 && s[0] == N) return SeqTargets::classify;
    if (s.size() == 2 && s[0] == T && s[1] == N) return SeqTargets::tag;
    throw DataError(file + ": int targets must be [N] (a class per sequence) or [T,N] (a class per step)" + got);
  }
  if (!is_float(y)) throw DataError(file + ": targets must be int32/64 (classes) or float32/64 (values)" + got);
  if (s.size() == 1 && s[0] == N) return SeqTargets::regress_sequence;
  if (s.size() == 2 && s[0] == T && s[1] == N) return SeqTargets::regress_step;
  if (s.size() == 2 && s[0] == N && s[1] >= 1) {
    D = static_cast<int>(s[1]);
    return SeqTargets::regress_sequence;
  }
  if (s.size() == 3 && s[0] == T && s[1] == N && s[2] >= 1) {
    D = static_cast<int>(s[2]);
    return SeqTargets::regress_step;
  }
  throw DataError(file + ": float targets must be [N], [N,D], [T,N] or [T,N,D]" + got);
}

struct Loaded {
  SeqSet set;
  bool ids = false;
  int C = 0, D = 0;
  SeqTargets targets = SeqTargets::classify;
};

Loaded load_split(const std::string& dir, const std::string& split) {
  Loaded l;
  const std::string fx = path_of(dir, split, "x"), fy = path_of(dir, split, "y"),
                    fl = path_of(dir, split, "lengths");
  const NpyArray x = read_npy(fx);
  SeqSet& s = l.set;
  if (x.shape.size() == 3 && is_float(x)) {
    s.x = x.to_float();
    check_finite(s.x, fx);
    l.C = static_cast<int>(x.shape[2]);
  } else if (x.shape.size() == 2 && is_int(x)) {
    s.ids = x.to_int32();
    l.ids = true;
  } else {
    throw DataError(fx + ": inputs must be float features [T,N,C] or int token ids [T,N] (got " + x.dtype +
                    " " + shape_str(x.shape) + ")");
  }
  s.T = x.shape[0];
  s.N = x.shape[1];
  if (s.T <= 0 || s.N <= 0 || (!l.ids && l.C <= 0)) throw DataError(fx + ": empty " + shape_str(x.shape));
  if (s.T > (int64_t{1} << 24)) throw DataError(fx + ": T = " + std::to_string(s.T) + " steps is too long");
  const NpyArray y = read_npy(fy);
  l.targets = target_kind(y, s.T, s.N, l.D, fy);
  if (is_int(y))
    s.labels = y.to_int32();
  else {
    s.values = y.to_float();
    check_finite(s.values, fy);
  }
  if (std::filesystem::exists(fl)) {
    const NpyArray len = read_npy(fl);
    if (len.shape.size() != 1 || len.shape[0] != s.N || !is_int(len))
      throw DataError(fl + ": lengths must be int [" + std::to_string(s.N) + "], got " + len.dtype + " " +
                      shape_str(len.shape));
    s.lengths = len.to_int32();
    for (int64_t n = 0; n < s.N; ++n)
      if (s.lengths[n] < 1 || s.lengths[n] > s.T)
        throw DataError(fl + ": length " + std::to_string(s.lengths[n]) + " of row " + std::to_string(n) +
                        " outside [1, " + std::to_string(s.T) + "]");
  } else {
    s.lengths.assign(static_cast<size_t>(s.N), static_cast<int32_t>(s.T));
  }
  return l;
}

// The rows `idx` of a split.
SeqSet take(const SeqSet& s, const std::vector<int64_t>& idx, const SeqData& d) {
  SeqSet o;
  o.T = s.T;
  o.N = static_cast<int64_t>(idx.size());
  const size_t T = static_cast<size_t>(s.T), N = static_cast<size_t>(s.N), n = idx.size();
  const bool step_labels = d.targets == SeqTargets::tag, step_values = d.targets == SeqTargets::regress_step;
  auto per_step = [&](const auto& v, auto& out, size_t width) {
    out.resize(T * n * width);
    for (size_t t = 0; t < T; ++t)
      for (size_t j = 0; j < n; ++j)
        std::copy_n(v.data() + (t * N + idx[j]) * width, width, out.data() + (t * n + j) * width);
  };
  auto per_row = [&](const auto& v, auto& out, size_t width) {
    out.resize(n * width);
    for (size_t j = 0; j < n; ++j) std::copy_n(v.data() + idx[j] * width, width, out.data() + j * width);
  };
  if (!s.x.empty()) per_step(s.x, o.x, s.x.size() / (T * N));
  if (!s.ids.empty()) per_step(s.ids, o.ids, 1);
  per_row(s.lengths, o.lengths, 1);
  if (!s.labels.empty()) step_labels ? per_step(s.labels, o.labels, 1) : per_row(s.labels, o.labels, 1);
  if (!s.values.empty())
    step_values ? per_step(s.values, o.values, static_cast<size_t>(d.width))
                : per_row(s.values, o.values, static_cast<size_t>(d.width));
  return o;
}

// Checks a split against the training one (inputs and targets of the same kind and width).
void check_like(const Loaded& l, const Loaded& train, const std::string& dir, const std::string& split) {
  const std::string fx = path_of(dir, split, "x"), fy = path_of(dir, split, "y");
  if (l.ids != train.ids || l.C != train.C)
    throw DataError(fx + ": inputs differ from the training split's (" +
                    (train.ids ? std::string("token ids") : "features of width " + std::to_string(train.C)) + ")");
  if (l.targets != train.targets || l.D != train.D)
    throw DataError(fy + ": targets differ from the training split's (" + seq_targets_name(train.targets) +
                    (train.targets == SeqTargets::classify || train.targets == SeqTargets::tag
                         ? ""
                         : ", width " + std::to_string(train.D)) + ")");
}

// Token ids and labels: their ranges fix V and K; each value is checked where it counts.
void count_symbols(SeqData& d, const std::string& dir) {
  int32_t max_id = -1, max_label = -1;
  for (const auto& [s, split] : {std::pair<const SeqSet*, const char*>{&d.train, "train"}, {&d.valid, "valid"}, {&d.test, "test"}}) {
    const size_t N = static_cast<size_t>(s->N);
    for (size_t i = 0; i < s->ids.size(); ++i)
      if (static_cast<int64_t>(i / N) < s->lengths[i % N]) {
        if (s->ids[i] < 0)
          throw DataError(path_of(dir, split, "x") + ": token id " + std::to_string(s->ids[i]) + " is negative");
        max_id = std::max(max_id, s->ids[i]);
      }
    const int32_t lowest = d.targets == SeqTargets::tag ? -1 : 0;  // tag: -1 = not counted
    for (int32_t v : s->labels) {
      if (v < lowest)
        throw DataError(path_of(dir, split, "y") + ": label " + std::to_string(v) + " is negative" +
                        (d.targets == SeqTargets::tag ? " (only -1, not counted, is allowed)" : ""));
      max_label = std::max(max_label, v);
    }
  }
  if (d.ids) d.input_size = max_id + 1;
  if (d.ids && max_id > (1 << 20)) throw DataError(path_of(dir, "train", "x") + ": token id " + std::to_string(max_id) + " is too large (one-hot inputs)");
  if (d.targets == SeqTargets::classify || d.targets == SeqTargets::tag) d.width = std::max(2, max_label + 1);
}

}  // namespace

bool seq_split_present(const std::string& dir, const std::string& split) {
  return std::filesystem::exists(path_of(dir, split, "x"));
}

SeqData load_seq_data(const std::string& dir, double valid_fraction, double test_fraction) {
  if (!std::filesystem::is_directory(dir))
    throw DataError(dir + ": a directory with train.x.npy and train.y.npy expected");
  const Loaded train = load_split(dir, "train");
  SeqData d;
  d.ids = train.ids;
  d.input_size = train.C;
  d.targets = train.targets;
  d.width = train.D;
  // absent splits: rows of the training split, a fixed shuffle (not --seed: eval finds the same)
  std::vector<int64_t> rows(static_cast<size_t>(train.set.N));
  std::iota(rows.begin(), rows.end(), int64_t{0});
  Rng rng(0x5E95E9ULL);
  for (size_t i = rows.size(); i > 1; --i) std::swap(rows[i - 1], rows[rng.below(i)]);
  size_t cut = rows.size();
  auto split = [&](const char* name, double fraction, const char* flag, SeqSet& out) {
    if (seq_split_present(dir, name)) {
      Loaded l = load_split(dir, name);
      check_like(l, train, dir, name);
      out = std::move(l.set);
      return std::string(name) + ".*.npy";
    }
    const size_t n = static_cast<size_t>(std::llround(fraction * static_cast<double>(train.set.N)));
    if (n == 0 && std::string(name) == "valid")
      throw UsageError(std::string(flag) + ": " + dir + " has no valid.x.npy, and a fraction of " +
                       std::to_string(fraction) + " of " + std::to_string(train.set.N) + " training rows is none");
    if (n == 0) return std::string("no test split");
    if (n + 1 > cut)
      throw UsageError(std::string(flag) + ": " + std::to_string(n) + " rows leave no training rows");
    out = take(train.set, std::vector<int64_t>(rows.begin() + static_cast<ptrdiff_t>(cut - n), rows.begin() + static_cast<ptrdiff_t>(cut)), d);
    cut -= n;
    return std::to_string(n) + " training rows (" + flag + ")";
  };
  const std::string v = split("valid", valid_fraction, "--valid-fraction", d.valid);
  const std::string t = split("test", test_fraction, "--test-fraction", d.test);
  if (cut < rows.size()) {
    std::vector<int64_t> keep(rows.begin(), rows.begin() + static_cast<ptrdiff_t>(cut));
    std::sort(keep.begin(), keep.end());
    d.train = take(train.set, keep, d);
  } else {
    d.train = train.set;
  }
  count_symbols(d, dir);
  d.note = "valid: " + v + ", test: " + t;
  return d;
}

}  // namespace rbn
