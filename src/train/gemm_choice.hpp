// The float GEMM backend of a training run (docs/performance.md, "GEMM backends"): given
// (--gemm, RBN_GEMM, or the resumed run's), or chosen by timing every backend on the run's own
// matrix products (cached per machine). Rank 0 decides; every rank of the group uses its choice.
#pragma once

#include <string>
#include <vector>

#include "train/group.hpp"
#include "train/model.hpp"
#include "util/gemm_calibration.hpp"

namespace rbn {

// The matrix products of one training step of `mc` on T steps of N rows (per rank), per layer
// and head, as the cells' engine and the heads issue them.
std::vector<blas::GemmShape> training_step_gemms(const ModelConfig& mc, int T, int N);

struct GemmChoice {
  blas::Backend backend = blas::Backend::openblas;
  std::string how;  // for the log: "--gemm", "calibrated in 0.21 s: ...", "cached in ..."
};

// request: "openblas" | "onednn" | "auto". Sets the process's backend on every rank and returns
// it (rank 0's `how`; the other ranks' say "rank 0's choice").
GemmChoice resolve_gemm_backend(const std::string& request, const std::string& source,
                                const ModelConfig& mc, int T, int N, Group& group);

}  // namespace rbn
