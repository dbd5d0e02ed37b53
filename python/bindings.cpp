// pybind11 bindings: rbn.Stack (float32 / float64), NumPy arrays in and out.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

#include "rbn/rbn.hpp"
#include "rbn/error.hpp"
#include "util/blas.hpp"

namespace py = pybind11;
using namespace rbn;

namespace {

template <class T>
using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <class T>
const T* ptr_or_null(const std::optional<Arr<T>>& a) {
  return a ? a->data() : nullptr;
}

void check_shape(const py::array& a, std::initializer_list<int64_t> want, const char* what) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(want.size());
  size_t i = 0;
  for (int64_t w : want) {
    if (ok && a.shape(i) != w) ok = false;
    ++i;
  }
  if (!ok) {
    std::string s = std::string(what) + ": expected shape [";
    i = 0;
    for (int64_t w : want) {
      if (i++) s += ',';
      s += std::to_string(w);
    }
    s += "], got [";
    for (py::ssize_t d = 0; d < a.ndim(); ++d) {
      if (d) s += ',';
      s += std::to_string(a.shape(d));
    }
    throw py::value_error(s + "]");
  }
}

// Bidirectional stacks (SPEC 2b): y [T,N,D*H], states [D*L,N,H] with D = 2 (index 2k forward,
// 2k+1 reverse, PyTorch's order).
int directions(const StackConfig& c) { return c.bidirectional ? 2 : 1; }
int state_rows(const StackConfig& c) { return directions(c) * c.num_layers; }
int out_width(const StackConfig& c) { return directions(c) * c.hidden_size; }

// A Stack plus the shapes of its last forward (for backward's outputs) and the error of a
// Python statistic all-reduce (set_stat_allreduce), raised when the C++ call returns.
template <class T>
struct PyStack {
  Stack<T> s;
  int T_ = 0, N_ = 0;
  std::shared_ptr<std::string> allreduce_error = std::make_shared<std::string>();
  explicit PyStack(const StackConfig& c) : s(c) {}

  // The C++ stack calls `fn` from its thread 0 while the GIL is released: the callback takes
  // the GIL, hands Python a float64 view of the sums [n] to replace in place by their sum over
  // all ranks, and records (never throws through the C++ stack) a Python error.
  void set_stat_allreduce(std::optional<py::function> fn) {
    if (!fn) {
      s.set_stat_allreduce({});
      return;
    }
    auto f = std::shared_ptr<py::function>(new py::function(*fn), [](py::function* p) {
      py::gil_scoped_acquire gil;
      delete p;
    });
    auto err = allreduce_error;
    s.set_stat_allreduce([f, err](double* buf, size_t n) {
      py::gil_scoped_acquire gil;
      if (!err->empty()) return;  // an earlier call of this forward failed: results discarded
      try {
        py::array_t<double> view({static_cast<py::ssize_t>(n)}, {sizeof(double)}, buf,
                                 py::capsule(buf, [](void*) {}));
        (*f)(view);
      } catch (py::error_already_set& e) {
        *err = e.what();
        if (err->empty()) *err = "unknown Python error";
      }
    });
  }
  // After a C++ call: a failed all-reduce makes the call fail (its statistics were local).
  void check_allreduce() {
    if (allreduce_error->empty()) return;
    const std::string msg = *allreduce_error;
    allreduce_error->clear();
    throw std::runtime_error("rbn: the statistic all-reduce callback failed: " + msg);
  }

