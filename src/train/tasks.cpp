// The tasks of SPEC section 4 on top of the loaders in src/data: pixel-by-pixel classification
// (sequential / permuted MNIST, Fashion-MNIST) and character language modelling (PTB, text8, any
// text file). Batches are a pure function of (seed, epoch, index): resume needs no data state.
#include <algorithm>
#include <numeric>
#include <sstream>

#include "data/pixels.hpp"
#include "data/seq.hpp"
#include "data/text.hpp"
#include "train/task.hpp"
#include "util/error.hpp"
#include "util/rng.hpp"

namespace rbn {

const char* split_name(Split s) {
  switch (s) {
    case Split::train: return "train";
    case Split::valid: return "valid";
    case Split::test: return "test";
  }
  return "?";
}

StepResult run_batch(Model& m, const ForwardOptions& opt, const Batch& b, bool backward) {
  const int32_t* len = b.lengths.empty() ? nullptr : b.lengths.data();
  switch (m.config().head) {
    case Head::lm:
      return m.lm_step(opt, b.T, b.N, {.ids = b.ids.data(), .targets = b.targets.data(), .lengths = len},
                       backward);
    case Head::classify: return m.classify_step(opt, b.T, b.N, b.x.data(), len, b.labels.data(), backward);
    case Head::tag:
    case Head::regress:
      return m.seq_step(opt, b.T, b.N, b.x.data(), len, b.targets.data(), b.values.data(), backward);
    case Head::none: break;
  }
  throw UsageError("a model without a head cannot be trained or evaluated");
}

namespace {

uint64_t epoch_seed(uint64_t seed, int64_t epoch) {
  return seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(epoch) * 0xD1B54A32D192ED03ULL + 17;
}

// A seeded order of [0, n) per epoch, cached for the current epoch.
class EpochOrder {
 public:
  const std::vector<int64_t>& get(uint64_t seed, int64_t epoch, int64_t n) {
    if (seed != seed_ || epoch != epoch_ || static_cast<int64_t>(order_.size()) != n) {
      order_.resize(n);
      std::iota(order_.begin(), order_.end(), int64_t{0});
      Rng rng(epoch_seed(seed, epoch));
      rng.shuffle(order_.begin(), static_cast<uint64_t>(n));
      seed_ = seed;
      epoch_ = epoch;
    }
    return order_;
  }

 private:
  uint64_t seed_ = 0;
  int64_t epoch_ = -1;
  std::vector<int64_t> order_;
};

class PixelTask final : public TaskData {
 public:
  explicit PixelTask(const TrainConfig& cfg) : cfg_(cfg) {
    PixelSplits sp = load_pixel_splits(cfg.data, cfg.mnist_split_train, cfg.mnist_split_valid);
    splits_ = std::move(sp);
    const int64_t npix = static_cast<int64_t>(splits_.rows) * splits_.cols;
    if (cfg.task == "seqmnist") {
      order_.resize(npix);
      std::iota(order_.begin(), order_.end(), 0);
      order_name_ = "sequential";
    } else if (cfg.permutation == "seeded") {
      order_ = seeded_permutation(static_cast<int>(npix),
                                  cfg.permutation_seed ? cfg.permutation_seed : cfg.seed);
      order_name_ = "permuted";
    } else {
      const std::string file = cfg.permutation == "authors" ? authors_indices_path() : cfg.permutation;
      order_ = read_pixel_order(file, static_cast<int>(npix));
      order_name_ = cfg.permutation == "authors" ? "authors (with replacement)" : "file " + file;
    }
  }
  Head head() const override { return Head::classify; }
  int num_classes() const override { return 10; }
  int input_size() const override { return 1; }
  int seq_len() const override { return static_cast<int>(order_.size()); }
  std::string describe() const override {
    std::ostringstream s;
    s << cfg_.task << " on " << cfg_.data << " (" << splits_.note << "; " << splits_.train.count
      << " train / " << splits_.valid.count << " valid / " << splits_.test.count
      << " test, pixel order " << order_name_ << ")";
    return s.str();
  }
  int64_t batches_per_epoch(int N) const override { return N > 0 ? splits_.train.count / N : 0; }
  void train_batch(uint64_t seed, int64_t epoch, int64_t index, int N, Batch& b) override {
    const auto& ord = epoch_order_.get(seed, epoch, splits_.train.count);
    fill(splits_.train, ord.data() + index * N, N, b);
  }
  int64_t eval_batches(Split s, int N) const override {
    const int64_t n = set(s).count;
    return N > 0 ? (n + N - 1) / N : 0;
  }
  void eval_batch(Split s, int64_t index, int N, Batch& b) override {
    const PixelSet& ps = set(s);
    const int64_t start = index * N;
    const int n = static_cast<int>(std::min<int64_t>(N, ps.count - start));
    std::vector<int64_t> idx(n);
    std::iota(idx.begin(), idx.end(), start);
    fill(ps, idx.data(), n, b);
  }
  const std::vector<int32_t>& stream(Split) const override { return empty_; }
  std::map<std::string, std::string> metadata() const override {
    return {{"data.task", cfg_.task}, {"data.pixel_order", order_name_}, {"data.split", splits_.note}};
  }
  std::map<std::string, std::vector<int32_t>> int_tensors() const override {
    if (cfg_.task == "seqmnist") return {};
    return {{"data.permutation", order_}};
  }
  std::string train_fingerprint() const override {
    return cfg_.task + ":" + cfg_.data + ":" + std::to_string(splits_.train.count) + ":" + order_name_ +
           ":" + std::to_string(cfg_.permutation_seed ? cfg_.permutation_seed : cfg_.seed);
  }

