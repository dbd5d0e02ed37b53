// libFuzzer: the safetensors parser, then the typed reads a checkpoint load does.
#include <cstddef>
#include <cstdint>

#include "io/safetensors.hpp"
#include "util/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    rbn::SafeTensors st = rbn::parse_safetensors({data, size}, "fuzz.safetensors");
    for (const auto& name : st.names()) {
      const auto& t = st.tensor(name);
      if (t.dtype == "F32" || t.dtype == "F64") (void)st.get_f32(name, {});
      if (t.dtype == "I32" || t.dtype == "I64") (void)st.get_i32(name, {});
    }
    (void)rbn::serialize_safetensors(st);
  } catch (const rbn::Error&) {
  }
  return 0;
}
