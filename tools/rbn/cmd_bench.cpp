// rbn bench: one full training step (forward, backward, clipping, Adam) and one inference forward
// per cell on the paper's shapes, on each GEMM backend, median of several runs after warm-up,
// beside PyTorch (bench/torch_baseline.py) and oneDNN's own LSTM primitive measured in the same
// run (against rbn's layer alone, LayerCase: the same work), with the matrix products' GFLOP/s
// against that backend's sgemm rate on the same shapes, and memory. `--sgemm`: the backends' sgemm rates on the steps' main shapes and the FMA peak.
// `--stream`: the latency of one step of streaming inference (the step API, one step per call)
// at batch 1 and 8, median and 99th percentile, beside nn.LSTM stepping the same way.
// `--precision bf16`: rbn's products with bf16 inputs (refused on a CPU without bf16).
#include <immintrin.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <oneapi/dnnl/dnnl.hpp>

#include "bench_onednn.hpp"
#include "cells/kernels.hpp"
#include "commands.hpp"
#include "train/group.hpp"
#include "train/model.hpp"
#include "train/optim.hpp"
#include "util/blas.hpp"
#include "util/error.hpp"
#include "util/line_vector.hpp"
#include "util/platform.hpp"
#include "util/rng.hpp"

namespace rbn::cli {

namespace {

struct Shape {
  std::string name;
  int T, N, C, H, K;
  bool lm;
};

const std::vector<Shape>& all_shapes() {
  static const std::vector<Shape> s{{"smnist", 784, 100, 1, 100, 10, false},
                                    {"ptb", 100, 64, 50, 1000, 50, true},
                                    {"text8", 180, 128, 27, 2000, 27, true}};
  return s;
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0.0 : (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

// The q-quantile of v (nearest rank).
double quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t i = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
  return v[std::min(v.size() - 1, i > 0 ? i - 1 : 0)];
}

// Same-round ratios a[i] / b[i]: their median and quartiles over the rounds. Two cases timed in
// the same round saw the same machine; a ratio of their medians mixes moments of different speed
// (docs/performance-history.md, "Issue 17: the GRU rows after both changes").
struct PairedRatio {
  double median = 0, q1 = 0, q3 = 0;
};

PairedRatio paired_ratio(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> r;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    if (b[i] > 0) r.push_back(a[i] / b[i]);
  if (r.empty()) return {};
  return {median(r), quantile(r, 0.25), quantile(r, 0.75)};
}

long peak_rss_kb() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

// Matrix-product FLOPs of one training step (forward + backward) and of one inference forward,
// for a cell with `gates` gate blocks (G = gates * H: 4 LSTM, 3 GRU). A language model's one-hot
// input makes W x a gathered column of W and dW a scatter (sparse input rows, docs/cells.md): no
// product, so no FLOPs counted for them (bnx-seq keeps the product; its GFLOP/s on these shapes is
// understated by that share, about 3 % on PTB).
struct Flops {
  double train = 0, infer = 0;
};
Flops step_flops(const Shape& s, int gates) {
  const double TN = double(s.T) * s.N, G = double(gates) * s.H;
  const double in = s.lm ? 0.0 : 2 * TN * s.C * G, rec = 2 * TN * s.H * G;
  const double head = s.lm ? 2 * TN * s.H * s.K : 2.0 * s.N * s.H * s.K;
  Flops f;
  f.infer = in + rec + head;
  // backward: dR and dh per step (2 rec), dW (1 in; no dx for a one-hot/pixel input), head dW, dh
  f.train = f.infer + 2 * rec + in + 2 * head;
  return f;
}

// This machine's sgemm rate on exactly the products of one training step, run back to back on
// one backend, for a cell with `gates` gate blocks (operands on cache lines, as rbn's caches are).
double sgemm_rate_gflops(const Shape& s, int gates, int reps, blas::Backend be) {
  const int T = s.T, N = s.N, C = s.C, H = s.H, G = gates * H, K = s.K;
  const int TN = T * N;
  LineVector<float> X(size_t(TN) * C, 0.5f), W(size_t(G) * C, 0.1f), R(size_t(G) * H, 0.01f),
      A(size_t(TN) * G), Hs(size_t(TN) * H, 0.1f), dR(size_t(G) * H), dh(size_t(N) * H),
      Wy(size_t(K) * H, 0.1f), Y(size_t(TN) * K), dW(size_t(G) * C);
  const int head_rows = s.lm ? TN : N;
  auto run = [&] {
    if (!s.lm)  // (one-hot input: gathered, not multiplied; step_flops)
      blas::sgemm(be, false, true, TN, G, C, 1.f, X.data(), C, W.data(), C, 0.f, A.data(), G);
    for (int t = 0; t < T; ++t)
      blas::sgemm(be, false, true, N, G, H, 1.f, Hs.data() + size_t(t) * N * H, H, R.data(), H, 0.f,
                 A.data() + size_t(t) * N * G, G);
    blas::sgemm(be, false, true, head_rows, K, H, 1.f, Hs.data(), H, Wy.data(), H, 0.f, Y.data(), K);
    blas::sgemm(be, true, false, K, H, head_rows, 1.f, Y.data(), K, Hs.data(), H, 0.f, Wy.data(), H);
    blas::sgemm(be, false, false, head_rows, H, K, 1.f, Y.data(), K, Wy.data(), H, 0.f, Hs.data(), H);
    for (int t = 0; t < T; ++t)
      blas::sgemm(be, false, false, N, H, G, 1.f, A.data() + size_t(t) * N * G, G, R.data(), H, 0.f,
                 dh.data(), H);
    blas::sgemm(be, true, false, G, H, TN, 1.f, A.data(), G, Hs.data(), H, 0.f, dR.data(), H);
    if (!s.lm)
      blas::sgemm(be, true, false, G, C, TN, 1.f, A.data(), G, X.data(), C, 0.f, dW.data(), C);
  };
  run();
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_ms();
    run();
    ms.push_back(now_ms() - t0);
  }
  return step_flops(s, gates).train / (median(ms) * 1e-3) / 1e9;
}

// A case's time at its best thread count: the median over the rounds, and every round's sample
// at that count, in round order (for same-round ratios).
struct Best {
  double ms = 1e300;
  int threads = 0;
  std::vector<double> rounds;
  void take(const std::vector<double>& samples, int th) {
    if (const double m = median(samples); m < ms) ms = m, threads = th, rounds = samples;
  }
};

struct RbnResult {
  Best train, infer;
  double backward_reads_mb = 0, allocated_mb = 0, infer_state_mb = 0;
};

struct StepBench {
  std::vector<RbnResult> rbn;                  // every backend x every cell (backend-major)
  std::vector<RbnResult> layer;                // the same, the layer alone (LayerCase); empty without anchors
  std::map<OnednnRnn, RbnResult> anchors;      // oneDNN's own RNN of each kind asked for
};

// rbn's layer alone, timed as oneDNN's primitive is (bench_onednn.hpp), so that "x dnnl" compares
// the same work: one layer of the cell on the same dense input [T,N,C] (no embedding: the
// language-model shapes' W x is a product here, as it is for oneDNN), a training-mode forward and
// the backward from a given dy with dx, dW, dR and the biases; no head, loss, clipping or optimizer.
class LayerCase {
 public:
  LayerCase(const Shape& s, Cell cell, blas::Backend be) : s_(s), backend_(be) {
    StackConfig c;
    c.cell = cell;
    c.input_size = s.C;
    c.hidden_size = s.H;
    c.t_max = s.T;
    stack_ = std::make_unique<Stack<float>>(c);
    const size_t TN = size_t(s.T) * s.N;
    x_.resize(TN * s.C), dx_.resize(TN * s.C), y_.resize(TN * s.H), dy_.resize(TN * s.H);
    bench_fill(x_.data(), x_.size(), 1.0f);  // as oneDNN's case fills its src and diff_dst
    bench_fill(dy_.data(), dy_.size(), 0.01f);
  }
  void train_step() {
    blas::set_backend(backend_);
    stack_->zero_grad();
    stack_->forward(ForwardOptions{}, s_.T, s_.N, {.x = x_.data()}, {.y = y_.data()});
    stack_->backward(dy_.data(), nullptr, nullptr, dx_.data(), nullptr, nullptr);
  }
  void infer_step() {
    blas::set_backend(backend_);
    ForwardOptions fo;
    fo.mode = Mode::infer;
    fo.need_backward = false;
    stack_->forward(fo, s_.T, s_.N, {.x = x_.data()}, {.y = y_.data()});
  }

