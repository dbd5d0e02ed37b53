#include "data/idx.hpp"

#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "util/error.hpp"

namespace rbn {

std::string read_maybe_gz(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw DataError(path + ": no such file");
  if (std::filesystem::is_directory(path, ec)) throw DataError(path + ": is a directory");
  gzFile g = gzopen(path.c_str(), "rb");
  if (!g) throw DataError(path + ": cannot open: " + std::strerror(errno));
  std::string out;
  char buf[1 << 16];
  for (;;) {
    const int n = gzread(g, buf, sizeof buf);
    if (n < 0) {
      int err = 0;
      const std::string msg = gzerror(g, &err);
      gzclose(g);
      throw DataError(path + ": truncated or corrupt gzip stream (" + msg + ")");
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  // gzread returns 0 at a premature end of a gzip stream too; gzclose reports it as Z_BUF_ERROR.
  const int rc = gzclose(g);
  if (rc != Z_OK) throw DataError(path + ": truncated or corrupt gzip stream");
  return out;
}

IdxArray parse_idx(std::span<const uint8_t> b, const std::string& file) {
  auto be32 = [&](size_t off) {
    return (uint32_t(b[off]) << 24) | (uint32_t(b[off + 1]) << 16) | (uint32_t(b[off + 2]) << 8) | b[off + 3];
  };
  if (b.size() < 8) throw DataError(file + ": too short for an IDX header (" + std::to_string(b.size()) + " bytes)");
  IdxArray a;
  a.magic = be32(0);
  int ndim;
  if (a.magic == 2051)
    ndim = 3;
  else if (a.magic == 2049)
    ndim = 1;
  else
    throw DataError(file + ": wrong magic number " + std::to_string(a.magic) +
                    " (2051 for images, 2049 for labels)");
  const size_t header = 4 + 4 * static_cast<size_t>(ndim);
  if (b.size() < header) throw DataError(file + ": truncated IDX header");
  uint64_t numel = 1;
  for (int d = 0; d < ndim; ++d) {
    const uint32_t v = be32(4 + 4 * d);
    a.dims.push_back(v);
    // saturate: more than the file holds is reported below, and nothing is allocated for it
    numel = numel > (uint64_t{1} << 40) ? numel : numel * v;
  }
  if (ndim == 3 && (a.dims[1] == 0 || a.dims[2] == 0)) throw DataError(file + ": image size 0");
  const uint64_t have = b.size() - header;
  if (numel > have)
    throw DataError(file + ": truncated: the header announces " + std::to_string(a.dims[0]) +
                    " items, the file holds " + std::to_string(have) + " bytes of data");
  if (numel < have)
    throw DataError(file + ": " + std::to_string(have - numel) + " bytes of trailing garbage");
  a.data.assign(b.begin() + static_cast<ptrdiff_t>(header), b.end());
  return a;
}

IdxArray read_idx(const std::string& path) {
  const std::string bytes = read_maybe_gz(path);
  return parse_idx({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, path);
}

}  // namespace rbn
