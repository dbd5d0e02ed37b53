#include "util/gemm_calibration.hpp"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "io/atomic_file.hpp"
#include "util/error.hpp"

namespace rbn::blas {

namespace {

constexpr double kFlopBudget = 5e8;  // per timed call: ~3 ms at 150 GFLOP/s
constexpr int kRounds = 4;           // the first warms up (oneDNN generates its kernels)
constexpr size_t kMaxEntries = 64;   // the cache keeps this many shape sets

double flops(const GemmShape& s) { return 2.0 * s.M * s.N * s.K; }

// The shape actually timed: the largest dimension shortened (not below 256) to fit the budget.
GemmShape timed_shape(GemmShape s) {
  const double f = flops(s);
  if (f <= kFlopBudget) return s;
  int* d = &s.M;
  if (s.N > *d) d = &s.N;
  if (s.K > *d) d = &s.K;
  *d = std::max(std::min(*d, 256), static_cast<int>(*d * (kFlopBudget / f)));
  return s;
}

// Operands of one timed shape; per-thread shapes get one B and C per thread (A is shared, as the
// time loop shares h_{t-1}), and run up to 16 calls inside one parallel region with a barrier after
// each, as the time loop does (starting a region per call would time the threads' wake-up).
struct Operands {
  GemmShape s;
  int threads = 1, steps = 1;
  std::vector<float> a, b, c;
  explicit Operands(const GemmShape& shape, int P) : s(timed_shape(shape)), threads(shape.per_thread ? P : 1) {
    a.assign(static_cast<size_t>(s.M) * s.K, 0.01f);
    b.assign(static_cast<size_t>(s.K) * s.N * threads, 0.02f);
    c.assign(static_cast<size_t>(s.M) * s.N * threads, 0.0f);
    if (threads > 1)
      steps = static_cast<int>(std::clamp(kFlopBudget / flops(s), 1.0, std::clamp(shape.count, 1.0, 16.0)));
  }
  // milliseconds of one call
  double run(Backend be) {
    const int lda = s.ta ? s.M : s.K, ldb = s.tb ? s.K : s.N;
    const size_t bs = static_cast<size_t>(s.K) * s.N, cs = static_cast<size_t>(s.M) * s.N;
    const auto t0 = std::chrono::steady_clock::now();
    if (threads == 1) {
      sgemm(be, s.ta, s.tb, s.M, s.N, s.K, 1.f, a.data(), lda, b.data(), ldb, 0.f, c.data(), s.N);
    } else {
#pragma omp parallel num_threads(threads)
      {
        const size_t p = static_cast<size_t>(omp_get_thread_num());
        for (int t = 0; t < steps; ++t) {
          sgemm(be, s.ta, s.tb, s.M, s.N, s.K, 1.f, a.data(), lda, b.data() + p * bs, ldb, 0.f,
                c.data() + p * cs, s.N);
#pragma omp barrier
        }
      }
    }
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / steps;
  }
};

double elapsed_ms(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(colon + 2);
    }
  return "unknown cpu";
}

nlohmann::json read_cache(const std::string& path) {
  std::ifstream in(path);
  if (!in) return nlohmann::json::object();
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object() || j.value("format", "") != "rbn-gemm-calibration/1" ||
      !j.contains("entries") || !j["entries"].is_object())
    return nlohmann::json::object();  // corrupt or foreign: timed again and rewritten
  return j;
}

// The cached entry's backend, if the entry is well formed.
std::optional<Backend> cached_choice(const nlohmann::json& cache, const std::string& key,
                                     std::vector<double>& step_ms) {
  if (!cache.contains("entries") || !cache["entries"].contains(key)) return std::nullopt;
  const nlohmann::json& e = cache["entries"][key];
  if (!e.is_object() || !e.contains("backend") || !e["backend"].is_string()) return std::nullopt;
  auto b = parse_backend(e["backend"].get<std::string>());
  if (!b) return std::nullopt;
  step_ms.clear();
  for (Backend be : all_backends()) {
    const auto ms = e.contains("step_ms") && e["step_ms"].is_object() ? e["step_ms"].value(backend_name(be), 0.0) : 0.0;
    step_ms.push_back(ms);
  }
  return b;
}

