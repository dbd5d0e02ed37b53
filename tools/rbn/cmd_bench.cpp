// rbn bench: one full training step (forward, backward, clipping, Adam) and one inference forward
// per cell on the paper's shapes, median of several runs after warm-up, beside PyTorch measured in
// the same run (bench/torch_baseline.py), with the matrix products' GFLOP/s against this machine's
// own sgemm rate on the same shapes, and memory.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "train/group.hpp"
#include "train/model.hpp"
#include "train/optim.hpp"
#include "util/blas.hpp"
#include "util/error.hpp"
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

long peak_rss_kb() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

// Matrix-product FLOPs of one training step (forward + backward) and of one inference forward,
// for a cell with `gates` gate blocks (G = gates * H: 4 LSTM, 3 GRU).
struct Flops {
  double train = 0, infer = 0;
};
Flops step_flops(const Shape& s, int gates) {
  const double TN = double(s.T) * s.N, G = double(gates) * s.H;
  const double in = 2 * TN * s.C * G, rec = 2 * TN * s.H * G;
  const double head = s.lm ? 2 * TN * s.H * s.K : 2.0 * s.N * s.H * s.K;
  Flops f;
  f.infer = in + rec + head;
  // backward: dR and dh per step (2 rec), dW (1 in; no dx for a one-hot/pixel input), head dW, dh
  f.train = f.infer + 2 * rec + in + 2 * head;
  return f;
}

