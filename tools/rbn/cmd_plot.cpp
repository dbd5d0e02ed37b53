// rbn plot: learning curves from metrics.jsonl files (matplotlib, through tools/plot_metrics.py).
#include <filesystem>
#include <memory>

#include <fmt/format.h>

#include "commands.hpp"
#include "util/error.hpp"

namespace rbn::cli {

namespace {
std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}
}  // namespace

void register_plot(CLI::App& app, int& exit_code) {
  auto* sub = app.add_subcommand("plot", "draw learning curves (PNG) from metrics.jsonl files");
  struct Flags {
    std::vector<std::string> files;
    std::string out = "curves.png", metric = "auto", labels, title;
  };
  auto f = std::make_shared<Flags>();
  sub->add_option("files", f->files, "metrics.jsonl files")->required();
  sub->add_option("--out", f->out, "PNG to write")->capture_default_str();
  sub->add_option("--metric", f->metric, "auto | bpc | accuracy | loss")->capture_default_str();
  sub->add_option("--labels", f->labels, "comma-separated legend labels");
  sub->add_option("--title", f->title, "plot title");
  sub->callback([f, &exit_code]() {
    for (const auto& p : f->files)
      if (!std::filesystem::is_regular_file(p)) throw DataError(p + ": no such metrics file");
    std::string script = RBN_SOURCE_DIR "/tools/plot_metrics.py";
    if (!std::filesystem::exists(script)) throw UsageError("plot: " + script + " not found");
    std::string cmd = "/usr/bin/python3 " + shell_quote(script);
    for (const auto& p : f->files) cmd += " " + shell_quote(p);
    cmd += " --out " + shell_quote(f->out) + " --metric " + shell_quote(f->metric);
    if (!f->labels.empty()) cmd += " --labels " + shell_quote(f->labels);
    if (!f->title.empty()) cmd += " --title " + shell_quote(f->title);
    const int rc = std::system(cmd.c_str());
    if (rc != 0) throw DataError("plot: matplotlib failed (exit " + std::to_string(rc) + ")");
    exit_code = 0;
  });
}

}  // namespace rbn::cli
