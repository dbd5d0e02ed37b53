// libFuzzer: the .npy parser accepts or rejects with rbn::Error, never anything else.
#include <cstddef>
#include <cstdint>

#include "io/npy.hpp"
#include "util/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    rbn::NpyArray a = rbn::parse_npy({data, size}, "fuzz.npy");
    if (a.dtype == "<f4" || a.dtype == "<f8") (void)a.to_float();
    if (a.dtype == "<i4" || a.dtype == "<i8") (void)a.to_int32();
  } catch (const rbn::Error&) {
  }
  return 0;
}
