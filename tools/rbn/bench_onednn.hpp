// oneDNN's own recurrent primitives as the anchor column of `rbn bench`: its vanilla LSTM (and,
// for GRU cells, its lbr_gru, which is nn.GRU's formula), one layer, timed like rbn's cells.
#pragma once

#include <cstddef>
#include <memory>

namespace rbn::cli {

// The inputs both sides of `x dnnl` are timed on: p[i] = scale * sin(0.7 * (i mod 1013)), smooth
// and bounded, without subnormals (only every 1013th value is 0). rbn's LayerCase fills its x and
// dy with it too, so the two sides see the same numbers.
void bench_fill(float* p, size_t n, float scale);

enum class OnednnRnn { lstm, lbr_gru };
const char* onednn_rnn_name(OnednnRnn kind);

// One layer of the primitive on T steps of N rows, C inputs, H hidden units, set up once at the
// current OpenMP thread count (oneDNN sizes its primitives for it: time it at that count), to be
// stepped by the caller's timing loop. A training step is forward_training, the reorder of the
// weights into the backward's layout (a trainer's weights change every step) and backward; no
// head, no loss, no optimizer. Throws dnnl::error where oneDNN has no implementation.
class OnednnRnnCase {
 public:
  OnednnRnnCase(OnednnRnn kind, int T, int N, int C, int H);
  ~OnednnRnnCase();
  void train_step() { steps_->train(); }
  void infer_step() { steps_->infer(); }

  struct Steps {
    virtual ~Steps() = default;
    virtual void train() = 0;
    virtual void infer() = 0;
  };

 private:
  std::unique_ptr<Steps> steps_;
};

}  // namespace rbn::cli