 private:
  const PixelSet& set(Split s) const {
    return s == Split::train ? splits_.train : s == Split::valid ? splits_.valid : splits_.test;
  }
  void fill(const PixelSet& ps, const int64_t* idx, int n, Batch& b) const {
    const int T = static_cast<int>(order_.size());
    b.T = T;
    b.N = n;
    b.x.resize(static_cast<size_t>(T) * n);
    b.labels.resize(n);
    b.lengths.clear();
    for (int j = 0; j < n; ++j) {
      const float* img = ps.images.data() + static_cast<size_t>(idx[j]) * T;
      for (int t = 0; t < T; ++t) b.x[static_cast<size_t>(t) * n + j] = img[order_[t]];
      b.labels[j] = ps.labels[idx[j]];
    }
  }
  TrainConfig cfg_;
  PixelSplits splits_;
  std::vector<int32_t> order_;
  std::string order_name_;
  EpochOrder epoch_order_;
  std::vector<int32_t> empty_;
};

class CharTask final : public TaskData {
 public:
  explicit CharTask(const TrainConfig& cfg) : cfg_(cfg), corpus_(load_char_corpus(cfg.task, cfg.data)) {
    T_ = cfg.seq_len;
    const int64_t n = static_cast<int64_t>(corpus_.train.size());
    if (n < T_ + 2)
      throw UsageError("--seq-len: " + std::to_string(T_) + " is longer than the training split (" +
                       std::to_string(n) + " symbols)");
    // the number of windows of the worst offset, so every epoch has the same number of batches
    windows_ = (n - 1 - (T_ - 1)) / T_;
  }
  Head head() const override { return Head::lm; }
  int num_classes() const override { return corpus_.vocab.size(); }
  int input_size() const override { return corpus_.vocab.size(); }
  int seq_len() const override { return T_; }
  std::string describe() const override {
    std::ostringstream s;
    s << cfg_.task << " on " << cfg_.data << " (" << corpus_.vocab.size() << " symbols; "
      << corpus_.train.size() << " / " << corpus_.valid.size() << " / " << corpus_.test.size()
      << " train / valid / test; windows of " << T_ << ")";
    return s.str();
  }
  int64_t batches_per_epoch(int N) const override { return N > 0 ? windows_ / N : 0; }
  void train_batch(uint64_t seed, int64_t epoch, int64_t index, int N, Batch& b) override {
    // a random offset each epoch (the authors' crop), then windows in a seeded order
    Rng rng(epoch_seed(seed, epoch) ^ 0x0FF5E7ULL);
    const int64_t offset = static_cast<int64_t>(rng.below(static_cast<uint64_t>(T_)));
    const auto& ord = epoch_order_.get(seed, epoch, windows_);
    b.T = T_;
    b.N = N;
    b.ids.resize(static_cast<size_t>(T_) * N);
    b.targets.resize(b.ids.size());
    b.lengths.clear();
    for (int j = 0; j < N; ++j) {
      const int64_t start = offset + ord[index * N + j] * T_;
      for (int t = 0; t < T_; ++t) {
        b.ids[static_cast<size_t>(t) * N + j] = corpus_.train[start + t];
        b.targets[static_cast<size_t>(t) * N + j] = corpus_.train[start + t + 1];
      }
    }
  }
  int64_t eval_batches(Split s, int N) const override {
    const int64_t w = eval_windows(s);
    return N > 0 ? (w + N - 1) / N : 0;
  }
  void eval_batch(Split s, int64_t index, int N, Batch& b) override {
    const auto& ids = stream(s);
    const int64_t w = eval_windows(s);
    const int n = static_cast<int>(std::min<int64_t>(N, w - index * N));
    b.T = T_;
    b.N = n;
    b.ids.assign(static_cast<size_t>(T_) * n, -1);
    b.targets.assign(b.ids.size(), -1);
    b.lengths.clear();
    for (int j = 0; j < n; ++j) {
      const int64_t start = (index * N + j) * T_;
      for (int t = 0; t < T_; ++t) {
        b.ids[static_cast<size_t>(t) * n + j] = ids[start + t];
        b.targets[static_cast<size_t>(t) * n + j] = ids[start + t + 1];
      }
    }
  }
  const std::vector<int32_t>& stream(Split s) const override {
    return s == Split::train ? corpus_.train : s == Split::valid ? corpus_.valid : corpus_.test;
  }
  std::map<std::string, std::string> metadata() const override {
    return {{"data.task", cfg_.task}, {"vocab", corpus_.vocab.to_json().dump()}};
  }
  std::string train_fingerprint() const override {
    return cfg_.task + ":" + cfg_.data + ":" + std::to_string(corpus_.train.size()) + ":" +
           std::to_string(corpus_.vocab.size());
  }

