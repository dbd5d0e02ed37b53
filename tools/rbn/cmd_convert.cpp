// rbn convert: move weights between rbn and PyTorch's nn.LSTM.
//   --from-torch  a safetensors file of an nn.LSTM state dict (weight_ih_l0, weight_hh_l0,
//                 bias_ih_l0, bias_hh_l0, ... per layer; optional head.weight/head.bias of an
//                 nn.Linear) -> an rbn `lstm` checkpoint (the two biases summed).
//   --to-torch    an rbn `lstm` checkpoint -> an nn.LSTM state dict (bias_ih = bias, bias_hh = 0).
// The gate order is the same (i, f, g, o), so weights move without shuffling.
#include <cstdio>
#include <memory>

#include "commands.hpp"
#include "io/safetensors.hpp"
#include "train/checkpoint.hpp"
#include "util/error.hpp"

namespace rbn::cli {

namespace {

void from_torch(const std::string& in, const std::string& out, int t_max) {
  const SafeTensors src = read_safetensors(in);
  if (!src.has("weight_ih_l0"))
    throw DataError(in + ": no tensor 'weight_ih_l0' (expected an nn.LSTM state dict)");
  const auto& w0 = src.shape_of("weight_ih_l0");
  if (w0.size() != 2 || w0[0] % 4 != 0) throw DataError(in + ": weight_ih_l0 must be [4H, C]");
  const int H = static_cast<int>(w0[0] / 4), C = static_cast<int>(w0[1]);
  int L = 0;
  while (src.has("weight_ih_l" + std::to_string(L))) ++L;
  for (const auto& n : src.names())
    if (n.find("_reverse") != std::string::npos)
      throw DataError(in + ": bidirectional LSTMs are not supported (tensor " + n + ")");
  if (src.has("weight_hr_l0")) throw DataError(in + ": LSTMs with projections (proj_size) are not supported");
  const bool head = src.has("head.weight");
  ModelConfig mc;
  mc.rnn.cell = Cell::lstm;
  mc.rnn.input_size = C;
  mc.rnn.hidden_size = H;
  mc.rnn.num_layers = L;
  mc.rnn.t_max = t_max;
  mc.head = head ? Head::classify : Head::none;
  if (head) {
    const auto& hw = src.shape_of("head.weight");
    if (hw.size() != 2 || hw[1] != H) throw DataError(in + ": head.weight must be [K, " + std::to_string(H) + "]");
    mc.num_classes = static_cast<int>(hw[0]);
  }
  LoadedCheckpoint ck;
  ck.model = std::make_unique<Model>(mc);
  for (auto& p : ck.model->parameters()) {
    std::vector<float> v;
    if (p.name.starts_with("rnn.")) {
      const std::string k = p.name.substr(4, p.name.find('.', 4) - 4);
      const std::string what = p.name.substr(p.name.rfind('.') + 1);
      if (what == "bias") {
        std::vector<float> a = src.get_f32("bias_ih_l" + k, {4 * H});
        std::vector<float> b = src.get_f32("bias_hh_l" + k, {4 * H});
        for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
        v = a;
      } else {
        v = src.get_f32(what + "_l" + k, p.shape);
      }
    } else {
      v = src.get_f32(p.name, p.shape);
    }
    std::copy(v.begin(), v.end(), p.value);
  }
  ck.metadata["converted_from"] = "torch.nn.LSTM";
  CheckpointState st;
  save_model_checkpoint(out, ck, st);
  std::printf("%s: nn.LSTM (%d layers, C=%d, H=%d%s) -> rbn lstm checkpoint %s\n", in.c_str(), L, C, H,
              head ? ", with head" : "", out.c_str());
}

void to_torch(const std::string& in, const std::string& out) {
  LoadedCheckpoint ck = load_model_checkpoint(in);
  const auto& mc = ck.model->config();
  if (mc.rnn.cell != Cell::lstm)
    throw UsageError("--to-torch: " + in + " holds a '" + cell_name(mc.rnn.cell) +
                     "' model; only the plain lstm maps onto nn.LSTM");
  if (mc.rnn.learn_init_state)
    throw UsageError("--to-torch: " + in + " has learned initial states, which nn.LSTM does not hold");
  SafeTensors dst;
  for (auto& p : ck.model->parameters()) {
    if (p.name.starts_with("rnn.")) {
      const std::string k = p.name.substr(4, p.name.find('.', 4) - 4);
      const std::string what = p.name.substr(p.name.rfind('.') + 1);
      if (what == "bias") {
        dst.add_f32("bias_ih_l" + k, p.shape, p.value);
        std::vector<float> zeros(p.numel, 0.0f);
        dst.add_f32("bias_hh_l" + k, p.shape, zeros.data());
      } else {
        dst.add_f32(what + "_l" + k, p.shape, p.value);
      }
    } else if (p.name.starts_with("head.")) {
      dst.add_f32(p.name, p.shape, p.value);
    }
  }
  dst.metadata["format"] = "pt";
  write_safetensors(out, dst);
  std::printf("%s -> nn.LSTM state dict %s (bias_hh_lk = 0, bias_ih_lk = rbn's bias)\n", in.c_str(),
              out.c_str());
}

}  // namespace

void register_convert(CLI::App& app, int& exit_code) {
  auto* sub = app.add_subcommand("convert", "move weights between rbn and PyTorch's nn.LSTM");
  struct Flags {
    std::string from_torch, to_torch, out;
    int t_max = 1;
  };
  auto f = std::make_shared<Flags>();
  auto* a = sub->add_option("--from-torch", f->from_torch, "nn.LSTM state dict (.safetensors) to import");
  auto* b = sub->add_option("--to-torch", f->to_torch, "rbn lstm checkpoint to export");
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
