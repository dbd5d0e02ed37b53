// The reference implementation: every cell of SPEC sections 2 and 2b written for reading, with plain
// loops in double precision and no BLAS. The fast path (stack.cpp) is tested against it.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "rbn/rbn.hpp"

namespace rbn::ref {

using Tensors = std::map<std::string, std::vector<double>>;

struct Result {
  std::vector<double> y;   // [T,N,D*H] top layer (forward ‖ reverse), 0 at padded positions
  std::vector<double> hT;  // [L*D,N,H] state after each row's last valid step (reverse: after x[0])
  std::vector<double> cT;  // [L*D,N,H]
  // Batch statistics of each BN in train mode, by tensor prefix ("rnn.0.bn_x",
  // "rnn.0.reverse.bn_x"): [T,F] ([1,F] for bnx-seq), row s the direction's own step s; rows of
  // steps without valid rows are 0 mean, 1 variance.
  Tensors batch_mean, batch_var;
};

// One forward's inputs.
struct Inputs {
  Mode mode = Mode::train;
  int T = 0, N = 0;
  std::vector<double> x;       // [T,N,C]
  std::vector<int> lengths;    // [N]
  std::vector<double> h0, c0;  // [L*D,N,H] or empty (learned if configured, else 0)
  int t0 = 0;                  // statistics row of step 0
  // Dropout and zoneout (SPEC 2b): masks from the same hash as the fast path's
  // (ForwardOptions::regularize, update, row0) in train mode; else no dropout and the zoneout
  // expectation.
  bool regularize = true;
  uint64_t update = 0;
  int64_t row0 = 0;
};

// params / buffers by SPEC tensor name.
Result forward(const StackConfig& cfg, const Tensors& params, const Tensors& buffers,
               const Inputs& in);

}  // namespace rbn::ref
