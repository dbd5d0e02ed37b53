#include "util/platform.hpp"

#include <cblas.h>
#include <omp.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string_view>

#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "util/error.hpp"

namespace rbn {

namespace {
const char* preferred_core() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return nullptr;
}
}  // namespace

void select_blas_kernel(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") || std::getenv("RBN_BLAS_REEXEC")) return;
  const char* core = openblas_get_corename();
  const char* want = preferred_core();
  if (!want || !core) return;
  // Only the generic fallbacks are overridden; a recognized core is left alone.
  const bool fallback = std::strcmp(core, "Prescott") == 0 || std::strcmp(core, "Core2") == 0 ||
                        std::strcmp(core, "Nehalem") == 0 || std::strcmp(core, "Sandybridge") == 0;
  if (!fallback) return;
  setenv("OPENBLAS_CORETYPE", want, 1);
  setenv("RBN_BLAS_REEXEC", "1", 1);  // never loop
  execv("/proc/self/exe", argv);
  // exec failed: carry on with the slow kernel
}

void set_threads(int n) {
  if (n <= 0) return;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int num_threads() { return omp_get_max_threads(); }

namespace {
#if defined(__x86_64__)
constexpr unsigned kFtzDaz = 0x8040;  // MXCSR: flush to zero (bit 15), denormals are zero (bit 6)
#endif
}  // namespace

bool flush_denormals_unless_kept() {
  const char* v = std::getenv("RBN_DENORMALS");
  const std::string_view mode = v ? v : "";
  if (mode == "keep") return denormals_flushed();
  if (!mode.empty() && mode != "flush")
    throw UsageError("RBN_DENORMALS=" + std::string(mode) + ": expected flush (the default) or keep");
#if defined(__x86_64__)
  _mm_setcsr(_mm_getcsr() | kFtzDaz);
#endif
  return denormals_flushed();
}

bool denormals_flushed() {
#if defined(__x86_64__)
  return (_mm_getcsr() & kFtzDaz) == kFtzDaz;
#else
  return false;
#endif
}

const char* denormal_mode() { return denormals_flushed() ? "flush" : "keep"; }

std::string blas_description() {
  const char* core = openblas_get_corename();
  const char* cfg = openblas_get_config();
  return std::string(core ? core : "?") + " (" + (cfg ? cfg : "") + ")";
}

}  // namespace rbn
