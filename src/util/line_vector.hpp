// A std::vector whose storage starts on a 64-byte cache line, and whose large blocks lie on
// transparent huge pages.
//
// std::vector's large blocks come from malloc's mmap and start 16 bytes into a line, so every
// row of a [rows, 16k] float matrix in one straddles two lines and each vector load or store of a
// whole line touches two. The GEMM kernels read a packed right operand that way on every step
// (PTB's forward step product: 1.2x the time), and the time loop's passes stream the [T,N,4H]
// gates so (docs/performance-history.md, "Rows on cache lines").
//
// The engine's caches and packed operands (tens to hundreds of MiB, streamed every step) cover
// far more 4 KiB pages than the TLB holds; blocks of at least two huge pages start on one and are
// advised as huge-page memory (docs/performance.md, "How it is fast": "Huge pages").
// RBN_HUGE_PAGES=off keeps them on ordinary pages.
#pragma once

#include <cstddef>
#include <new>
#include <vector>

namespace rbn {

inline constexpr std::size_t kCacheLine = 64;

// The huge-page size allocate_line_block() aligns large blocks to (the kernel's transparent huge
// pages), or 0 where they are off: RBN_HUGE_PAGES=off, a kernel without them or set to `never`, or not Linux.
// RBN_HUGE_PAGES is read once; a value other than on (the default) or off throws UsageError
// naming it (the rbn tool checks it at start).
std::size_t huge_page_size();
// The alignment of a block of `bytes`: a huge page for blocks of two or more, else a cache line.
std::size_t line_block_alignment(std::size_t bytes);
// A block of `bytes` aligned to line_block_alignment(bytes); huge-page sized blocks advised as
// such (madvise MADV_HUGEPAGE; advice only: the kernel may still back them with small pages).
void* allocate_line_block(std::size_t bytes);
void free_line_block(void* p, std::size_t bytes) noexcept;

template <class T>
struct LineAllocator {
  using value_type = T;
  LineAllocator() = default;
  template <class U>
  LineAllocator(const LineAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(allocate_line_block(n * sizeof(T))); }
  void deallocate(T* p, std::size_t n) noexcept { free_line_block(p, n * sizeof(T)); }
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
