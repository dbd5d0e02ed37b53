// libFuzzer: the IDX (MNIST) parser.
#include <cstddef>
#include <cstdint>

#include "data/idx.hpp"
#include "util/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    rbn::IdxArray a = rbn::parse_idx({data, size}, "fuzz-idx");
    (void)a;
  } catch (const rbn::Error&) {
  }
  return 0;
}
