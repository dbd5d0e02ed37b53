// Atomic file writes: a temporary file in the same directory, fsync, rename over the target,
// fsync of the directory. On any failure the temporary file is removed, the previous file at the
// path stays intact, and a DataError names the path and the reason.
#pragma once

#include <cstdint>
#include <fstream>
#include <span>
#include <string>

namespace rbn {

void write_file_atomic(const std::string& path, std::span<const uint8_t> bytes);

// Whole file into memory; DataError naming the path if it cannot be read.
std::string read_file(const std::string& path);
// The file opened for binary reading; DataError naming the path for a directory or a file that
// cannot be opened (read_file's checks, for readers that take only part of a file).
std::ifstream open_for_reading(const std::string& path);

}  // namespace rbn
