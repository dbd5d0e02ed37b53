#include "util/line_vector.hpp"

#include <cstdlib>
#include <fstream>
#include <string>
#include <string_view>

#include "util/error.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace rbn {

namespace {

// The kernel's PMD huge-page size when transparent huge pages may be advised, else 0.
std::size_t kernel_huge_page_size() {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  std::ifstream mode("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string modes;
  if (!std::getline(mode, modes) || modes.find("[never]") != std::string::npos) return 0;
  std::ifstream size("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size");
  std::size_t bytes = 0;
  if (!(size >> bytes)) return 0;
  // A power of two no larger than 32 MiB (x86-64: 2 MiB; 64 KiB-page arm64 kernels have 512 MiB
  // ones, too coarse to align every large block to).
  if (bytes < 4096 || bytes > (std::size_t(32) << 20) || (bytes & (bytes - 1)) != 0) return 0;
  return bytes;
#else
  return 0;
#endif
}

std::size_t read_huge_page_size() {
  const char* v = std::getenv("RBN_HUGE_PAGES");
  const std::string_view mode = v ? v : "";
  if (mode == "off") return 0;
  if (!mode.empty() && mode != "on")
    throw UsageError("RBN_HUGE_PAGES=" + std::string(mode) + ": expected on (the default) or off");
  return kernel_huge_page_size();
}

}  // namespace

std::size_t huge_page_size() {
  static const std::size_t size = read_huge_page_size();
  return size;
}

std::size_t line_block_alignment(std::size_t bytes) {
  const std::size_t huge = huge_page_size();
  return huge > 0 && bytes >= 2 * huge ? huge : kCacheLine;
}

void* allocate_line_block(std::size_t bytes) {
  const std::size_t align = line_block_alignment(bytes);
  void* p = ::operator new(bytes, std::align_val_t{align});
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (align > kCacheLine) madvise(p, bytes / align * align, MADV_HUGEPAGE);  // advice: no error
#endif
  return p;
}

void free_line_block(void* p, std::size_t bytes) noexcept {
  ::operator delete(p, std::align_val_t{line_block_alignment(bytes)});
}

}  // namespace rbn
