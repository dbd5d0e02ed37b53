// A std::vector whose storage starts on a 64-byte cache line.
//
// std::vector's large blocks come from malloc's mmap and start 16 bytes into a line, so every
// row of a [rows, 16k] float matrix in one straddles two lines and each vector load or store of a
// whole line touches two. The GEMM kernels read a packed right operand that way on every step
// (PTB's forward step product: 1.2x the time), and the time loop's passes stream the [T,N,4H]
// gates so (docs/performance-history.md, "Rows on cache lines").
#pragma once

#include <cstddef>
#include <new>
#include <vector>

namespace rbn {

inline constexpr std::size_t kCacheLine = 64;

template <class T>
struct LineAllocator {
  using value_type = T;
  LineAllocator() = default;
  template <class U>
  LineAllocator(const LineAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{kCacheLine}));
  }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, std::align_val_t{kCacheLine}); }
  template <class U>
  bool operator==(const LineAllocator<U>&) const noexcept {
    return true;
  }
};

template <class T>
using LineVector = std::vector<T, LineAllocator<T>>;

// A leading dimension of cols values rounded up to whole lines, so that every row of a matrix in
// a LineVector starts on one.
template <class T>
constexpr int line_ld(int cols) {
  constexpr int per_line = static_cast<int>(kCacheLine / sizeof(T));
  return (cols + per_line - 1) / per_line * per_line;
}

}  // namespace rbn