 private:
  int64_t eval_windows(Split s) const {
    const int64_t n = static_cast<int64_t>(stream(s).size());
    return n > T_ ? (n - 1) / T_ : 0;
  }
  TrainConfig cfg_;
  CharCorpus corpus_;
  int T_ = 0;
  int64_t windows_ = 0;
  EpochOrder epoch_order_;
};

// A user's own sequences (--task seq): NumPy files, see src/data/seq.hpp. Token ids are fed
// one-hot; each batch is as long as its longest row.
class SeqTask final : public TaskData {
 public:
  explicit SeqTask(const TrainConfig& cfg)
      : cfg_(cfg), d_(load_seq_data(cfg.data, cfg.valid_fraction, cfg.test_fraction)) {}
  Head head() const override {
    switch (d_.targets) {
      case SeqTargets::classify: return Head::classify;
      case SeqTargets::tag: return Head::tag;
      default: return Head::regress;
    }
  }
  bool per_step() const override { return d_.targets == SeqTargets::regress_step; }
  int num_classes() const override { return d_.width; }
  int input_size() const override { return d_.input_size; }
  int seq_len() const override { return static_cast<int>(d_.train.T); }
  std::string describe() const override {
    std::ostringstream s;
    s << "seq on " << cfg_.data << " (" << (d_.ids ? "token ids, " : "features, ") << "C=" << d_.input_size
      << ", T=" << d_.train.T << "; targets: " << seq_targets_name(d_.targets)
      << (head() == Head::regress ? ", D=" : ", K=") << d_.width << "; " << d_.train.N << " train / "
      << d_.valid.N << " valid / " << d_.test.N << " test; " << d_.note << ")";
    return s.str();
  }
  int64_t batches_per_epoch(int N) const override { return N > 0 ? d_.train.N / N : 0; }
  void train_batch(uint64_t seed, int64_t epoch, int64_t index, int N, Batch& b) override {
    const auto& ord = epoch_order_.get(seed, epoch, d_.train.N);
    fill(d_.train, ord.data() + index * N, N, b);
  }
  int64_t eval_batches(Split s, int N) const override {
    const int64_t n = set(s).N;
    if (n == 0)
      throw UsageError(std::string("--split ") + split_name(s) + ": " + cfg_.data +
                       " has no such split (no test.x.npy, and --test-fraction is 0)");
    return N > 0 ? (n + N - 1) / N : 0;
  }
  void eval_batch(Split s, int64_t index, int N, Batch& b) override {
    const SeqSet& ss = set(s);
    const int64_t start = index * N;
    const int n = static_cast<int>(std::min<int64_t>(N, ss.N - start));
    std::vector<int64_t> idx(n);
    std::iota(idx.begin(), idx.end(), start);
    fill(ss, idx.data(), n, b);
  }
  const std::vector<int32_t>& stream(Split) const override { return empty_; }
  std::map<std::string, std::string> metadata() const override {
    return {{"data.task", "seq"},
            {"data.input", d_.ids ? "ids" : "features"},
            {"data.targets", seq_targets_name(d_.targets)}};
  }
  std::string train_fingerprint() const override {
    return "seq:" + cfg_.data + ":" + std::to_string(d_.train.N) + ":" + std::to_string(d_.train.T);
  }