// Writes the entry; returns "" or why it could not.
std::string store(const std::string& path, nlohmann::json cache, const std::string& key,
                  const Calibration& c) {
  if (path.empty()) return "no cache directory (neither XDG_CACHE_HOME nor HOME is set)";
  cache["format"] = "rbn-gemm-calibration/1";
  if (!cache.contains("entries")) cache["entries"] = nlohmann::json::object();
  nlohmann::json& entries = cache["entries"];
  while (entries.size() >= kMaxEntries) entries.erase(entries.begin());
  nlohmann::json ms = nlohmann::json::object();
  for (size_t i = 0; i < all_backends().size(); ++i) ms[backend_name(all_backends()[i])] = c.step_ms[i];
  entries[key] = {{"backend", backend_name(c.choice)}, {"step_ms", ms}};
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  if (ec) return ec.message();
  try {
    const std::string text = cache.dump(1) + "\n";
    write_file_atomic(path, {reinterpret_cast<const uint8_t*>(text.data()), text.size()});
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

std::vector<double> time_backends(const std::vector<GemmShape>& shapes) {
  const int P = omp_get_max_threads();
  std::vector<Operands> ops;
  for (const auto& s : shapes) ops.emplace_back(s, P);
  const auto& backends = all_backends();
  // fastest time of each shape on each backend, rounds interleaved (the machine's speed drifts)
  std::vector<std::vector<double>> best(backends.size(),
                                        std::vector<double>(ops.size(), std::numeric_limits<double>::infinity()));
  // backends alternate call by call, the first one changing each round: a burst of load from
  // another process then hits both alike, and the fastest of the rounds discards it
  for (int r = 0; r < kRounds; ++r)
    for (size_t i = 0; i < ops.size(); ++i)
      for (size_t k = 0; k < backends.size(); ++k) {
        const size_t b = (k + r) % backends.size();
        const double ms = ops[i].run(backends[b]);
        if (r > 0) best[b][i] = std::min(best[b][i], ms);
      }
  std::vector<double> step_ms(backends.size(), 0.0);
  for (size_t b = 0; b < backends.size(); ++b)
    for (size_t i = 0; i < ops.size(); ++i)
      step_ms[b] += shapes[i].count * best[b][i] * flops(shapes[i]) / flops(ops[i].s);
  return step_ms;
}

Backend choose(const std::vector<double>& step_ms) {
  const auto& backends = all_backends();
  Backend pick = Backend::openblas;
  double pick_ms = step_ms[0];
  for (size_t b = 1; b < backends.size(); ++b)
    if (step_ms[b] < 0.95 * pick_ms) pick = backends[b], pick_ms = step_ms[b];
  return pick;
}

std::string calibration_cache_path() {
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  if (xdg && *xdg) return std::string(xdg) + "/rbn/gemm-backend.json";
  const char* home = std::getenv("HOME");
  if (home && *home) return std::string(home) + "/.cache/rbn/gemm-backend.json";
  return "";
}

std::string calibration_key(const std::vector<GemmShape>& shapes) {
  std::string key = fmt::format("{} | {} threads | {} | {} |", cpu_model(), omp_get_max_threads(),
                                backend_description(Backend::openblas), backend_description(Backend::onednn));
  for (const auto& s : shapes)
    key += fmt::format(" {}{}{}x{}x{}*{}{}", s.ta ? 'T' : 'N', s.tb ? 'T' : 'N', s.M, s.N, s.K, s.count,
                       s.per_thread ? "/thread" : "");
  return key;
}

Calibration calibrate(const std::vector<GemmShape>& shapes) {
  Calibration c;
  c.cache_path = calibration_cache_path();
  const std::string key = calibration_key(shapes);
  const nlohmann::json cache = c.cache_path.empty() ? nlohmann::json::object() : read_cache(c.cache_path);
  if (auto b = cached_choice(cache, key, c.step_ms)) {
    c.choice = *b;
    c.from_cache = true;
    return c;
  }
  const auto t0 = std::chrono::steady_clock::now();
  c.step_ms = time_backends(shapes);
  c.seconds = elapsed_ms(t0) * 1e-3;
  c.choice = choose(c.step_ms);
  c.cache_note = store(c.cache_path, cache, key, c);
  return c;
}

}  // namespace rbn::blas
