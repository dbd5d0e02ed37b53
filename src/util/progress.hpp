// Progress of long work (training, evaluation, the statistics pass).
// On a terminal: one line redrawn in place (at most ~10 times a second) with a bar, percentage,
// done/total, rate, elapsed time, ETA and a caller's note ("loss 1.234"); where the terminal is
// narrower, the least useful fields are dropped first. When not a terminal (piped, CI logs): a plain line at most every `interval_s` seconds and
// one at the end, never a carriage return or an escape sequence.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>

namespace rbn {

struct ProgressOptions {
  double interval_s = 10.0;      // not a terminal: seconds between lines
  double redraw_s = 0.1;         // terminal: seconds between redraws
  // Not a terminal: work that finishes sooner than this prints nothing at all, so that short
  // commands keep stderr to their own messages. 0: always print the final line.
  double quiet_below_s = 1.0;
  int tty = -1;                  // -1: isatty(out); 0 or 1: as if it were (tests)
  int width = 0;                 // terminal columns; 0: ask the terminal (80 if it does not say)
  std::function<double()> clock;  // monotonic seconds; empty: std::chrono::steady_clock
};

// The numbers of one progress line.
struct ProgressLine {
  std::string label;
  int64_t done = 0;
  int64_t total = 0;   // <= 0: unknown (no percentage, bar or ETA)
  int64_t base = 0;    // items done before this run started (a resumed run): not in the rate
  double elapsed = 0;  // seconds since this run started
  std::string extra;   // the caller's note, appended
  bool bar = false;    // draw [#####.....] (terminal only)
};

class Progress {
 public:
  Progress(std::string label, int64_t total, std::FILE* out = stderr, double interval_s = 10.0);
  Progress(std::string label, int64_t total, std::FILE* out, ProgressOptions opt);
  // A terminal line left open (no finish(), e.g. during an exception) gets its newline.
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Items already done when this run started (a resumed training): shown in done/total, left out
  // of the rate and hence of the ETA. Call before the first update().
  void begin_at(int64_t done);
  // `done` items so far; `extra` replaces the note when not empty. Prints when it is time to.
  void update(int64_t done, const std::string& extra = "");
  // The final line (or final redraw and newline). Further calls do nothing.
  void finish();

  // One line, e.g. "train [######..] 25/100 (25%) 0.5/s elapsed 00:50 eta 02:30 loss 1.5".
  // rate = (done − base) / elapsed, eta = (total − done) / rate; times as MM:SS or H:MM:SS, and
  // "--:--" when unknown.
  // With columns > 0, fields are dropped until the line fits, least useful first: the bar, the
  // elapsed time, the rate, the percentage, the ETA (the count and the note stay; emit() cuts
  // what is still too long).
  static std::string format(const ProgressLine& line, int columns = 0);
  static std::string format(const std::string& label, int64_t done, int64_t total, double elapsed,
                            const std::string& extra, bool bar);
  // Cuts s to at most `columns` bytes without splitting a UTF-8 sequence.
  static std::string fit(std::string s, int columns);

 private:
  double now() const;
  void emit(bool final_line);

  std::string label_;
  int64_t total_, done_ = 0, base_ = 0;
  std::FILE* out_;
  ProgressOptions opt_;
  bool tty_ = false;
  int width_ = 80;
  double start_ = 0, last_ = 0;
  std::string extra_;
  bool finished_ = false, drawn_ = false, started_ = false;
};

}  // namespace rbn
