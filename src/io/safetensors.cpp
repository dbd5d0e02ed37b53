#include "io/safetensors.hpp"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "io/atomic_file.hpp"
#include "util/error.hpp"

namespace rbn {

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(s[i]);
  }
  return out + "]";
}

uint32_t crc_of(const uint8_t* p, size_t n) {
  uLong c = crc32(0L, Z_NULL, 0);
  while (n > 0) {  // zlib takes uInt lengths
    const uInt chunk = static_cast<uInt>(std::min<size_t>(n, 1u << 30));
    c = crc32(c, p, chunk);
    p += chunk;
    n -= chunk;
  }
  return static_cast<uint32_t>(c);
}

template <class T>
void add_typed(std::map<std::string, StTensor>& m, const std::string& name, const char* dtype,
               const std::vector<int64_t>& shape, const T* v) {
  size_t n = 1;
  for (auto s : shape) n *= static_cast<size_t>(s);
  StTensor t{dtype, shape, std::vector<uint8_t>(n * sizeof(T))};
  if (n) std::memcpy(t.data.data(), v, n * sizeof(T));
  m[name] = std::move(t);
}

}  // namespace

size_t dtype_size(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "I8" || d == "U8" || d == "BOOL") return 1;
  return 0;
}

void SafeTensors::add_f32(const std::string& name, const std::vector<int64_t>& shape, const float* v) {
  add_typed(tensors_, name, "F32", shape, v);
}
void SafeTensors::add_f64(const std::string& name, const std::vector<int64_t>& shape, const double* v) {
  add_typed(tensors_, name, "F64", shape, v);
}
void SafeTensors::add_i32(const std::string& name, const std::vector<int64_t>& shape, const int32_t* v) {
  add_typed(tensors_, name, "I32", shape, v);
}

std::vector<std::string> SafeTensors::names() const {
  std::vector<std::string> v;
  for (const auto& [k, _] : tensors_) v.push_back(k);
  return v;
}

const StTensor& SafeTensors::tensor(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw DataError(source + ": missing tensor " + name);
  return it->second;
}

const std::vector<int64_t>& SafeTensors::shape_of(const std::string& name) const {
  return tensor(name).shape;
}

const StTensor& SafeTensors::need(const std::string& name, const std::vector<int64_t>& shape) const {
  const StTensor& t = tensor(name);
  if (!shape.empty() && t.shape != shape)
    throw DataError(source + ": tensor " + name + " has shape " + shape_str(t.shape) + ", expected " +
                    shape_str(shape));
  return t;
}

std::vector<float> SafeTensors::get_f32(const std::string& name, const std::vector<int64_t>& shape) const {
  const StTensor& t = need(name, shape);
  const size_t n = t.data.size() / std::max<size_t>(1, dtype_size(t.dtype));
  std::vector<float> out(n);
  if (t.dtype == "F32") {
    if (n) std::memcpy(out.data(), t.data.data(), n * 4);
  } else if (t.dtype == "F64") {
    for (size_t i = 0; i < n; ++i) {
      double d;
      std::memcpy(&d, t.data.data() + 8 * i, 8);
      out[i] = static_cast<float>(d);
    }
  } else {
    throw DataError(source + ": tensor " + name + " is " + t.dtype + ", expected F32");
  }
  return out;
}

std::vector<double> SafeTensors::get_f64(const std::string& name, const std::vector<int64_t>& shape) const {
  const StTensor& t = need(name, shape);
  const size_t n = t.data.size() / std::max<size_t>(1, dtype_size(t.dtype));
  std::vector<double> out(n);
  if (t.dtype == "F64") {
    if (n) std::memcpy(out.data(), t.data.data(), n * 8);
  } else if (t.dtype == "F32") {
    for (size_t i = 0; i < n; ++i) {
      float f;
      std::memcpy(&f, t.data.data() + 4 * i, 4);
      out[i] = f;
    }
  } else {
    throw DataError(source + ": tensor " + name + " is " + t.dtype + ", expected F64");
  }
  return out;
}

std::vector<int32_t> SafeTensors::get_i32(const std::string& name, const std::vector<int64_t>& shape) const {
  const StTensor& t = need(name, shape);
  const size_t n = t.data.size() / std::max<size_t>(1, dtype_size(t.dtype));
  std::vector<int32_t> out(n);
  if (t.dtype == "I32") {
    if (n) std::memcpy(out.data(), t.data.data(), n * 4);
  } else if (t.dtype == "I64") {
    for (size_t i = 0; i < n; ++i) {
      int64_t v;
      std::memcpy(&v, t.data.data() + 8 * i, 8);
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
        throw DataError(source + ": tensor " + name + " holds a value outside int32");
      out[i] = static_cast<int32_t>(v);
    }
  } else {
    throw DataError(source + ": tensor " + name + " is " + t.dtype + ", expected I32");
  }
  return out;
}

namespace {

// The header's length from the file's first 8 bytes, checked against the file's size.
uint64_t header_length(const uint8_t* first8, uint64_t file_size, const std::string& file) {
  if (file_size < 8)
    throw DataError(file + ": too short for a safetensors header (" + std::to_string(file_size) + " bytes)");
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | first8[i];
  if (hlen > file_size - 8)
    throw DataError(file + ": header length " + std::to_string(hlen) + " runs past the end of the file");
  if (hlen < 2) throw DataError(file + ": empty header");
  return hlen;
}

// The JSON header (an object) and its string-to-string `__metadata__`.
nlohmann::json parse_header(const uint8_t* p, uint64_t hlen, const std::string& file,
                            std::map<std::string, std::string>& metadata) {
  nlohmann::json h = nlohmann::json::parse(p, p + hlen, nullptr, false);
  if (h.is_discarded()) throw DataError(file + ": header is not valid JSON");
  if (!h.is_object()) throw DataError(file + ": header is not a JSON object");
  if (auto it = h.find("__metadata__"); it != h.end()) {
    if (!it->is_object()) throw DataError(file + ": __metadata__ is not an object");
    for (auto m = it->begin(); m != it->end(); ++m) {
      if (!m->is_string()) throw DataError(file + ": metadata value '" + m.key() + "' is not a string");
      metadata[m.key()] = m->get<std::string>();
    }
  }
  return h;
}

}  // namespace

