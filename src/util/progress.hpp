// Progress of long work: on a terminal, one redrawn line with a bar, rate and ETA; when piped
// (CI, logs), a plain line every `interval` seconds and at the end.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace rbn {

class Progress {
 public:
  Progress(std::string label, int64_t total, std::FILE* out = stderr, double interval_s = 10.0);
  ~Progress();
  void update(int64_t done, const std::string& extra);
  void finish();

  // The line shown for `done` items after `elapsed` seconds (tests use it without a clock).
  static std::string format(const std::string& label, int64_t done, int64_t total, double elapsed,
                            const std::string& extra, bool bar);

 private:
  std::string label_;
  int64_t total_, done_ = 0;
  std::FILE* out_;
  bool tty_;
  double interval_;
  std::chrono::steady_clock::time_point start_, last_;
  std::string extra_;
  bool finished_ = false, drawn_ = false;
};

}  // namespace rbn
