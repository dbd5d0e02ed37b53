#include "util/progress.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace rbn {

namespace {
std::string hms(double s) {
  if (!std::isfinite(s) || s < 0) return "--:--";
  const long t = std::lround(s);
  return t >= 3600 ? fmt::format("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
                   : fmt::format("{:02}:{:02}", t / 60, t % 60);
}
}  // namespace

Progress::Progress(std::string label, int64_t total, std::FILE* out, double interval_s)
    : label_(std::move(label)),
      total_(total),
      out_(out),
      tty_(out && isatty(fileno(out))),
      interval_(interval_s),
      start_(std::chrono::steady_clock::now()),
      last_(start_) {}

Progress::~Progress() {
  if (!finished_ && drawn_ && tty_) std::fputc('\n', out_);
}

std::string Progress::format(const std::string& label, int64_t done, int64_t total, double elapsed,
                             const std::string& extra, bool bar) {
  const double rate = elapsed > 0 ? done / elapsed : 0.0;
  const double eta = rate > 0 && total > 0 ? (total - done) / rate : NAN;
  std::string s = label + " ";
  if (bar && total > 0) {
    const int width = 24;
    const int fill = static_cast<int>(std::clamp<double>(double(done) / total, 0, 1) * width);
    s += '[';
    s.append(static_cast<size_t>(fill), '#');
    s.append(static_cast<size_t>(width - fill), '.');
    s += "] ";
  }
  if (total > 0)
    s += fmt::format("{}/{} ({:.0f}%)", done, total, 100.0 * done / total);
  else
    s += fmt::format("{}", done);
  s += fmt::format(" {:.1f}/s elapsed {} eta {}", rate, hms(elapsed), hms(eta));
  if (!extra.empty()) s += " " + extra;
  return s;
}

void Progress::update(int64_t done, const std::string& extra) {
  done_ = done;
  if (!extra.empty()) extra_ = extra;
  if (!out_) return;
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_).count();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  if (tty_) {
    if (since < 0.1 && done < total_) return;
    std::fprintf(out_, "\r\033[K%s", format(label_, done, total_, elapsed, extra_, true).c_str());
    std::fflush(out_);
    drawn_ = true;
  } else {
    if (since < interval_) return;
    std::fprintf(out_, "%s\n", format(label_, done, total_, elapsed, extra_, false).c_str());
    std::fflush(out_);
  }
  last_ = now;
}

void Progress::finish() {
  if (finished_ || !out_) return;
  finished_ = true;
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (tty_) {
    std::fprintf(out_, "\r\033[K%s\n", format(label_, done_, total_, elapsed, extra_, true).c_str());
  } else if (elapsed >= 1.0) {  // short work stays quiet when piped
    std::fprintf(out_, "%s\n", format(label_, done_, total_, elapsed, extra_, false).c_str());
  }
  std::fflush(out_);
}

}  // namespace rbn