 private:
  const SeqSet& set(Split s) const { return s == Split::train ? d_.train : s == Split::valid ? d_.valid : d_.test; }
  // Rows idx of a split into a batch of T = the longest of them.
  void fill(const SeqSet& ss, const int64_t* idx, int n, Batch& b) const {
    int T = 1;
    for (int j = 0; j < n; ++j) T = std::max(T, ss.lengths[idx[j]]);
    const size_t SN = static_cast<size_t>(ss.N), C = static_cast<size_t>(d_.input_size);
    b.T = T;
    b.N = n;
    b.x.assign(static_cast<size_t>(T) * n * C, 0.0f);
    b.lengths.resize(n);
    b.ids.clear();
    for (int j = 0; j < n; ++j) {
      b.lengths[j] = ss.lengths[idx[j]];
      for (int t = 0; t < b.lengths[j]; ++t) {
        float* xr = b.x.data() + (static_cast<size_t>(t) * n + j) * C;
        const size_t src = static_cast<size_t>(t) * SN + idx[j];
        if (d_.ids)
          xr[ss.ids[src]] = 1.0f;  // one-hot
        else
          std::copy_n(ss.x.data() + src * C, C, xr);
      }
    }
    fill_targets(ss, idx, n, b);
  }
  void fill_targets(const SeqSet& ss, const int64_t* idx, int n, Batch& b) const {
    const size_t SN = static_cast<size_t>(ss.N), D = static_cast<size_t>(d_.width);
    const size_t T = static_cast<size_t>(b.T);
    b.labels.clear();
    b.targets.clear();
    b.values.clear();
    b.values_per_step = d_.targets == SeqTargets::regress_step;
    switch (d_.targets) {
      case SeqTargets::classify:
        for (int j = 0; j < n; ++j) b.labels.push_back(ss.labels[idx[j]]);
        break;
      case SeqTargets::tag:
        b.targets.resize(T * n);
        for (size_t t = 0; t < T; ++t)
          for (int j = 0; j < n; ++j) b.targets[t * n + j] = ss.labels[t * SN + idx[j]];
        break;
      case SeqTargets::regress_sequence:
        for (int j = 0; j < n; ++j)
          b.values.insert(b.values.end(), ss.values.begin() + idx[j] * D, ss.values.begin() + (idx[j] + 1) * D);
        break;
      case SeqTargets::regress_step:
        b.values.resize(T * n * D);
        for (size_t t = 0; t < T; ++t)
          for (int j = 0; j < n; ++j)
            std::copy_n(ss.values.data() + (t * SN + idx[j]) * D, D, b.values.data() + (t * n + j) * D);
        break;
    }
  }
  TrainConfig cfg_;
  SeqData d_;
  EpochOrder epoch_order_;
  std::vector<int32_t> empty_;
};

}  // namespace

std::unique_ptr<TaskData> load_task(const TrainConfig& cfg) {
  if (cfg.data.empty()) throw UsageError("--data: required (a dataset directory or file)");
  if (cfg.is_lm()) return std::make_unique<CharTask>(cfg);
  if (cfg.task == "seq") return std::make_unique<SeqTask>(cfg);
  return std::make_unique<PixelTask>(cfg);
}

}  // namespace rbn
