// Synchronized batch statistics (data-parallel training, Stack::set_stat_allreduce), simulated in
// one process: K threads, each with its own Stack and a shard of the rows, sum their statistics
// through a shared buffer. Together the shards must compute what one Stack computes with all the
// rows — outputs, running statistics, the statistics pass, the gradients of each row's input and
// initial state, and the parameter gradients summed over the shards — and, for the batch-normalized
// cells, without the synchronization they must not (the reason the feature exists). Bidirectional
// stacks too: each direction sums its own statistics (the reverse's by its own step count).
#include <gtest/gtest.h>

#include <barrier>
#include <cmath>
#include <cstdio>
#include <thread>

#include "cell_cases.hpp"

namespace rbn::testing {
namespace {

// Sum over K threads; every member adds the parts in rank order, so all get the same bits.
class ThreadGroup {
 public:
  explicit ThreadGroup(int k) : parts_(k), bar_(k) {}
  Stack<double>::Allreduce member(int r) {
    return [this, r](double* buf, size_t n) {
      parts_[r].assign(buf, buf + n);
      bar_.arrive_and_wait();
      for (size_t i = 0; i < n; ++i) {
        double s = 0;
        for (const auto& part : parts_) s += part[i];
        buf[i] = s;
      }
      bar_.arrive_and_wait();  // nobody overwrites a part before all have read it
    };
  }

