// The rbn command-line tool: one function per subcommand registers its flags and its action.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

namespace rbn::cli {

// Each registers a subcommand whose callback runs the command and stores its exit code.
void register_train(CLI::App& app, int& exit_code);
void register_eval(CLI::App& app, int& exit_code);
void register_popstats(CLI::App& app, int& exit_code);
void register_sample(CLI::App& app, int& exit_code);
void register_forward(CLI::App& app, int& exit_code);
void register_info(CLI::App& app, int& exit_code);
void register_convert(CLI::App& app, int& exit_code);
void register_plot(CLI::App& app, int& exit_code);
void register_bench(CLI::App& app, int& exit_code);
void register_reproduce(CLI::App& app, int& exit_code);

// --precision of eval and bench: fp32 | bf16 for every float product of the process; a
// UsageError naming the flag for another value or for bf16 on a CPU without it.
void set_precision_flag(const std::string& name);

// The subcommand called `name` (nullptr if none).
CLI::App* find_subcommand(CLI::App& app, const char* name);
// Before CLI11 parses: a flag the subcommand does not have, or one given twice, is a UsageError
// naming it (with the nearest flag as a suggestion).
void check_flags(CLI::App* sub, int argc, char** argv);
// A CLI11 parse error as one line in rbn's words, naming the flag and what it takes.
std::string in_rbn_words(const CLI::ParseError& e, const CLI::App* sub, int argc, char** argv);

}  // namespace rbn::cli
