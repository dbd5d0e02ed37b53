#include "train/gemm_choice.hpp"

#include <omp.h>

#include <algorithm>

#include <fmt/format.h>

#include "util/error.hpp"

namespace rbn {

namespace {
constexpr int kInlineInput = 8;  // the engine forms W x per step for C <= 8 (no product)

// Columns of one time-loop thread: blocks of 16 hidden units spread over the threads.
int thread_units(int H) {
  const int P = std::max(1, std::min(omp_get_max_threads(), (H + 15) / 16));
  return ((H + 15) / 16 + P - 1) / P * 16;
}
}  // namespace

std::vector<blas::GemmShape> training_step_gemms(const ModelConfig& mc, int T, int N) {
  const StackConfig& r = mc.rnn;
  const int H = r.hidden_size, G = cell_gates(r.cell) * H, TN = T * N, w = std::min(H, thread_units(H));
  std::vector<blas::GemmShape> s;
  // bidirectional: each layer's products twice (one per direction), layers above read 2H
  for (int l = 0; l < r.num_layers * r.directions(); ++l) {
    const int C = l < r.directions() ? r.input_size : r.directions() * H;
    if (C > kInlineInput || r.cell == Cell::bnx_seq) {
      s.push_back({false, true, TN, G, C, 1, false});  // W x, hoisted out of the time loop
      s.push_back({true, false, G, C, TN, 1, false});  // dW
      if (l >= r.directions() || mc.embed_dim > 0) s.push_back({false, false, TN, C, G, 1, false});  // dx
    }
    s.push_back({false, true, N, cell_gates(r.cell) * w, H, double(T), true});  // R h per step
    s.push_back({false, false, N, w, G, double(T), true});                      // dh per step
    s.push_back({true, false, G, H, TN, 1, false});                              // dR
  }
  if (mc.head != Head::none) {
    const bool per_seq = mc.head == Head::classify || (mc.head == Head::regress && !mc.per_step);
    const int rows = per_seq ? N : TN, K = mc.num_classes, F = r.directions() * H;
    s.push_back({false, true, rows, K, F, 1, false});   // logits
    s.push_back({true, false, K, F, rows, 1, false});   // head dW
    s.push_back({false, false, rows, F, K, 1, false});  // dh of the top layer
  }
  return s;
}

GemmChoice resolve_gemm_backend(const std::string& request, const std::string& source,
                                const ModelConfig& mc, int T, int N, Group& group) {
  GemmChoice c;
  double pick = 0;  // rank 0's choice, summed over the group (the others add 0)
  if (group.rank() == 0) {
    if (request == "auto") {
      const blas::Calibration cal = blas::calibrate(training_step_gemms(mc, T, N));
      c.backend = cal.choice;
      std::string times;
      for (size_t i = 0; i < cal.step_ms.size(); ++i)
        times += fmt::format("{}{} {:.1f} ms", i ? ", " : "", blas::backend_name(blas::all_backends()[i]),
                             cal.step_ms[i]);
      c.how = cal.from_cache
                  ? fmt::format("auto: the choice cached in {} ({})", cal.cache_path, times)
                  : fmt::format("auto: timed in {:.2f} s on the step's products ({}){}", cal.seconds, times,
                                cal.cache_note.empty() ? "; cached in " + cal.cache_path
                                                       : "; not cached: " + cal.cache_note);
    } else {
      auto b = blas::parse_backend(request);
      if (!b) throw UsageError(source + ": unknown GEMM backend '" + request + "' (openblas, onednn or auto)");
      c.backend = *b;
      c.how = source;
    }
    pick = static_cast<double>(c.backend);
  }
  if (group.distributed()) {
    group.sum(&pick, 1);
    c.backend = static_cast<blas::Backend>(static_cast<int>(pick));
    if (group.rank() != 0) c.how = "rank 0's choice";
  }
  blas::set_backend(c.backend);
  return c;
}

}  // namespace rbn
