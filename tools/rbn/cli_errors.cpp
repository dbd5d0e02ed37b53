// One voice: the command line's mistakes reported in rbn's words, one line naming the flag and
// what is allowed. CLI11's own messages ("At Most 1 required but received 2", "The following
// arguments were not expected: ...") never reach the user.
#include <algorithm>
#include <cctype>
#include <set>
#include <string>
#include <vector>

#include "commands.hpp"
#include "util/error.hpp"

namespace rbn::cli {

namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// "; did you mean --dropout?" for the nearest long flag of `sub` (when it is near).
std::string suggestion(const CLI::App* sub, const std::string& name) {
  std::string best;
  size_t best_d = 4;
  for (const CLI::Option* o : sub->get_options())
    for (const auto& l : o->get_lnames()) {
      const size_t d = edit_distance(name, "--" + l);
      if (d < best_d) best_d = d, best = "--" + l;
    }
  return best.empty() ? "" : "; did you mean " + best + "?";
}

bool is_number(const std::string& s) {
  return s.size() > 1 && s[0] == '-' && (std::isdigit(static_cast<unsigned char>(s[1])) || s[1] == '.');
}

std::string what_type(const CLI::Option* o) {
  const std::string t = o->get_type_name();
  if (t == "INT") return "an integer (within range)";
  if (t == "UINT") return "a non-negative integer (within range)";
  if (t == "FLOAT") return "a number";
  if (t == "BOOLEAN") return "true or false";
  return "a value";
}

// The value given after `flag` on the line ("" if none).
std::string value_of(const std::string& flag, int argc, char** argv) {
  for (int i = 2; i < argc; ++i) {
    const std::string tok = argv[i];
    if (tok == flag && i + 1 < argc) return argv[i + 1];
    if (tok.rfind(flag + "=", 0) == 0) return tok.substr(flag.size() + 1);
  }
  return "";
}

}  // namespace

CLI::App* find_subcommand(CLI::App& app, const char* name) {
  for (CLI::App* sub : app.get_subcommands({}))
    if (sub->check_name(name)) return sub;
  return nullptr;
}

void check_flags(CLI::App* sub, int argc, char** argv) {
  const std::string cmd = "rbn " + sub->get_name();
  std::set<std::string> seen;
  for (int i = 2; i < argc; ++i) {
    const std::string tok = argv[i];
    if (tok == "--") break;
    if (tok.size() < 2 || tok[0] != '-' || is_number(tok)) continue;  // a value or positional
    const std::string name = tok.substr(0, tok.find('='));
    if (name == "-h" || name == "--help") continue;
    const CLI::Option* o = sub->get_option_no_throw(name);
    if (!o)
      throw UsageError(name + ": " + cmd + " has no such flag" + suggestion(sub, name) + " (see " + cmd +
                       " --help)");
    if (!seen.insert(o->get_name()).second)
      throw UsageError(name + ": given twice; give each flag once");
    if (o->get_items_expected_min() == 0) continue;  // a flag without a value
    const size_t eq = tok.find('=');
    const std::string value = eq != std::string::npos ? tok.substr(eq + 1) : i + 1 < argc ? argv[++i] : "";
    // CLI11 wraps "-1" around to 2^64 - 1 for an unsigned option
    if (o->get_type_name() == "UINT" && !value.empty() && value[0] == '-')
      throw UsageError(name + ": '" + value + "' is not " + what_type(o));
  }
}

// The first "--name" in a parser message ("" if none): the flag the message is about.
static std::string first_long_flag(const std::string& msg) {
  auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; };
  for (size_t i = msg.find("--"); i != std::string::npos; i = msg.find("--", i + 1)) {
    if (i + 2 >= msg.size() || !word(msg[i + 2])) continue;
    size_t j = i + 2;
    while (j < msg.size() && (word(msg[j]) || msg[j] == '-')) ++j;
    return msg.substr(i, j - i);
  }
  return "";
}

std::string in_rbn_words(const CLI::ParseError& e, const CLI::App* sub, int argc, char** argv) {
  const std::string msg = e.what();
  const std::string cmd = sub ? "rbn " + sub->get_name() : "rbn";
  const std::string flag = first_long_flag(msg);
  const CLI::Option* o = sub && !flag.empty() ? sub->get_option_no_throw(flag) : nullptr;
  if (dynamic_cast<const CLI::ConversionError*>(&e) && o)
    return flag + ": '" + value_of(flag, argc, argv) + "' is not " + what_type(o);
  if (dynamic_cast<const CLI::ArgumentMismatch*>(&e) && o)
    return flag + ": needs " + what_type(o) + " after it";
  if (dynamic_cast<const CLI::RequiredError*>(&e)) {
    if (o) return flag + ": required (" + o->get_description() + ")";
    if (sub)
      for (const CLI::Option* p : sub->get_options())
        if (p->get_required() && p->count() == 0)
          return p->get_lnames().empty()
                     ? cmd + ": missing argument <" + p->get_name() + "> (" + p->get_description() + ")"
                     : "--" + p->get_lnames()[0] + ": required (" + p->get_description() + ")";
    return cmd + ": a subcommand is required (train, eval, popstats, sample, forward, info, convert, "
           "plot, bench, reproduce)";
  }
  if (dynamic_cast<const CLI::ExtrasError*>(&e)) {
    const std::string extras = msg.substr(msg.find(':') + 1);
    return cmd + ": unexpected argument(s)" + extras + " (each flag takes one value; see " + cmd + " --help)";
  }
  if (dynamic_cast<const CLI::ValidationError*>(&e) && !flag.empty())
    return flag + ": value not allowed (see " + cmd + " --help)";
  return cmd + ": the command line could not be read (see " + cmd + " --help)";
}

}  // namespace rbn::cli