// This machine's sgemm rate on exactly the products of one training step, run back to back.
double sgemm_rate_gflops(const Shape& s, int gates, int reps) {
  const int T = s.T, N = s.N, C = s.C, H = s.H, G = gates * H, K = s.K;
  const int TN = T * N;
  std::vector<float> X(size_t(TN) * C, 0.5f), W(size_t(G) * C, 0.1f), R(size_t(G) * H, 0.01f),
      A(size_t(TN) * G), Hs(size_t(TN) * H, 0.1f), dR(size_t(G) * H), dh(size_t(N) * H),
      Wy(size_t(K) * H, 0.1f), Y(size_t(TN) * K), dW(size_t(G) * C);
  const int head_rows = s.lm ? TN : N;
  auto run = [&] {
    blas::gemm(false, true, TN, G, C, 1.f, X.data(), C, W.data(), C, 0.f, A.data(), G);
    for (int t = 0; t < T; ++t)
      blas::gemm(false, true, N, G, H, 1.f, Hs.data() + size_t(t) * N * H, H, R.data(), H, 0.f,
                 A.data() + size_t(t) * N * G, G);
    blas::gemm(false, true, head_rows, K, H, 1.f, Hs.data(), H, Wy.data(), H, 0.f, Y.data(), K);
    blas::gemm(true, false, K, H, head_rows, 1.f, Y.data(), K, Hs.data(), H, 0.f, Wy.data(), H);
    blas::gemm(false, false, head_rows, H, K, 1.f, Y.data(), K, Wy.data(), H, 0.f, Hs.data(), H);
    for (int t = 0; t < T; ++t)
      blas::gemm(false, false, N, H, G, 1.f, A.data() + size_t(t) * N * G, G, R.data(), H, 0.f,
                 dh.data(), H);
    blas::gemm(true, false, G, H, TN, 1.f, A.data(), G, Hs.data(), H, 0.f, dR.data(), H);
    blas::gemm(true, false, G, C, TN, 1.f, A.data(), G, X.data(), C, 0.f, dW.data(), C);
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

struct RbnResult {
  double train_ms = 0, infer_ms = 0;
  int train_threads = 0, infer_threads = 0;
  double backward_reads_mb = 0, allocated_mb = 0, infer_state_mb = 0;
};

// One model per cell, all timed in the same rounds (cell after cell, repeated): the machines are
// shared and their speed drifts, and interleaving keeps the ratios between cells fair.
std::vector<RbnResult> bench_rbn(const Shape& s, const std::vector<Cell>& cells,
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
    std::unique_ptr<Model> model;
    std::vector<ParamRef> params;
    std::unique_ptr<Optimizer> opt;
  };
  std::vector<Case> cases;
  for (Cell cell : cells) {
    ModelConfig mc;
    mc.rnn.cell = cell;
    mc.rnn.input_size = s.C;
    mc.rnn.hidden_size = s.H;
    mc.rnn.t_max = s.T;
    mc.head = s.lm ? Head::lm : Head::classify;
    mc.num_classes = s.K;
    Case c;
    c.model = std::make_unique<Model>(mc);
    for (auto& p : c.model->parameters()) c.params.push_back({p.name, p.value, p.grad, p.numel});
    OptimConfig oc;
    oc.name = "adam";
    oc.lr = 1e-3;
    c.opt = make_optimizer(oc);
    cases.push_back(std::move(c));
  }
  auto train_step = [&](Case& c) {
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
    ForwardOptions fo;
    fo.mode = Mode::infer;
    fo.need_backward = false;
    c.model->logits(fo, s.T, s.N, s.lm ? nullptr : x.data(), s.lm ? ids.data() : nullptr, nullptr,
                    nullptr, nullptr, logits.data(), nullptr, nullptr);
  };
  // medians over rounds of every case (one run of each per round)
  auto time_all = [&](auto&& fn) {
    for (int i = 0; i < warmup; ++i)
      for (auto& c : cases) fn(c);
    std::vector<std::vector<double>> ms(cases.size());
    for (int i = 0; i < repeats; ++i)
      for (size_t k = 0; k < cases.size(); ++k) {
        const double t0 = now_ms();
        fn(cases[k]);
        ms[k].push_back(now_ms() - t0);
      }
    std::vector<double> med;
    for (auto& v : ms) med.push_back(median(v));
    return med;
  };
  std::vector<RbnResult> res(cases.size());
  for (auto& r : res) r.train_ms = r.infer_ms = 1e300;
  for (int th : thread_counts) {
    set_threads(th);
    const auto tr = time_all(train_step);
    const auto in = time_all(infer_step);
    for (size_t k = 0; k < cases.size(); ++k) {
      if (tr[k] < res[k].train_ms) res[k].train_ms = tr[k], res[k].train_threads = th;
      if (in[k] < res[k].infer_ms) res[k].infer_ms = in[k], res[k].infer_threads = th;
    }
  }
  // Memory: what backward reads (the stack's cache) beside everything the step allocated.
  for (size_t k = 0; k < cases.size(); ++k) {
    train_step(cases[k]);
    const Model& m = *cases[k].model;
    res[k].backward_reads_mb = m.rnn().cache_bytes() / 1e6;
    res[k].allocated_mb = (m.rnn().cache_bytes() + m.workspace_bytes()) / 1e6;
  }
  return res;
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
  std::string threads = "1,2";
  int repeats = 5, warmup = 1, torch_repeats = 3;
  bool no_torch = false;
  std::string torch_script;
  std::string json;
  bool allreduce = false;
};

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

}  // namespace

