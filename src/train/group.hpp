// The data-parallel group of a training run: the ranks of `mpirun -np K rbn train ...` (OpenMPI,
// when rbn is configured with -DRBN_MPI=ON), or this process alone. Everything that crosses
// ranks goes through here: sums of gradients, of batch statistics and of metrics.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace rbn {

struct Batch;

class Group {
 public:
  // The process's group: MPI_COMM_WORLD once group_init() has started MPI, else one rank.
  static Group& world();

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool distributed() const { return size_ > 1; }
  // "1 process" or "OpenMPI, 2 ranks".
  std::string describe() const;

  // In place: buf[0..n) becomes its sum over the ranks (the same bits on every rank).
  void sum(double* buf, size_t n);
  void sum(float* buf, size_t n);
  // Keeps in b this rank's rows of a global batch — contiguous, N·r/K … N·(r+1)/K, so the sizes
  // differ by at most one (all rows with one rank) — and returns the global index of the first.
  // b.N becomes 0 on some ranks when the batch has fewer rows than the group has ranks.
  int64_t take_rows(Batch& b) const;
  // What the sums have cost this process so far: calls, bytes sent into them, seconds inside.
  struct Traffic {
    uint64_t calls = 0, bytes = 0;
    double seconds = 0;
  };
  const Traffic& traffic() const { return traffic_; }

  // Ends every rank (an error on one rank must not leave the others waiting in a sum).
  [[noreturn]] void abort(int code);

 private:
  friend void group_init(int& argc, char**& argv);
  template <class T>
  void sum_impl(T* buf, size_t n);
  int rank_ = 0, size_ = 1;
  Traffic traffic_;
};

// Starts MPI when the process was launched by an MPI launcher (mpirun sets OMPI_COMM_WORLD_SIZE
// or PMI/PMIx variables); otherwise, and in builds without MPI, the group is this process alone.
// A launch with several ranks of a build without MPI is an error (each rank would train alone).
void group_init(int& argc, char**& argv);
// MPI_Finalize, when MPI was started. Idempotent.
void group_finalize();
// Whether this build can run data-parallel.
bool group_has_mpi();

}  // namespace rbn
