// libFuzzer: the training config JSON (rbn train --config) and its validation.
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "train/config.hpp"
#include "util/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, false);
  if (j.is_discarded()) return 0;
  try {
    rbn::TrainConfig c = rbn::TrainConfig::from_json(j, "fuzz.json");
    c.validate();
    (void)c.to_json().dump();
  } catch (const rbn::Error&) {
  }
  return 0;
}