SafeTensors parse_safetensors(std::span<const uint8_t> bytes, const std::string& file) {
  auto bad = [&](const std::string& what) { throw DataError(file + ": " + what); };
  SafeTensors st;
  st.source = file;
  const uint64_t hlen = header_length(bytes.data(), bytes.size(), file);
  const nlohmann::json h = parse_header(bytes.data() + 8, hlen, file, st.metadata);
  const uint8_t* data = bytes.data() + 8 + hlen;
  const size_t dlen = bytes.size() - 8 - hlen;
  struct Range {
    uint64_t b, e;
    std::string name;
  };
  std::vector<Range> ranges;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") continue;  // read above
    const auto& t = *it;
    if (!t.is_object() || !t.contains("dtype") || !t.contains("shape") || !t.contains("data_offsets"))
      bad("tensor " + name + ": needs dtype, shape and data_offsets");
    if (!t["dtype"].is_string()) bad("tensor " + name + ": dtype is not a string");
    const std::string dtype = t["dtype"].get<std::string>();
    const size_t isz = dtype_size(dtype);
    if (!isz) bad("tensor " + name + ": unknown dtype '" + dtype + "'");
    if (!t["shape"].is_array()) bad("tensor " + name + ": shape is not an array");
    std::vector<int64_t> shape;
    uint64_t numel = 1;
    for (const auto& d : t["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) bad("tensor " + name + ": bad shape");
      const uint64_t v = d.get<uint64_t>();
      if (v && numel > (uint64_t{1} << 62) / v) bad("tensor " + name + ": shape too large");
      numel *= v;
      shape.push_back(static_cast<int64_t>(v));
    }
    const auto& off = t["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      bad("tensor " + name + ": data_offsets must be two non-negative integers");
    const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (e < b) bad("tensor " + name + ": data_offsets end before they begin");
    if (e > dlen) bad("tensor " + name + ": data_offsets [" + std::to_string(b) + "," + std::to_string(e) +
                      "] out of range (data is " + std::to_string(dlen) + " bytes)");
    if (e - b != numel * isz)
      bad("tensor " + name + ": " + std::to_string(e - b) + " bytes for shape " + shape_str(shape) + " of " +
          dtype);
    ranges.push_back({b, e, name});
    StTensor tt{dtype, shape, std::vector<uint8_t>(data + b, data + e)};
    st.tensors()[name] = std::move(tt);
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& c) { return a.b < c.b; });
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].b < ranges[i - 1].e && ranges[i].e > ranges[i].b)
      bad("tensors " + ranges[i - 1].name + " and " + ranges[i].name + " overlap");
  if (auto it = st.metadata.find("checksum"); it != st.metadata.end()) {
    const std::string want = fmt::format("crc32:{:08x}", crc_of(data, dlen));
    if (it->second != want) bad("checksum mismatch (file corrupted?)");
  }
  return st;
}

SafeTensors read_safetensors(const std::string& path) {
  const std::string bytes = read_file(path);
  return parse_safetensors({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, path);
}

std::map<std::string, std::string> read_safetensors_metadata(const std::string& path) {
  std::ifstream in = open_for_reading(path);
  in.seekg(0, std::ios::end);
  const auto size = static_cast<uint64_t>(std::max<std::streamoff>(0, in.tellg()));
  in.seekg(0);
  uint8_t first8[8] = {};
  in.read(reinterpret_cast<char*>(first8), static_cast<std::streamsize>(std::min<uint64_t>(size, 8)));
  const uint64_t hlen = header_length(first8, size, path);
  std::vector<uint8_t> header(hlen);
  if (!in.read(reinterpret_cast<char*>(header.data()), static_cast<std::streamsize>(hlen)))
    throw DataError(path + ": read error");
  std::map<std::string, std::string> metadata;
  parse_header(header.data(), hlen, path, metadata);
  return metadata;
}

std::vector<uint8_t> serialize_safetensors(const SafeTensors& st) {
  nlohmann::ordered_json h;
  std::vector<uint8_t> data;
  for (const auto& [name, t] : st.tensors()) {  // std::map: sorted by name, deterministic bytes
    const size_t b = data.size();
    data.insert(data.end(), t.data.begin(), t.data.end());
    h[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {b, data.size()}}};
  }
  std::map<std::string, std::string> md = st.metadata;
  md["checksum"] = fmt::format("crc32:{:08x}", crc_of(data.data(), data.size()));
  h["__metadata__"] = md;
  std::string hs = h.dump();
  while ((8 + hs.size()) % 8) hs += ' ';  // align the data to 8 bytes, as the reference writer does
  const uint64_t n = hs.size();
  std::vector<uint8_t> out(8 + hs.size() + data.size());
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  std::memcpy(out.data() + 8, hs.data(), hs.size());
  if (!data.empty()) std::memcpy(out.data() + 8 + hs.size(), data.data(), data.size());
  return out;
}

void write_safetensors(const std::string& path, const SafeTensors& st) {
  const auto bytes = serialize_safetensors(st);
  write_file_atomic(path, bytes);
}

}  // namespace rbn