 private:
  Shape s_;
  blas::Backend backend_;
  std::unique_ptr<Stack<float>> stack_;
  std::vector<float> x_, dx_, y_, dy_;
};

// One model per cell and backend, and oneDNN's RNN primitive of each kind in `anchor_kinds`, all
// timed in the same rounds at every thread count: the machines are shared and their speed drifts,
// and interleaving keeps the ratios between the cases fair.
StepBench bench_steps(const Shape& s, const std::vector<Cell>& cells,
                      const std::vector<blas::Backend>& backends, const std::vector<OnednnRnn>& anchor_kinds,
                      const std::vector<int>& thread_counts, int warmup, int repeats) {
  Rng rng(7);
  std::vector<float> x(size_t(s.T) * s.N * s.C);
  std::vector<int32_t> ids(size_t(s.T) * s.N), tgt(size_t(s.T) * s.N), labels(s.N);
  for (auto& v : x) v = static_cast<float>(rng.uniform());
  for (auto& v : ids) v = static_cast<int32_t>(rng.below(s.K));
  for (auto& v : tgt) v = static_cast<int32_t>(rng.below(s.K));
  for (auto& v : labels) v = static_cast<int32_t>(rng.below(s.K));
  std::vector<float> logits(size_t(s.lm ? s.T : 1) * s.N * s.K);

  struct Case {
    blas::Backend backend;
    std::unique_ptr<Model> model;
    std::vector<ParamRef> params;
    std::unique_ptr<Optimizer> opt;
  };
  std::vector<Case> cases;
  for (size_t i = 0; i < backends.size() * cells.size(); ++i) {
    const blas::Backend be = backends[i / cells.size()];
    const Cell cell = cells[i % cells.size()];
    ModelConfig mc;
    mc.rnn.cell = cell;
    mc.rnn.input_size = s.C;
    mc.rnn.hidden_size = s.H;
    mc.rnn.t_max = s.T;
    mc.head = s.lm ? Head::lm : Head::classify;
    mc.num_classes = s.K;
    Case c;
    c.backend = be;
    c.model = std::make_unique<Model>(mc);
    for (auto& p : c.model->parameters()) c.params.push_back({p.name, p.value, p.grad, p.numel});
    OptimConfig oc;
    oc.name = "adam";
    oc.lr = 1e-3;
    c.opt = make_optimizer(oc);
    cases.push_back(std::move(c));
  }
  auto train_step = [&](Case& c) {
    blas::set_backend(c.backend);
    c.model->zero_grad();
    ForwardOptions fo;
    if (s.lm)
      c.model->lm_step(fo, s.T, s.N, {.ids = ids.data(), .targets = tgt.data()}, true);
    else
      c.model->classify_step(fo, s.T, s.N, x.data(), nullptr, labels.data(), true);
    clip_grad_norm(c.params, 1.0f);
    c.opt->step(c.params, 1e-3f);
  };
  auto infer_step = [&](Case& c) {
    blas::set_backend(c.backend);
    ForwardOptions fo;
    fo.mode = Mode::infer;
    fo.need_backward = false;
    c.model->logits(fo, s.T, s.N, s.lm ? nullptr : x.data(), s.lm ? ids.data() : nullptr, nullptr,
                    nullptr, nullptr, logits.data(), nullptr, nullptr);
  };
  // Against oneDNN's layer: each case's layer alone as well.
  std::vector<LayerCase> layers;
  if (!anchor_kinds.empty())
    for (size_t i = 0; i < cases.size(); ++i)
      layers.emplace_back(s, cells[i % cells.size()], backends[i / cells.size()]);
  // What one round runs: every rbn case (and its layer alone) and every oneDNN primitive at every
  // thread count (the primitives are made at their count).
  struct Unit {
    int threads;
    size_t rbn_case;                    // cases[rbn_case] (layers[rbn_case] if `layer`), or
    std::optional<OnednnRnn> kind;      // oneDNN's primitive of this kind
    std::unique_ptr<OnednnRnnCase> dnnl;
    bool layer = false;
  };
  std::vector<Unit> units;
  for (int th : thread_counts)
    for (size_t k = 0; k < cases.size(); ++k) {
      units.push_back({th, k, std::nullopt, nullptr});
      if (!layers.empty()) units.push_back({th, k, std::nullopt, nullptr, true});
    }
  for (OnednnRnn kind : anchor_kinds)
    try {
      for (int th : thread_counts) {
        set_threads(th);
        units.push_back({th, 0, kind, std::make_unique<OnednnRnnCase>(kind, s.T, s.N, s.C, s.H)});
      }
    } catch (const dnnl::error& e) {
      std::fprintf(stderr, "note: oneDNN %s on %s: %s (column left empty)\n", onednn_rnn_name(kind),
                   s.name.c_str(), e.what());
      std::erase_if(units, [&](const Unit& u) { return u.kind == kind; });
    }
  // Each round starts one unit later than the round before, so that a slow stretch of the machine
  // that begins or ends inside a round does not always fall on the same cases. Returns every
  // unit's samples, one per round.
  auto time_all = [&](bool train) {
    auto run = [&](Unit& u) {
      set_threads(u.threads);
      const double t0 = now_ms();
      if (u.dnnl)
        train ? u.dnnl->train_step() : u.dnnl->infer_step();
      else if (u.layer)
        train ? layers[u.rbn_case].train_step() : layers[u.rbn_case].infer_step();
      else
        train ? train_step(cases[u.rbn_case]) : infer_step(cases[u.rbn_case]);
      return now_ms() - t0;
    };
    const size_t J = units.size();
    for (int i = 0; i < warmup; ++i)
      for (auto& u : units) run(u);
    std::vector<std::vector<double>> ms(J);
    for (int i = 0; i < repeats; ++i)
      for (size_t jj = 0; jj < J; ++jj) {
        const size_t j = (jj + static_cast<size_t>(i)) % J;
        ms[j].push_back(run(units[j]));
      }
    return ms;
  };
  const auto tr = time_all(true);
  const auto in = time_all(false);
  StepBench out;
  out.rbn.resize(cases.size());
  out.layer.resize(layers.size());
  for (size_t j = 0; j < units.size(); ++j) {
    RbnResult& r = units[j].kind    ? out.anchors[*units[j].kind]
                   : units[j].layer ? out.layer[units[j].rbn_case]
                                    : out.rbn[units[j].rbn_case];
    r.train.take(tr[j], units[j].threads);
    r.infer.take(in[j], units[j].threads);
  }
  set_threads(*std::max_element(thread_counts.begin(), thread_counts.end()));
  std::vector<RbnResult>& res = out.rbn;
  // Memory: what backward reads (the stack's cache) beside everything the step allocated.
  for (size_t k = 0; k < cases.size(); ++k) {
    train_step(cases[k]);
    const Model& m = *cases[k].model;
    res[k].backward_reads_mb = m.rnn().cache_bytes() / 1e6;
    res[k].allocated_mb = (m.rnn().cache_bytes() + m.workspace_bytes()) / 1e6;
  }
  return out;
}

// Inference state memory at T and 8T: chunked inference keeps O(N*H) state.
double infer_cache_mb(const Shape& s, Cell cell, int T) {
  StackConfig c;
  c.cell = cell;
  c.input_size = s.C;
  c.hidden_size = s.H;
  c.t_max = s.T;
  Stack<float> st(c);
  std::vector<float> x(size_t(T) * s.N * s.C, 0.5f), y(size_t(T) * s.N * s.H);
  ForwardOptions fo;
  fo.mode = Mode::infer;
  fo.need_backward = false;
  st.forward(fo, T, s.N, {.x = x.data()}, {.y = y.data()});
  return (st.cache_bytes() + st.workspace_bytes()) / 1e6;
}

nlohmann::json run_torch(const std::string& script, const Shape& s, Cell cell, const char* mode,
                         int repeats, int warmup) {
  const std::string tmp = fmt::format("/tmp/rbn-bench-torch-{}.json", getpid());
  const std::string cmd =
      fmt::format("/usr/bin/python3 '{}' --cell {} --shape {} --mode {} --repeats {} --warmup {} "
                  "--sweep-threads --json '{}' 2>/dev/null",
                  script, cell_name(cell), s.name, mode, repeats, warmup, tmp);
  if (std::system(cmd.c_str()) != 0) return nullptr;
  std::ifstream in(tmp);
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception&) {
    return nullptr;
  }
  std::remove(tmp.c_str());
  return j;
}

std::vector<std::string> split_csv(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

struct BenchFlags {
  std::string shapes = "smnist,ptb";
  std::string cells = "lstm,bnlstm,bnx,lnlstm";
  std::string bidir_cells = "bnlstm";
  std::string threads = "1,2";
  std::string gemm = "openblas,onednn";
  int repeats = 5, warmup = 1, torch_repeats = 3;
  bool no_torch = false, no_onednn_rnn = false, sgemm_table = false;
  std::string torch_script;
  std::string json;
  bool allreduce = false;
  bool stream = false;
  std::string stream_batch = "1,8";
  std::string precision = "fp32";
  int stream_steps = 400;
};

// The oneDNN primitive a cell is measured against: its vanilla LSTM for the LSTM cells (4 gate
// blocks), its lbr_gru (nn.GRU's formula) for GRU cells (3 gate blocks); none for tanh RNNs.
std::optional<OnednnRnn> onednn_anchor(Cell cell) {
  if (cell_gates(cell) == 4) return OnednnRnn::lstm;
  if (cell_gates(cell) == 3) return OnednnRnn::lbr_gru;
  return std::nullopt;
}

// GFLOP/s of a register-only FMA loop on `threads` threads: 12 independent accumulators per
// thread (more than FMA latency x ports), nothing from memory, so this is the cores' peak at
// whatever clock the (virtual) machine runs, in the cells' vectors (kern::FloatLanes: AVX-512 or
// AVX2 with FMA). 0 without them.
double fma_peak_gflops(int threads) {
#ifndef RBN_FLOAT_LANES
  (void)threads;
  return 0.0;
#else
  using L = kern::FloatLanes;
  using V = L::V;
  constexpr int lanes = L::n;
  auto madd = [](V a, V b, V c) { return L::fmadd(a, b, c); };
  auto set1 = [](float x) { return L::set1(x); };
  auto sum = [](V a) {  // (stored and added, not _mm512_reduce_add_ps: GCC 12 warns inside it)
    float f[lanes];
    L::store<false>(f, a, L::first(lanes));
    float s = 0;
    for (float x : f) s += x;
    return s;
  };
  constexpr long iters = 20000000;
  double best = 0;
  for (int r = 0; r < 3; ++r) {
    double sink = 0;
    const double t0 = now_ms();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
      const V m = set1(0.9999999f), c = set1(1e-7f);
      V a0 = set1(0.1f), a1 = set1(0.2f), a2 = set1(0.3f), a3 = set1(0.4f), a4 = set1(0.5f),
        a5 = set1(0.6f), a6 = set1(0.7f), a7 = set1(0.8f), a8 = set1(0.9f), a9 = set1(1.0f),
        a10 = set1(1.1f), a11 = set1(1.2f);
      for (long i = 0; i < iters; ++i) {
        a0 = madd(a0, m, c), a1 = madd(a1, m, c), a2 = madd(a2, m, c), a3 = madd(a3, m, c);
        a4 = madd(a4, m, c), a5 = madd(a5, m, c), a6 = madd(a6, m, c), a7 = madd(a7, m, c);
        a8 = madd(a8, m, c), a9 = madd(a9, m, c), a10 = madd(a10, m, c), a11 = madd(a11, m, c);
      }
      sink += sum(a0) + sum(a1) + sum(a2) + sum(a3) + sum(a4) + sum(a5) + sum(a6) + sum(a7) +
              sum(a8) + sum(a9) + sum(a10) + sum(a11);
    }
    const double sec = (now_ms() - t0) * 1e-3;
    if (sink == 42.0) std::printf(" ");  // keeps the loop
    best = std::max(best, double(threads) * iters * 12 * lanes * 2 / sec / 1e9);
  }
  return best;
#endif
}

// The sgemm table: each backend on the products that dominate each shape's step, and the
// machine's FMA peak. Rounds interleave the backends; each sample runs >= 30 ms.
void run_sgemm_table(const std::vector<blas::Backend>& backends, int threads, int repeats,
                     nlohmann::json& out) {
  struct Gemm {
    const char* name;
    bool tb;
    int m, k, n;
  };
  static const Gemm shapes[] = {{"PTB h.R^T", true, 64, 1000, 4000},
                                {"PTB hoisted x.W^T", true, 6400, 50, 4000},
                                {"text8 h.R^T", true, 128, 2000, 8000},
                                {"sMNIST h.R^T", true, 100, 100, 400},
                                {"1024^3", false, 1024, 1024, 1024}};
  set_threads(threads);
  const double peak = fma_peak_gflops(threads);
  std::printf("sgemm, row-major, %d threads, GFLOP/s: median of %d samples of >= 30 ms, backends "
              "interleaved; FMA peak (register-only loop, %d threads) %.1f GFLOP/s\n",
              threads, repeats, threads, peak);
  std::printf("%-20s %-16s", "shape", "m x k x n");
  for (auto be : backends) std::printf(" %10s", blas::backend_name(be));
  std::printf(" %7s\n", "%peak");
  out["fma_peak_gflops"] = peak;
  for (const Gemm& g : shapes) {
    LineVector<float> A(size_t(g.m) * g.k, 0.01f), B(size_t(g.k) * g.n, 0.02f), C(size_t(g.m) * g.n);
    const double flop = 2.0 * g.m * g.k * g.n;
    std::vector<std::vector<double>> rates(backends.size());
    auto call = [&](blas::Backend be) {
      blas::sgemm(be, false, g.tb, g.m, g.n, g.k, 1.f, A.data(), g.k, B.data(), g.tb ? g.k : g.n, 0.f,
                  C.data(), g.n);
    };
    for (auto be : backends) call(be);  // warm-up (oneDNN generates its kernels)
    for (int r = 0; r < repeats; ++r)
      for (size_t b = 0; b < backends.size(); ++b) {
        int calls = 0;
        const double t0 = now_ms();
        double dt = 0;
        while (calls < 3 || dt < 30.0) {
          call(backends[b]);
          ++calls;
          dt = now_ms() - t0;
        }
        rates[b].push_back(flop * calls / (dt * 1e-3) / 1e9);
      }
    nlohmann::json row{{"shape", g.name}, {"m", g.m}, {"k", g.k}, {"n", g.n}};
    std::printf("%-20s %-16s", g.name, fmt::format("{}x{}x{}", g.m, g.k, g.n).c_str());
    double best = 0;
    for (size_t b = 0; b < backends.size(); ++b) {
      const double gf = median(rates[b]);
      best = std::max(best, gf);
      row[std::string(blas::backend_name(backends[b])) + "_gflops"] = gf;
      std::printf(" %10.1f", gf);
    }
    std::printf(" %6.0f%%\n", peak > 0 ? 100.0 * best / peak : 0.0);
    out["sgemm"].push_back(row);
  }
}

// Under mpirun: the median time of one in-place sum over the group for messages of 8 B to 8 MB,
// as the trainer issues them (doubles for statistics, floats for gradients). Rank 0 prints.
void bench_allreduce(int repeats) {
  Group& g = Group::world();
  if (!g.distributed())
    throw UsageError("--allreduce: run under mpirun with 2 or more ranks (mpirun -np 2 rbn bench --allreduce)");
  const bool root = g.rank() == 0;
  if (root) {
    std::printf("sum over %d ranks (%s): median of %d\n", g.size(), g.describe().c_str(), repeats);
    std::printf("%12s %12s %12s\n", "bytes", "us", "MB/s");
  }
  for (size_t bytes = 8; bytes <= (size_t{8} << 20); bytes *= 4) {
    std::vector<double> buf(bytes / 8, 1.0);
    const int reps = bytes < (1 << 20) ? std::max(repeats, 200) : std::max(repeats, 10);
    std::vector<double> us;
    for (int r = 0; r < reps + 3; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      g.sum(buf.data(), buf.size());
      const double dt = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
      if (r >= 3) us.push_back(dt);
    }
    // every rank's median, the slowest reported (a sum waits for the last rank)
    std::sort(us.begin(), us.end());
    double med = us[us.size() / 2], worst = med;
    std::vector<double> all(g.size(), 0.0);
    all[g.rank()] = med;
    g.sum(all.data(), all.size());
    for (double v : all) worst = std::max(worst, v);
    if (root) std::printf("%12zu %12.1f %12.1f\n", bytes, worst, bytes / worst);
  }
}

// Parsed lists of the flags; each bad item is a UsageError naming its flag.
struct BenchPlan {
  std::vector<Shape> shapes;
  std::vector<Cell> cells;
  std::vector<Cell> bidir_cells;
  std::vector<int> threads;
  std::vector<blas::Backend> backends;
};

BenchPlan parse_plan(const BenchFlags& f) {
  BenchPlan p;
  for (const auto& n : split_csv(f.shapes)) {
    auto it = std::find_if(all_shapes().begin(), all_shapes().end(), [&](const Shape& s) { return s.name == n; });
    if (it == all_shapes().end()) throw UsageError("--shapes: unknown shape '" + n + "'");
    p.shapes.push_back(*it);
  }
  for (const auto& n : split_csv(f.cells)) {
    auto c = parse_cell(n);
    if (!c) throw UsageError("--cells: unknown cell '" + n + "'");
    p.cells.push_back(*c);
  }
  for (const auto& n : split_csv(f.bidir_cells)) {
    auto c = parse_cell(n);
    if (!c) throw UsageError("--bidir-cells: unknown cell '" + n + "'");
    p.bidir_cells.push_back(*c);
  }
  for (const auto& n : split_csv(f.threads)) {
    try {
      p.threads.push_back(std::stoi(n));
    } catch (const std::exception&) {
      throw UsageError("--threads: not a number: '" + n + "'");
    }
    if (p.threads.back() <= 0) throw UsageError("--threads: must be positive");
  }
  if (p.threads.empty()) throw UsageError("--threads: give at least one thread count");
  for (const auto& n : split_csv(f.gemm)) {
    auto b = blas::parse_backend(n);
    if (!b) throw UsageError("--gemm: unknown GEMM backend '" + n + "' (openblas, onednn)");
    p.backends.push_back(*b);
  }
  if (p.backends.empty()) throw UsageError("--gemm: give at least one backend");
  return p;
}

// Where rbn's large buffers lie, for the report's header (util/line_vector.hpp).
std::string huge_pages_line() {
  const size_t hp = huge_page_size();
  if (hp > 0) return fmt::format("rbn's large buffers: on {} KiB transparent huge pages (RBN_HUGE_PAGES=on)", hp >> 10);
  return "rbn's large buffers: on ordinary pages (RBN_HUGE_PAGES=off, or the kernel offers no transparent huge pages)";
}

std::string fmt_or_dash(double v, const char* spec) { return v > 0 ? fmt::format(fmt::runtime(spec), v) : "-"; }

void run_step_bench(const BenchFlags& f, const BenchPlan& p, const std::string& script, bool torch,
                    nlohmann::json& out) {
  std::printf("rbn bench: medians of %d runs after %d warm-up; rbn and oneDNN's RNN at their best of threads "
              "{%s}; PyTorch at its best of torch threads {1,2}\n",
              f.repeats, f.warmup, f.threads.c_str());
  for (auto be : p.backends) std::printf("  gemm %s = %s\n", blas::backend_name(be), blas::backend_description(be).c_str());
  std::printf("  rbn's float products: %s inputs\n", blas::precision_name(blas::precision()));
  std::printf("  %s\n", huge_pages_line().c_str());
  std::printf("\n%-7s %-7s %-8s %-5s %9s %3s %9s %3s %6s %9s %9s %3s %6s %6s %8s %8s %6s %8s %8s\n", "shape", "cell",
              "gemm", "mode", "rbn ms", "thr", "torch ms", "thr", "ratio", "layer ms", "dnnl ms", "thr", "x dnnl",
              "x base", "GFLOP/s", "sgemm", "%sgemm", "bwd-read", "alloc");
  // (PyTorch module, mode): PyTorch once per shape; the three GRU rows share nn.GRU's
  std::map<std::string, nlohmann::json> torch_cache;
  for (const auto& s : p.shapes) {
    const int max_threads = *std::max_element(p.threads.begin(), p.threads.end());
    set_threads(max_threads);
    std::vector<std::map<int, double>> sgemm(p.backends.size());  // [backend][gate blocks]
    for (size_t bi = 0; bi < p.backends.size(); ++bi)
      for (Cell c : p.cells)
        if (!sgemm[bi].count(cell_gates(c)))
          sgemm[bi][cell_gates(c)] = sgemm_rate_gflops(s, cell_gates(c), 3, p.backends[bi]);
    std::vector<OnednnRnn> kinds;  // oneDNN's RNN primitive for each kind the cells need
    for (Cell c : p.cells)
      if (auto kind = onednn_anchor(c); kind && !f.no_onednn_rnn && std::ranges::find(kinds, *kind) == kinds.end())
        kinds.push_back(*kind);
    const StepBench bench = bench_steps(s, p.cells, p.backends, kinds, p.threads, f.warmup, f.repeats);
    const std::vector<RbnResult>& results = bench.rbn;
    torch_cache.clear();
    for (size_t bi = 0; bi < p.backends.size(); ++bi) {
      const blas::Backend be = p.backends[bi];
      // each cell against rbn's own base cell of its family: lstm, or gru for the GRUs
      std::map<Cell, const RbnResult*> base_of;
      for (size_t ci = 0; ci < p.cells.size(); ++ci)
        if (p.cells[ci] == Cell::lstm || p.cells[ci] == Cell::gru)
          base_of[p.cells[ci]] = &results[bi * p.cells.size() + ci];
      for (size_t ci = 0; ci < p.cells.size(); ++ci) {
        const Cell cell = p.cells[ci];
        const RbnResult& r = results[bi * p.cells.size() + ci];
        const Flops fl = step_flops(s, cell_gates(cell));
        const double sg = sgemm[bi].at(cell_gates(cell));
        const Cell base_cell = cell_is_gru(cell) ? Cell::gru : Cell::lstm;
        const RbnResult* base = base_of.count(base_cell) ? base_of.at(base_cell) : nullptr;
        // nn.GRU is PyTorch's only GRU: the GRU family is timed against it (fused, unnormalized)
        const Cell torch_cell = cell_is_gru(cell) ? Cell::gru : cell;
        nlohmann::json row{{"shape", s.name}, {"cell", cell_name(cell)}, {"gemm", blas::backend_name(be)},
                           {"T", s.T}, {"N", s.N}, {"C", s.C}, {"H", s.H}, {"K", s.K},
                           {"rbn_train_ms", r.train.ms}, {"rbn_train_threads", r.train.threads},
                           {"rbn_infer_ms", r.infer.ms}, {"rbn_infer_threads", r.infer.threads},
                           {"train_gflops", fl.train / (r.train.ms * 1e-3) / 1e9},
                           {"infer_gflops", fl.infer / (r.infer.ms * 1e-3) / 1e9},
                           {"sgemm_gflops_same_shapes", sg},
                           {"backward_reads_mb", r.backward_reads_mb}, {"allocated_mb", r.allocated_mb},
                           {"infer_state_mb_T", infer_cache_mb(s, cell, s.T)},
                           {"infer_state_mb_8T", infer_cache_mb(s, cell, 8 * s.T)}};
        const std::string vs = std::string("_vs_rbn_") + cell_name(base_cell);
        // same-round ratios against rbn's base cell and oneDNN's RNN: [train, infer]
        PairedRatio vs_base[2], vs_dnnl[2];
        const auto kind = onednn_anchor(cell);
        const RbnResult* anchor = kind && bench.anchors.count(*kind) ? &bench.anchors.at(*kind) : nullptr;
        // key(mode) names the ratio in the JSON row; its quartiles and the ratio of the medians beside
        auto record = [&](PairedRatio* out, const RbnResult& self, const RbnResult& other, auto&& key) {
          for (int m = 0; m < 2; ++m) {
            const Best& a = m == 0 ? self.train : self.infer;
            const Best& b = m == 0 ? other.train : other.infer;
            out[m] = paired_ratio(a.rounds, b.rounds);
            const std::string k = key(m == 0 ? "train" : "infer");
            row[k] = out[m].median;
            row[k + "_quartiles"] = {out[m].q1, out[m].q3};
            row[k + "_of_medians"] = a.ms / b.ms;
          }
        };
        if (base) record(vs_base, r, *base, [&](const char* mode) { return mode + vs; });
        // against oneDNN's layer: rbn's layer alone (the same work); the whole step's ratio beside
        const RbnResult* layer = anchor ? &bench.layer[bi * p.cells.size() + ci] : nullptr;
        if (anchor) {
          row["onednn_rnn"] = onednn_rnn_name(*kind);
          for (const char* mode : {"train", "infer"}) {
            const Best& b = std::string(mode) == "train" ? layer->train : layer->infer;
            row[std::string("rbn_layer_") + mode + "_ms"] = b.ms;
            row[std::string("rbn_layer_") + mode + "_threads"] = b.threads;
          }
          record(vs_dnnl, *layer, *anchor, [](const char* mode) { return std::string("vs_onednn_") + mode; });
          PairedRatio whole[2];
          record(whole, r, *anchor, [](const char* mode) { return std::string("step_vs_onednn_") + mode; });
        }
        for (const char* mode : {"train", "infer"}) {
          const bool tr = std::string(mode) == "train";
          const double ms = tr ? r.train.ms : r.infer.ms;
          const std::string key = std::string(cell_name(torch_cell)) + "/" + mode;
          if (torch && !torch_cache.count(key))
            torch_cache[key] = run_torch(script, s, torch_cell, mode, f.torch_repeats, 1);
          const nlohmann::json tj = torch ? torch_cache[key] : nlohmann::json();
          double tms = 0;
          int tth = 0;
          if (!tj.is_null()) {
            tms = tj.value("median_ms", 0.0);
            tth = tj.value("torch_threads", 0);
            row[std::string("torch_") + mode + "_ms"] = tms;
            row[std::string("torch_") + mode + "_threads"] = tth;
            row[std::string("torch_") + mode + "_impl"] = tj.value("implementation", "");
            row[std::string("torch_") + mode + "_cell"] = cell_name(torch_cell);
            row[std::string("ratio_") + mode] = ms / tms;
          }
          double dms = 0;
          int dth = 0;
          if (anchor) {
            dms = tr ? anchor->train.ms : anchor->infer.ms;
            dth = tr ? anchor->train.threads : anchor->infer.threads;
            row[std::string("onednn_") + mode + "_ms"] = dms;
            row[std::string("onednn_") + mode + "_threads"] = dth;
          }
          const double gf = (tr ? fl.train : fl.infer) / (ms * 1e-3) / 1e9;
          const double x_base = vs_base[tr ? 0 : 1].median;
          const double lms = layer ? (tr ? layer->train.ms : layer->infer.ms) : 0;
          std::printf("%-7s %-7s %-8s %-5s %9.1f %3d %9s %3s %6s %9s %9s %3s %6s %6s %8.1f %8.1f %5.0f%% %7.1fM %7.1fM\n",
                      s.name.c_str(), cell_name(cell), blas::backend_name(be), mode, ms,
                      tr ? r.train.threads : r.infer.threads, fmt_or_dash(tms, "{:.1f}").c_str(),
                      tth > 0 ? std::to_string(tth).c_str() : "-", fmt_or_dash(tms > 0 ? ms / tms : 0, "{:.3f}").c_str(),
                      fmt_or_dash(lms, "{:.1f}").c_str(), fmt_or_dash(dms, "{:.1f}").c_str(), dth > 0 ? std::to_string(dth).c_str() : "-",
                      fmt_or_dash(dms > 0 ? vs_dnnl[tr ? 0 : 1].median : 0, "{:.3f}").c_str(),
                      fmt_or_dash(x_base, "{:.2f}").c_str(), gf, sg,
                      100.0 * gf / sg, tr ? r.backward_reads_mb : row["infer_state_mb_T"].get<double>(),
                      tr ? r.allocated_mb : row["infer_state_mb_8T"].get<double>());
          std::fflush(stdout);
        }
        out["results"].push_back(row);
      }
    }
  }
  std::printf("\nrbn ms = rbn's whole step (train: forward, backward, clipping, Adam; the head and the embedding "
              "included); ratio = rbn / PyTorch's same step (the GRUs against torch.nn.GRU); layer ms = rbn's layer "
              "alone, the work oneDNN's column does (one layer on the same dense input [T,N,C]; train: forward, "
              "backward from a given dy with dx; no embedding, head or optimizer); x dnnl = layer / oneDNN's own "
              "RNN primitive (forward_training, weights reordered for the backward, backward; lbr_gru for the "
              "GRUs; the whole step's ratio is step_vs_onednn_* in --json), x base = rbn / rbn's lstm (rbn's gru for the GRUs) on the same gemm (lower is "
              "faster); both each at its best thread count, the median over rounds of the ratio of the two "
              "samples of the same round (quartiles in --json): rbn's cells and backends and oneDNN's RNN, at "
              "every thread count, are timed in interleaved rounds. GFLOP/s = the step's matrix-product FLOPs "
              "(one-hot input: W x gathered, not counted) / its time; sgemm = that "
              "backend's sgemm on the same products, run alone; bwd-read = bytes backward reads, alloc = all "
              "the step allocates (train rows); for infer rows: state at T and at 8T (chunked inference).\n");
}

// ---- streaming inference: latency per step -------------------------------------------------

// One stream of N rows of a language model as `rbn sample` runs it: one step per call of the step
// API (Model::logits with T = 1, the state carried, t0 = the stream's step count), the symbols fed
// drawn at random outside the timing.
struct Stream {
  blas::Backend backend;
  std::unique_ptr<Model> model;
  int N = 1;
  int64_t t = 0;  // steps taken
  std::vector<float> h, c, hT, cT, logits;  // [L,N,H] x 4, [N,K]
  std::vector<int32_t> ids;                 // [N]
  std::vector<double> ms;                   // per-step times of the current thread setting
  Rng rng{11};

