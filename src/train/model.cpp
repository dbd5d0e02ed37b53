// Model: input (one-hot / embedding), recurrent stack, head; cross-entropy loss and its gradient.
// Accumulation contract as in the cells: parameter gradients +=.
#include "train/model.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>

#include "cells/init.hpp"
#include "util/blas.hpp"
#include "util/error.hpp"
#include "util/rng.hpp"

namespace rbn {

const char* head_name(Head h) {
  switch (h) {
    case Head::none: return "none";
    case Head::classify: return "classify";
    case Head::lm: return "lm";
    case Head::tag: return "tag";
    case Head::regress: return "regress";
  }
  return "?";
}

Head parse_head(const std::string& s) {
  if (s == "none") return Head::none;
  if (s == "classify") return Head::classify;
  if (s == "lm") return Head::lm;
  if (s == "tag") return Head::tag;
  if (s == "regress") return Head::regress;
  throw UsageError("--head: unknown head '" + s + "' (none, classify, lm, tag, regress)");
}

namespace {
ModelConfig normalized(ModelConfig c) {
  if (c.head == Head::lm) c.rnn.input_size = c.embed_dim > 0 ? c.embed_dim : c.num_classes;
  if (c.head == Head::regress && c.num_classes < 1)
    throw UsageError("regress: need at least 1 output, got " + std::to_string(c.num_classes));
  if (c.head != Head::none && c.head != Head::regress && c.num_classes < 2)
    throw UsageError("--classes: need at least 2 classes, got " + std::to_string(c.num_classes));
  if (c.embed_dim < 0) throw UsageError("--embed: must be >= 0");
  if (c.head == Head::lm && c.rnn.bidirectional)
    throw UsageError("--bidirectional: a language model predicts each symbol from the ones before "
                     "it, and a reverse direction would read the symbol it is asked to predict");
  return c;
}

template <class T>
void ensure(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

// Softmax cross-entropy over rows of logits [rows,K]; rows with target < 0 are skipped (gradient
// row 0). Writes dlogits = (p - onehot) * scale when dlogits is non-null.
StepResult softmax_xent(const float* logits, int64_t rows, int K, const int32_t* target,
                        float* dlogits, float scale) {
  double loss = 0;
  int64_t count = 0, correct = 0;
#pragma omp parallel for schedule(static) reduction(+ : loss, count, correct) if (rows * K > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    const float* z = logits + r * K;
    float* d = dlogits ? dlogits + r * K : nullptr;
    const int y = target[r];
    if (y < 0) {
      if (d) std::fill(d, d + K, 0.0f);
      continue;
    }
    int arg = 0;
    float mx = z[0];
    for (int k = 1; k < K; ++k)
      if (z[k] > mx) {
        mx = z[k];
        arg = k;
      }
    double s = 0;
    for (int k = 0; k < K; ++k) s += std::exp(static_cast<double>(z[k] - mx));
    const double lse = mx + std::log(s);
    loss += lse - z[y];
    ++count;
    correct += arg == y;
    if (d) {
      for (int k = 0; k < K; ++k)
        d[k] = static_cast<float>(std::exp(static_cast<double>(z[k]) - lse)) * scale;
      d[y] -= scale;
    }
  }
  return {loss, count, correct};
}
}  // namespace

Model::Model(const ModelConfig& cfg) : cfg_(normalized(cfg)), rnn_(cfg_.rnn) {
  const size_t H = features(), K = cfg_.num_classes;  // the head reads D*H features
  if (cfg_.head != Head::none) {
    head_w_.assign(K * H, 0.0f);
    head_b_.assign(K, 0.0f);
    dhead_w_.assign(K * H, 0.0f);
    dhead_b_.assign(K, 0.0f);
  }
  if (cfg_.head == Head::lm && cfg_.embed_dim > 0) {
    embed_w_.assign(K * cfg_.embed_dim, 0.0f);
    dembed_w_.assign(K * cfg_.embed_dim, 0.0f);
  }
  reset_parameters(cfg_.rnn.seed);
}

void Model::reset_parameters(uint64_t seed) {
  rnn_.reset_parameters();
  // Head: orthogonal W_y, b_y = 0 (the authors' code); embedding N(0,1) as torch.nn.Embedding.
  Rng rng(seed ^ 0x5eedf00dULL);
  const int H = features(), K = cfg_.num_classes;
  if (!head_w_.empty()) {
    std::vector<double> w(static_cast<size_t>(K) * H);
    orthogonal_init(w.data(), K, H, rng);
    std::copy(w.begin(), w.end(), head_w_.begin());
    std::fill(head_b_.begin(), head_b_.end(), 0.0f);
  }
  for (auto& v : embed_w_) v = static_cast<float>(rng.normal());
}

std::vector<NamedTensor> Model::parameters() {
  std::vector<NamedTensor> out;
  if (!embed_w_.empty())
    out.push_back({"embed.weight", {cfg_.num_classes, cfg_.embed_dim}, embed_w_.data(),
                   dembed_w_.data(), embed_w_.size()});
  for (const auto& ti : rnn_.param_info())
    out.push_back({ti.name, ti.shape, rnn_.params().data() + ti.offset,
                   rnn_.grads().data() + ti.offset, ti.numel});
  if (!head_w_.empty()) {
    out.push_back({"head.weight", {cfg_.num_classes, features()}, head_w_.data(),
                   dhead_w_.data(), head_w_.size()});
    out.push_back({"head.bias", {cfg_.num_classes}, head_b_.data(), dhead_b_.data(),
                   head_b_.size()});
  }
  return out;
}

void Model::zero_grad() {
  rnn_.zero_grad();
  std::fill(dhead_w_.begin(), dhead_w_.end(), 0.0f);
  std::fill(dhead_b_.begin(), dhead_b_.end(), 0.0f);
  std::fill(dembed_w_.begin(), dembed_w_.end(), 0.0f);
}

void Model::embed(int T, int N, const int32_t* ids, float* x) const {
  const int V = cfg_.num_classes, C = cfg_.rnn.input_size;
  const int64_t rows = static_cast<int64_t>(T) * N;
  for (int64_t r = 0; r < rows; ++r) {
    float* xr = x + r * C;
    const int id = ids[r];
    if (id < 0 || id >= V) {  // padding or out of range: a zero input row
      std::fill(xr, xr + C, 0.0f);
      continue;
    }
    if (embed_w_.empty()) {
      std::fill(xr, xr + C, 0.0f);
      xr[id] = 1.0f;
    } else {
      std::copy_n(embed_w_.data() + static_cast<size_t>(id) * C, C, xr);
    }
  }
}

void Model::head_forward(int rows, const float* h, float* logits) const {
  const int H = features(), K = cfg_.num_classes;
  for (int r = 0; r < rows; ++r) std::copy(head_b_.begin(), head_b_.end(), logits + static_cast<size_t>(r) * K);
  blas::gemm(false, true, rows, K, H, 1.0f, h, H, head_w_.data(), H, 1.0f, logits, K);
}

// The features a per-sequence head reads [N,F]: the top layer's h after each row's last valid step
// and, bidirectional, beside it the reverse direction's h after reading x[0] (both from hT_
// [L*D,N,H], SPEC section 2b).
const float* Model::last_features(int N) {
  const int H = cfg_.rnn.hidden_size, L = cfg_.rnn.num_layers;
  const size_t NH = static_cast<size_t>(N) * H;
  if (!cfg_.rnn.bidirectional) return hT_.data() + (L - 1) * NH;
  ensure(feat_, 2 * NH);
  for (int n = 0; n < N; ++n)
    for (int d = 0; d < 2; ++d)
      std::copy_n(hT_.data() + (2 * L - 2 + d) * NH + static_cast<size_t>(n) * H, H,
                  feat_.data() + (2 * static_cast<size_t>(n) + d) * H);
  return feat_.data();
}

// dL/dhT [L*D,N,H] into dhT_ from the head's dlogits [N,K]: dlog W_y at the rows last_features
// read, 0 elsewhere.
void Model::last_features_grad(const float* dlog, int N) {
  const int H = cfg_.rnn.hidden_size, L = cfg_.rnn.num_layers, K = cfg_.num_classes, F = features();
  const size_t NH = static_cast<size_t>(N) * H, LD = static_cast<size_t>(L) * cfg_.rnn.directions();
  ensure(dhT_, LD * NH);
  std::fill_n(dhT_.data(), LD * NH, 0.0f);
  if (!cfg_.rnn.bidirectional) {
    blas::gemm(false, false, N, H, K, 1.0f, dlog, K, head_w_.data(), H, 0.0f,
               dhT_.data() + (L - 1) * NH, H);
    return;
  }
  ensure(dfeat_, static_cast<size_t>(N) * F);
  blas::gemm(false, false, N, F, K, 1.0f, dlog, K, head_w_.data(), F, 0.0f, dfeat_.data(), F);
  for (int n = 0; n < N; ++n)
    for (int d = 0; d < 2; ++d)
      std::copy_n(dfeat_.data() + (2 * static_cast<size_t>(n) + d) * H, H,
                  dhT_.data() + (2 * L - 2 + d) * NH + static_cast<size_t>(n) * H);
}

StepResult Model::classify_step(const ForwardOptions& opt, int T, int N, const float* x,
                                const int32_t* lengths, const int32_t* labels, bool backward) {
  if (cfg_.head != Head::classify) throw UsageError("classify_step: the model has no classify head");
  const int H = features(), K = cfg_.num_classes, L = cfg_.rnn.num_layers * cfg_.rnn.directions();
  const size_t NH = static_cast<size_t>(N) * cfg_.rnn.hidden_size;
  for (int n = 0; n < N; ++n)
    if (labels[n] < 0 || labels[n] >= K)
      throw DataError("label " + std::to_string(labels[n]) + " outside [0, " + std::to_string(K) + ")");
  ensure(hT_, L * NH);
  ensure(logits_, static_cast<size_t>(N) * K);
  rnn_.forward(opt, T, N, {.x = x, .lengths = lengths}, {.hT = hT_.data()});
  const float* top = last_features(N);  // [N,H]: the last valid step of each row (H = D*hidden)
  head_forward(N, top, logits_.data());
  ensure(dy_, static_cast<size_t>(N) * K);
  StepResult res = softmax_xent(logits_.data(), N, K, labels, backward ? dy_.data() : nullptr,
                                inv_count(N, backward));
  if (backward) {
    const float* dlog = dy_.data();
    blas::gemm(true, false, K, H, N, 1.0f, dlog, K, top, H, 1.0f, dhead_w_.data(), H);
    for (int n = 0; n < N; ++n)
      for (int k = 0; k < K; ++k) dhead_b_[k] += dlog[static_cast<size_t>(n) * K + k];
    last_features_grad(dlog, N);
    rnn_.backward(nullptr, dhT_.data(), nullptr, nullptr, nullptr, nullptr);
  }
  return res;
}

StepResult Model::lm_step(const ForwardOptions& opt, int T, int N, const LmBatch& batch,
                          bool backward) {
  const int32_t *ids = batch.ids, *targets = batch.targets, *lengths = batch.lengths;
  if (cfg_.head != Head::lm) throw UsageError("lm_step: the model has no language-model head");
  const int H = cfg_.rnn.hidden_size, K = cfg_.num_classes, C = cfg_.rnn.input_size;
  const int64_t TN = static_cast<int64_t>(T) * N;
  ensure(x_, TN * C);
  ensure(y_, TN * H);
  ensure(logits_, TN * K);
  embed(T, N, ids, x_.data());
  rnn_.forward(opt, T, N, {.x = x_.data(), .lengths = lengths, .h0 = batch.h0, .c0 = batch.c0},
               {.y = y_.data(), .hT = batch.hT, .cT = batch.cT});
  head_forward(static_cast<int>(TN), y_.data(), logits_.data());
  // counted positions: inside the row's length and with a target
  std::vector<int32_t>& tgt = tgt_;
  tgt.assign(targets, targets + TN);
  if (lengths)
    for (int t = 0; t < T; ++t)
      for (int n = 0; n < N; ++n)
        if (t >= lengths[n]) tgt[static_cast<size_t>(t) * N + n] = -1;
  for (auto v : tgt)
    if (v >= K) throw DataError("target id " + std::to_string(v) + " outside the vocabulary");
  int64_t counted = 0;
  for (auto v : tgt) counted += v >= 0;
  ensure(dy_, TN * K);
  StepResult res = softmax_xent(logits_.data(), TN, K, tgt.data(), backward ? dy_.data() : nullptr,
                                inv_count(counted, backward));
  if (backward) {
    const float* dlog = dy_.data();
    blas::gemm(true, false, K, H, static_cast<int>(TN), 1.0f, dlog, K, y_.data(), H, 1.0f,
               dhead_w_.data(), H);
    for (int64_t r = 0; r < TN; ++r)
      for (int k = 0; k < K; ++k) dhead_b_[k] += dlog[r * K + k];
    ensure(dyh_, TN * H);
    float* dyh = dyh_.data();
    blas::gemm(false, false, static_cast<int>(TN), H, K, 1.0f, dlog, K, head_w_.data(), H, 0.0f,
               dyh, H);
    float* dx = nullptr;
    if (!embed_w_.empty()) {
      ensure(dx_, TN * C);
      dx = dx_.data();
    }
    rnn_.backward(dyh, nullptr, nullptr, dx, nullptr, nullptr);
    if (dx)
      for (int64_t r = 0; r < TN; ++r) {
        const int id = ids[r];
        if (id < 0 || id >= K) continue;
        float* de = dembed_w_.data() + static_cast<size_t>(id) * C;
        for (int c = 0; c < C; ++c) de[c] += dx[r * C + c];
      }
  }
  return res;
}

// Squared errors of outputs [rows,D] against values [rows,D] for the rows with count[r] (all when
// null); d = 2 (out - value) * scale where counted (0 elsewhere) when d is non-null.
static StepResult squared_error(const float* out, const float* values, int64_t rows, int D, const uint8_t* counted,
                         float* d, float scale) {
  double loss = 0;
  int64_t count = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const bool on = !counted || counted[r];
    for (int k = 0; k < D; ++k) {
      const int64_t i = r * D + k;
      const double e = on ? static_cast<double>(out[i]) - values[i] : 0.0;
      loss += e * e;
      if (d) d[i] = static_cast<float>(2.0 * e) * scale;
    }
    count += on ? D : 0;
  }
  return {loss, count, 0};
}

