// rbn plot: learning curves from metrics.jsonl files (matplotlib, through tools/plot_metrics.py).
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>

#include <nlohmann/json.hpp>

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
// The metrics a metrics.jsonl holds (keys of its train/valid lines that are curves).
std::set<std::string> metrics_in(const std::string& path) {
  std::ifstream in(path);
  std::set<std::string> found;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) throw DataError(path + ":" + std::to_string(n) + ": not a JSON line");
    for (const char* k : {"bpc", "accuracy", "mse", "loss"})
      if (j.contains(k)) found.insert(k);
  }
  if (found.empty()) throw DataError(path + ": no metrics");
  return found;
}

// The metric to draw: the one asked for, which every file must hold, or (auto) bpc, accuracy or mse.
std::string choose_metric(const std::string& asked, const std::vector<std::string>& files) {
  static const std::vector<std::string> kinds{"bpc", "accuracy", "mse", "loss"};
  if (asked != "auto" && std::find(kinds.begin(), kinds.end(), asked) == kinds.end())
    throw UsageError("--metric: must be auto, bpc, accuracy, mse or loss, got '" + asked + "'");
  std::vector<std::set<std::string>> held;
  for (const auto& f : files) held.push_back(metrics_in(f));
  std::string metric = asked;
  if (metric == "auto")
    for (const char* k : {"bpc", "accuracy", "mse"})
      if (held[0].count(k)) {
        metric = k;
        break;
      }
  if (metric == "auto") metric = "loss";
  for (size_t i = 0; i < files.size(); ++i)
    if (!held[i].count(metric)) {
      std::string has;
      for (const auto& k : held[i]) has += (has.empty() ? "" : ", ") + k;
      throw UsageError("--metric " + metric + ": " + files[i] + " has no " + metric + " values (it holds " + has + ")");
    }
  return metric;
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
  sub->add_option("--metric", f->metric, "auto (bpc, accuracy or mse, what the first file holds) | bpc | accuracy | mse | loss")->capture_default_str();
  sub->add_option("--labels", f->labels, "comma-separated legend labels");
  sub->add_option("--title", f->title, "plot title");
  sub->callback([f, &exit_code]() {
    for (const auto& p : f->files)
      if (!std::filesystem::is_regular_file(p)) throw DataError(p + ": no such metrics file");
    std::string script = RBN_SOURCE_DIR "/tools/plot_metrics.py";
    if (!std::filesystem::exists(script)) throw UsageError("plot: " + script + " not found");
    const std::string metric = choose_metric(f->metric, f->files);
    std::string cmd = "/usr/bin/python3 " + shell_quote(script);
    for (const auto& p : f->files) cmd += " " + shell_quote(p);
    cmd += " --out " + shell_quote(f->out) + " --metric " + shell_quote(metric);
    if (!f->labels.empty()) cmd += " --labels " + shell_quote(f->labels);
    if (!f->title.empty()) cmd += " --title " + shell_quote(f->title);
    const int rc = std::system(cmd.c_str());
    if (rc != 0) throw DataError("plot: matplotlib failed (exit " + std::to_string(rc) + ")");
    exit_code = 0;
  });
}

}  // namespace rbn::cli