  Stream(const Shape& s, Cell cell, blas::Backend be, int rows) : backend(be), N(rows) {
    ModelConfig mc;
    mc.rnn.cell = cell;
    mc.rnn.input_size = s.C;
    mc.rnn.hidden_size = s.H;
    mc.rnn.t_max = s.T;
    mc.head = Head::lm;
    mc.num_classes = s.K;
    model = std::make_unique<Model>(mc);
    const size_t LNH = static_cast<size_t>(rows) * s.H;
    for (auto* v : {&h, &c, &hT, &cT}) v->assign(LNH, 0.0f);
    logits.assign(static_cast<size_t>(rows) * s.K, 0.0f);
    ids.assign(rows, 0);
  }
  // `steps` steps; their times appended to ms when `timed`.
  void run(int steps, bool timed) {
    const int K = model->config().num_classes;
    ForwardOptions opt;
    opt.mode = Mode::infer;
    opt.need_backward = false;
    blas::set_backend(backend);
    for (int i = 0; i < steps; ++i, ++t) {
      for (auto& v : ids) v = static_cast<int32_t>(rng.below(K));
      opt.t0 = static_cast<int>(std::min<int64_t>(t, 1 << 30));
      const double t0 = now_ms();
      model->logits(opt, 1, N, nullptr, ids.data(), nullptr, h.data(), c.data(), logits.data(),
                    hT.data(), cT.data());
      const double dt = now_ms() - t0;
      h.swap(hT);
      c.swap(cT);
      if (timed) ms.push_back(dt);
    }
  }
};

struct StreamResult {
  double median_ms = 1e300, p99_ms = 0;
  int threads = 0;
};

// Every (backend, cell) stream of one shape and batch, timed in interleaved rounds at each thread
// count; each stream's best thread count by median.
std::vector<StreamResult> bench_streams(const Shape& s, int N, const BenchPlan& p, int steps,
                                        int warmup) {
  std::vector<Stream> streams;
  for (auto be : p.backends)
    for (Cell cell : p.cells) streams.emplace_back(s, cell, be, N);
  std::vector<StreamResult> res(streams.size());
  const int rounds = 4, per_round = std::max(1, steps / rounds);
  for (int th : p.threads) {
    set_threads(th);
    for (auto& st : streams) {
      st.ms.clear();
      st.run(std::max(warmup, 1), false);
    }
    for (int r = 0; r < rounds; ++r)
      for (auto& st : streams) st.run(per_round, true);
    for (size_t i = 0; i < streams.size(); ++i) {
      const double med = median(streams[i].ms);
      if (med < res[i].median_ms) res[i] = {med, quantile(streams[i].ms, 0.99), th};
    }
  }
  return res;
}

nlohmann::json run_torch_stream(const std::string& script, const Shape& s, int N, int steps,
                                int warmup) {
  const std::string tmp = fmt::format("/tmp/rbn-bench-torch-stream-{}.json", getpid());
  const std::string cmd =
      fmt::format("/usr/bin/python3 '{}' --cell lstm --shape {} --mode stream --batch {} --steps {} "
                  "--warmup {} --sweep-threads --json '{}' 2>/dev/null",
                  script, s.name, N, steps, warmup, tmp);
  if (std::system(cmd.c_str()) != 0) return nullptr;
  std::ifstream in(tmp);
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception&) {
    return nullptr;
  }
  std::remove(tmp.c_str());
  return j;
}

