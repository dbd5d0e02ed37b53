// Reference cells: one time step at a time, one row at a time, double precision.
#include "cells/reference.hpp"

#include <algorithm>
#include <cmath>

#include "util/rng.hpp"

namespace rbn::ref {

namespace {

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// The draws of one mask at (layer k, direction d, row n, step tg): Bernoulli(p) of feature j.
struct MaskDraws {
  uint64_t key;
  MaskDraws(const StackConfig& cfg, const Inputs& in, int k, int d, mask::Kind kind, int n, int tg)
      : key(mask::row_key({cfg.seed, in.update, k, d, kind}, in.row0 + n, tg)) {}
  bool operator()(int j, double p) const { return mask::bernoulli(key, j, p); }
};

// Zoneout of one row's new state: prev with weight d, new with 1 - d; d ~ Bernoulli(z) per unit
// in train mode, z at inference (the expectation).
void zone_row(const StackConfig& cfg, const Inputs& in, bool masks, int k, int d, mask::Kind kind,
              double z, int n, int tg, const std::vector<double>& prev, std::vector<double>& now) {
  if (z <= 0) return;
  const MaskDraws draw(cfg, in, k, d, kind, n, tg);
  for (size_t j = 0; j < now.size(); ++j) {
    const double d = masks ? (draw(static_cast<int>(j), z) ? 1.0 : 0.0) : z;
    now[j] = d * prev[j] + (1 - d) * now[j];
  }
}

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

// out[n][r] = sum_q M[r, q] in[n][q] for M [rows, cols].
Rows matvec_rows(const std::vector<double>& M, int rows, int cols, const Rows& in) {
  Rows out(in.size(), std::vector<double>(rows, 0.0));
  for (size_t n = 0; n < in.size(); ++n)
    for (int r = 0; r < rows; ++r) {
      double s = 0;
      for (int q = 0; q < cols; ++q) s += M[static_cast<size_t>(r) * cols + q] * in[n][q];
      out[n][r] = s;
    }
  return out;
}

// One layer of the reference forward: its tensors, and each term of the cell's formulas.
struct RefLayer {
  const StackConfig& cfg;
  const Tensors& params;
  const Tensors& buffers;
  bool train;
  Result& res;
  const Inputs& in;
  int k, d;    // layer, direction
  bool masks;  // train-mode regularizers: masks drawn
  std::string p;  // "rnn.k." or "rnn.k.reverse."
  int H, G;
  Cell cell;
  bool gru, ln, ln_x, bn_x, bn_h, bn_c;

  // direction d = 1: the reverse direction's tensors, "rnn.k.reverse."
  RefLayer(const StackConfig& c, const Tensors& pr, const Tensors& bu, bool tr, Result& r,
           const Inputs& inputs, int layer, int dir)
      : cfg(c), params(pr), buffers(bu), train(tr), res(r), in(inputs), k(layer), d(dir),
        masks(tr && inputs.regularize),
        p("rnn." + std::to_string(layer) + (dir == 1 ? ".reverse." : ".")),
        H(c.hidden_size), G(cell_gates(c.cell) * c.hidden_size), cell(c.cell) {
    gru = cell_is_gru(cell);
    ln = cell == Cell::lnlstm || cell == Cell::lngru;
    ln_x = ln && cfg.ln_input;
    bn_x = cell == Cell::bnlstm || cell == Cell::bnx || cell == Cell::bnx_seq ||
           cell == Cell::bnrnn || cell == Cell::bngru;
    bn_h = cell == Cell::bnlstm || cell == Cell::bnrnn || cell == Cell::bngru;
    bn_c = cell == Cell::bnlstm;
  }
  const std::vector<double>& param(const std::string& name) const { return get(params, p + name); }
  const std::string norm(const char* which) const { return (ln ? "ln_" : "bn_") + std::string(which); }

