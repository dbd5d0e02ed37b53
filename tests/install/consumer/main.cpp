// Built against an installed rbn (find_package(rbn CONFIG)): one BN-LSTM forward and backward
// through the public header, checked against a finite difference of the same loss.
#include <rbn/rbn.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  rbn::StackConfig c;
  c.cell = rbn::Cell::bnlstm;
  c.input_size = 2;
  c.hidden_size = 3;
  c.t_max = 4;
  rbn::Stack<double> s(c);
  const int T = 4, N = 5, H = 3;
  std::vector<double> x(T * N * 2), y(T * N * H), dy(T * N * H), dx(x.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(1.0 + static_cast<double>(i));
  for (size_t i = 0; i < dy.size(); ++i) dy[i] = std::cos(0.7 * static_cast<double>(i));
  auto loss = [&](std::vector<double>& in) {
    rbn::ForwardOptions opt;
    opt.mode = rbn::Mode::train;
    opt.update_running = false;
    s.forward(opt, T, N, {.x = in.data()}, {.y = y.data()});
    double l = 0;
    for (size_t i = 0; i < y.size(); ++i) l += dy[i] * y[i];  // L = sum dy * y
    return l;
  };
  loss(x);
  s.backward(dy.data(), nullptr, nullptr, dx.data(), nullptr, nullptr);
  const double e = 1e-6;
  std::vector<double> xp = x, xm = x;
  xp[3] += e;
  xm[3] -= e;
  const double fd = (loss(xp) - loss(xm)) / (2 * e);
  std::printf("rbn consumer: dL/dx[3] = %.9f, finite difference %.9f\n", dx[3], fd);
  return std::abs(fd - dx[3]) < 1e-6 * (1 + std::abs(fd)) ? 0 : 1;
}