std::vector<int> parse_batches(const std::string& list) {
  std::vector<int> out;
  for (const auto& n : split_csv(list)) {
    try {
      out.push_back(std::stoi(n));
    } catch (const std::exception&) {
      throw UsageError("--stream-batch: not a number: '" + n + "'");
    }
    if (out.back() <= 0) throw UsageError("--stream-batch: must be positive");
  }
  if (out.empty()) throw UsageError("--stream-batch: give at least one batch size");
  return out;
}

void run_stream_bench(const BenchFlags& f, const BenchPlan& p, const std::string& script,
                      bool torch, nlohmann::json& out) {
  const std::vector<int> batches = parse_batches(f.stream_batch);
  for (const auto& s : p.shapes)
    if (!s.lm)
      throw UsageError("--shapes: '" + s.name + "' is not a language model (--stream times the step of "
                       "ptb and text8)");
  const int warmup = std::max(10, f.warmup);
  std::printf("rbn bench --stream: latency of one step of the step API (language model: embedding, "
              "stack, head; state carried, t0 = the stream's step count), %d timed steps per stream "
              "in 4 interleaved rounds after %d warm-up steps; rbn at its best of threads {%s} by "
              "median; PyTorch: nn.LSTM + nn.Linear stepping one step per call, best of torch "
              "threads {1,2} x {no_grad, inference_mode}\n",
              f.stream_steps, warmup, f.threads.c_str());
  for (auto be : p.backends) std::printf("  gemm %s = %s\n", blas::backend_name(be), blas::backend_description(be).c_str());
  std::printf("  rbn's float products: %s inputs\n", blas::precision_name(blas::precision()));
  std::printf("  %s\n", huge_pages_line().c_str());
  std::printf("\n%-7s %-7s %-8s %3s %9s %9s %3s %9s %9s %3s %-14s %6s\n", "shape", "cell", "gemm", "N",
              "rbn med", "rbn p99", "thr", "torch med", "torch p99", "thr", "torch mode", "ratio");
  for (const auto& s : p.shapes)
    for (int N : batches) {
      const auto res = bench_streams(s, N, p, f.stream_steps, warmup);
      const nlohmann::json tj = torch ? run_torch_stream(script, s, N, f.stream_steps, warmup) : nlohmann::json();
      const double tmed = tj.is_null() ? 0 : tj.value("median_ms", 0.0);
      const double tp99 = tj.is_null() ? 0 : tj.value("p99_ms", 0.0);
      const int tth = tj.is_null() ? 0 : tj.value("torch_threads", 0);
      const std::string tmode = tj.is_null() ? "-" : tj.value("grad_mode", std::string("-"));
      for (size_t i = 0; i < res.size(); ++i) {
        const blas::Backend be = p.backends[i / p.cells.size()];
        const Cell cell = p.cells[i % p.cells.size()];
        const StreamResult& r = res[i];
        nlohmann::json row{{"shape", s.name}, {"cell", cell_name(cell)}, {"gemm", blas::backend_name(be)},
                           {"N", N}, {"C", s.C}, {"H", s.H}, {"K", s.K}, {"steps", f.stream_steps},
                           {"rbn_step_median_ms", r.median_ms}, {"rbn_step_p99_ms", r.p99_ms},
                           {"rbn_threads", r.threads}};
        if (tmed > 0) {
          row["torch_step_median_ms"] = tmed;
          row["torch_step_p99_ms"] = tp99;
          row["torch_threads"] = tth;
          row["torch_grad_mode"] = tmode;
          row["ratio_median"] = r.median_ms / tmed;
        }
        std::printf("%-7s %-7s %-8s %3d %9.3f %9.3f %3d %9s %9s %3s %-14s %6s\n", s.name.c_str(),
                    cell_name(cell), blas::backend_name(be), N, r.median_ms, r.p99_ms, r.threads,
                    fmt_or_dash(tmed, "{:.3f}").c_str(), fmt_or_dash(tp99, "{:.3f}").c_str(),
                    tth > 0 ? std::to_string(tth).c_str() : "-", tmode.c_str(),
                    fmt_or_dash(tmed > 0 ? r.median_ms / tmed : 0, "{:.3f}").c_str());
        std::fflush(stdout);
        out["stream"].push_back(row);
      }
    }
  std::printf("\nms per step; ratio = rbn median / PyTorch median (every cell against nn.LSTM, "
              "PyTorch's fused LSTM; lower is faster).\n");
}