  // Population row of step t (the last row past the table's end).
  const double* pop_row(const std::string& name, int t, int F) const {
    const auto& buf = get(buffers, name);
    const int rows = static_cast<int>(buf.size() / F);
    return buf.data() + static_cast<size_t>(std::min(t, rows - 1)) * F;
  }
  // BN of z at statistics row tg; the batch statistics appended to res under "rnn.k.bn_<which>".
  Rows bn(const Rows& z, const std::vector<bool>& valid, const char* which, int tg, int F) {
    const std::string name = p + "bn_" + which;
    std::vector<double> m, var;
    Rows out = batch_norm(z, valid, cfg.eps, train, pop_row(name + ".running_mean", tg, F),
                          pop_row(name + ".running_var", tg, F), m, var);
    auto& bm = res.batch_mean[name];
    auto& bv = res.batch_var[name];
    bm.insert(bm.end(), m.begin(), m.end());
    bv.insert(bv.end(), var.begin(), var.end());
    return out;
  }
  static void scale_columns(Rows& z, const std::vector<double>& gamma) {
    for (auto& row : z)
      for (size_t j = 0; j < row.size(); ++j) row[j] *= gamma[j];
  }

  // W x of every step (bnx-seq: normalized over all valid (t, n) at once).
  std::vector<Rows> input_projection(int T, int N, int C, const std::vector<double>& input,
                                     const std::vector<int>& lengths) {
    std::vector<Rows> wx(T);
    for (int t = 0; t < T; ++t) {
      Rows xt(N, std::vector<double>(C));
      for (int n = 0; n < N; ++n)
        for (int q = 0; q < C; ++q) xt[n][q] = input[(static_cast<size_t>(t) * N + n) * C + q];
      wx[t] = matvec_rows(param("weight_ih"), G, C, xt);
    }
    if (cell != Cell::bnx_seq) return wx;
    Rows all;
    std::vector<bool> v;
    for (int t = 0; t < T; ++t)
      for (int n = 0; n < N; ++n) {
        all.push_back(wx[t][n]);
        v.push_back(t < lengths[n]);
      }
    std::vector<double> m, var;
    Rows xh = batch_norm(all, v, cfg.eps, train, get(buffers, p + "bn_x.running_mean").data(),
                         get(buffers, p + "bn_x.running_var").data(), m, var);
    res.batch_mean[p + "bn_x"] = m;
    res.batch_var[p + "bn_x"] = var;
    for (int t = 0; t < T; ++t)
      for (int n = 0; n < N; ++n) wx[t][n] = xh[static_cast<size_t>(t) * N + n];
    return wx;
  }

  // LN of a term's row: over all 4H for the LSTM; the GRU's r, z blocks (2H) and its n block (H)
  // each with their own statistics (Ba et al., eqs. 26-28).
  std::vector<double> ln_term(const std::vector<double>& z) const {
    if (!gru) return layer_norm(z, cfg.eps);
    std::vector<double> out = layer_norm({z.begin(), z.begin() + 2 * H}, cfg.eps);
    const std::vector<double> n = layer_norm({z.begin() + 2 * H, z.end()}, cfg.eps);
    out.insert(out.end(), n.begin(), n.end());
    return out;
  }
  static void add_bias(Rows& z, const std::vector<double>& b) {
    for (auto& row : z)
      for (size_t j = 0; j < row.size(); ++j) row[j] += b[j];
  }

  // The normalized input term of step t (with its gain; a GRU's with its bias b_ih).
  Rows input_term(const Rows& wx, const std::vector<bool>& valid, int tg) {
    Rows ax = wx;
    if (bn_x && cell != Cell::bnx_seq) ax = bn(wx, valid, "x", tg, G);
    if (ln_x)
      for (size_t n = 0; n < ax.size(); ++n) ax[n] = ln_term(wx[n]);
    if (bn_x || ln_x) scale_columns(ax, param(norm("x") + ".weight"));
    if (gru) add_bias(ax, param("bias_ih"));
    return ax;
  }
  // The normalized recurrent term R h of step t (with its gain; a GRU's with its bias b_hh).
  Rows recurrent_term(const Rows& h, const std::vector<bool>& valid, int tg) {
    Rows ah = matvec_rows(param("weight_hh"), G, H, h);
    if (bn_h) ah = bn(ah, valid, "h", tg, G);
    if (ln)
      for (auto& row : ah) row = ln_term(row);
    if (bn_h || ln) scale_columns(ah, param(norm("h") + ".weight"));
    if (gru) add_bias(ah, param("bias_hh"));
    return ah;
  }
  // gamma_c * c-hat + beta_c of the new cell states (c itself without a normalization of c).
  Rows cell_output_norm(const Rows& cnew, const std::vector<bool>& valid, int tg) {
    Rows ct = cnew;
    if (bn_c) ct = bn(cnew, valid, "c", tg, H);
    if (ln)
      for (size_t n = 0; n < ct.size(); ++n)
        if (valid[n]) ct[n] = layer_norm(cnew[n], cfg.eps);
    if (bn_c || ln) {
      const auto& gc = param(norm("c") + ".weight");
      const auto& bc = param(norm("c") + ".bias");
      for (auto& row : ct)
        for (int j = 0; j < H; ++j) row[j] = gc[j] * row[j] + bc[j];
    }
    return ct;
  }

