// The rbn command-line tool: one function per subcommand registers its flags and its action.
#pragma once

#include <CLI/CLI.hpp>

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

}  // namespace rbn::cli