// Bidirectional rows: each cell of --bidir-cells built one-directional and bidirectional on the
// same shape, head and backend, timed in interleaved rounds at each thread count; the ratio is
// the target (<= 2.1x on 2 threads). A bidirectional stack cannot be a left-to-right
// language model, so on the language-model shapes (ptb, text8) both models tag every step instead
// (a class per step, the same K: the LM head's cost) from one-hot symbols.
void run_bidir_bench(const BenchFlags& f, const BenchPlan& p, nlohmann::json& out) {
  if (p.bidir_cells.empty()) return;
  std::printf("\nbidirectional: medians of %d runs after %d warm-up, one- and bidirectional "
              "interleaved; ptb/text8 shapes with a per-step (tag) head\n", f.repeats, f.warmup);
  std::printf("%-7s %-7s %-8s %3s %-5s %10s %10s %7s\n", "shape", "cell", "gemm", "thr", "mode",
              "1-dir ms", "bidir ms", "ratio");
  for (const auto& s : p.shapes) {
    Rng rng(11);
    std::vector<int32_t> ids(size_t(s.T) * s.N), labels(size_t(s.lm ? s.T : 1) * s.N);
    for (auto& v : ids) v = static_cast<int32_t>(rng.below(s.K));
    for (auto& v : labels) v = static_cast<int32_t>(rng.below(s.K));
    std::vector<float> x(size_t(s.T) * s.N * s.C, 0.0f);
    for (size_t i = 0; i < ids.size(); ++i) {
      if (s.lm) x[i * s.C + ids[i] % s.C] = 1.0f;  // one-hot symbols
      else x[i] = static_cast<float>(rng.uniform());  // pixels (C = 1)
    }
    std::vector<float> logits(size_t(s.lm ? s.T : 1) * s.N * s.K);
    for (blas::Backend be : p.backends)
      for (Cell cell : p.bidir_cells) {
        struct Case {
          std::unique_ptr<Model> model;
          std::vector<ParamRef> params;
          std::unique_ptr<Optimizer> opt;
        } cases[2];
        for (int d = 0; d < 2; ++d) {
          ModelConfig mc;
          mc.rnn.cell = cell;
          mc.rnn.input_size = s.C;
          mc.rnn.hidden_size = s.H;
          mc.rnn.t_max = s.T;
          mc.rnn.bidirectional = d == 1;
          mc.head = s.lm ? Head::tag : Head::classify;
          mc.num_classes = s.K;
          cases[d].model = std::make_unique<Model>(mc);
          for (auto& q : cases[d].model->parameters())
            cases[d].params.push_back({q.name, q.value, q.grad, q.numel});
          OptimConfig oc;
          oc.name = "adam";
          oc.lr = 1e-3;
          cases[d].opt = make_optimizer(oc);
        }
        auto train_step = [&](Case& c) {
          c.model->zero_grad();
          ForwardOptions fo;
          if (s.lm)
            c.model->seq_step(fo, s.T, s.N, x.data(), nullptr, labels.data(), nullptr, true);
          else
            c.model->classify_step(fo, s.T, s.N, x.data(), nullptr, labels.data(), true);
          clip_grad_norm(c.params, 1.0f);
          c.opt->step(c.params, 1e-3f);
        };
        auto infer_step = [&](Case& c) {
          ForwardOptions fo;
          fo.mode = Mode::infer;
          fo.need_backward = false;
          c.model->logits(fo, s.T, s.N, x.data(), nullptr, nullptr, nullptr, nullptr, logits.data(),
                          nullptr, nullptr);
        };
        blas::set_backend(be);
        for (int th : p.threads) {
          set_threads(th);
          for (const char* mode : {"train", "infer"}) {
            const bool tr = std::string(mode) == "train";
            std::vector<double> ms[2];
            for (int r = 0; r < f.warmup + f.repeats; ++r)
              for (int i = 0; i < 2; ++i) {
                const int d = (i + r) % 2;  // the first of each round alternates
                const double t0 = now_ms();
                tr ? train_step(cases[d]) : infer_step(cases[d]);
                if (r >= f.warmup) ms[d].push_back(now_ms() - t0);
              }
            const double one = median(ms[0]), two = median(ms[1]);
            std::printf("%-7s %-7s %-8s %3d %-5s %10.1f %10.1f %6.2fx\n", s.name.c_str(),
                        cell_name(cell), blas::backend_name(be), th, mode, one, two, two / one);
            std::fflush(stdout);
            out["bidirectional"].push_back({{"shape", s.name}, {"cell", cell_name(cell)},
                                            {"gemm", blas::backend_name(be)}, {"threads", th},
                                            {"mode", mode}, {"head", s.lm ? "tag" : "classify"},
                                            {"one_directional_ms", one}, {"bidirectional_ms", two},
                                            {"ratio", two / one}});
          }
        }
      }
  }
  std::printf("ratio = bidirectional / one-directional step (the same cell, shape, head, backend "
              "and threads); target <= 2.1x on 2 threads\n");
}

}  // namespace

