// Cell names, configuration defaults and validation (SPEC section 2).
#include <array>
#include <cmath>
#include <sstream>
#include <string>

#include "rbn/rbn.hpp"
#include "util/error.hpp"

namespace rbn {

namespace {
struct CellName {
  Cell cell;
  const char* name;
};
constexpr std::array<CellName, 10> kCellNames{{{Cell::lstm, "lstm"},
                                               {Cell::bnlstm, "bnlstm"},
                                               {Cell::bnx, "bnx"},
                                               {Cell::bnx_seq, "bnx-seq"},
                                               {Cell::lnlstm, "lnlstm"},
                                               {Cell::rnn, "rnn"},
                                               {Cell::bnrnn, "bnrnn"},
                                               {Cell::gru, "gru"},
                                               {Cell::bngru, "bngru"},
                                               {Cell::lngru, "lngru"}}};
}  // namespace

std::optional<Cell> parse_cell(std::string_view name) {
  for (const auto& c : kCellNames)
    if (name == c.name) return c.cell;
  return std::nullopt;
}

const char* cell_name(Cell cell) {
  for (const auto& c : kCellNames)
    if (c.cell == cell) return c.name;
  return "?";
}

const std::vector<Cell>& all_cells() {
  static const std::vector<Cell> cells{Cell::lstm, Cell::bnlstm, Cell::bnx, Cell::bnx_seq,
                                       Cell::lnlstm};
  return cells;
}

const std::vector<Cell>& all_rnn_cells() {
  static const std::vector<Cell> cells{Cell::rnn, Cell::bnrnn};
  return cells;
}

const std::vector<Cell>& all_gru_cells() {
  static const std::vector<Cell> cells{Cell::gru, Cell::bngru, Cell::lngru};
  return cells;
}

bool cell_has_population_stats(Cell cell) {
  return cell == Cell::bnlstm || cell == Cell::bnx || cell == Cell::bnx_seq ||
         cell == Cell::bnrnn || cell == Cell::bngru;
}

bool cell_is_gru(Cell cell) { return cell == Cell::gru || cell == Cell::bngru || cell == Cell::lngru; }

int cell_gates(Cell cell) {
  if (cell == Cell::rnn || cell == Cell::bnrnn) return 1;
  return cell_is_gru(cell) ? 3 : 4;
}

// Defaults: BN gains 0.1 (Cooijmans et al. 2017, also used for Laurent's input BN and for the
// BN-GRU here, whose own choice is 1); LN gains 1 (Ba et al. 2016).
namespace {
double default_gain(Cell cell) { return cell == Cell::lnlstm || cell == Cell::lngru ? 1.0 : 0.1; }
}  // namespace
double StackConfig::gamma_x_or_default() const { return gamma_x >= 0 ? gamma_x : default_gain(cell); }
double StackConfig::gamma_h_or_default() const { return gamma_h >= 0 ? gamma_h : default_gain(cell); }
double StackConfig::gamma_c_or_default() const { return gamma_c >= 0 ? gamma_c : default_gain(cell); }
double StackConfig::forget_bias_or_default() const { return forget_bias.value_or(1.0); }

void StackConfig::validate() const {
  // Messages name the StackConfig field (the CLI maps them to its flags: TrainConfig::validate).
  auto bad = [](const std::string& field, const std::string& what) {
    throw UsageError(field + ": " + what);
  };
  if (input_size <= 0) bad("input_size", "must be positive, got " + std::to_string(input_size));
  if (hidden_size <= 0) bad("hidden_size", "must be positive, got " + std::to_string(hidden_size));
  if (num_layers <= 0) bad("num_layers", "must be positive, got " + std::to_string(num_layers));
  if (t_max <= 0) bad("t_max", "must be positive, got " + std::to_string(t_max));
  if (!(eps > 0) || !std::isfinite(eps)) bad("eps", "must be a positive number");
  if (!(momentum > 0 && momentum <= 1)) bad("momentum", "must be in (0, 1]");
  if (forget_bias && cell_is_gru(cell))
    bad("forget_bias", std::string("cell ") + cell_name(cell) +
                           " has no forget gate (its biases start at 0); leave it unset");
  if (forget_bias && !std::isfinite(*forget_bias)) bad("forget_bias", "must be finite");
  if (!std::isfinite(gamma_x)) bad("gamma_x", "must be finite");
  if (!std::isfinite(gamma_h)) bad("gamma_h", "must be finite");
  if (!std::isfinite(gamma_c)) bad("gamma_c", "must be finite");
  auto probability = [&](const char* field, double v) {
    std::ostringstream got;
    got << v;
    if (!(v >= 0 && v < 1)) bad(field, "must be in [0, 1), got " + got.str());
  };
  probability("dropout", dropout);
  probability("zoneout_h", zoneout_h);
  probability("zoneout_c", zoneout_c);
  if (zoneout_c > 0 && cell_gates(cell) != 4)
    bad("zoneout_c", std::string("cell ") + cell_name(cell) +
                         " has no cell state to zone out (zoneout of h applies)");
  // Sizes whose gate block would overflow int indexing in BLAS calls.
  if (static_cast<int64_t>(hidden_size) * 4 > (int64_t{1} << 28)) bad("hidden_size", "too large");
}

}  // namespace rbn
