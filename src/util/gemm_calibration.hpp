// The GEMM backend of a training run, chosen per machine by timing every backend on the run's own
// matrix products (a fraction of a second), and remembered in a cache file so that the same
// machine, libraries, thread count and shapes always get the same choice without timing again.
#pragma once

#include <string>
#include <vector>

#include "util/blas.hpp"

namespace rbn::blas {

// One matrix product of a training step, as the step issues it: C[M,N] = op(A) op(B) with
// op(A) [M,K], op(B) [K,N].
struct GemmShape {
  bool ta = false, tb = false;
  int M = 0, N = 0, K = 0;
  double count = 1;         // calls per training step
  bool per_thread = false;  // inside the time loop: every OpenMP thread runs one at once
};

struct Calibration {
  Backend choice = Backend::openblas;
  // estimated milliseconds of the step's products, per backend (all_backends() order)
  std::vector<double> step_ms;
  bool from_cache = false;
  double seconds = 0;      // time spent timing (0 from the cache)
  std::string cache_path;  // the file read or written ("" when there is no cache directory)
  std::string cache_note;  // why the cache could not be written ("" when it was)
};

// Estimated milliseconds per backend of one step's products at the current OpenMP thread count:
// every shape timed once per backend to warm up, then three times, the backends alternating call
// by call (the fastest kept);
// a shape over ~0.5 GFLOP is shortened along its largest dimension and scaled back by its FLOPs.
std::vector<double> time_backends(const std::vector<GemmShape>& shapes);

// A backend is chosen over OpenBLAS only when its estimate is at least 5 % lower (noise must not
// flip the choice between otherwise equal backends).
Backend choose(const std::vector<double>& step_ms);

// $XDG_CACHE_HOME/rbn/gemm-backend.json, else $HOME/.cache/rbn/gemm-backend.json ("" if neither
// variable is set).
std::string calibration_cache_path();

// What makes a cached choice valid: CPU, OpenMP threads, both libraries' versions and kernels
// (OPENBLAS_CORETYPE shows in OpenBLAS's core), and the shapes.
std::string calibration_key(const std::vector<GemmShape>& shapes);

// The cached choice for these shapes, or a fresh timing stored in the cache. A missing, unreadable
// or corrupt cache means timing again; an unwritable one is reported in cache_note, never an error.
Calibration calibrate(const std::vector<GemmShape>& shapes);

}  // namespace rbn::blas
