// rbn: train and run normalized recurrent networks. See docs/cli.md.
#include <cstdio>
#include <exception>
#include <optional>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "train/group.hpp"
#include "util/blas.hpp"
#include "util/error.hpp"
#include "util/line_vector.hpp"
#include "util/platform.hpp"

namespace {
// Data-parallel runs: MPI is finalized on every exit path; an error on one rank ends all of them
// (the others would wait forever in the next sum).
struct GroupGuard {
  GroupGuard(int& argc, char**& argv) { rbn::group_init(argc, argv); }
  ~GroupGuard() { rbn::group_finalize(); }
  static int fail(int code) {
    if (rbn::Group::world().distributed()) rbn::Group::world().abort(code);
    return code;
  }
};
}  // namespace

int main(int argc, char** argv) {
  rbn::select_blas_kernel(argv);
  std::optional<GroupGuard> group;
  try {
    rbn::flush_denormals_unless_kept();  // before any thread starts: the pools inherit it
    group.emplace(argc, argv);
    (void)rbn::blas::backend();  // an unknown RBN_GEMM is refused here, before any work
    (void)rbn::huge_page_size();  // and an unknown RBN_HUGE_PAGES
  } catch (const rbn::Error& e) {
    std::fprintf(stderr, "rbn: error: %s\n", e.what());
    return e.exit_code();
  }
  CLI::App app{"rbn: batch-normalized and layer-normalized LSTMs (Cooijmans et al. 2017)", "rbn"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "rbn 0.1.0");
  int exit_code = 0;
  rbn::cli::register_train(app, exit_code);
  rbn::cli::register_eval(app, exit_code);
  rbn::cli::register_popstats(app, exit_code);
  rbn::cli::register_sample(app, exit_code);
  rbn::cli::register_forward(app, exit_code);
  rbn::cli::register_info(app, exit_code);
  rbn::cli::register_convert(app, exit_code);
  rbn::cli::register_plot(app, exit_code);
  rbn::cli::register_bench(app, exit_code);
  rbn::cli::register_reproduce(app, exit_code);
  CLI::App* sub = argc > 1 ? rbn::cli::find_subcommand(app, argv[1]) : nullptr;
  if (argc > 1 && argv[1][0] != '-' && !sub) {
    std::fprintf(stderr, "rbn: error: unknown subcommand '%s' (train, eval, popstats, sample, forward, "
                 "info, convert, plot, bench, reproduce)\n", argv[1]);
    return 2;
  }
  try {
    if (sub) rbn::cli::check_flags(sub, argc, argv);
  } catch (const rbn::Error& e) {
    std::fprintf(stderr, "rbn: error: %s\n", e.what());
    return e.exit_code();
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "rbn: error: %s\n", rbn::cli::in_rbn_words(e, sub, argc, argv).c_str());
    return 2;
  } catch (const rbn::Error& e) {
    std::fprintf(stderr, "rbn: error: %s\n", e.what());
    return GroupGuard::fail(e.exit_code());
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "rbn: error: out of memory\n");
    return GroupGuard::fail(1);
  } catch (const nlohmann::json::exception& e) {
    // every JSON the tool reads or writes is checked where it is used; this is a defect of rbn
    std::fprintf(stderr, "rbn: error: internal JSON error %d (a defect of rbn: please report the command)\n", e.id);
    return GroupGuard::fail(1);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rbn: error: %s\n", e.what());
    return GroupGuard::fail(1);
  }
  return exit_code;
}
