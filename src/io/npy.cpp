#include "io/npy.hpp"

#include <cstring>
#include <limits>

#include "io/atomic_file.hpp"
#include "util/error.hpp"

namespace rbn {

namespace {

size_t item_size(const std::string& d) {
  if (d == "<f4" || d == "<i4" || d == "<u4") return 4;
  if (d == "<f8" || d == "<i8" || d == "<u8") return 8;
  if (d == "|u1" || d == "|i1") return 1;
  if (d == "<i2" || d == "<u2") return 2;
  return 0;
}

// The value of `key` in the header dict text, e.g. 'descr': '<f4' -> "'<f4'".
std::string field(const std::string& h, const std::string& key, const std::string& file) {
  const size_t k = h.find("'" + key + "'");
  if (k == std::string::npos) throw DataError(file + ": .npy header has no '" + key + "'");
  size_t p = h.find(':', k);
  if (p == std::string::npos) throw DataError(file + ": malformed .npy header");
  ++p;
  while (p < h.size() && h[p] == ' ') ++p;
  size_t e = p;
  if (p < h.size() && h[p] == '(') {
    e = h.find(')', p);
    if (e == std::string::npos) throw DataError(file + ": malformed shape in .npy header");
    return h.substr(p, e - p + 1);
  }
  if (p < h.size() && (h[p] == '\'' || h[p] == '"')) {
    e = h.find(h[p], p + 1);
    if (e == std::string::npos) throw DataError(file + ": malformed .npy header");
    return h.substr(p + 1, e - p - 1);
  }
  while (e < h.size() && h[e] != ',' && h[e] != '}') ++e;
  return h.substr(p, e - p);
}

}  // namespace

size_t NpyArray::numel() const {
  size_t n = 1;
  for (auto s : shape) n *= static_cast<size_t>(s);
  return n;
}

std::vector<float> NpyArray::to_float() const {
  const size_t n = numel();
  std::vector<float> out(n);
  if (dtype == "<f4") {
    if (n) std::memcpy(out.data(), data.data(), n * 4);
  } else if (dtype == "<f8") {
    for (size_t i = 0; i < n; ++i) {
      double d;
      std::memcpy(&d, data.data() + 8 * i, 8);
      out[i] = static_cast<float>(d);
    }
  } else {
    throw DataError(source + ": dtype " + dtype + " where float32/float64 features are expected");
  }
  return out;
}

std::vector<int32_t> NpyArray::to_int32() const {
  const size_t n = numel();
  std::vector<int32_t> out(n);
  if (dtype == "<i4") {
    if (n) std::memcpy(out.data(), data.data(), n * 4);
  } else if (dtype == "<i8") {
    for (size_t i = 0; i < n; ++i) {
      int64_t v;
      std::memcpy(&v, data.data() + 8 * i, 8);
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
        throw DataError(source + ": value " + std::to_string(v) + " does not fit int32");
      out[i] = static_cast<int32_t>(v);
    }
  } else {
    throw DataError(source + ": dtype " + dtype + " where int32/int64 are expected");
  }
  return out;
}

NpyArray parse_npy(std::span<const uint8_t> b, const std::string& file) {
  auto bad = [&](const std::string& w) { throw DataError(file + ": " + w); };
  if (b.size() < 10 || std::memcmp(b.data(), "\x93NUMPY", 6) != 0) bad("not a .npy file (bad magic)");
  const int major = b[6];
  size_t hlen = 0, hstart = 0;
  if (major == 1) {
    hlen = b[8] | (size_t(b[9]) << 8);
    hstart = 10;
  } else if (major == 2 || major == 3) {
    if (b.size() < 12) bad("truncated .npy header");
    hlen = b[8] | (size_t(b[9]) << 8) | (size_t(b[10]) << 16) | (size_t(b[11]) << 24);
    hstart = 12;
  } else {
    bad("unsupported .npy version " + std::to_string(major));
  }
  if (hlen > b.size() - hstart) bad("truncated .npy header");
  const std::string h(reinterpret_cast<const char*>(b.data() + hstart), hlen);
  if (h.find('{') == std::string::npos || h.find('}') == std::string::npos) bad(".npy header is not a dict");
  NpyArray a;
  a.source = file;
  a.dtype = field(h, "descr", file);
  if (a.dtype == "=f4" || a.dtype == "f4") a.dtype = "<f4";
  if (a.dtype == "=f8" || a.dtype == "f8") a.dtype = "<f8";
  if (a.dtype == "=i4" || a.dtype == "i4") a.dtype = "<i4";
  if (a.dtype == "=i8" || a.dtype == "i8") a.dtype = "<i8";
  const size_t isz = item_size(a.dtype);
  if (!isz) bad("unsupported dtype '" + a.dtype + "' (little-endian f4, f8, i4, i8 expected)");
  const std::string fo = field(h, "fortran_order", file);
  if (fo.find("True") != std::string::npos) bad("Fortran-order arrays are not supported (C order expected)");
  if (fo.find("False") == std::string::npos) bad("malformed fortran_order");
  const std::string shp = field(h, "shape", file);
  if (shp.empty() || shp.front() != '(' || shp.back() != ')') bad("malformed shape");
  size_t numel = 1;
  std::string num;
  for (size_t i = 1; i < shp.size(); ++i) {
    const char c = shp[i];
    if (c >= '0' && c <= '9') {
      num += c;
      if (num.size() > 15) bad("shape too large");
    } else if (c == ',' || c == ')') {
      if (!num.empty()) {
        const int64_t v = std::stoll(num);
        if (v && numel > (size_t{1} << 40) / static_cast<size_t>(v)) bad("shape too large");
        numel *= static_cast<size_t>(v);
        a.shape.push_back(v);
        num.clear();
      }
    } else if (c != ' ' && c != 'L') {
      bad("malformed shape '" + shp + "'");
    }
  }
  const size_t need = numel * isz, have = b.size() - hstart - hlen;
  if (have < need) bad("truncated data: " + std::to_string(have) + " bytes for " + std::to_string(need));
  if (have > need) bad(std::to_string(have - need) + " trailing bytes after the array");
  a.data.assign(b.begin() + static_cast<ptrdiff_t>(hstart + hlen), b.end());
  return a;
}

NpyArray read_npy(const std::string& path) {
  const std::string bytes = read_file(path);
  return parse_npy({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, path);
}

void write_npy(const std::string& path, const std::string& dtype, std::span<const int64_t> shape,
               const void* data) {
  const size_t isz = item_size(dtype);
  if (!isz) throw UsageError("write_npy: unsupported dtype " + dtype);
  std::string sh = "(";
  size_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    sh += std::to_string(shape[i]) + (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
    if (i + 1 < shape.size()) sh += ' ';
    n *= static_cast<size_t>(shape[i]);
  }
  sh += ")";
  std::string h = "{'descr': '" + dtype + "', 'fortran_order': False, 'shape': " + sh + ", }";
  while ((10 + h.size() + 1) % 64) h += ' ';
  h += '\n';
  std::vector<uint8_t> out(10 + h.size() + n * isz);
  const uint8_t magic[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, static_cast<uint8_t>(h.size() & 0xff),
                             static_cast<uint8_t>(h.size() >> 8)};
  std::memcpy(out.data(), magic, 10);
  std::memcpy(out.data() + 10, h.data(), h.size());
  if (n > 0) std::memcpy(out.data() + 10 + h.size(), data, n * isz);
  write_file_atomic(path, out);
}

}  // namespace rbn
