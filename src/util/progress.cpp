#include "util/progress.hpp"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include <fmt/format.h>

namespace rbn {

namespace {

std::string hms(double s) {
  if (!std::isfinite(s) || s < 0 || s > 1e9) return "--:--";
  const long long t = std::llround(s);
  return t >= 3600 ? fmt::format("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
                   : fmt::format("{:02}:{:02}", t / 60, t % 60);
}

int terminal_columns(std::FILE* out) {
  winsize ws{};
  if (ioctl(fileno(out), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

}  // namespace

Progress::Progress(std::string label, int64_t total, std::FILE* out, double interval_s)
    : Progress(std::move(label), total, out, [&] {
        ProgressOptions o;
        o.interval_s = interval_s;
        return o;
      }()) {}

Progress::Progress(std::string label, int64_t total, std::FILE* out, ProgressOptions opt)
    : label_(std::move(label)), total_(total), out_(out), opt_(std::move(opt)) {
  if (out_) {
    tty_ = opt_.tty >= 0 ? opt_.tty != 0 : isatty(fileno(out_)) != 0;
    width_ = opt_.width > 0 ? opt_.width : tty_ && opt_.tty < 0 ? terminal_columns(out_) : 80;
  }
  start_ = last_ = now();
}

Progress::~Progress() {
  if (!finished_ && drawn_ && tty_) {
    std::fputc('\n', out_);
    std::fflush(out_);
  }
}

double Progress::now() const {
  if (opt_.clock) return opt_.clock();
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string Progress::format(const ProgressLine& l, int columns) {
  const int64_t run = l.done - l.base;
  const double rate = l.elapsed > 0 && run > 0 ? static_cast<double>(run) / l.elapsed : 0.0;
  const double eta = rate > 0 && l.total > 0 ? static_cast<double>(std::max<int64_t>(l.total - l.done, 0)) / rate
                                              : NAN;
  std::string bar;
  if (l.bar && l.total > 0) {
    constexpr int width = 24;
    const double frac = std::clamp(static_cast<double>(l.done) / static_cast<double>(l.total), 0.0, 1.0);
    const int fill = static_cast<int>(frac * width);
    bar = fmt::format("[{:#<{}}{:.<{}}] ", "", fill, "", width - fill);
  }
  std::string count = fmt::format("{}", l.done), pct;
  if (l.total > 0) {
    // floor: 100% only when all is done
    count += fmt::format("/{}", l.total);
    pct = fmt::format(" ({:.0f}%)", std::floor(100.0 * static_cast<double>(l.done) / static_cast<double>(l.total)));
  }
  const std::string rate_s = fmt::format(" {:.1f}/s", rate), elapsed_s = " elapsed " + hms(l.elapsed),
                    eta_s = " eta " + hms(eta), extra = l.extra.empty() ? "" : " " + l.extra;
  // Too wide for the terminal: the least useful fields go first (the bar, the elapsed time, the
  // rate, the percentage, the ETA); the count and the caller's note (the loss) stay.
  bool keep[5] = {true, true, true, true, true};  // bar, elapsed, rate, pct, eta: dropped in this order
  auto line = [&] {
    return l.label + " " + (keep[0] ? bar : "") + count + (keep[3] ? pct : "") + (keep[2] ? rate_s : "") +
           (keep[1] ? elapsed_s : "") + (keep[4] ? eta_s : "") + extra;
  };
  std::string s = line();
  for (int i = 0; i < 5 && columns > 0 && s.size() > static_cast<size_t>(columns); ++i) {
    keep[i] = false;
    s = line();
  }
  return s;
}

std::string Progress::format(const std::string& label, int64_t done, int64_t total, double elapsed,
                             const std::string& extra, bool bar) {
  return format(ProgressLine{label, done, total, 0, elapsed, extra, bar}, 0);
}

std::string Progress::fit(std::string s, int columns) {
  if (columns <= 0 || s.size() <= static_cast<size_t>(columns)) return s;
  size_t n = static_cast<size_t>(columns);
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;  // s[n] continues a sequence
  s.resize(n);
  return s;
}

void Progress::begin_at(int64_t done) {
  base_ = done;
  done_ = done;
}

void Progress::emit(bool final_line) {
  const double t = now();
  // one column short: a line that fills the terminal exactly would wrap on some terminals
  const std::string line =
      format(ProgressLine{label_, done_, total_, base_, t - start_, extra_, tty_}, tty_ ? width_ - 1 : 0);
  if (tty_) {
    std::fprintf(out_, "\r\033[K%s%s", fit(line, width_ - 1).c_str(), final_line ? "\n" : "");
    drawn_ = true;
  } else {
    std::fprintf(out_, "%s\n", line.c_str());
  }
  std::fflush(out_);
  last_ = t;
}

void Progress::update(int64_t done, const std::string& extra) {
  done_ = done;
  if (!extra.empty()) extra_ = extra;
  if (!out_ || finished_) return;
  const double since = now() - last_;
  if (tty_) {
    // the last item is drawn at once; the rest at most every redraw_s
    if (since >= opt_.redraw_s || (total_ > 0 && done >= total_) || !drawn_) emit(false);
  } else if (since >= opt_.interval_s) {
    emit(false);
    started_ = true;
  }
}

void Progress::finish() {
  if (finished_ || !out_) return;
  finished_ = true;
  if (tty_ || started_ || now() - start_ >= opt_.quiet_below_s) emit(true);
}

}  // namespace rbn
