// The GRU family's public contract (the cells' arithmetic is checked with every other cell in
// test_cells.cpp): tensor names and shapes, initialization, the refused forget bias, and one step
// worked by hand.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "cell_cases.hpp"

namespace rbn::testing {
namespace {

StackConfig gru_config(Cell cell, int C = 3, int H = 4, int L = 2) {
  StackConfig c;
  c.cell = cell;
  c.input_size = C;
  c.hidden_size = H;
  c.num_layers = L;
  c.t_max = 6;
  c.seed = 3;
  return c;
}

std::vector<std::string> names(const std::vector<TensorInfo>& infos) {
  std::vector<std::string> v;
  for (const auto& ti : infos) v.push_back(ti.name);
  return v;
}

TEST(GruLayout, NamesAndShapesAsNnGru) {
  const int C = 3, H = 4;
  Stack<float> g(gru_config(Cell::gru, C, H));
  EXPECT_EQ(names(g.param_info()),
            (std::vector<std::string>{"rnn.0.weight_ih", "rnn.0.weight_hh", "rnn.0.bias_ih",
                                      "rnn.0.bias_hh", "rnn.1.weight_ih", "rnn.1.weight_hh",
                                      "rnn.1.bias_ih", "rnn.1.bias_hh"}));
  EXPECT_EQ(g.find_info("rnn.0.weight_ih")->shape, (std::vector<int64_t>{3 * H, C}));
  EXPECT_EQ(g.find_info("rnn.1.weight_ih")->shape, (std::vector<int64_t>{3 * H, H}));
  EXPECT_EQ(g.find_info("rnn.0.weight_hh")->shape, (std::vector<int64_t>{3 * H, H}));
  EXPECT_EQ(g.find_info("rnn.0.bias_ih")->shape, (std::vector<int64_t>{3 * H}));
  EXPECT_EQ(g.find_info("rnn.0.bias_hh")->shape, (std::vector<int64_t>{3 * H}));
  EXPECT_EQ(g.find_info("rnn.0.bias"), nullptr) << "a GRU's two biases cannot be merged";
  EXPECT_TRUE(g.buffer_info().empty());

  Stack<float> bn(gru_config(Cell::bngru, C, H, 1));
  EXPECT_EQ(names(bn.param_info()),
            (std::vector<std::string>{"rnn.0.weight_ih", "rnn.0.weight_hh", "rnn.0.bias_ih",
                                      "rnn.0.bias_hh", "rnn.0.bn_x.weight", "rnn.0.bn_h.weight"}));
  EXPECT_EQ(bn.find_info("rnn.0.bn_x.weight")->shape, (std::vector<int64_t>{3 * H}));
  EXPECT_EQ(names(bn.buffer_info()),
            (std::vector<std::string>{"rnn.0.bn_x.running_mean", "rnn.0.bn_x.running_var",
                                      "rnn.0.bn_h.running_mean", "rnn.0.bn_h.running_var"}));
  EXPECT_EQ(bn.find_info("rnn.0.bn_h.running_var")->shape, (std::vector<int64_t>{6, 3 * H}));

  StackConfig lc = gru_config(Cell::lngru, C, H, 1);
  lc.learn_init_state = true;
  Stack<float> ln(lc);
  EXPECT_EQ(names(ln.param_info()),
            (std::vector<std::string>{"rnn.0.weight_ih", "rnn.0.weight_hh", "rnn.0.bias_ih",
                                      "rnn.0.bias_hh", "rnn.0.ln_x.weight", "rnn.0.ln_h.weight",
                                      "rnn.0.h0"}))
      << "no c0: a GRU has no cell state";
  EXPECT_EQ(ln.find_info("rnn.0.ln_h.weight")->shape, (std::vector<int64_t>{3 * H}));
  EXPECT_TRUE(ln.buffer_info().empty());
  lc.ln_input = false;
  Stack<float> ln_off(lc);
  EXPECT_EQ(ln_off.find_info("rnn.0.ln_x.weight"), nullptr);
  EXPECT_EQ(cell_gates(Cell::gru), 3);
  EXPECT_TRUE(cell_has_population_stats(Cell::bngru));
  EXPECT_FALSE(cell_has_population_stats(Cell::lngru));
}

// Biases 0 (no forget bias), W and R orthogonal per block, identity on R's n block on request,
// gains 0.1 (BN) and 1 (LN).
TEST(GruInit, AsTheSpecSays) {
  const int C = 5, H = 6;
  for (Cell cell : all_gru_cells())
    for (RecurrentInit init : {RecurrentInit::orthogonal, RecurrentInit::identity}) {
      StackConfig c = gru_config(cell, C, H, 1);
      c.recurrent_init = init;
      Stack<double> s(c);
      for (const char* b : {"rnn.0.bias_ih", "rnn.0.bias_hh"})
        for (int j = 0; j < 3 * H; ++j) EXPECT_EQ(s.find(b)[j], 0.0) << b << " " << j;
      // each block Q [H,K] of W and R: the smaller of Q Q^T, Q^T Q is the identity
      auto check_block = [&](const double* Q, int K, bool identity, const std::string& what) {
        const int m = std::min(H, K);
        for (int a = 0; a < m; ++a)
          for (int b = 0; b < m; ++b) {
            double dot = 0;
            if (H >= K)  // columns orthonormal
              for (int r = 0; r < H; ++r) dot += Q[r * K + a] * Q[r * K + b];
            else
              for (int k = 0; k < K; ++k) dot += Q[a * K + k] * Q[b * K + k];
            EXPECT_NEAR(dot, a == b ? 1.0 : 0.0, 1e-12) << what;
          }
        if (identity) {
          for (int r = 0; r < H; ++r)
            for (int k = 0; k < K; ++k) EXPECT_EQ(Q[r * K + k], r == k ? 1.0 : 0.0) << what;
        }
      };
      for (int q = 0; q < 3; ++q) {
        check_block(s.find("rnn.0.weight_ih") + q * H * C, C, false, "W block " + std::to_string(q));
        const bool id = init == RecurrentInit::identity && q == 2;
        check_block(s.find("rnn.0.weight_hh") + q * H * H, H, id, "R block " + std::to_string(q));
        if (init == RecurrentInit::identity && q < 2) {  // r, z blocks stay orthogonal, not I
          double off = 0;
          for (int r = 0; r < H; ++r) off += std::abs(s.find("rnn.0.weight_hh")[q * H * H + r * H + r] - 1);
          EXPECT_GT(off, 0.1);
        }
      }
      const double gain = cell == Cell::bngru ? 0.1 : 1.0;
      const char* kind = cell == Cell::bngru ? "bn_" : "ln_";
      if (cell != Cell::gru) {
        for (const char* w : {"x", "h"})
          for (int j = 0; j < 3 * H; ++j)
            EXPECT_DOUBLE_EQ(s.find(std::string("rnn.0.") + kind + w + ".weight")[j], gain);
      }
    }
}

TEST(GruConfig, ForgetBiasIsRefusedNamingTheField) {
  for (Cell cell : all_gru_cells()) {
    StackConfig c = gru_config(cell);
    c.forget_bias = 1.0;
    try {
      Stack<float> s(c);
      FAIL() << cell_name(cell) << ": expected an error";
    } catch (const UsageError& e) {
      EXPECT_TRUE(std::string(e.what()).starts_with("forget_bias:")) << e.what();
      EXPECT_NE(std::string(e.what()).find(cell_name(cell)), std::string::npos) << e.what();
    }
  }
  StackConfig l = gru_config(Cell::lstm);
  l.forget_bias = 2.5;
  Stack<double> s(l);
  EXPECT_EQ(s.find("rnn.0.bias")[l.hidden_size], 2.5);  // the LSTM's f block
}

// One step of one row with H = 1, C = 1 by hand: nn.GRU's equations.
TEST(GruStep, WorkedByHand) {
  StackConfig c = gru_config(Cell::gru, 1, 1, 1);
  Stack<double> s(c);
  const double W[3] = {0.5, -0.3, 0.8}, R[3] = {0.2, 0.7, -0.4}, bi[3] = {0.1, -0.2, 0.3},
               bh[3] = {-0.1, 0.05, 0.6};
  for (int q = 0; q < 3; ++q) {
    s.find("rnn.0.weight_ih")[q] = W[q];
    s.find("rnn.0.weight_hh")[q] = R[q];
    s.find("rnn.0.bias_ih")[q] = bi[q];
    s.find("rnn.0.bias_hh")[q] = bh[q];
  }
  const double x = 1.5, h0 = -0.6, c0 = 0.25;
  auto sig = [](double v) { return 1 / (1 + std::exp(-v)); };
  const double r = sig(W[0] * x + bi[0] + R[0] * h0 + bh[0]);
  const double z = sig(W[1] * x + bi[1] + R[1] * h0 + bh[1]);
  const double n = std::tanh(W[2] * x + bi[2] + r * (R[2] * h0 + bh[2]));
  const double want = (1 - z) * n + z * h0;
  double y = 0, hT = 0, cT = 0;
  for (Mode mode : {Mode::train, Mode::infer}) {
    ForwardOptions opt;
    opt.mode = mode;
    s.forward(opt, 1, 1, {.x = &x, .h0 = &h0, .c0 = &c0}, {.y = &y, .hT = &hT, .cT = &cT});
    EXPECT_NEAR(y, want, 1e-15);
    EXPECT_EQ(y, hT);
    EXPECT_EQ(cT, c0) << "c is carried unchanged";
  }
}

}  // namespace
}  // namespace rbn::testing