 private:
  std::vector<std::vector<double>> parts_;
  std::barrier<> bar_;
};

struct Result {
  std::vector<double> y, hT, cT, dx, dh0, dc0, grads, buffers, pass_buffers;
};

constexpr int kT = 6, kN = 6, kC = 3, kH = 20, kL = 2;  // H = 20: two blocks of units, P = 2
const std::vector<int32_t> kLengths{6, 4, 6, 2, 5, 3};

// With dropout and zoneout on: a shard draws the masks of its rows by their global index (row0).
StackConfig sync_config(Cell cell, bool bidirectional) {
  CellCase c;
  c.cell = cell;
  c.bidirectional = bidirectional;
  c.T = c.t_max = kT;
  c.N = kN;
  c.C = kC;
  c.H = kH;
  c.L = kL;
  StackConfig s = c.config();
  s.dropout = 0.2;
  s.zoneout_h = 0.15;
  s.zoneout_c = cell_gates(cell) == 4 ? 0.3 : 0.0;
  return s;
}

// Rows [n0, n0 + n) of a [A, N, B] tensor.
std::vector<double> rows(const std::vector<double>& v, int A, int B, int n0, int n) {
  std::vector<double> out(static_cast<size_t>(A) * n * B);
  for (int a = 0; a < A; ++a)
    std::copy_n(v.data() + (static_cast<size_t>(a) * kN + n0) * B, static_cast<size_t>(n) * B,
                out.data() + static_cast<size_t>(a) * n * B);
  return out;
}

// One training step (forward with running averages, backward) and a two-batch statistics pass,
// on rows [n0, n0 + n) of the fixed global batch.
// Bidirectional: states [LD = 2L, N, H], outputs [T, N, HY = 2H].
Result run_rows(Cell cell, bool bidir, int n0, int n, const Stack<double>::Allreduce& allreduce) {
  const int LD = kL * (bidir ? 2 : 1), HY = kH * (bidir ? 2 : 1);
  Stack<double> s(sync_config(cell, bidir));
  randomize(s, 5);
  s.set_stat_allreduce(allreduce);
  const auto x = random_vec<double>(static_cast<size_t>(kT) * kN * kC, 11);
  const auto h0 = random_vec<double>(static_cast<size_t>(LD) * kN * kH, 12);
  const auto c0 = random_vec<double>(static_cast<size_t>(LD) * kN * kH, 13);
  const auto dy = random_vec<double>(static_cast<size_t>(kT) * kN * HY, 14);
  const auto dhT = random_vec<double>(static_cast<size_t>(LD) * kN * kH, 15);
  const auto dcT = random_vec<double>(static_cast<size_t>(LD) * kN * kH, 16);
  const std::vector<int32_t> len(kLengths.begin() + n0, kLengths.begin() + n0 + n);
  const auto xs = rows(x, kT, kC, n0, n), h0s = rows(h0, LD, kH, n0, n), c0s = rows(c0, LD, kH, n0, n);
  const auto dys = rows(dy, kT, HY, n0, n), dhTs = rows(dhT, LD, kH, n0, n), dcTs = rows(dcT, LD, kH, n0, n);
  Result r;
  r.y.resize(static_cast<size_t>(kT) * n * HY);
  r.hT.resize(static_cast<size_t>(LD) * n * kH);
  r.cT.resize(r.hT.size());
  r.dx.resize(xs.size());
  r.dh0.resize(r.hT.size());
  r.dc0.resize(r.hT.size());
  ForwardOptions opt;  // train mode, running averages updated
  opt.row0 = n0;
  opt.update = 3;
  s.forward(opt, kT, n, {.x = xs.data(), .lengths = len.data(), .h0 = h0s.data(), .c0 = c0s.data()},
            {.y = r.y.data(), .hT = r.hT.data(), .cT = r.cT.data()});
  s.backward(dys.data(), dhTs.data(), dcTs.data(), r.dx.data(), r.dh0.data(), r.dc0.data());
  r.grads.assign(s.grads().begin(), s.grads().end());
  r.buffers.assign(s.buffers().begin(), s.buffers().end());
  s.popstats_begin();
  for (int b = 0; b < 2; ++b) {
    const auto xb = rows(random_vec<double>(static_cast<size_t>(kT) * kN * kC, 20 + b), kT, kC, n0, n);
    s.popstats_feed(kT, n, xb.data(), len.data());
  }
  s.popstats_finish();
  r.pass_buffers.assign(s.buffers().begin(), s.buffers().end());
  return r;
}

// The shards run side by side, as ranks do.
std::vector<Result> run_shards(Cell cell, bool bidir, int K, bool synchronized) {
  ThreadGroup group(K);
  std::vector<Result> out(K);
  std::vector<std::thread> threads;
  for (int r = 0; r < K; ++r)
    threads.emplace_back([&, r] {
      const int n0 = kN * r / K, n1 = kN * (r + 1) / K;
      out[r] = run_rows(cell, bidir, n0, n1 - n0, synchronized ? group.member(r) : nullptr);
    });
  for (auto& t : threads) t.join();
  return out;
}

// Largest |a - b| / (1 + |b|): gradients reach ~1e2 here, and BN divides rounding by small
// standard deviations, so the bound is on the relative difference.
double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    m = std::max(m, std::abs(a[i] - b[i]) / (1 + std::abs(b[i])));
  return m;
}

class SyncStats : public ::testing::TestWithParam<std::tuple<Cell, int, bool>> {};

// The one process the shards are compared with. Bidirectional: as a group of one, whose stack runs
// the two directions in turn as the shards do (unsynchronized, they run side by side, one core
// each, which rounds differently: over 70 steps of batch-normalized dynamics that shows at 1e-8).
Stack<double>::Allreduce one_process(bool bidir) {
  if (!bidir) return nullptr;
  static ThreadGroup alone(1);
  return alone.member(0);
}

TEST_P(SyncStats, ShardsTogetherEqualOneProcess) {
  const auto [cell, K, bidir] = GetParam();
  const int LD = kL * (bidir ? 2 : 1), HY = kH * (bidir ? 2 : 1);
  const Result full = run_rows(cell, bidir, 0, kN, one_process(bidir));
  const auto shards = run_shards(cell, bidir, K, true);
  std::vector<double> grads(full.grads.size(), 0.0);
  double worst = 0;
  for (int r = 0; r < K; ++r) {
    const int n0 = kN * r / K, n = kN * (r + 1) / K - n0;
    const Result& s = shards[r];
    worst = std::max({worst, max_diff(s.y, rows(full.y, kT, HY, n0, n)),
                      max_diff(s.hT, rows(full.hT, LD, kH, n0, n)), max_diff(s.cT, rows(full.cT, LD, kH, n0, n)),
                      max_diff(s.dx, rows(full.dx, kT, kC, n0, n)), max_diff(s.dh0, rows(full.dh0, LD, kH, n0, n)),
                      max_diff(s.dc0, rows(full.dc0, LD, kH, n0, n)), max_diff(s.buffers, full.buffers),
                      max_diff(s.pass_buffers, full.pass_buffers)});
    for (size_t i = 0; i < grads.size(); ++i) grads[i] += s.grads[i];
  }
  worst = std::max(worst, max_diff(grads, full.grads));
  EXPECT_LT(worst, 1e-9) << cell_name(cell) << " K=" << K;
  std::printf("[ sync ] %s K=%d: largest relative difference from one process %.1e (double)\n", cell_name(cell), K, worst);
}

TEST_P(SyncStats, WithoutSynchronizationBatchNormDiffers) {
  const auto [cell, K, bidir] = GetParam();
  const Result full = run_rows(cell, bidir, 0, kN, nullptr);
  const auto shards = run_shards(cell, bidir, K, false);
  double dy = 0;
  for (int r = 0; r < K; ++r) {
    const int n0 = kN * r / K, n = kN * (r + 1) / K - n0;
    dy = std::max(dy, max_diff(shards[r].y, rows(full.y, kT, kH * (bidir ? 2 : 1), n0, n)));
  }
  if (cell_has_population_stats(cell))
    EXPECT_GT(dy, 1e-2) << cell_name(cell) << ": shard statistics should differ from the batch's";
  else
    EXPECT_LT(dy, 1e-12) << cell_name(cell) << ": nothing to synchronize, the rows are independent";
}

// A training-mode forward without backward (T = 70: three chunks of time) on rows [n0, n0 + n):
// the outputs and the running averages. The chunks look up the group's row counts at their offset.
Result forward_only_rows(Cell cell, bool bidir, int n0, int n,
                         const Stack<double>::Allreduce& allreduce) {
  constexpr int T = 70;
  StackConfig cfg = sync_config(cell, bidir);
  cfg.t_max = T;
  Stack<double> s(cfg);
  randomize(s, 5);
  s.set_stat_allreduce(allreduce);
  const auto x = rows(random_vec<double>(static_cast<size_t>(T) * kN * kC, 31), T, kC, n0, n);
  std::vector<int32_t> len(n);
  for (int i = 0; i < n; ++i) len[i] = T - 9 * (n0 + i);  // 70, 61, ... 25: ragged across chunks
  Result r;
  r.y.resize(static_cast<size_t>(T) * n * kH * cfg.directions());
  ForwardOptions opt;
  opt.need_backward = false;
  opt.row0 = n0;
  s.forward(opt, T, n, {.x = x.data(), .lengths = len.data()}, {.y = r.y.data()});
  r.buffers.assign(s.buffers().begin(), s.buffers().end());
  return r;
}

TEST_P(SyncStats, ChunkedTrainingForwardEqualsOneProcess) {
  const auto [cell, K, bidir] = GetParam();
  const Result full = forward_only_rows(cell, bidir, 0, kN, one_process(bidir));
  ThreadGroup group(K);
  std::vector<Result> shards(K);
  std::vector<std::thread> threads;
  for (int r = 0; r < K; ++r)
    threads.emplace_back([&, r] {
      shards[r] = forward_only_rows(cell, bidir, kN * r / K, kN * (r + 1) / K - kN * r / K,
                                    group.member(r));
    });
  for (auto& t : threads) t.join();
  double worst = 0;
  for (int r = 0; r < K; ++r) {
    const int n0 = kN * r / K, n = kN * (r + 1) / K - n0;
    worst = std::max({worst, max_diff(shards[r].y, rows(full.y, 70, kH * (bidir ? 2 : 1), n0, n)),
                      max_diff(shards[r].buffers, full.buffers)});
  }
  // Bidirectional stacks are not chunked (whole sequences); here the two layers (the second
  // reading 2H) carry the shards' other summation order through 70 steps of these random
  // batch-normalized dynamics: bnlstm's 1e-16 grow to about 1e-8 (one-directional: 1e-10).
  EXPECT_LT(worst, bidir ? 1e-7 : 1e-9) << cell_name(cell) << " K=" << K;
}

// Every cell on 2 and 3 shards; bidirectional on 2.
std::vector<std::tuple<Cell, int, bool>> sync_cases() {
  std::vector<std::tuple<Cell, int, bool>> v;
  std::vector<Cell> cells = all_cells();
  for (Cell c : all_rnn_cells()) cells.push_back(c);
  for (Cell c : all_gru_cells()) cells.push_back(c);
  for (Cell c : cells)
    for (int K : {2, 3}) v.emplace_back(c, K, false);
  for (Cell c : cells) v.emplace_back(c, 2, true);
  return v;
}

INSTANTIATE_TEST_SUITE_P(Cells, SyncStats, ::testing::ValuesIn(sync_cases()),
                         [](const auto& info) {
                           std::string s = std::string(cell_name(std::get<0>(info.param))) + "_K" +
                                           std::to_string(std::get<1>(info.param)) +
                                           (std::get<2>(info.param) ? "_bidir" : "");
                           for (auto& ch : s)
                             if (ch == '-') ch = '_';
                           return s;
                         });

}  // namespace
}  // namespace rbn::testing
