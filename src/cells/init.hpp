// Weight initialization from the library's own generator (bit-identical for a seed).
#pragma once

#include <cmath>
#include <vector>

#include "util/rng.hpp"

namespace rbn {

// out [rows, cols] row-major: a (semi-)orthogonal matrix, as torch.nn.init.orthogonal_ makes it:
// QR of a Gaussian matrix (of the transpose when rows < cols), Q's columns signed by diag(R).
// Modified Gram-Schmidt in double; sizes here are at most a few thousand.
inline void orthogonal_init(double* out, int rows, int cols, Rng& rng) {
  const bool transpose = rows < cols;
  const int m = transpose ? cols : rows;  // tall: m >= n
  const int n = transpose ? rows : cols;
  std::vector<double> a(static_cast<size_t>(m) * n);  // column-major columns of length m
  for (auto& v : a) v = rng.normal();
  for (int j = 0; j < n; ++j) {
    double* qj = &a[static_cast<size_t>(j) * m];
    for (int pass = 0; pass < 2; ++pass) {  // re-orthogonalize once for stability
      for (int k = 0; k < j; ++k) {
        const double* qk = &a[static_cast<size_t>(k) * m];
        double dot = 0;
        for (int i = 0; i < m; ++i) dot += qk[i] * qj[i];
        for (int i = 0; i < m; ++i) qj[i] -= dot * qk[i];
      }
    }
    double norm = 0;
    for (int i = 0; i < m; ++i) norm += qj[i] * qj[i];
    norm = std::sqrt(norm);
    // diag(R) is positive with Gram-Schmidt, so no sign flip is needed.
    for (int i = 0; i < m; ++i) qj[i] = norm > 0 ? qj[i] / norm : 0.0;
  }
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c)
      out[static_cast<size_t>(r) * cols + c] =
          transpose ? a[static_cast<size_t>(r) * m + c] : a[static_cast<size_t>(c) * m + r];
}

}  // namespace rbn
