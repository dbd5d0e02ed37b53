#include "train/group.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#if RBN_WITH_MPI
#include <mpi.h>
#endif

#include "train/task.hpp"
#include "util/error.hpp"

namespace rbn {

namespace {
bool g_mpi_started = false;

// Rows [n0, n0 + n) of a batch (inputs, targets, labels, lengths), T unchanged.
Batch batch_rows(const Batch& b, int n0, int n);

// Ranks announced by the launcher (OpenMPI's mpirun, MPICH's Hydra), 1 when a PMIx launcher gives
// only a rank, 0 when not launched by one.
int launcher_size() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"})
    if (const char* s = std::getenv(v)) return std::max(1, std::atoi(s));
  if (std::getenv("PMIX_RANK") || std::getenv("PMI_RANK")) return 1;
  return 0;
}
}  // namespace

Group& Group::world() {
  static Group g;
  return g;
}

std::string Group::describe() const {
  if (!g_mpi_started) return "1 process";
  return "MPI, " + std::to_string(size_) + (size_ == 1 ? " rank" : " ranks");
}

template <class T>
void Group::sum_impl(T* buf, size_t n) {
#if RBN_WITH_MPI
  if (size_ <= 1 || n == 0) return;
  const auto t0 = std::chrono::steady_clock::now();
  MPI_Allreduce(MPI_IN_PLACE, buf, static_cast<int>(n), sizeof(T) == 8 ? MPI_DOUBLE : MPI_FLOAT, MPI_SUM,
                MPI_COMM_WORLD);
  traffic_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ++traffic_.calls;
  traffic_.bytes += n * sizeof(T);
#else
  (void)buf;
  (void)n;
#endif
}

void Group::sum(double* buf, size_t n) { sum_impl(buf, n); }
void Group::sum(float* buf, size_t n) { sum_impl(buf, n); }

void Group::abort(int code) {
#if RBN_WITH_MPI
  if (g_mpi_started && size_ > 1) {
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
  }
#endif
  std::exit(code);
}

void group_init(int& argc, char**& argv) {
  const int launched = launcher_size();
#if RBN_WITH_MPI
  if (launched > 0 && !g_mpi_started) {
    int provided = 0;
    // The sums run from the master thread of our OpenMP regions, which is the main thread.
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    g_mpi_started = true;
    Group& g = Group::world();
    MPI_Comm_rank(MPI_COMM_WORLD, &g.rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &g.size_);
  }
#else
  (void)argc;
  (void)argv;
  if (launched > 1)
    throw UsageError("launched as " + std::to_string(launched) +
                     " MPI ranks, but this rbn was built without MPI (configure with -DRBN_MPI=ON, "
                     "which needs libopenmpi-dev)");
#endif
}

void group_finalize() {
#if RBN_WITH_MPI
  if (g_mpi_started) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
#endif
}

bool group_has_mpi() {
#if RBN_WITH_MPI
  return true;
#else
  return false;
#endif
}

int64_t Group::take_rows(Batch& b) const {
  if (size_ == 1) return 0;
  const int64_t first = int64_t{b.N} * rank_ / size_, end = int64_t{b.N} * (rank_ + 1) / size_;
  b = batch_rows(b, static_cast<int>(first), static_cast<int>(end - first));
  return first;
}

namespace {

Batch batch_rows(const Batch& b, int n0, int n) {
  Batch out;
  out.T = b.T;
  out.N = n;
  const size_t T = static_cast<size_t>(b.T), N = static_cast<size_t>(b.N);
  if (!b.x.empty()) {
    const size_t C = b.x.size() / (T * N);
    out.x.resize(T * n * C);
    for (size_t t = 0; t < T; ++t)
      std::copy_n(b.x.data() + (t * N + n0) * C, n * C, out.x.data() + t * n * C);
  }
  auto per_step = [&](const std::vector<int32_t>& v, std::vector<int32_t>& o) {
    if (v.empty()) return;
    o.resize(T * n);
    for (size_t t = 0; t < T; ++t) std::copy_n(v.data() + t * N + n0, n, o.data() + t * n);
  };
  per_step(b.ids, out.ids);
  per_step(b.targets, out.targets);
  auto per_row = [&](const std::vector<int32_t>& v, std::vector<int32_t>& o) {
    if (!v.empty()) o.assign(v.begin() + n0, v.begin() + n0 + n);
  };
  per_row(b.labels, out.labels);
  per_row(b.lengths, out.lengths);
  out.values_per_step = b.values_per_step;
  if (!b.values.empty()) {  // [N,D] or [T,N,D]: rows n0..n0+n of each step
    const size_t steps = b.values_per_step ? T : 1, D = b.values.size() / (steps * N);
    out.values.resize(steps * n * D);
    for (size_t t = 0; t < steps; ++t)
      std::copy_n(b.values.data() + (t * N + n0) * D, n * D, out.values.data() + t * n * D);
  }
  return out;
}

}  // namespace

}  // namespace rbn
