// rbn convert: move weights between rbn and PyTorch's nn.LSTM / nn.GRU.
//   --from-torch  a safetensors file of an nn.LSTM or nn.GRU state dict (weight_ih_l0,
//                 weight_hh_l0, bias_ih_l0, bias_hh_l0, ... per layer; with bidirectional=True
//                 also weight_ih_l0_reverse, ...; optional head.weight / head.bias of an
//                 nn.Linear) -> an rbn `lstm` checkpoint (the two biases summed) or `gru`
//                 checkpoint (the two biases kept: b_hn sits inside the reset product).
//                 Which one: weight_hh_l0 is [4H, H] for an LSTM, [3H, H] for a GRU; the
//                 `_reverse` tensors make it bidirectional (rnn.k.reverse.*, SPEC 2b).
//   --to-torch    an rbn `lstm` or `gru` checkpoint, one-directional or bidirectional -> an
//                 nn.LSTM (bias_ih = bias, bias_hh = 0) or nn.GRU (both biases as they are)
//                 state dict.
// The gate order is the same (i, f, g, o; r, z, n), so weights move without shuffling. A tensor
// that maps onto nothing (projections, a layer or direction the module lacks) is refused.
#include <cstdio>
#include <memory>
#include <set>

#include "commands.hpp"
#include "io/safetensors.hpp"
#include "train/checkpoint.hpp"
#include "util/error.hpp"

