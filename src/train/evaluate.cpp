#include "train/evaluate.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "train/group.hpp"
#include "util/error.hpp"

namespace rbn {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
EvalResult finish(double loss_sum, int64_t count, int64_t correct,
                  std::chrono::steady_clock::time_point t0) {
  EvalResult r;
  r.count = count;
  r.loss = count ? loss_sum / count : 0.0;
  r.accuracy = count ? static_cast<double>(correct) / count : 0.0;
  r.bpc = r.loss / std::log(2.0);
  r.seconds = seconds_since(t0);
  return r;
}
}  // namespace

HeadMetric head_metric(Head head, double mean_loss, double accuracy) {
  if (head == Head::lm) return {"bpc", mean_loss / std::log(2.0), mean_loss / std::log(2.0)};
  if (head == Head::regress) return {"mse", mean_loss, mean_loss};
  return {"accuracy", accuracy, 1.0 - accuracy};
}

void popstats_pass(Model& m, TaskData& data, int batches, int N, uint64_t seed,
                   const ProgressFn& progress, Group* group) {
  Stack<float>& rnn = m.rnn();
  if (!cell_has_population_stats(rnn.config().cell)) return;
  const int64_t per_epoch = data.batches_per_epoch(N);
  if (per_epoch <= 0) throw UsageError("--popstats-batch-size: larger than the training set");
  Batch b;
  rnn.popstats_begin();
  for (int i = 0; i < batches; ++i) {
    // A fixed sample: the first batches of a dedicated epoch order.
    data.train_batch(seed ^ 0x9095ULL, i / per_epoch, i % per_epoch, N, b);
    if (group) {
      group->take_rows(b);
      if (b.N == 0) throw UsageError("--popstats-batch-size: fewer rows than ranks");
    }
    if (data.head() == Head::lm) {
      std::vector<float> x(static_cast<size_t>(b.T) * b.N * m.input_size());
      m.embed(b.T, b.N, b.ids.data(), x.data());
      rnn.popstats_feed(b.T, b.N, x.data(), b.lengths.empty() ? nullptr : b.lengths.data());
    } else {
      rnn.popstats_feed(b.T, b.N, b.x.data(), b.lengths.empty() ? nullptr : b.lengths.data());
    }
    if (progress) progress(i + 1, batches);
  }
  rnn.popstats_finish();
}

EvalResult evaluate_batches(Model& m, TaskData& data, Split split, int N, int64_t max_batches,
                            const ProgressFn& progress, Group* group) {
  const auto t0 = std::chrono::steady_clock::now();
  int64_t nb = data.eval_batches(split, N);
  if (max_batches > 0) nb = std::min(nb, max_batches);
  ForwardOptions opt;
  opt.mode = Mode::infer;
  opt.need_backward = false;
  Batch b;
  double loss = 0;
  int64_t count = 0, correct = 0;
  for (int64_t i = 0; i < nb; ++i) {
    data.eval_batch(split, i, N, b);
    if (group) group->take_rows(b);  // inference: the rows are independent
    if (b.N == 0) {  // a batch with fewer rows than ranks
      if (progress) progress(i + 1, nb);
      continue;
    }
    StepResult r = run_batch(m, opt, b, false);
    loss += r.loss_sum;
    count += r.count;
    correct += r.correct;
    if (progress) progress(i + 1, nb);
  }
  if (group && group->distributed()) {
    double s[3] = {loss, static_cast<double>(count), static_cast<double>(correct)};
    group->sum(s, 3);
    loss = s[0];
    count = static_cast<int64_t>(s[1]);
    correct = static_cast<int64_t>(s[2]);
  }
  return finish(loss, count, correct, t0);
}

EvalResult evaluate_stream(Model& m, const std::vector<int32_t>& ids, int streams, int chunk,
                           const ProgressFn& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  if (streams <= 0 || chunk <= 0) throw UsageError("--streams / --chunk: must be positive");
  const int64_t n = static_cast<int64_t>(ids.size()) - 1;  // predictions
  if (n <= 0) throw DataError("evaluation split too short: it needs at least 2 symbols");
  const int S = static_cast<int>(std::min<int64_t>(streams, n));
  const int64_t per = (n + S - 1) / S;  // predictions per stream (the last may be shorter)
  const int L = m.config().rnn.num_layers, H = m.config().rnn.hidden_size;
  const size_t state = static_cast<size_t>(L) * S * H;
  std::vector<float> h(state, 0.0f), c(state, 0.0f), hT(state), cT(state);
  std::vector<int32_t> x, y, len(S);
  double loss = 0;
  int64_t count = 0, correct = 0;
  ForwardOptions opt;
  opt.mode = Mode::infer;
  opt.need_backward = false;
  for (int64_t s0 = 0; s0 < per; s0 += chunk) {
    const int T = static_cast<int>(std::min<int64_t>(chunk, per - s0));
    x.assign(static_cast<size_t>(T) * S, -1);
    y.assign(static_cast<size_t>(T) * S, -1);
    for (int s = 0; s < S; ++s) {
      const int64_t base = s * per + s0;
      int l = 0;
      for (int t = 0; t < T; ++t) {
        const int64_t p = base + t;
        if (p >= n || s0 + t >= per) break;
        x[static_cast<size_t>(t) * S + s] = ids[p];
        y[static_cast<size_t>(t) * S + s] = ids[p + 1];
        l = t + 1;
      }
      len[s] = l;
    }
    opt.t0 = static_cast<int>(std::min<int64_t>(s0, 1 << 30));
    StepResult r = m.lm_step(opt, T, S,
                             {.ids = x.data(),
                              .targets = y.data(),
                              .lengths = len.data(),
                              .h0 = h.data(),
                              .c0 = c.data(),
                              .hT = hT.data(),
                              .cT = cT.data()},
                             false);
    loss += r.loss_sum;
    count += r.count;
    correct += r.correct;
    h.swap(hT);
    c.swap(cT);
    if (progress) progress(std::min<int64_t>(s0 + T, per), per);
  }
  return finish(loss, count, correct, t0);
}

}  // namespace rbn
