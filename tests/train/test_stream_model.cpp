// A language model streaming one step per call (as `rbn sample` and `rbn bench --stream` run
// it): after the first call of a shape, Model::logits allocates nothing (embedding, stack, head).
#include <gtest/gtest.h>

#include <cmath>
#include <utility>
#include <vector>

#include "count_allocations.hpp"
#include "train/model.hpp"
#include "util/blas.hpp"
#include "util/rng.hpp"

namespace rbn {
namespace {

TEST(StreamingModel, LanguageModelStepsAllocateNothingAfterTheFirst) {
  for (Cell cell : {Cell::lstm, Cell::bnlstm, Cell::lnlstm, Cell::gru, Cell::bngru})
    for (int N : {1, 8}) {
      ModelConfig mc;
      mc.rnn.cell = cell;
      mc.rnn.hidden_size = 48;
      mc.rnn.num_layers = 2;
      mc.rnn.t_max = 5;
      mc.head = Head::lm;
      mc.num_classes = 11;  // one-hot input: C = 11 (the input GEMM path)
      Model m(mc);
      const size_t LNH = static_cast<size_t>(mc.rnn.num_layers) * N * mc.rnn.hidden_size;
      std::vector<float> h(LNH, 0.f), c(LNH, 0.f), hT(LNH), cT(LNH), logits(N * mc.num_classes);
      std::vector<int32_t> ids(N);
      Rng rng(3);
      ForwardOptions opt;
      opt.mode = Mode::infer;
      opt.need_backward = false;
      long before = 0;
      for (int t = 0; t < 12; ++t) {
        if (t == 1) before = rbn::testing::operator_new_calls();  // the first call sized everything
        for (auto& v : ids) v = static_cast<int32_t>(rng.below(mc.num_classes));
        opt.t0 = t;
        m.logits(opt, 1, N, nullptr, ids.data(), nullptr, h.data(), c.data(), logits.data(),
                 hT.data(), cT.data());
        std::swap(h, hT);
        std::swap(c, cT);
      }
      // (oneDNN's dnnl_sgemm makes one operator new call per step at N = 1 for the LSTM cells:
      // tests/cells/test_stream.cpp; rbn's own code none)
      const long allowed = blas::backend() == blas::Backend::onednn && N == 1 ? 11 : 0;
      EXPECT_LE(rbn::testing::operator_new_calls() - before, allowed) << cell_name(cell) << " N=" << N;
      for (float v : logits) ASSERT_TRUE(std::isfinite(v)) << cell_name(cell);
    }
}

}  // namespace
}  // namespace rbn
