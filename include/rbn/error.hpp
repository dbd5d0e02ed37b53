// rbn's error types (public: the library, the CLI and the Python module throw and catch them).
// Errors that reach the user as one line. DataError (exit 1): a file or its contents are wrong.
// UsageError (exit 2): an argument, a flag or a config value is impossible. Messages name the
// file, the flag or (from the library) the field.
#pragma once

#include <stdexcept>
#include <string>

namespace rbn {

class Error : public std::runtime_error {
 public:
  Error(const std::string& what, int exit_code) : std::runtime_error(what), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

class DataError : public Error {
 public:
  explicit DataError(const std::string& what) : Error(what, 1) {}
};

class UsageError : public Error {
 public:
  explicit UsageError(const std::string& what) : Error(what, 2) {}
};

}  // namespace rbn