namespace rbn::cli {

namespace {

// The recurrent module a state dict holds, from weight_hh_l0 [G, H]: G = 4H (nn.LSTM) or 3H
// (nn.GRU). weight_ih_l0 alone cannot tell (12 rows: an LSTM with H = 3 or a GRU with H = 4).
Cell torch_module_cell(const SafeTensors& src, const std::string& in, int& H, int& C) {
  if (!src.has("weight_ih_l0") || !src.has("weight_hh_l0"))
    throw DataError(in + ": no tensors 'weight_ih_l0' and 'weight_hh_l0' (expected an nn.LSTM or nn.GRU state dict)");
  const auto& wh = src.shape_of("weight_hh_l0");
  const auto& wi = src.shape_of("weight_ih_l0");
  if (wh.size() != 2 || wi.size() != 2 || wh[1] <= 0 || (wh[0] != 4 * wh[1] && wh[0] != 3 * wh[1]) ||
      wi[0] != wh[0])
    throw DataError(in + ": weight_hh_l0 must be [4H, H] (nn.LSTM) or [3H, H] (nn.GRU), and weight_ih_l0 "
                    "[4H or 3H, C] with the same rows");
  H = static_cast<int>(wh[1]);
  C = static_cast<int>(wi[1]);
  return wh[0] == 4 * wh[1] ? Cell::lstm : Cell::gru;
}

// What an rbn recurrent tensor is called in nn.LSTM / nn.GRU: rnn.k.<what> -> <what>_lk,
// rnn.k.reverse.<what> -> <what>_lk_reverse. `what` is weight_ih, weight_hh, bias (an LSTM's one
// bias, which nn.LSTM splits into bias_ih and bias_hh), bias_ih or bias_hh.
struct TorchName {
  std::string what, suffix;
};
TorchName torch_name(const std::string& rbn_name) {
  const size_t b = rbn_name.find('.', 4);
  const bool reverse = rbn_name.compare(b + 1, 8, "reverse.") == 0;
  return {rbn_name.substr(rbn_name.rfind('.') + 1),
          "_l" + rbn_name.substr(4, b - 4) + (reverse ? "_reverse" : "")};
}

// The state-dict tensors an rbn parameter is read from: an LSTM's one bias from bias_ih and
// bias_hh (summed), the head's under its own name, everything else one to one.
std::vector<std::string> sources_of(const std::string& rbn_name) {
  if (!rbn_name.starts_with("rnn.")) return {rbn_name};
  const TorchName t = torch_name(rbn_name);
  if (t.what == "bias") return {"bias_ih" + t.suffix, "bias_hh" + t.suffix};
  return {t.what + t.suffix};
}

// A tensor of `src` that no parameter reads is refused, naming it (a projection, a layer or a
// direction the module lacks), so that nothing is dropped silently. Checked before any shape, so
// that reverse tensors without a reverse layer 0 are named as such.
void refuse_unused(const SafeTensors& src, const std::set<std::string>& used, const std::string& in,
                   const char* module, int L, bool bidirectional) {
  for (const auto& n : src.names())
    if (!used.count(n))
      throw DataError(in + ": tensor '" + n + "' maps onto nothing in a " +
                      (bidirectional ? "bidirectional " : "one-directional ") + module + " of " +
                      std::to_string(L) + " layer(s) (a bidirectional module has weight_ih_l0_reverse" +
                      (n.starts_with("weight_hr") ? "; projections, proj_size, are not supported)" : ")"));
}

void from_torch(const std::string& in, const std::string& out, int t_max) {
  const SafeTensors src = read_safetensors(in);
  if (src.has("weight_hr_l0")) throw DataError(in + ": LSTMs with projections (proj_size) are not supported");
  int H = 0, C = 0;
  const Cell cell = torch_module_cell(src, in, H, C);
  const char* module = cell == Cell::lstm ? "nn.LSTM" : "nn.GRU";
  const bool bidirectional = src.has("weight_ih_l0_reverse");
  int L = 0;
  while (src.has("weight_ih_l" + std::to_string(L))) ++L;
  const int D = bidirectional ? 2 : 1;
  const bool head = src.has("head.weight");
  ModelConfig mc;
  mc.rnn.cell = cell;
  mc.rnn.input_size = C;
  mc.rnn.hidden_size = H;
  mc.rnn.num_layers = L;
  mc.rnn.t_max = t_max;
  mc.rnn.bidirectional = bidirectional;
  mc.head = head ? Head::classify : Head::none;
  if (head) {
    const auto& hw = src.shape_of("head.weight");
    if (hw.size() != 2 || hw[1] != D * H)
      throw DataError(in + ": head.weight must be [K, " + std::to_string(D * H) + "]" +
                      (bidirectional ? " (a bidirectional module's head reads forward || reverse)" : ""));
    mc.num_classes = static_cast<int>(hw[0]);
  }
  LoadedCheckpoint ck;
  ck.model = std::make_unique<Model>(mc);
  auto params = ck.model->parameters();
  std::set<std::string> used;
  for (const auto& p : params)
    for (const auto& n : sources_of(p.name)) used.insert(n);
  refuse_unused(src, used, in, module, L, bidirectional);
  for (auto& p : params) {
    const auto names = sources_of(p.name);
    std::vector<float> v = src.get_f32(names[0], p.shape);
    if (names.size() == 2) {  // an LSTM: only the sum of nn.LSTM's two biases matters
      const std::vector<float> b = src.get_f32(names[1], p.shape);
      for (size_t i = 0; i < v.size(); ++i) v[i] += b[i];
    }
    std::copy(v.begin(), v.end(), p.value);
  }
  ck.metadata["converted_from"] = std::string("torch.") + module;
  CheckpointState st;
  save_model_checkpoint(out, ck, st);
  std::printf("%s: %s%s (%d layers, C=%d, H=%d%s) -> rbn %s checkpoint %s\n", in.c_str(),
              bidirectional ? "bidirectional " : "", module, L, C, H, head ? ", with head" : "",
              cell_name(cell), out.c_str());
}

void to_torch(const std::string& in, const std::string& out) {
  LoadedCheckpoint ck = load_model_checkpoint(in);
  const auto& mc = ck.model->config();
  if (mc.rnn.cell != Cell::lstm && mc.rnn.cell != Cell::gru)
    throw UsageError("--to-torch: " + in + " holds a '" + cell_name(mc.rnn.cell) +
                     "' model; only the plain lstm and gru map onto nn.LSTM and nn.GRU");
  const char* module = mc.rnn.cell == Cell::lstm ? "nn.LSTM" : "nn.GRU";
  if (mc.rnn.learn_init_state)
    throw UsageError("--to-torch: " + in + " has learned initial states, which " + module + " does not hold");
  SafeTensors dst;
  for (auto& p : ck.model->parameters()) {
    if (p.name.starts_with("rnn.")) {
      const TorchName t = torch_name(p.name);
      if (t.what == "bias") {  // an LSTM's one bias: all in bias_ih
        dst.add_f32("bias_ih" + t.suffix, p.shape, p.value);
        std::vector<float> zeros(p.numel, 0.0f);
        dst.add_f32("bias_hh" + t.suffix, p.shape, zeros.data());
      } else {
        dst.add_f32(t.what + t.suffix, p.shape, p.value);
      }
    } else if (p.name.starts_with("head.")) {
      dst.add_f32(p.name, p.shape, p.value);
    }
  }
  dst.metadata["format"] = "pt";
  write_safetensors(out, dst);
  std::printf("%s -> %s%s state dict %s%s\n", in.c_str(), mc.rnn.bidirectional ? "bidirectional " : "",
              module, out.c_str(), mc.rnn.cell == Cell::lstm ? " (bias_hh_lk = 0, bias_ih_lk = rbn's bias)" : "");
}

}  // namespace

void register_convert(CLI::App& app, int& exit_code) {
  auto* sub = app.add_subcommand("convert", "move weights between rbn and PyTorch's nn.LSTM / nn.GRU");
  struct Flags {
    std::string from_torch, to_torch, out;
    int t_max = 1;
  };
  auto f = std::make_shared<Flags>();
  auto* a = sub->add_option("--from-torch", f->from_torch,
                            "nn.LSTM or nn.GRU state dict (.safetensors; bidirectional too) to import");
  auto* b = sub->add_option("--to-torch", f->to_torch, "rbn lstm or gru checkpoint to export");
  a->excludes(b);
  sub->add_option("--out", f->out, "file to write")->required();
  sub->add_option("--t-max", f->t_max, "T_max recorded in the imported checkpoint")->capture_default_str();
  sub->callback([f, &exit_code]() {
    if (!f->from_torch.empty())
      from_torch(f->from_torch, f->out, f->t_max);
    else if (!f->to_torch.empty())
      to_torch(f->to_torch, f->out);
    else
      throw UsageError("convert: give --from-torch or --to-torch");
    exit_code = 0;
  });
}

}  // namespace rbn::cli