  // One LSTM step for the valid rows: gates, the raw c (carried), h = o * tanh(c~).
  void lstm_step(const Rows& ax, const Rows& ah, const std::vector<bool>& valid, int tg, Rows& h,
                 Rows& c) {
    const auto& b = param("bias");
    Rows cnew = c, ogate(h.size(), std::vector<double>(H, 0.0));
    for (size_t n = 0; n < h.size(); ++n) {
      if (!valid[n]) continue;
      for (int j = 0; j < H; ++j) {
        auto pre = [&](int gate) { return ax[n][gate * H + j] + ah[n][gate * H + j] + b[gate * H + j]; };
        const double i = sigmoid(pre(0)), f = sigmoid(pre(1)), g = std::tanh(pre(2)),
                     o = sigmoid(pre(3));
        cnew[n][j] = f * c[n][j] + i * g;
        ogate[n][j] = o;
      }
    }
    const Rows ct = cell_output_norm(cnew, valid, tg);  // of the un-zoned c~ (Krueger et al.)
    for (size_t n = 0; n < h.size(); ++n) {
      if (!valid[n]) continue;
      for (int j = 0; j < H; ++j) {
        h[n][j] = ogate[n][j] * std::tanh(ct[n][j]);
        c[n][j] = cnew[n][j];
      }
    }
  }
  // Zoneout of the valid rows' new h and c (c: the LSTMs only) after the cell's ordinary update
  // (whose h~ used the un-zoned c~).
  void zone(const std::vector<bool>& valid, int tg, const Rows& h_prev, const Rows& c_prev,
            Rows& h, Rows& c) const {
    for (size_t n = 0; n < h.size(); ++n) {
      if (!valid[n]) continue;
      zone_row(cfg, in, masks, k, d, mask::Kind::zoneout_h, cfg.zoneout_h, static_cast<int>(n), tg,
               h_prev[n], h[n]);
      if (cell_gates(cell) == 4)
        zone_row(cfg, in, masks, k, d, mask::Kind::zoneout_c, cfg.zoneout_c, static_cast<int>(n),
                 tg, c_prev[n], c[n]);
    }
  }
  // One GRU step for the valid rows: r, z = sigmoid(x~ + h~), n = tanh(x~_n + r h~_n),
  // h = (1 - z) n + z h (the terms with their biases); c is carried unchanged.
  void gru_step(const Rows& ax, const Rows& ah, const std::vector<bool>& valid, Rows& h) {
    for (size_t n = 0; n < h.size(); ++n) {
      if (!valid[n]) continue;
      for (int j = 0; j < H; ++j) {
        const double r = sigmoid(ax[n][j] + ah[n][j]), z = sigmoid(ax[n][H + j] + ah[n][H + j]);
        const double nn = std::tanh(ax[n][2 * H + j] + r * ah[n][2 * H + j]);
        h[n][j] = (1 - z) * nn + z * h[n][j];
      }
    }
  }
  // One tanh-RNN step: h = tanh(pre) for the valid rows; c is carried unchanged.
  void rnn_step(const Rows& ax, const Rows& ah, const std::vector<bool>& valid, Rows& h) {
    const auto& b = param("bias");
    for (size_t n = 0; n < h.size(); ++n)
      if (valid[n])
        for (int j = 0; j < H; ++j) h[n][j] = std::tanh(ax[n][j] + ah[n][j] + b[j]);
  }
};

// One direction d of layer k over the whole batch: the forward direction reads step t at
// position t; the reverse direction's step s reads each row's position len_n - 1 - s (its own
// valid steps backwards, SPEC section 2b) and uses statistics row s. Writes h into columns
// [d*H, (d+1)*H) of out [T,N,D*H] at the positions read, the final state at index u = k*D + d.
void run_direction(const StackConfig& cfg, const Tensors& params, const Tensors& buffers,
                   const Inputs& in, int k, int d, const std::vector<double>& input, int C,
                   std::vector<double>& out, Result& res) {
  const int H = cfg.hidden_size, T = in.T, N = in.N, D = cfg.directions(), u = k * D + d;
  const std::vector<int>& lengths = in.lengths;
  RefLayer layer(cfg, params, buffers, in.mode == Mode::train, res, in, k, d);
  // initial state: given, learned, or zero
  Rows h(N, std::vector<double>(H, 0.0)), c(N, std::vector<double>(H, 0.0));
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < H; ++j) {
      const size_t i = (static_cast<size_t>(u) * N + n) * H + j;
      if (!in.h0.empty()) h[n][j] = in.h0[i];
      else if (cfg.learn_init_state) h[n][j] = layer.param("h0")[j];
      if (!in.c0.empty()) c[n][j] = in.c0[i];
      else if (cfg.learn_init_state && !layer.gru) c[n][j] = layer.param("c0")[j];
    }
  const std::vector<Rows> wx = layer.input_projection(T, N, C, input, lengths);
  for (int t = 0; t < T; ++t) {  // t: the direction's own step
    std::vector<bool> valid(N);
    std::vector<int> pos(N, 0);  // the position each row reads at this step
    Rows wxt(N, std::vector<double>(layer.G, 0.0));
    for (int n = 0; n < N; ++n) {
      valid[n] = t < lengths[n];
      pos[n] = d == 0 ? t : lengths[n] - 1 - t;
      if (valid[n]) wxt[n] = wx[pos[n]][n];
    }
    const int tg = in.t0 + t;
    const Rows ax = layer.input_term(wxt, valid, tg);
    const Rows ah = layer.recurrent_term(h, valid, tg);
    const Rows h_prev = h, c_prev = c;
    if (layer.gru)
      layer.gru_step(ax, ah, valid, h);
    else if (cell_gates(cfg.cell) == 1)
      layer.rnn_step(ax, ah, valid, h);
    else
      layer.lstm_step(ax, ah, valid, tg, h, c);
    layer.zone(valid, tg, h_prev, c_prev, h, c);  // tg: the direction's own step (SPEC 2b)
    for (int n = 0; n < N; ++n)
      if (valid[n])
        std::copy_n(h[n].begin(), H,
                    out.begin() + (static_cast<size_t>(pos[n]) * N + n) * D * H + d * H);
  }
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < H; ++j) {
      res.hT[(static_cast<size_t>(u) * N + n) * H + j] = h[n][j];
      res.cT[(static_cast<size_t>(u) * N + n) * H + j] = c[n][j];
    }
}

}  // namespace

