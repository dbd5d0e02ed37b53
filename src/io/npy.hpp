// NumPy .npy files (format 1.0/2.0/3.0), C order, little-endian: read with validation, written
// atomically. Features are f4/f8; token ids and lengths i4/i8 (SPEC section 5).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace rbn {

struct NpyArray {
  std::string dtype;  // "<f4", "<f8", "<i4", "<i8", "|u1", ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;
  std::string source = "npy";
  size_t numel() const;
  std::vector<float> to_float() const;    // f4 / f8 (else DataError naming the file)
  std::vector<int32_t> to_int32() const;  // i4 / i8, range-checked
};

NpyArray parse_npy(std::span<const uint8_t> bytes, const std::string& name_for_errors);
NpyArray read_npy(const std::string& path);
void write_npy(const std::string& path, const std::string& dtype, std::span<const int64_t> shape,
               const void* data);

}  // namespace rbn