void register_bench(CLI::App& app, int& exit_code) {
  auto* sub = app.add_subcommand("bench", "time training steps and inference against PyTorch and oneDNN");
  auto f = std::make_shared<BenchFlags>();
  sub->add_option("--shapes", f->shapes, "smnist,ptb,text8")->capture_default_str();
  sub->add_option("--cells", f->cells, "cells to time")->capture_default_str();
  sub->add_option("--bidir-cells", f->bidir_cells,
                  "cells timed bidirectional beside one-directional ('' for none)")
      ->capture_default_str();
  sub->add_option("--threads", f->threads, "rbn thread counts to try (best is reported)")
      ->capture_default_str();
  sub->add_option("--gemm", f->gemm, "float GEMM backends to time rbn with (openblas,onednn)")
      ->capture_default_str();
  sub->add_option("--repeats", f->repeats, "timed runs (median)")->capture_default_str();
  sub->add_option("--warmup", f->warmup, "untimed runs first")->capture_default_str();
  sub->add_option("--torch-repeats", f->torch_repeats, "timed PyTorch runs per setting")
      ->capture_default_str();
  sub->add_flag("--no-torch", f->no_torch, "skip the PyTorch baseline");
  sub->add_flag("--no-onednn-rnn", f->no_onednn_rnn, "skip oneDNN's own LSTM (the dnnl ms column) and rbn's layer timed against it (layer ms)");
  sub->add_flag("--sgemm", f->sgemm_table,
                "instead of training steps: each backend's sgemm on the steps' main shapes, and the "
                "FMA peak (at the largest of --threads)");
  sub->add_option("--torch-script", f->torch_script, "bench/torch_baseline.py (default: found beside the sources)");
  sub->add_option("--json", f->json, "write the results here");
  sub->add_option("--precision", f->precision,
                  "inputs of rbn's float matrix products: fp32 | bf16 (needs AVX512_BF16 or AMX; the "
                  "sgemm, PyTorch and oneDNN RNN columns stay fp32)")
      ->capture_default_str();
  sub->add_flag("--stream", f->stream,
                "instead of training steps: latency per step of streaming inference (the step API, "
                "one step per call) at the batch sizes of --stream-batch, on --shapes (ptb,text8)");
  sub->add_option("--stream-batch", f->stream_batch, "--stream: rows per step (streams in lockstep)")
      ->capture_default_str();
  sub->add_option("--stream-steps", f->stream_steps, "--stream: timed steps per stream")
      ->capture_default_str();
  sub->add_flag("--allreduce", f->allreduce,
                "under mpirun: time the group's sums (8 B to 8 MB) instead of training steps");
  sub->callback([f, sub, &exit_code]() {
    if (f->stream && sub->count("--shapes") == 0) f->shapes = "ptb,text8";
    set_precision_flag(f->precision);
    if (blas::precision() == blas::Precision::bf16) {  // bf16 products run on oneDNN's matmul only
      if (sub->count("--gemm") && f->gemm != "onednn")
        throw UsageError("--gemm: with --precision bf16 every float product runs on oneDNN's matmul "
                         "(give --gemm onednn or leave it out)");
      f->gemm = "onednn";
    }
    if (f->repeats <= 0) throw UsageError("--repeats: must be positive, got " + std::to_string(f->repeats));
    if (f->warmup < 0) throw UsageError("--warmup: must be >= 0, got " + std::to_string(f->warmup));
    if (f->torch_repeats <= 0)
      throw UsageError("--torch-repeats: must be positive, got " + std::to_string(f->torch_repeats));
    if (f->allreduce) {
      bench_allreduce(f->repeats);
      return;
    }
    if (f->stream && f->sgemm_table) throw UsageError("--stream: not with --sgemm (one table per run)");
    if (f->stream_steps <= 0)
      throw UsageError("--stream-steps: must be positive, got " + std::to_string(f->stream_steps));
    const BenchPlan plan = parse_plan(*f);
    std::string script = f->torch_script;
    if (script.empty()) {
      for (const char* cand : {RBN_SOURCE_DIR "/bench/torch_baseline.py", "bench/torch_baseline.py"})
        if (std::filesystem::exists(cand)) {
          script = cand;
          break;
        }
    }
    const bool torch = !f->no_torch && !script.empty() && std::filesystem::exists("/usr/bin/python3");
    nlohmann::json out;
    out["blas"] = blas_description();
    for (auto be : plan.backends) out["gemm"][blas::backend_name(be)] = blas::backend_description(be);
    out["cpu_threads"] = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
    out["precision"] = blas::precision_name(blas::precision());
    out["huge_page_bytes"] = huge_page_size();  // 0: rbn's buffers on ordinary pages
    out["command"] = "rbn bench --shapes " + f->shapes + " --cells " + f->cells +
                     " --bidir-cells " + f->bidir_cells + " --threads " + f->threads + " --gemm " +
                     f->gemm + " --precision " + f->precision + " --repeats " +
                     std::to_string(f->repeats) + (f->sgemm_table ? " --sgemm" : "") +
                     (f->stream ? " --stream --stream-batch " + f->stream_batch + " --stream-steps " +
                                      std::to_string(f->stream_steps)
                                : "");
    if (f->stream)
      run_stream_bench(*f, plan, script, torch, out);
    else if (f->sgemm_table)
      run_sgemm_table(plan.backends, *std::max_element(plan.threads.begin(), plan.threads.end()), f->repeats, out);
    else {
      run_step_bench(*f, plan, script, torch, out);
      run_bidir_bench(*f, plan, out);
    }
    out["peak_rss_mb"] = peak_rss_kb() / 1e3;
    std::printf("peak RSS %.0f MB\n", peak_rss_kb() / 1e3);
    if (!f->json.empty()) {
      std::ofstream o(f->json);
      if (!o) throw DataError(f->json + ": cannot open for writing");
      o << out.dump(2) << '\n';
    }
    exit_code = 0;
  });
}

}  // namespace rbn::cli