  py::tuple forward(Arr<T> x, std::optional<py::array_t<int32_t, py::array::c_style | py::array::forcecast>> lengths,
                    std::optional<Arr<T>> h0, std::optional<Arr<T>> c0, bool train, int t0,
                    bool update_running, bool need_backward, double h0_noise, uint64_t noise_seed,
                    bool regularize, uint64_t update, int64_t row0) {
    const auto& c = s.config();
    if (x.ndim() != 3) throw py::value_error("x: expected [T,N,C]");
    const int T_in = static_cast<int>(x.shape(0)), N = static_cast<int>(x.shape(1));
    check_shape(x, {T_in, N, c.input_size}, "x");
    if (lengths) check_shape(*lengths, {N}, "lengths");
    const int S = state_rows(c);
    if (h0) check_shape(*h0, {S, N, c.hidden_size}, "h0");
    if (c0) check_shape(*c0, {S, N, c.hidden_size}, "c0");
    Arr<T> y({T_in, N, out_width(c)}), hT({S, N, c.hidden_size}), cT({S, N, c.hidden_size});
    ForwardOptions opt;
    opt.mode = train ? Mode::train : Mode::infer;
    opt.t0 = t0;
    opt.update_running = update_running;
    opt.need_backward = need_backward;
    opt.h0_noise = h0_noise;
    opt.noise_seed = noise_seed;
    opt.regularize = regularize;
    opt.update = update;
    opt.row0 = row0;
    {
      py::gil_scoped_release release;
      s.forward(opt, T_in, N,
                {.x = x.data(),
                 .lengths = lengths ? lengths->data() : nullptr,
                 .h0 = ptr_or_null(h0),
                 .c0 = ptr_or_null(c0)},
                {.y = y.mutable_data(), .hT = hT.mutable_data(), .cT = cT.mutable_data()});
    }
    check_allreduce();
    T_ = T_in;
    N_ = N;
    return py::make_tuple(y, hT, cT);
  }

  py::tuple backward(std::optional<Arr<T>> dy, std::optional<Arr<T>> dhT, std::optional<Arr<T>> dcT) {
    const auto& c = s.config();
    const int S = state_rows(c);
    if (dy) check_shape(*dy, {T_, N_, out_width(c)}, "dy");
    if (dhT) check_shape(*dhT, {S, N_, c.hidden_size}, "dhT");
    if (dcT) check_shape(*dcT, {S, N_, c.hidden_size}, "dcT");
    Arr<T> dx({T_, N_, c.input_size}), dh0({S, N_, c.hidden_size}), dc0({S, N_, c.hidden_size});
    {
      py::gil_scoped_release release;
      s.backward(ptr_or_null(dy), ptr_or_null(dhT), ptr_or_null(dcT), dx.mutable_data(),
                 dh0.mutable_data(), dc0.mutable_data());
    }
    check_allreduce();
    return py::make_tuple(dx, dh0, dc0);
  }

  static py::dict tensors(const std::vector<TensorInfo>& infos, std::span<const T> flat) {
    py::dict d;
    for (const auto& ti : infos) {
      Arr<T> a(std::vector<py::ssize_t>(ti.shape.begin(), ti.shape.end()));
      std::memcpy(a.mutable_data(), flat.data() + ti.offset, ti.numel * sizeof(T));
      d[py::str(ti.name)] = a;
    }
    return d;
  }
  void set(const std::string& name, Arr<T> v) {
    const TensorInfo* ti = s.find_info(name);
    if (!ti) throw py::key_error("no tensor named " + name);
    std::vector<int64_t> shape(v.shape(), v.shape() + v.ndim());
    if (shape != ti->shape) throw py::value_error(name + ": wrong shape");
    std::memcpy(s.find(name), v.data(), ti->numel * sizeof(T));
  }
};

StackConfig make_config(const std::string& cell, int input_size, int hidden_size, int num_layers,
                        int t_max, double eps, double gamma_x, double gamma_h, double gamma_c,
                        std::optional<double> forget_bias, double momentum, bool ln_input,
                        bool learn_init_state, const std::string& recurrent_init, uint64_t seed,
                        bool bidirectional, double dropout, double zoneout_h, double zoneout_c) {
  StackConfig c;
  auto k = parse_cell(cell);
  if (!k) throw py::value_error("unknown cell '" + cell + "'");
  c.cell = *k;
  c.input_size = input_size;
  c.hidden_size = hidden_size;
  c.num_layers = num_layers;
  c.t_max = t_max;
  c.eps = eps;
  c.gamma_x = gamma_x;
  c.gamma_h = gamma_h;
  c.gamma_c = gamma_c;
  c.forget_bias = forget_bias;
  c.momentum = momentum;
  c.ln_input = ln_input;
  c.learn_init_state = learn_init_state;
  if (recurrent_init == "identity") c.recurrent_init = RecurrentInit::identity;
  else if (recurrent_init != "orthogonal") throw py::value_error("recurrent_init: orthogonal | identity");
  c.seed = seed;
  c.bidirectional = bidirectional;
  c.dropout = dropout;
  c.zoneout_h = zoneout_h;
  c.zoneout_c = zoneout_c;
  return c;
}

