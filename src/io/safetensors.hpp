// The safetensors format (SPEC section 5): 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets}, "__metadata__": {string: string}}, raw little-endian bytes.
// Reading validates everything (header length, JSON, dtypes, shapes, offsets in range, no
// overlap) and the `checksum` metadata when present ("crc32:xxxxxxxx" of the data region); writing
// is atomic, deterministic (tensors sorted by name) and adds the checksum.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace rbn {

struct StTensor {
  std::string dtype;  // "F32", "F64", "I32", "I64", "U8", ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;
};

class SafeTensors {
 public:
  std::map<std::string, std::string> metadata;

  void add_f32(const std::string& name, const std::vector<int64_t>& shape, const float* v);
  void add_f64(const std::string& name, const std::vector<int64_t>& shape, const double* v);
  void add_i32(const std::string& name, const std::vector<int64_t>& shape, const int32_t* v);
  bool has(const std::string& name) const { return tensors_.count(name) > 0; }
  std::vector<std::string> names() const;
  const std::vector<int64_t>& shape_of(const std::string& name) const;
  const StTensor& tensor(const std::string& name) const;
  // Typed reads: DataError "<file>: missing tensor X" / "tensor X has shape [..], expected [..]"
  // / "tensor X is I32, expected F32". An empty expected shape accepts any shape. F32 reads accept
  // F64 files (converted); integer reads accept I32 and I64 (range-checked).
  std::vector<float> get_f32(const std::string& name, const std::vector<int64_t>& shape) const;
  std::vector<double> get_f64(const std::string& name, const std::vector<int64_t>& shape) const;
  std::vector<int32_t> get_i32(const std::string& name, const std::vector<int64_t>& shape) const;

  std::string source = "safetensors";  // file name used in messages
  std::map<std::string, StTensor>& tensors() { return tensors_; }
  const std::map<std::string, StTensor>& tensors() const { return tensors_; }

 private:
  const StTensor& need(const std::string& name, const std::vector<int64_t>& shape) const;
  std::map<std::string, StTensor> tensors_;
};

SafeTensors parse_safetensors(std::span<const uint8_t> bytes, const std::string& name_for_errors);
SafeTensors read_safetensors(const std::string& path);
// The header's `__metadata__` alone: reads the 8-byte length and the JSON header, not the tensor
// data, so a large checkpoint's keys cost a few kilobytes of reading. The header is validated as
// read_safetensors does; the data's checksum is not (read_safetensors checks it when the tensors
// are loaded).
std::map<std::string, std::string> read_safetensors_metadata(const std::string& path);
std::vector<uint8_t> serialize_safetensors(const SafeTensors& st);
void write_safetensors(const std::string& path, const SafeTensors& st);

size_t dtype_size(const std::string& dtype);  // 0 for unknown dtypes

}  // namespace rbn
