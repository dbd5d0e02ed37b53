// Reference cells: one time step at a time, one row at a time, double precision.
#include "cells/reference.hpp"

#include <algorithm>
#include <cmath>

namespace rbn::ref {

namespace {

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

using Rows = std::vector<std::vector<double>>;  // [N][F]

// Batch normalization of rows[n] for valid n: returns x-hat, and the statistics used.
Rows batch_norm(const Rows& z, const std::vector<bool>& valid, double eps, bool use_batch,
                const double* pop_mean, const double* pop_var, std::vector<double>& mean,
                std::vector<double>& var) {
  const size_t N = z.size(), F = z.empty() ? 0 : z[0].size();
  mean.assign(F, 0.0);
  var.assign(F, 1.0);
  if (use_batch) {
    int count = 0;
    for (size_t n = 0; n < N; ++n) count += valid[n];
    if (count > 0) {
      for (size_t j = 0; j < F; ++j) {
        double s = 0;
        for (size_t n = 0; n < N; ++n)
          if (valid[n]) s += z[n][j];
        mean[j] = s / count;
        double q = 0;
        for (size_t n = 0; n < N; ++n)
          if (valid[n]) q += (z[n][j] - mean[j]) * (z[n][j] - mean[j]);
        var[j] = q / count;
      }
    }
  } else {
    for (size_t j = 0; j < F; ++j) {
      mean[j] = pop_mean[j];
      var[j] = pop_var[j];
    }
  }
  Rows out(N, std::vector<double>(F, 0.0));
  for (size_t n = 0; n < N; ++n)
    if (valid[n])
      for (size_t j = 0; j < F; ++j) out[n][j] = (z[n][j] - mean[j]) / std::sqrt(var[j] + eps);
  return out;
}

std::vector<double> layer_norm(const std::vector<double>& z, double eps) {
  const size_t F = z.size();
  double m = 0;
  for (double v : z) m += v;
  m /= F;
  double q = 0;
  for (double v : z) q += (v - m) * (v - m);
  q /= F;
  std::vector<double> out(F);
  for (size_t j = 0; j < F; ++j) out[j] = (z[j] - m) / std::sqrt(q + eps);
  return out;
}

const std::vector<double>& get(const Tensors& t, const std::string& name) {
  static const std::vector<double> empty;
  auto it = t.find(name);
  return it == t.end() ? empty : it->second;
}

}  // namespace

Result forward(const StackConfig& cfg, const Tensors& params, const Tensors& buffers, Mode mode,
               int T, int N, const std::vector<double>& x, const std::vector<int>& lengths,
               const std::vector<double>& h0, const std::vector<double>& c0, int t0) {
  const int H = cfg.hidden_size, L = cfg.num_layers;
  const int G = (cfg.cell == Cell::rnn || cfg.cell == Cell::bnrnn ? 1 : 4) * H;
  const double eps = cfg.eps;
  const bool train = mode == Mode::train;
  const Cell cell = cfg.cell;
  const bool rnn = cell == Cell::rnn || cell == Cell::bnrnn;  // h = tanh(pre), no c
  const bool bn_x = cell == Cell::bnlstm || cell == Cell::bnx || cell == Cell::bnx_seq ||
                    cell == Cell::bnrnn;
  const bool bn_hc = cell == Cell::bnlstm;
  const bool bn_h = cell == Cell::bnlstm || cell == Cell::bnrnn;
  const bool ln = cell == Cell::lnlstm;
  const bool ln_x = ln && cfg.ln_input;

  Result res;
  res.hT.assign(static_cast<size_t>(L) * N * H, 0.0);
  res.cT.assign(static_cast<size_t>(L) * N * H, 0.0);
  std::vector<double> input = x;  // [T,N,C_k]
  int C = cfg.input_size;

  for (int k = 0; k < L; ++k) {
    const std::string p = "rnn." + std::to_string(k) + ".";
    const auto& W = get(params, p + "weight_ih");
    const auto& R = get(params, p + "weight_hh");
    const auto& b = get(params, p + "bias");
    const std::string nx = ln ? "ln_x" : "bn_x", nh = ln ? "ln_h" : "bn_h", nc = ln ? "ln_c" : "bn_c";
    const auto& gx = get(params, p + nx + ".weight");
    const auto& gh = get(params, p + nh + ".weight");
    const auto& gc = get(params, p + nc + ".weight");
    const auto& bc = get(params, p + nc + ".bias");

    // initial state
    Rows h(N, std::vector<double>(H, 0.0)), c(N, std::vector<double>(H, 0.0));
    for (int n = 0; n < N; ++n)
      for (int j = 0; j < H; ++j) {
        const size_t i = (static_cast<size_t>(k) * N + n) * H + j;
        if (!h0.empty()) h[n][j] = h0[i];
        else if (cfg.learn_init_state) h[n][j] = get(params, p + "h0")[j];
        if (!c0.empty()) c[n][j] = c0[i];
        else if (cfg.learn_init_state) c[n][j] = get(params, p + "c0")[j];
      }

    // x-hat of W x for every step (bnx-seq needs all steps before the first one)
    std::vector<Rows> wx(T, Rows(N, std::vector<double>(G, 0.0)));
    for (int t = 0; t < T; ++t)
      for (int n = 0; n < N; ++n)
        for (int r = 0; r < G; ++r) {
          double s = 0;
          for (int q = 0; q < C; ++q)
            s += W[static_cast<size_t>(r) * C + q] * input[(static_cast<size_t>(t) * N + n) * C + q];
          wx[t][n][r] = s;
        }
    auto valid_at = [&](int t) {
      std::vector<bool> v(N);
      for (int n = 0; n < N; ++n) v[n] = t < lengths[n];
      return v;
    };
    auto pop_row = [&](const std::string& name, int t, int F) -> const double* {
      const auto& buf = get(buffers, name);
      const int rows = static_cast<int>(buf.size() / F);
      return buf.data() + static_cast<size_t>(std::min(t, rows - 1)) * F;
    };
    if (cell == Cell::bnx_seq) {
      // one statistic over all valid (t, n)
      Rows all;
      std::vector<bool> v;
      for (int t = 0; t < T; ++t)
        for (int n = 0; n < N; ++n) {
          all.push_back(wx[t][n]);
          v.push_back(t < lengths[n]);
        }
      std::vector<double> m, var;
      Rows xh = batch_norm(all, v, eps, train, get(buffers, p + "bn_x.running_mean").data(),
                           get(buffers, p + "bn_x.running_var").data(), m, var);
      res.batch_mean[p + "bn_x"] = m;
      res.batch_var[p + "bn_x"] = var;
      for (int t = 0; t < T; ++t)
        for (int n = 0; n < N; ++n) wx[t][n] = xh[static_cast<size_t>(t) * N + n];
    }

    std::vector<double> out(static_cast<size_t>(T) * N * H, 0.0);
    for (int t = 0; t < T; ++t) {
      const std::vector<bool> valid = valid_at(t);
      const int tg = t0 + t;
      // input term
      Rows ax = wx[t];
      if (cell == Cell::bnlstm || cell == Cell::bnx || cell == Cell::bnrnn) {
        std::vector<double> m, var;
        ax = batch_norm(wx[t], valid, eps, train, pop_row(p + "bn_x.running_mean", tg, G),
                        pop_row(p + "bn_x.running_var", tg, G), m, var);
        auto& bm = res.batch_mean[p + "bn_x"];
        auto& bv = res.batch_var[p + "bn_x"];
        bm.insert(bm.end(), m.begin(), m.end());
        bv.insert(bv.end(), var.begin(), var.end());
      }
      if (ln_x)
        for (int n = 0; n < N; ++n) ax[n] = layer_norm(wx[t][n], eps);
      if (bn_x || ln_x)
        for (int n = 0; n < N; ++n)
          for (int j = 0; j < G; ++j) ax[n][j] *= gx[j];
      // recurrent term
      Rows ah(N, std::vector<double>(G, 0.0));
      for (int n = 0; n < N; ++n)
        for (int r = 0; r < G; ++r) {
          double s = 0;
          for (int q = 0; q < H; ++q) s += R[static_cast<size_t>(r) * H + q] * h[n][q];
          ah[n][r] = s;
        }
      if (bn_h) {
        std::vector<double> m, var;
        ah = batch_norm(ah, valid, eps, train, pop_row(p + "bn_h.running_mean", tg, G),
                        pop_row(p + "bn_h.running_var", tg, G), m, var);
        auto& bm = res.batch_mean[p + "bn_h"];
        auto& bv = res.batch_var[p + "bn_h"];
        bm.insert(bm.end(), m.begin(), m.end());
        bv.insert(bv.end(), var.begin(), var.end());
      }
      if (ln)
        for (int n = 0; n < N; ++n) ah[n] = layer_norm(ah[n], eps);
      if (bn_h || ln)
        for (int n = 0; n < N; ++n)
          for (int j = 0; j < G; ++j) ah[n][j] *= gh[j];
      if (rnn) {  // h_t = tanh(pre); c is carried unchanged
        for (int n = 0; n < N; ++n) {
          if (!valid[n]) continue;
          for (int j = 0; j < H; ++j) {
            h[n][j] = std::tanh(ax[n][j] + ah[n][j] + b[j]);
            out[(static_cast<size_t>(t) * N + n) * H + j] = h[n][j];
          }
        }
        continue;
      }
      // gates and the raw cell state
      Rows cnew = c, ogate(N, std::vector<double>(H, 0.0));
      for (int n = 0; n < N; ++n) {
        if (!valid[n]) continue;
        for (int j = 0; j < H; ++j) {
          auto pre = [&](int gate) { return ax[n][gate * H + j] + ah[n][gate * H + j] + b[gate * H + j]; };
          const double i = sigmoid(pre(0)), f = sigmoid(pre(1)), g = std::tanh(pre(2)),
                       o = sigmoid(pre(3));
          cnew[n][j] = f * c[n][j] + i * g;
          ogate[n][j] = o;
        }
      }
      // output: h = o * tanh(c~), c~ normalized for bnlstm / lnlstm; the raw c is carried
      Rows ct = cnew;
      if (bn_hc) {
        std::vector<double> m, var;
        ct = batch_norm(cnew, valid, eps, train, pop_row(p + "bn_c.running_mean", tg, H),
                        pop_row(p + "bn_c.running_var", tg, H), m, var);
        auto& bm = res.batch_mean[p + "bn_c"];
        auto& bv = res.batch_var[p + "bn_c"];
        bm.insert(bm.end(), m.begin(), m.end());
        bv.insert(bv.end(), var.begin(), var.end());
      }
      if (ln)
        for (int n = 0; n < N; ++n)
          if (valid[n]) ct[n] = layer_norm(cnew[n], eps);
      if (bn_hc || ln)
        for (int n = 0; n < N; ++n)
          for (int j = 0; j < H; ++j) ct[n][j] = gc[j] * ct[n][j] + bc[j];
      for (int n = 0; n < N; ++n) {
        if (!valid[n]) continue;
        for (int j = 0; j < H; ++j) {
          h[n][j] = ogate[n][j] * std::tanh(ct[n][j]);
          c[n][j] = cnew[n][j];
          out[(static_cast<size_t>(t) * N + n) * H + j] = h[n][j];
        }
      }
    }
    for (int n = 0; n < N; ++n)
      for (int j = 0; j < H; ++j) {
        res.hT[(static_cast<size_t>(k) * N + n) * H + j] = h[n][j];
        res.cT[(static_cast<size_t>(k) * N + n) * H + j] = c[n][j];
      }
    input = out;
    C = H;
  }
  res.y = input;
  return res;
}

}  // namespace rbn::ref