StepResult Model::seq_step(const ForwardOptions& opt, int T, int N, const float* x, const int32_t* lengths,
                           const int32_t* labels, const float* values, bool backward) {
  if (cfg_.head != Head::tag && cfg_.head != Head::regress)
    throw UsageError("seq_step: the model's head is not tag or regress");
  const int H = features(), K = cfg_.num_classes, L = cfg_.rnn.num_layers * cfg_.rnn.directions();
  const bool per_step = cfg_.head == Head::tag || cfg_.per_step;
  const int64_t rows = per_step ? static_cast<int64_t>(T) * N : N;
  const size_t NH = static_cast<size_t>(N) * cfg_.rnn.hidden_size;
  ensure(logits_, rows * K);
  ensure(dy_, rows * K);
  const float* h = nullptr;  // [rows,H]: every step's top h, or each row's last valid one
  if (per_step) {
    ensure(y_, rows * H);
    rnn_.forward(opt, T, N, {.x = x, .lengths = lengths}, {.y = y_.data()});
    h = y_.data();
  } else {
    ensure(hT_, L * NH);
    rnn_.forward(opt, T, N, {.x = x, .lengths = lengths}, {.hT = hT_.data()});
    h = last_features(N);
  }
  head_forward(static_cast<int>(rows), h, logits_.data());
  // the steps inside each row's length
  std::vector<uint8_t> inside(per_step ? rows : 0, 1);
  if (per_step && lengths)
    for (int t = 0; t < T; ++t)
      for (int n = 0; n < N; ++n) inside[static_cast<size_t>(t) * N + n] = t < lengths[n];
  StepResult res;
  if (cfg_.head == Head::tag) {
    tgt_.assign(labels, labels + rows);
    for (int64_t r = 0; r < rows; ++r) {
      if (!inside[r]) tgt_[r] = -1;
      if (tgt_[r] >= K) throw DataError("label " + std::to_string(tgt_[r]) + " outside [0, " + std::to_string(K) + ")");
    }
    int64_t counted = 0;
    for (auto v : tgt_) counted += v >= 0;
    res = softmax_xent(logits_.data(), rows, K, tgt_.data(), backward ? dy_.data() : nullptr,
                       inv_count(counted, backward));
  } else {
    int64_t counted = 0;
    for (int64_t r = 0; r < rows; ++r) counted += per_step ? inside[r] : 1;
    res = squared_error(logits_.data(), values, rows, K, per_step ? inside.data() : nullptr,
                        backward ? dy_.data() : nullptr, inv_count(counted * K, backward));
  }
  if (!backward) return res;
  const float* dlog = dy_.data();
  blas::gemm(true, false, K, H, static_cast<int>(rows), 1.0f, dlog, K, h, H, 1.0f, dhead_w_.data(), H);
  for (int64_t r = 0; r < rows; ++r)
    for (int k = 0; k < K; ++k) dhead_b_[k] += dlog[r * K + k];
  if (per_step) {
    ensure(dyh_, rows * H);
    blas::gemm(false, false, static_cast<int>(rows), H, K, 1.0f, dlog, K, head_w_.data(), H, 0.0f, dyh_.data(), H);
    rnn_.backward(dyh_.data(), nullptr, nullptr, nullptr, nullptr, nullptr);
  } else {
    last_features_grad(dlog, N);
    rnn_.backward(nullptr, dhT_.data(), nullptr, nullptr, nullptr, nullptr);
  }
  return res;
}

