// IDX files (MNIST format): magic 2051 images u8 [n, rows, cols], 2049 labels u8 [n]; read from
// raw or .gz files (zlib), or from memory. Every defect is a DataError naming the file.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace rbn {

struct IdxArray {
  uint32_t magic = 0;
  std::vector<uint32_t> dims;  // [n, rows, cols] or [n]
  std::vector<uint8_t> data;
};

// The whole (decompressed) contents of a raw or gzip file. Truncated/corrupt gzip -> DataError.
std::string read_maybe_gz(const std::string& path);

IdxArray parse_idx(std::span<const uint8_t> bytes, const std::string& name_for_errors);
IdxArray read_idx(const std::string& path);

}  // namespace rbn