template <class T>
void bind_stack(py::module_& m, const char* name) {
  using S = PyStack<T>;
  py::class_<S>(m, name)
      .def(py::init([](const std::string& cell, int input_size, int hidden_size, int num_layers,
                       int t_max, double eps, double gamma_x, double gamma_h, double gamma_c,
                       std::optional<double> forget_bias, double momentum, bool ln_input,
                       bool learn_init_state, const std::string& recurrent_init, uint64_t seed,
                       bool bidirectional, double dropout, double zoneout_h, double zoneout_c) {
             return new S(make_config(cell, input_size, hidden_size, num_layers, t_max, eps, gamma_x,
                                      gamma_h, gamma_c, forget_bias, momentum, ln_input,
                                      learn_init_state, recurrent_init, seed, bidirectional,
                                      dropout, zoneout_h, zoneout_c));
           }),
           py::arg("cell"), py::arg("input_size"), py::arg("hidden_size"), py::arg("num_layers") = 1,
           py::arg("t_max") = 1, py::arg("eps") = 1e-5, py::arg("gamma_x") = -1.0,
           py::arg("gamma_h") = -1.0, py::arg("gamma_c") = -1.0, py::arg("forget_bias") = py::none(),
           py::arg("momentum") = 0.1, py::arg("ln_input") = true, py::arg("learn_init_state") = false,
           py::arg("recurrent_init") = "orthogonal", py::arg("seed") = 1,
           py::arg("bidirectional") = false, py::arg("dropout") = 0.0, py::arg("zoneout_h") = 0.0,
           py::arg("zoneout_c") = 0.0)
      .def("forward", &S::forward, py::arg("x"), py::arg("lengths") = py::none(),
           py::arg("h0") = py::none(), py::arg("c0") = py::none(), py::arg("train") = true,
           py::arg("t0") = 0, py::arg("update_running") = true, py::arg("need_backward") = true,
           py::arg("h0_noise") = 0.0, py::arg("noise_seed") = 0, py::arg("regularize") = true,
           py::arg("update") = 0, py::arg("row0") = 0,
           "x [T,N,C] -> (y [T,N,D*H], hT [D*L,N,H], cT [D*L,N,H]); D = 2 when bidirectional "
           "(states 2k forward, 2k+1 reverse; t0 must then be 0); train mode with regularize: "
           "dropout and zoneout masks of (seed, update, layer, direction, row0 + n, step, feature)")
      .def("backward", &S::backward, py::arg("dy") = py::none(), py::arg("dhT") = py::none(),
           py::arg("dcT") = py::none(),
           "after a forward: -> (dx, dh0, dc0); parameter gradients are accumulated (grads())")
      .def("params", [](S& s) { return S::tensors(s.s.param_info(), s.s.params()); })
      .def("grads", [](S& s) {
        return S::tensors(s.s.param_info(), std::span<const T>(s.s.grads().data(), s.s.grads().size()));
      })
      .def("buffers", [](S& s) { return S::tensors(s.s.buffer_info(), s.s.buffers()); })
      .def("set", &S::set, py::arg("name"), py::arg("value"), "set a parameter or buffer by name")
      .def("zero_grad", [](S& s) { s.s.zero_grad(); })
      .def("reset_parameters", [](S& s) { s.s.reset_parameters(); })
      .def("popstats_begin", [](S& s) { s.s.popstats_begin(); })
      .def("popstats_feed",
           [](S& s, Arr<T> x, std::optional<py::array_t<int32_t, py::array::c_style | py::array::forcecast>> lengths) {
             if (x.ndim() != 3) throw py::value_error("x: expected [T,N,C]");
             check_shape(x, {x.shape(0), x.shape(1), s.s.config().input_size}, "x");
             {
               py::gil_scoped_release release;
               s.s.popstats_feed(static_cast<int>(x.shape(0)), static_cast<int>(x.shape(1)), x.data(),
                                 lengths ? lengths->data() : nullptr);
             }
             s.check_allreduce();
           },
           py::arg("x"), py::arg("lengths") = py::none())
      .def("popstats_finish", [](S& s) { s.s.popstats_finish(); })
      .def("set_stat_allreduce", &S::set_stat_allreduce, py::arg("fn"),
           "fn(buf: float64 [n]) replaces buf in place by its sum over all ranks (synchronized "
           "batch statistics, Stack::set_stat_allreduce); called with the GIL held from the "
           "stack's thread 0; None: statistics of this process's rows only")
      .def_property_readonly("cell", [](S& s) { return std::string(cell_name(s.s.config().cell)); })
      .def_property_readonly("input_size", [](S& s) { return s.s.config().input_size; })
      .def_property_readonly("hidden_size", [](S& s) { return s.s.config().hidden_size; })
      .def_property_readonly("num_layers", [](S& s) { return s.s.config().num_layers; })
      .def_property_readonly("bidirectional", [](S& s) { return s.s.config().bidirectional; })
      .def_property_readonly("t_max", [](S& s) { return s.s.config().t_max; })
      .def_property_readonly("eps", [](S& s) { return s.s.config().eps; })
      .def_property_readonly("dropout", [](S& s) { return s.s.config().dropout; })
      .def_property_readonly("zoneout_h", [](S& s) { return s.s.config().zoneout_h; })
      .def_property_readonly("zoneout_c", [](S& s) { return s.s.config().zoneout_c; })
      .def_property_readonly("cache_bytes", [](S& s) { return s.s.cache_bytes(); },
                             "bytes of activations kept for backward (O(T) only when kept)")
      .def_property_readonly("param_names", [](S& s) {
        std::vector<std::string> v;
        for (const auto& ti : s.s.param_info()) v.push_back(ti.name);
        return v;
      })
      .def_property_readonly("buffer_names", [](S& s) {
        std::vector<std::string> v;
        for (const auto& ti : s.s.buffer_info()) v.push_back(ti.name);
        return v;
      });
}

}  // namespace

