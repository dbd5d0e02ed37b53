// libFuzzer: the text corpora (PTB symbols, text8 check) and the vocabulary JSON of checkpoints.
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "data/text.hpp"
#include "util/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string s(reinterpret_cast<const char*>(data), size);
  try {
    (void)rbn::ptb_symbols(s, "fuzz.txt");
  } catch (const rbn::Error&) {
  }
  try {
    rbn::check_text8(s, "fuzz-text8");
  } catch (const rbn::Error&) {
  }
  const nlohmann::json j = nlohmann::json::parse(s, nullptr, false);
  if (!j.is_discarded()) {
    try {
      rbn::Vocab v = rbn::Vocab::from_json(j);
      (void)v.decode({0, 1, 2});
      (void)v.encode_text("the cat", "fuzz");
    } catch (const rbn::Error&) {
    }
  }
  return 0;
}
