// Counts the process's operator new calls (std::vector, std::string, make_unique ..., and the
// aligned ones of LineVector), for the tests that a streaming step allocates nothing. Include in exactly one source file of a test
// executable: it replaces the global allocation functions (malloc/free underneath, so that
// AddressSanitizer sees matching pairs). malloc calls of C libraries (OpenBLAS, libgomp) and
// oneDNN's aligned buffers are not operator new and are not counted.
#pragma once

#include <atomic>
#include <cstdlib>
#include <new>

namespace rbn::testing {
inline std::atomic<long> g_operator_new_calls{0};
// operator new calls so far, every thread.
inline long operator_new_calls() { return g_operator_new_calls.load(); }
}  // namespace rbn::testing

namespace rbn::testing::detail {
inline void* counted_malloc(std::size_t n) {
  g_operator_new_calls.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n ? n : 1);
}
// operator new with an alignment (LineVector's): aligned_alloc wants a multiple of it.
inline void* counted_aligned(std::size_t n, std::align_val_t a) {
  g_operator_new_calls.fetch_add(1, std::memory_order_relaxed);
  const auto al = static_cast<std::size_t>(a);
  return std::aligned_alloc(al, n ? (n + al - 1) / al * al : al);
}
}  // namespace rbn::testing::detail

void* operator new(std::size_t n) {
  if (void* p = rbn::testing::detail::counted_malloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  if (void* p = rbn::testing::detail::counted_malloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  return rbn::testing::detail::counted_malloc(n);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return rbn::testing::detail::counted_malloc(n);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

void* operator new(std::size_t n, std::align_val_t a) {
  if (void* p = rbn::testing::detail::counted_aligned(n, a)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t a) {
  if (void* p = rbn::testing::detail::counted_aligned(n, a)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return rbn::testing::detail::counted_aligned(n, a);
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return rbn::testing::detail::counted_aligned(n, a);
}
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