PYBIND11_MODULE(_rbn, m) {
  m.doc() = "rbn: fused batch-normalized / layer-normalized LSTMs (C++ kernels)";
  py::register_exception<rbn::Error>(m, "RbnError", PyExc_ValueError);
  bind_stack<float>(m, "Stack32");
  bind_stack<double>(m, "Stack64");
  (void)rbn::blas::backend();  // an unknown RBN_GEMM fails the import, naming the variable
  m.def("gemm_backend", [] { return std::string(rbn::blas::backend_name(rbn::blas::backend())); },
        "The process's float GEMM backend: 'openblas' or 'onednn' (RBN_GEMM at import; default openblas).");
  m.def("set_gemm_backend", [](const std::string& name) {
    auto b = rbn::blas::parse_backend(name);
    if (!b) throw rbn::UsageError("set_gemm_backend: unknown GEMM backend '" + name + "' (openblas, onednn)");
    rbn::blas::set_backend(*b);
  }, "Float matrix products of every Stack on this backend from now on (double ones stay on OpenBLAS).");
  m.def("precision", [] { return std::string(rbn::blas::precision_name(rbn::blas::precision())); },
        "Inputs of the process's float matrix products: 'fp32' (default) or 'bf16'.");
  m.def("set_precision", [](const std::string& name, const std::string& what) {
    auto p = rbn::blas::parse_precision(name);
    if (!p) throw rbn::UsageError(what + ": must be 'fp32' or 'bf16', got '" + name + "'");
    rbn::blas::set_precision(*p, what);
  }, py::arg("name"), py::arg("what") = "set_precision",
        "Float matrix products of every Stack from now on with fp32 or bf16 inputs (bf16: rounded "
        "to bfloat16, fp32 accumulation by oneDNN's matmul; refused on a CPU without AVX512_BF16 or "
        "AMX, the error naming `what`). Double stacks are not affected.");
  m.def("cpu_has_bf16", &rbn::blas::cpu_has_bf16,
        "Whether this CPU multiplies bf16 natively (oneDNN's ISA avx512_core_bf16 or above).");
  m.def("cells", [] {
    std::vector<std::string> v;
    for (Cell c : all_cells()) v.push_back(cell_name(c));
    for (Cell c : all_gru_cells()) v.push_back(cell_name(c));
    return v;
  });
}