Result forward(const StackConfig& cfg, const Tensors& params, const Tensors& buffers,
               const Inputs& in) {
  const int H = cfg.hidden_size, L = cfg.num_layers, D = cfg.directions(), T = in.T, N = in.N;
  Result res;
  res.hT.assign(static_cast<size_t>(L) * D * N * H, 0.0);
  res.cT.assign(static_cast<size_t>(L) * D * N * H, 0.0);
  std::vector<double> input = in.x;  // [T,N,C_k]
  int C = cfg.input_size;
  for (int k = 0; k < L; ++k) {
    std::vector<double> out(static_cast<size_t>(T) * N * D * H, 0.0);
    for (int d = 0; d < D; ++d) run_direction(cfg, params, buffers, in, k, d, input, C, out, res);
    input = out;
    C = D * H;
    // dropout on this layer's output (both directions' 2H joined: mask direction 0), as the next
    // layer's input (nn.LSTM's: not the top layer's)
    if (k + 1 < L && in.mode == Mode::train && in.regularize && cfg.dropout > 0)
      for (int t = 0; t < T; ++t)
        for (int n = 0; n < N; ++n) {
          const MaskDraws drop(cfg, in, k, 0, mask::Kind::dropout, n, in.t0 + t);
          for (int j = 0; j < C; ++j) {
            double& v = input[(static_cast<size_t>(t) * N + n) * C + j];
            v = drop(j, cfg.dropout) ? 0.0 : v / (1 - cfg.dropout);
          }
        }
  }
  res.y = input;
  return res;
}

}  // namespace rbn::ref
