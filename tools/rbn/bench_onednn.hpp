// oneDNN's own recurrent primitives as the anchor column of `rbn bench`: its vanilla LSTM (and,
// for GRU cells, its lbr_gru, which is nn.GRU's formula), one layer, timed like rbn's cells.
#pragma once

namespace rbn::cli {

enum class OnednnRnn { lstm, lbr_gru };
const char* onednn_rnn_name(OnednnRnn kind);

struct OnednnTimes {
  double train_ms = 0;  // forward_training + the weights' reorder to the backward's layout + backward
  double infer_ms = 0;  // forward_inference
};

// Medians of `repeats` runs after `warmup`, at the current OpenMP thread count (the primitives are
// created at that count), on T steps of N rows, C inputs, H hidden units. Throws dnnl::error
// where oneDNN has no implementation.
OnednnTimes bench_onednn_rnn(OnednnRnn kind, int T, int N, int C, int H, int warmup, int repeats);

}  // namespace rbn::cli