void register_bench(CLI::App& app, int& exit_code) {
  auto* sub = app.add_subcommand("bench", "time training steps and inference against PyTorch");
  auto f = std::make_shared<BenchFlags>();
  sub->add_option("--shapes", f->shapes, "smnist,ptb,text8")->capture_default_str();
  sub->add_option("--cells", f->cells, "cells to time")->capture_default_str();
  sub->add_option("--threads", f->threads, "rbn thread counts to try (best is reported)")
      ->capture_default_str();
  sub->add_option("--repeats", f->repeats, "timed runs (median)")->capture_default_str();
  sub->add_option("--warmup", f->warmup, "untimed runs first")->capture_default_str();
  sub->add_option("--torch-repeats", f->torch_repeats, "timed PyTorch runs per setting")
      ->capture_default_str();
  sub->add_flag("--no-torch", f->no_torch, "skip the PyTorch baseline");
  sub->add_option("--torch-script", f->torch_script, "bench/torch_baseline.py (default: found beside the sources)");
  sub->add_option("--json", f->json, "write the results here");
  sub->add_flag("--allreduce", f->allreduce,
                "under mpirun: time the group's sums (8 B to 8 MB) instead of training steps");
  sub->callback([f, &exit_code]() {
    if (f->repeats <= 0) throw UsageError("--repeats: must be positive, got " + std::to_string(f->repeats));
    if (f->warmup < 0) throw UsageError("--warmup: must be >= 0, got " + std::to_string(f->warmup));
    if (f->torch_repeats <= 0)
      throw UsageError("--torch-repeats: must be positive, got " + std::to_string(f->torch_repeats));
    if (f->allreduce) {
      bench_allreduce(f->repeats);
      return;
    }
    std::vector<Shape> shapes;
    for (const auto& n : split_csv(f->shapes)) {
      auto it = std::find_if(all_shapes().begin(), all_shapes().end(), [&](const Shape& s) { return s.name == n; });
      if (it == all_shapes().end()) throw UsageError("--shapes: unknown shape '" + n + "'");
      shapes.push_back(*it);
    }
    std::vector<Cell> cells;
    for (const auto& n : split_csv(f->cells)) {
      auto c = parse_cell(n);
      if (!c) throw UsageError("--cells: unknown cell '" + n + "'");
      cells.push_back(*c);
    }
    std::vector<int> threads;
    for (const auto& n : split_csv(f->threads)) {
      try {
        threads.push_back(std::stoi(n));
      } catch (const std::exception&) {
        throw UsageError("--threads: not a number: '" + n + "'");
      }
      if (threads.back() <= 0) throw UsageError("--threads: must be positive");
    }
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
    out["cpu_threads"] = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
    out["command"] = "rbn bench --shapes " + f->shapes + " --cells " + f->cells + " --threads " +
                     f->threads + " --repeats " + std::to_string(f->repeats);
    std::printf("rbn bench: BLAS %s; medians of %d runs after %d warm-up; rbn at its best of threads {%s}; "
                "PyTorch at its best of torch threads {1,2}\n\n",
                blas_description().c_str(), f->repeats, f->warmup, f->threads.c_str());
    std::printf("%-7s %-8s %-6s %10s %4s %11s %4s %7s %7s %8s %8s %6s %9s %9s\n", "shape", "cell",
                "mode", "rbn ms", "thr", "torch ms", "thr", "ratio", "x base", "GFLOP/s", "sgemm",
                "%sgemm", "bwd-read", "alloc");
    for (const auto& s : shapes) {
      int max_threads = *std::max_element(threads.begin(), threads.end());
      set_threads(max_threads);
      std::map<int, double> sgemm_of;  // by gate blocks
      for (Cell c : cells) sgemm_of.emplace(cell_gates(c), 0.0);
      for (auto& [g, rate] : sgemm_of) rate = sgemm_rate_gflops(s, g, 3);
      // each cell against rbn's own base cell of its family: lstm, or gru for the GRUs
      std::map<Cell, std::pair<double, double>> base_ms;  // train, infer
      const std::vector<RbnResult> results = bench_rbn(s, cells, threads, f->warmup, f->repeats);
      // one PyTorch measurement per (module, mode) and shape: the three GRU rows share nn.GRU's
      std::map<std::pair<Cell, std::string>, nlohmann::json> torch_runs;
      for (size_t ci = 0; ci < cells.size(); ++ci)
        if (cells[ci] == Cell::lstm || cells[ci] == Cell::gru)
          base_ms[cells[ci]] = {results[ci].train_ms, results[ci].infer_ms};
      for (size_t ci = 0; ci < cells.size(); ++ci) {
        const Cell cell = cells[ci];
        const RbnResult& r = results[ci];
        const Flops fl = step_flops(s, cell_gates(cell));
        const double sgemm = sgemm_of.at(cell_gates(cell));
        const Cell base = cell_is_gru(cell) ? Cell::gru : Cell::lstm;
        const double base_train_ms = base_ms.count(base) ? base_ms[base].first : 0;
        const double base_infer_ms = base_ms.count(base) ? base_ms[base].second : 0;
        // nn.GRU is PyTorch's only GRU: the GRU family is timed against it (fused, unnormalized)
        const Cell torch_cell = cell_is_gru(cell) ? Cell::gru : cell;
        nlohmann::json row{{"shape", s.name},
                           {"cell", cell_name(cell)},
                           {"T", s.T}, {"N", s.N}, {"C", s.C}, {"H", s.H}, {"K", s.K},
                           {"rbn_train_ms", r.train_ms},
                           {"rbn_train_threads", r.train_threads},
                           {"rbn_infer_ms", r.infer_ms},
                           {"rbn_infer_threads", r.infer_threads},
                           {"train_gflops", fl.train / (r.train_ms * 1e-3) / 1e9},
                           {"infer_gflops", fl.infer / (r.infer_ms * 1e-3) / 1e9},
                           {"sgemm_gflops_same_shapes", sgemm},
                           {"backward_reads_mb", r.backward_reads_mb},
                           {"allocated_mb", r.allocated_mb},
                           {"infer_state_mb_T", infer_cache_mb(s, cell, s.T)},
                           {"infer_state_mb_8T", infer_cache_mb(s, cell, 8 * s.T)}};
        const std::string vs = std::string("_vs_rbn_") + cell_name(base);
        if (base_train_ms > 0) row["train" + vs] = r.train_ms / base_train_ms;
        if (base_infer_ms > 0) row["infer" + vs] = r.infer_ms / base_infer_ms;
        for (const char* mode : {"train", "infer"}) {
          const bool tr = std::string(mode) == "train";
          const double ms = tr ? r.train_ms : r.infer_ms;
          const auto key = std::make_pair(torch_cell, std::string(mode));
          if (torch && !torch_runs.count(key))
            torch_runs[key] = run_torch(script, s, torch_cell, mode, f->torch_repeats, 1);
          const nlohmann::json tj = torch ? torch_runs[key] : nlohmann::json(nullptr);
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
          const double gf = (tr ? fl.train : fl.infer) / (ms * 1e-3) / 1e9;
          const double lstm_ms = tr ? base_train_ms : base_infer_ms;
          std::printf("%-7s %-8s %-6s %10.1f %4d %11s %4s %7s %7s %8.1f %8.1f %5.0f%% %8.1fM %8.1fM\n",
                      s.name.c_str(), cell_name(cell), mode, ms, tr ? r.train_threads : r.infer_threads,
                      tms > 0 ? fmt::format("{:.1f}", tms).c_str() : "-",
                      tth > 0 ? std::to_string(tth).c_str() : "-",
                      tms > 0 ? fmt::format("{:.3f}", ms / tms).c_str() : "-",
                      lstm_ms > 0 ? fmt::format("{:.2f}", ms / lstm_ms).c_str() : "-", gf, sgemm,
                      100.0 * gf / sgemm, tr ? r.backward_reads_mb : row["infer_state_mb_T"].get<double>(),
                      tr ? r.allocated_mb : row["infer_state_mb_8T"].get<double>());
          std::fflush(stdout);
        }
        out["results"].push_back(row);
      }
    }
    out["peak_rss_mb"] = peak_rss_kb() / 1e3;
    std::printf("\nratio = rbn / PyTorch (lower is faster; the GRUs against torch.nn.GRU); x base = rbn / "
                "rbn's lstm (rbn's gru for the GRUs), each at its best "
                "thread count, the cells timed in interleaved rounds. GFLOP/s = the step's matrix-product FLOPs / its "
                "time; sgemm = this machine's sgemm on the same products, run alone; bwd-read = bytes "
                "backward reads, alloc = all the step allocates (train rows); for infer rows: state at T "
                "and at 8T (chunked inference).\npeak RSS %.0f MB\n",
                peak_rss_kb() / 1e3);
    if (!f->json.empty()) {
      std::ofstream o(f->json);
      if (!o) throw DataError(f->json + ": cannot open for writing");
      o << out.dump(2) << '\n';
    }
    exit_code = 0;
  });
}

}  // namespace rbn::cli