void Model::logits(const ForwardOptions& opt, int T, int N, const float* x, const int32_t* ids,
                   const int32_t* lengths, const float* h0, const float* c0, float* out, float* hT,
                   float* cT) {
  const int H = features(), L = cfg_.rnn.num_layers * cfg_.rnn.directions(),
            C = cfg_.rnn.input_size;
  const int64_t TN = static_cast<int64_t>(T) * N;
  const size_t NH = static_cast<size_t>(N) * cfg_.rnn.hidden_size;
  if (cfg_.head == Head::lm) {
    ensure(x_, TN * C);
    ensure(y_, TN * H);
    embed(T, N, ids, x_.data());
    rnn_.forward(opt, T, N, {.x = x_.data(), .lengths = lengths, .h0 = h0, .c0 = c0},
                 {.y = y_.data(), .hT = hT, .cT = cT});
    head_forward(static_cast<int>(TN), y_.data(), out);
  } else if (cfg_.head == Head::tag || (cfg_.head == Head::regress && cfg_.per_step)) {
    ensure(y_, TN * H);
    rnn_.forward(opt, T, N, {.x = x, .lengths = lengths, .h0 = h0, .c0 = c0},
                 {.y = y_.data(), .hT = hT, .cT = cT});
    head_forward(static_cast<int>(TN), y_.data(), out);
  } else if (cfg_.head == Head::classify || cfg_.head == Head::regress) {
    ensure(hT_, L * NH);
    rnn_.forward(opt, T, N, {.x = x, .lengths = lengths, .h0 = h0, .c0 = c0},
                 {.hT = hT_.data(), .cT = cT});
    if (hT) std::copy_n(hT_.data(), L * NH, hT);
    head_forward(N, last_features(N), out);
  } else {
    rnn_.forward(opt, T, N, {.x = x, .lengths = lengths, .h0 = h0, .c0 = c0},
                 {.y = out, .hT = hT, .cT = cT});
  }
}

size_t Model::workspace_bytes() const {
  size_t n = 0;
  for (const auto* v : {&x_, &y_, &logits_, &dy_, &dx_, &hT_, &cT_, &dhT_, &dyh_, &feat_, &dfeat_})
    n += v->size();
  return n * sizeof(float) + rnn_.workspace_bytes();
}

}  // namespace rbn
