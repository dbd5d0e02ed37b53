// Weight initialization from the library's own generator (bit-identical for a seed).
#pragma once

#include <vector>

#include "util/blas.hpp"
#include "util/rng.hpp"

namespace rbn {

// out [rows, cols] row-major: a (semi-)orthogonal matrix, as torch.nn.init.orthogonal_ makes it:
// QR of a Gaussian matrix (of the transpose when rows < cols), Q's columns signed by diag(R).
// Householder QR through LAPACK (blas::orthonormal_columns): a 2000 x 2000 block in a fraction
// of a second, where a modified Gram-Schmidt loop took seconds (text8's layer: 21 s to construct).
inline void orthogonal_init(double* out, int rows, int cols, Rng& rng) {
  const bool transpose = rows < cols;
  const int m = transpose ? cols : rows;  // tall: m >= n
  const int n = transpose ? rows : cols;
  std::vector<double> a(static_cast<size_t>(m) * n);  // column-major columns of length m
  for (auto& v : a) v = rng.normal();
  blas::orthonormal_columns(m, n, a.data());
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c)
      out[static_cast<size_t>(r) * cols + c] =
          transpose ? a[static_cast<size_t>(r) * m + c] : a[static_cast<size_t>(c) * m + r];
}

}  // namespace rbn
