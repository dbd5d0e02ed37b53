"""rbn's recurrent stacks as drop-in replacements for torch.nn.LSTM and torch.nn.GRU (CPU,
float32 / float64).

    from rbn.torch import BNLSTM, BNGRU
    rnn = BNLSTM(1, 100, t_max=784)          # nn.LSTM's arguments + the normalization's own
    y, (hT, cT) = rnn(x)                     # x [T, N, C] (or [N, T, C] with batch_first=True)
    y, (hT, cT) = rnn(x, (h0, c0))           # hx as nn.LSTM takes it; PackedSequence in -> out
    gru = BNGRU(1, 100, t_max=784)           # nn.GRU's arguments + the normalization's own
    y, hT = gru(x, h0)                       # hx = h0 as nn.GRU takes it
    bi = BNLSTM(1, 100, t_max=784, bidirectional=True)   # y [T,N,2H], states [2L,N,H]

Parameters carry nn.LSTM's names (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0) and the
normalization's in the same style (bn_x_weight_l0, bn_c_bias_l0, bn_h_running_mean_l0, ...), so
`load_state_dict(nn.LSTM(...).state_dict())` works; a bidirectional module's reverse direction
has nn.LSTM's `_reverse` names (weight_ih_l0_reverse, bn_x_weight_l0_reverse, ...; SPEC
rnn.k.reverse.*). rbn's LSTM cells have one bias per layer (SPEC
section 5 `rnn.k.bias`); the two torch biases are summed when the stack runs and when
`state_dict_rbn()` writes the SPEC names. The GRUs (GRU, BNGRU, LNGRU: SPEC section 2b) keep
nn.GRU's two biases as `rnn.k.bias_ih`, `rnn.k.bias_hh` (the n block of bias_hh sits inside the
reset product), so their parameters map one to one. docs/python.md is the user's page.

How autograd is kept exact: the C++ backward consumes the activations its forward cached (it
writes gradients over them). Each forward leaves a token naming the graph node whose activations
the stack holds; a backward whose token is not current (a second backward through a retained
graph, or another forward ran in between) first recomputes its forward from the saved inputs, with
the running statistics untouched. The first backward after a forward never recomputes.
"""
import contextlib
import math
import warnings

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import Stack
from . import precision as _process_precision
from . import set_precision as _set_process_precision

_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def _spec_parts(spec_name):
    """rnn.k.<rest> -> (k, "_lk", rest); a reverse direction's rnn.k.reverse.<rest> -> (k,
    "_lk_reverse", rest): the suffix nn.LSTM gives that layer and direction's names."""
    _, k, rest = spec_name.split(".", 2)
    if rest.startswith("reverse."):
        return k, f"_l{k}_reverse", rest[len("reverse."):]
    return k, f"_l{k}", rest


def _torch_name(spec_name):
    """SPEC section 5 name -> the module's attribute: rnn.0.bn_x.weight -> bn_x_weight_l0,
    rnn.1.reverse.weight_ih -> weight_ih_l1_reverse."""
    _, suffix, rest = _spec_parts(spec_name)
    return rest.replace(".", "_") + suffix


def _layer_of(torch_name):
    """The layer of a module attribute: weight_ih_l1 and weight_ih_l1_reverse -> 1."""
    return int(torch_name.rsplit("_l", 1)[1].split("_")[0])


def _numpy(t):
    """A CPU tensor as a NumPy array without a copy where the layout allows (the binding copies
    non-contiguous arrays)."""
    return None if t is None else t.detach().numpy()


class _StackState:
    """One C++ stack of the module (per dtype; per layer too when dropout runs between layers)
    and what it holds.

    pnames: the module's parameter names this stack runs on, in the order the autograd function
    receives them; sources: (stack tensor name, indices into pnames) — two indices for a bias
    summed from bias_ih and bias_hh, none for bias=False (the stack's bias stays 0); grad_of:
    per parameter, the stack tensor whose gradient it gets; buffers: (stack name, module buffer
    name). synced: stack name -> key of the torch tensors last copied in ((data_ptr, _version) of
    each source), so unchanged tensors are not copied again. owner: token of the graph node whose
    activations the stack's cache holds (None: no usable activations)."""

    def __init__(self, module, stack, layer):
        self.stack = stack
        prefix = "rnn." if layer is None else f"rnn.{layer}."

        def outer(name):  # the stack's name -> the whole module's SPEC name
            return name if layer is None else prefix + name.split(".", 2)[2]

        self.pnames = [n for n in module._param_names if layer is None or _layer_of(n) == layer]
        index = {n: j for j, n in enumerate(self.pnames)}
        self.sources, self.grad_of = [], [None] * len(self.pnames)
        for name in stack.param_names:
            spec = outer(name)
            _, suffix, _ = _spec_parts(spec)
            if _is_bias(spec):
                src = [index["bias_ih" + suffix], index["bias_hh" + suffix]] if module.bias else []
            elif _is_gru_bias(spec):  # nn.GRU's own bias_ih / bias_hh, one to one
                src = [index[_torch_name(spec)]] if module.bias else []
            else:
                src = [index[_torch_name(spec)]]
            self.sources.append((name, src))
            for j in src:
                self.grad_of[j] = name
        self.buffers = [(name, _torch_name(outer(name))) for name in stack.buffer_names]
        self.synced = {}
        self.owner = None


class _StackFunction(torch.autograd.Function):
    """(x [T,N,C], h0, c0 [L,N,H] or None, *params) -> y [T,N,H], hT, cT [L,N,H]."""

    @staticmethod
    def forward(ctx, module, run, x, h0, c0, *params):
        state = module._state_for(x.dtype, run["layer"])
        module._sync_in(state, params)
        y, hT, cT = module._run(state, run, x, h0, c0, update_running=run["train"])
        token = object()
        state.owner = token if run["keep"] else None
        ctx.set_materialize_grads(False)
        ctx.module, ctx.run, ctx.state, ctx.token = module, run, state, token
        ctx.has_h0 = h0 is not None  # LSTMs: hx = (h0, c0), both or neither; GRUs: h0 alone
        ctx.has_c0 = c0 is not None
        buffers = [] if run["train"] else module._buffer_list(state)
        ctx.buffer_versions = [(b, b._version) for b in buffers]
        ctx.save_for_backward(x, h0, c0, *params)
        cT = x.new_zeros(0) if cT is None else torch.from_numpy(cT)  # GRUs: no cell state
        return torch.from_numpy(y), torch.from_numpy(hT), cT

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dhT, dcT):
        x, h0, c0, *params = ctx.saved_tensors  # raises if any was modified in place since
        if not ctx.has_c0 and dcT is not None and dcT.numel() == 0:
            dcT = None  # a GRU's empty cell-state output
        module, state, run = ctx.module, ctx.state, ctx.run
        if state.owner is not ctx.token:
            _StackFunction._recompute(ctx, x, h0, c0, params)
        state.owner = None  # the C++ backward overwrites the activations
        st = state.stack
        st.zero_grad()
        with _precision_scope(module.precision):
            dx, dh0, dc0 = st.backward(_grad(dy), _grad(dhT), _grad(dcT))
        grads = st.grads()
        pgrads = [torch.from_numpy(grads[n]) for n in state.grad_of]
        dh0 = torch.from_numpy(dh0) if ctx.has_h0 else None
        dc0 = torch.from_numpy(dc0) if ctx.has_c0 else None
        return (None, None, torch.from_numpy(dx), dh0, dc0, *pgrads)

    @staticmethod
    def _recompute(ctx, x, h0, c0, params):
        """The activations of this node are gone: run its forward again (same parameters and,
        in eval mode, the same population statistics; running averages not updated)."""
        for b, v in ctx.buffer_versions:
            if b._version != v:
                raise RuntimeError(
                    "rbn.torch: the population statistics used by this eval-mode forward were "
                    "changed (a training-mode forward or an in-place write) before its backward")
        run = dict(ctx.run, keep=True)
        ctx.module._sync_in(ctx.state, params)
        ctx.module._run(ctx.state, run, x, h0, c0, update_running=False)


@contextlib.contextmanager
def _precision_scope(name):
    """The process's float-product precision set to a module's for one C++ call, then restored."""
    before = _process_precision()
    if before == name:
        yield
        return
    _set_process_precision(name, "precision")
    try:
        yield
    finally:
        _set_process_precision(before, "precision")


def _grad(g):
    return None if g is None else g.detach().contiguous().numpy()


class _RbnLSTMBase(nn.Module):
    """nn.LSTM's interface over one of rbn's cells (the subclasses set `_cell`); _RbnGRUBase
    turns it into nn.GRU's."""

    _cell = None
    _default_init = "spec"
    _gru = False  # GRU family: 3 gate blocks, two biases kept apart, hx = h0, no forget bias
    _mode = None  # nn's `mode` where it is neither "LSTM" nor "GRU" (the tanh RNNs: "RNN_TANH")

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
                 t_max=1, eps=1e-5, momentum=0.1, gamma_x=None, gamma_h=None, gamma_c=None,
                 forget_bias=1.0, ln_input=True, learn_init_state=False,
                 recurrent_init="orthogonal", init=None, sync_stats=False, process_group=None,
                 precision="fp32", zoneout_h=0.0, zoneout_c=0.0):
        super().__init__()
        name = type(self).__name__
        _check_size(name, "input_size", input_size, 1)
        _check_size(name, "hidden_size", hidden_size, 1)
        _check_size(name, "num_layers", num_layers, 1)
        _check_size(name, "t_max", t_max, 1)
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(f"{name}: dropout should be a number in [0, 1], got {dropout!r}")
        self.mode = self._mode or ("GRU" if self._gru else "LSTM")
        for what, z in (("zoneout_h", zoneout_h), ("zoneout_c", zoneout_c)):
            if not isinstance(z, (int, float)) or isinstance(z, bool) or not 0 <= z < 1:
                raise ValueError(f"{name}: {what} should be a number in [0, 1), got {z!r}")
        if self.mode != "LSTM" and zoneout_c != 0:
            raise ValueError(f"{name}: zoneout_c={zoneout_c!r}: a {self.mode} has no cell state to "
                             "zone out (zoneout_h zones out its h)")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"{name}: dropout={dropout} and num_layers=1: dropout acts between "
                          f"layers only, so it has no effect (as in nn.{self.mode})")
        if proj_size != 0:
            raise NotImplementedError(f"{name}: proj_size={proj_size} is not implemented: rbn's "
                                      "cells have no projection (proj_size must be 0)")
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"{name}: device={device!r}: rbn's kernels run on the CPU only")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        _check_dtype(name, dtype)
        _check_keywords(name, self._cell, t_max=(t_max, 1), eps=(eps, 1e-5),
                        momentum=(momentum, 0.1), gamma_x=(gamma_x, None),
                        gamma_h=(gamma_h, None), gamma_c=(gamma_c, None),
                        ln_input=(ln_input, True))
        init = self._default_init if init is None else init
        if init not in ("torch", "spec"):
            raise ValueError(f"{name}: init must be 'torch' (nn.{self.mode}'s uniform) or 'spec' "
                             f"(orthogonal{'' if self._gru else ', forget bias'}; docs/cells.md), "
                             f"got {init!r}")
        if init == "torch" and (forget_bias != 1.0 or recurrent_init != "orthogonal"):
            raise TypeError(f"{name}: {'' if self._gru else 'forget_bias and '}recurrent_init "
                            "shape init='spec' only; with init='torch' every weight and bias is "
                            "uniform")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bool(bidirectional), 0
        self.init = init
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"{name}: precision must be 'fp32' or 'bf16', got {precision!r}")
        if precision == "bf16":  # refused here, in one line, on a CPU without bf16
            before = _process_precision()
            _set_process_precision("bf16", f"{name}: precision")
            _set_process_precision(before, "precision")
        # inputs of the float stacks' matrix products (bf16: rounded, fp32 accumulation); the
        # process's precision is set to it for each call of the C++ stack and restored after
        self.precision = precision
        # Everything the C++ StackConfig needs (the stacks are rebuilt from this after pickling).
        self._config = dict(
            cell=self._cell, input_size=input_size, hidden_size=hidden_size,
            num_layers=num_layers, t_max=t_max, eps=eps, momentum=momentum,
            gamma_x=-1.0 if gamma_x is None else float(gamma_x),
            gamma_h=-1.0 if gamma_h is None else float(gamma_h),
            gamma_c=-1.0 if gamma_c is None else float(gamma_c),
            forget_bias=None if self._gru else float(forget_bias), ln_input=bool(ln_input),
            learn_init_state=bool(learn_init_state), recurrent_init=recurrent_init,
            bidirectional=bool(bidirectional),
            zoneout_h=float(zoneout_h), zoneout_c=float(zoneout_c))
        self._stacks = {}
        probe = self._new_stack(dtype, seed=1)  # validates the keywords; names and shapes
        self._spec_params = list(probe.param_names)
        self._spec_buffers = list(probe.buffer_names)
        self._register(probe, dtype)
        self.reset_parameters()
        if sync_stats:
            self.set_sync_stats(True, process_group)
        elif process_group is not None:
            raise TypeError(f"{name}: process_group is for sync_stats=True")

    # ---- construction ---------------------------------------------------------------------

    @property
    def t_max(self):
        return self._config["t_max"]

    @property
    def eps(self):
        return self._config["eps"]

    @property
    def momentum(self):
        return self._config["momentum"]

    @property
    def zoneout_h(self):
        return self._config["zoneout_h"]

    @property
    def zoneout_c(self):
        return self._config["zoneout_c"]

    def _new_stack(self, dtype, seed=1, layer=None):
        c = dict(self._config)
        C, L = c.pop("input_size"), c.pop("num_layers")
        if layer is not None:
            C, L = (C if layer == 0 else self._directions * self.hidden_size), 1
        if c["forget_bias"] is None:  # a GRU has no forget gate: left unset
            del c["forget_bias"]
        return Stack(c.pop("cell"), C, c.pop("hidden_size"), L, c.pop("t_max"),
                     dtype=_DTYPES[dtype], seed=seed, **c)

    @property
    def _gates(self):
        return 3 if self._gru else 4

    @property
    def _directions(self):
        """2 for a bidirectional module (SPEC 2b): outputs [T,N,2H], states [2L,N,H]."""
        return 2 if self.bidirectional else 1

    def _register(self, probe, dtype):
        """Parameters in nn.LSTM's / nn.GRU's order per layer (weight_ih, weight_hh, bias_ih,
        bias_hh), then the layer's normalization parameters; buffers (population statistics)
        likewise."""
        params = probe.params()
        self._param_names = []  # torch names, in registration order
        for spec in self._spec_params:
            _, suffix, _ = _spec_parts(spec)
            if _is_bias(spec):
                names = ["bias_ih" + suffix, "bias_hh" + suffix] if self.bias else []
            elif _is_gru_bias(spec):
                names = [_torch_name(spec)] if self.bias else []
            else:
                names = [_torch_name(spec)]
            for n in names:
                t = torch.empty(params[spec].shape, dtype=dtype)
                self.register_parameter(n, nn.Parameter(t))
                self._param_names.append(n)
        for spec, v in probe.buffers().items():
            self.register_buffer(_torch_name(spec), torch.empty(v.shape, dtype=dtype))

    @torch.no_grad()
    def reset_parameters(self):
        """init='torch': every weight and bias U(-1/sqrt(H), 1/sqrt(H)) drawn in nn.LSTM's /
        nn.GRU's order (so a seeded rbn.torch.LSTM / GRU starts where a seeded nn.LSTM / nn.GRU
        does); normalization gains and biases as the SPEC. init='spec': the SPEC's (orthogonal W;
        LSTMs: b_f = forget_bias in bias_ih, bias_hh = 0; GRUs: both biases 0), from a seed
        drawn from torch's generator. Population statistics reset."""
        seed = int(torch.randint(0, 2**62, (1,)).item()) if self.init == "spec" else 1
        fresh = self._new_stack(torch.float64, seed=seed)
        spec = fresh.params()
        for s in self._spec_params:  # every layer and direction
            _, suffix, rest = _spec_parts(s)
            if rest == "bias":  # an LSTM's one bias: all in bias_ih
                if self.bias:
                    getattr(self, "bias_ih" + suffix).copy_(torch.from_numpy(spec[s]))
                    getattr(self, "bias_hh" + suffix).zero_()
            elif _torch_name(s) in self._param_names:
                getattr(self, _torch_name(s)).copy_(torch.from_numpy(spec[s]))
        for s, v in fresh.buffers().items():
            getattr(self, _torch_name(s)).copy_(torch.from_numpy(v))
        self.popstats_kind, self.popstats_data = "running", None
        if self.init == "torch":
            stdv = 1.0 / math.sqrt(self.hidden_size)
            for n in self._param_names:
                if _is_lstm_param(n):
                    getattr(self, n).uniform_(-stdv, stdv)

    def _copy_torch_params(self, module):
        """Copies the weights and biases that `module` (a torch.nn recurrent module or an rbn.torch
        one of the same kind) shares with this module under nn's names; the rest keep their init."""
        src = dict(module.named_parameters())
        with torch.no_grad():
            for n in self._param_names:
                if _is_lstm_param(n):
                    getattr(self, n).copy_(src[n])

    @classmethod
    def from_lstm(cls, lstm, **kwargs):
        """A module of this class with the weights and biases of `lstm` (a torch.nn.LSTM or an
        rbn.torch module); the normalization starts as the SPEC says. kwargs: this class's
        keywords (t_max, gamma_x, ...)."""
        ref = next(lstm.parameters())
        m = cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias, lstm.batch_first,
                lstm.dropout, lstm.bidirectional, getattr(lstm, "proj_size", 0),
                dtype=ref.dtype, **kwargs)
        m._copy_torch_params(lstm)
        return m

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s + self._norm_repr()

    def _norm_repr(self):
        c, s = self._config, ""
        if self._cell in _BN_CELLS:
            s += f", t_max={c['t_max']}"
            if c["momentum"] != 0.1:
                s += f", momentum={c['momentum']}"
        if self._cell not in ("lstm", "gru") and c["eps"] != 1e-5:
            s += f", eps={c['eps']}"
        for g in ("gamma_x", "gamma_h", "gamma_c"):
            if c[g] >= 0:
                s += f", {g}={c[g]}"
        if c["forget_bias"] is not None and c["forget_bias"] != 1.0:
            s += f", forget_bias={c['forget_bias']}"
        if self._cell in ("lnlstm", "lngru") and not c["ln_input"]:
            s += ", ln_input=False"
        if c["learn_init_state"]:
            s += ", learn_init_state=True"
        if c["recurrent_init"] != "orthogonal":
            s += f", recurrent_init={c['recurrent_init']!r}"
        if self.precision != "fp32":
            s += f", precision={self.precision!r}"
        for z in ("zoneout_h", "zoneout_c"):
            if c[z] != 0:
                s += f", {z}={c[z]}"
        return s

    # ---- pickling, deepcopy, .to(): the C++ stacks are a cache of the torch tensors ----------

    def __getstate__(self):
        d = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        d = dict(d)
        d["_stacks"] = {}
        if d.get("_stat_group") is not None:
            warnings.warn(f"{type(self).__name__}: a copy of a sync_stats module does not carry "
                          "its process group: the copy normalizes with its own rows "
                          "(set_sync_stats(True) on it to synchronize)")
            d["_stat_group"] = None
        return d

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("precision", "fp32")  # a module pickled before the keyword
        self._stacks = {}

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        for s in self._stacks.values():  # tensors may be new: copy everything in next time
            s.synced.clear()
            s.owner = None
        return out

    # ---- running the stack ----------------------------------------------------------------

    def _state_for(self, dtype, layer=None):
        """The stack for `dtype`: all layers (layer None) or layer `layer` alone."""
        s = self._stacks.get((dtype, layer))
        if s is None:
            s = _StackState(self, self._new_stack(dtype, layer=layer), layer)
            self._stacks[(dtype, layer)] = s
            if self._stat_group is not None:
                s.stack.set_stat_allreduce(_allreduce_fn(self._stat_group))
        return s

    def _buffer_list(self, state):
        return [getattr(self, n) for _, n in state.buffers]

    def _sync_in(self, state, params):
        """Copy into the stack the parameters (and buffers) that changed since the last copy:
        a tensor is unchanged when its storage address and version counter are. (A write
        through `.data` bypasses the version counter: docs/python.md.)"""
        st, synced = state.stack, state.synced
        for name, src in state.sources:
            key = tuple((params[j].data_ptr(), params[j]._version) for j in src)
            if synced.get(name) == key:
                continue
            if not src:
                v = np.zeros(self._gates * self.hidden_size, dtype=_DTYPES[params[0].dtype])
            elif len(src) == 1:
                v = params[src[0]].detach().numpy()
            else:
                v = (params[src[0]].detach() + params[src[1]].detach()).numpy()
            st.set(name, v)
            synced[name] = key
        for name, attr in state.buffers:
            b = getattr(self, attr)
            key = ((b.data_ptr(), b._version),)
            if synced.get(name) != key:
                st.set(name, b.numpy())
                synced[name] = key

    def _sync_buffers_out(self, state):
        """After a training-mode forward: the stack's updated running averages into the buffers
        (and their new versions recorded, so they are not copied back in)."""
        values = state.stack.buffers()
        for name, attr in state.buffers:
            b = getattr(self, attr)
            b.copy_(torch.from_numpy(values[name]))
            state.synced[name] = ((b.data_ptr(), b._version),)

    def _run(self, state, run, x, h0, c0, update_running):
        with _precision_scope(self.precision):
            y, hT, cT = state.stack.forward(
                _numpy(x), run["lengths"], _numpy(h0), _numpy(c0), train=run["train"],
                t0=run["t0"], update_running=update_running, need_backward=run["keep"],
                update=run["update"])
        if run["train"] and update_running:
            self._sync_buffers_out(state)
            self.popstats_kind, self.popstats_data = "running", None
        return y, hT, cT

    # ---- forward: nn.LSTM's contract --------------------------------------------------------

    def forward(self, input, hx=None, *, lengths=None, t0=0):
        """input [T,N,C] ([N,T,C] with batch_first), [T,C] unbatched, or a PackedSequence;
        hx = (h0, c0), each [L,N,H] ([L,H] unbatched). Returns output, (h_n, c_n) as nn.LSTM:
        output a PackedSequence for a packed input. lengths [N] (padded input only): valid steps
        per row; output is 0 past them and h_n, c_n are the states at each row's last step.
        t0: global time of input's first step (row t0 + t of the population statistics); 0 for
        a bidirectional module (which returns output [.., 2H] and states [2L, N, H]).
        Inside `population_statistics()` the call also feeds the statistics pass."""
        name = type(self).__name__
        if isinstance(hx, torch.Tensor) and hx.dim() == 1 and not hx.is_floating_point():
            what = "h0 as in nn.GRU" if self._gru else "(h0, c0) as in nn.LSTM"
            raise TypeError(f"{name}: the second argument is hx = {what}; pass sequence lengths "
                            "as lengths=")
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError(f"{name}: lengths= with a PackedSequence (it has its own)")
            return self._forward_packed(input, hx, t0)
        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: input must be 2-D (unbatched) or 3-D, got {input.dim()}-D")
        unbatched = input.dim() == 2
        x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
        h0, c0 = self._check_hx(hx, x.shape[1], unbatched)
        y, hT, cT = self._forward_tm(x, h0, c0, lengths, t0)
        if unbatched:
            y, hT, cT = y.squeeze(1), hT.squeeze(1), (cT if self._gru else cT.squeeze(1))
        else:
            y = y.transpose(0, 1) if self.batch_first else y
        return y, self._state_out(hT, cT)

    def _state_out(self, hT, cT):
        """The final state as nn.LSTM returns it, (h_n, c_n); GRUs: h_n."""
        return hT if self._gru else (hT, cT)

    def _forward_packed(self, packed, hx, t0):
        x, lengths = pad_packed_sequence(packed)  # [T,N,C], rows in the caller's order
        h0, c0 = self._check_hx(hx, x.shape[1], False)
        y, hT, cT = self._forward_tm(x, h0, c0, lengths, t0)
        si = packed.sorted_indices
        ys = y if si is None else y.index_select(1, si)
        ls = lengths if si is None else lengths.index_select(0, si)
        data = pack_padded_sequence(ys, ls, enforce_sorted=True).data
        out = PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                             packed.unsorted_indices)
        return out, self._state_out(hT, cT)

    def _check_hx(self, hx, N, unbatched):
        name = type(self).__name__
        if hx is None:
            return None, None
        S = self._directions * self.num_layers  # nn.LSTM's D * num_layers state rows
        want = (S, self.hidden_size) if unbatched else (S, N, self.hidden_size)
        if self._gru:
            if not isinstance(hx, torch.Tensor):
                raise TypeError(f"{name}: hx must be a tensor h0, as nn.GRU takes it (a GRU has "
                                f"no cell state), got {type(hx).__name__}")
            if tuple(hx.shape) != want:
                raise RuntimeError(f"{name}: expected hidden size {want}, got {tuple(hx.shape)}")
            return (hx.unsqueeze(1) if unbatched else hx), None
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"{name}: hx must be a tuple (h0, c0), as nn.LSTM takes it")
        h0, c0 = hx
        for n, t in (("h0", h0), ("c0", c0)):
            if tuple(t.shape) != want:
                raise RuntimeError(f"{name}: expected hidden {n} size {want}, got {tuple(t.shape)}")
        if unbatched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        return h0, c0

    def _forward_tm(self, x, h0, c0, lengths, t0):
        """Time-major x [T,N,C] -> y [T,N,H], hT, cT [L,N,H]."""
        name = type(self).__name__
        params = [getattr(self, n) for n in self._param_names]
        dtype = params[0].dtype
        _check_dtype(name, dtype)
        for n, t in (("input", x), ("h0", h0), ("c0", c0)):
            if t is None:
                continue
            if t.device.type != "cpu":
                raise ValueError(f"{name}: {n} is on {t.device}: rbn's kernels run on the CPU only")
            if t.dtype != dtype:
                raise RuntimeError(f"{name}: {n} must have the type {dtype} (the module's "
                                   f"parameters), got type {t.dtype}")
        if x.shape[2] != self.input_size:
            raise RuntimeError(f"{name}: input.size(-1) must be equal to input_size. "
                               f"Expected {self.input_size}, got {x.shape[2]}")
        ln = None
        if lengths is not None:
            ln = np.ascontiguousarray(torch.as_tensor(lengths).cpu().numpy(), dtype=np.int32)
            if ln.shape != (x.shape[1],):
                raise ValueError(f"{name}: lengths must be [N] = [{x.shape[1]}], got {ln.shape}")
        grad = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in params)
            or any(t is not None and t.requires_grad for t in (h0, c0)))
        if self.bidirectional and t0 != 0:
            raise ValueError(f"{name}: t0={t0}: a bidirectional module has no step API (its "
                             "reverse direction starts at each row's last step, so it reads "
                             "whole sequences from t0 = 0)")
        if self._pass is not None:
            return self._feed_pass(x, h0, c0, ln, int(t0))
        if self.training and self.dropout > 0 and self.num_layers > 1:
            return self._forward_dropout(x, h0, c0, ln, int(t0), grad)
        run = dict(train=self.training, keep=grad, t0=int(t0), lengths=ln, layer=None,
                   update=self._draw_update())
        return _StackFunction.apply(self, run, x, h0, c0, *params)

    def _draw_update(self):
        """The zoneout masks' update index of one training-mode call: drawn from torch's
        generator (so torch.manual_seed reproduces a run, and every call draws new masks); kept
        in the call's run, so a recomputed forward draws the same masks."""
        if not (self.training and (self._config["zoneout_h"] or self._config["zoneout_c"])):
            return 0
        return int(torch.randint(0, 2**62, (1,)).item())

    def _forward_dropout(self, x, h0, c0, ln, t0, grad):
        """Training with dropout between layers, as nn.LSTM has it (on the output of every layer
        but the last, torch's F.dropout): the layers run one by one, each on its own stack."""
        hs, cs, inp, D = [], [], x, self._directions
        for k in range(self.num_layers):
            params = [getattr(self, n) for n in self._param_names if _layer_of(n) == k]
            run = dict(train=True, keep=grad, t0=t0, lengths=ln, layer=k,
                       update=self._draw_update())
            hk = None if h0 is None else h0[D * k:D * (k + 1)]
            ck = None if c0 is None else c0[D * k:D * (k + 1)]
            y, hT, cT = _StackFunction.apply(self, run, inp, hk, ck, *params)
            hs.append(hT)
            cs.append(cT)
            inp = F.dropout(y, self.dropout, True) if k < self.num_layers - 1 else y
        return inp, torch.cat(hs), torch.cat(cs)

    # ---- rbn's own: SPEC names, the statistics pass ----------------------------------------

    def state_dict_rbn(self):
        """Parameters and buffers under their SPEC section 5 names (rnn.0.weight_ih, rnn.0.bias =
        bias_ih_l0 + bias_hh_l0, rnn.0.bn_x.running_mean, ...), as rbn's checkpoints hold them."""
        out = {}
        with torch.no_grad():
            for spec in self._spec_params:
                _, suffix, _ = _spec_parts(spec)
                if (_is_bias(spec) or _is_gru_bias(spec)) and not self.bias:
                    out[spec] = torch.zeros(self._gates * self.hidden_size,
                                            dtype=self.weight_ih_l0.dtype)
                elif _is_bias(spec):
                    out[spec] = getattr(self, "bias_ih" + suffix) + getattr(self, "bias_hh" + suffix)
                else:
                    out[spec] = getattr(self, _torch_name(spec)).detach().clone()
            for spec in self._spec_buffers:
                out[spec] = getattr(self, _torch_name(spec)).detach().clone()
        return out

    def load_state_dict_rbn(self, tensors, strict=True):
        """Load SPEC-named tensors (an rbn checkpoint's rnn.* entries). rnn.k.bias goes into
        bias_ih_lk, and bias_hh_lk becomes 0 (LSTMs); a GRU's rnn.k.bias_ih / bias_hh into
        bias_ih_lk / bias_hh_lk. strict: unknown or missing names raise KeyError."""
        name = type(self).__name__
        wanted = self._spec_params + self._spec_buffers
        if strict:
            unknown = sorted(set(tensors) - set(wanted))
            missing = sorted(set(wanted) - set(tensors))
            if unknown or missing:
                raise KeyError(f"{name}.load_state_dict_rbn: unexpected keys {unknown}, "
                               f"missing keys {missing}")
        with torch.no_grad():
            for spec in wanted:
                if spec not in tensors:
                    continue
                v = torch.as_tensor(np.asarray(tensors[spec]))
                if _is_gru_bias(spec) and not self.bias:
                    if v.abs().max() > 0:
                        raise ValueError(f"{name}: {spec} is not zero but bias=False")
                    continue
                if _is_bias(spec):
                    _, suffix, _ = _spec_parts(spec)
                    if not self.bias:
                        if v.abs().max() > 0:
                            raise ValueError(f"{name}: {spec} is not zero but bias=False")
                        continue
                    getattr(self, "bias_ih" + suffix).copy_(v)
                    getattr(self, "bias_hh" + suffix).zero_()
                else:
                    getattr(self, _torch_name(spec)).copy_(v)

    # ---- synchronized batch statistics (torch.distributed) ---------------------------------

    _stat_group = None  # the process group the batch statistics are summed over, or None

    @property
    def sync_stats(self):
        return self._stat_group is not None

    def set_sync_stats(self, on, process_group=None):
        """Synchronized batch statistics, as nn.SyncBatchNorm: every training-mode batch mean and
        variance (and their gradients in backward, and the statistics pass) is computed over the
        rows of all processes of `process_group`, so K processes with N/K rows each compute
        what one process does with N rows. The sums go through torch.distributed.all_reduce on
        `process_group` (default: a new gloo group of all ranks, created now, collectively:
        every rank must make this call). Every rank must then run the same training-mode calls
        with the same number of steps. Parameter gradients stay local (DistributedDataParallel
        averages them). docs/distributed.md."""
        name = type(self).__name__
        if on:
            if self._cell not in _BN_CELLS:
                raise TypeError(f"{name}: sync_stats applies to the batch-normalized cells only "
                                f"(this cell, {self._cell}, has no batch statistics)")
            import torch.distributed as dist
            if not dist.is_available() or not dist.is_initialized():
                raise RuntimeError(f"{name}: sync_stats=True needs torch.distributed initialized "
                                   "(torch.distributed.init_process_group) first")
            group = dist.new_group(backend="gloo") if process_group is None else process_group
        else:
            group = None
        self._stat_group = group
        for st in self._stacks.values():
            st.owner = None
            st.stack.set_stat_allreduce(None if group is None else _allreduce_fn(group))
        return self

    _pass = None  # the _StackState a population_statistics() block feeds, else None

    @contextlib.contextmanager
    def population_statistics(self):
        """The authors' statistics pass (SPEC section 3b; `rbn popstats`), fed by the forward
        calls inside the block:

            with rnn.population_statistics():
                for x in loader:
                    rnn(x)

        Each call's per-step batch mean and (biased) variance are averaged over the calls,
        weighted by the step's count of valid rows; when the block ends they replace the
        population statistics (steps no call reached keep theirs), `popstats_kind` becomes
        'pass' and eval() uses them. Parameters do not change; calls return training-mode
        outputs (batch statistics; the pass costs two forwards per call) without autograd.
        With sync_stats the ranks' rows are pooled. An exception inside the block leaves the
        statistics as they were."""
        name = type(self).__name__
        if self._pass is not None:
            raise RuntimeError(f"{name}: population_statistics() blocks do not nest")
        params = [getattr(self, n) for n in self._param_names]
        state = self._state_for(params[0].dtype)
        with torch.no_grad():
            self._sync_in(state, params)
        state.owner = None
        before = {n: b.clone() for n, b in self.named_buffers(recurse=False)}
        state.stack.popstats_begin()
        self._pass = state
        try:
            yield self
            state.stack.popstats_finish()
        except BaseException:
            with torch.no_grad():
                for n, b in before.items():
                    getattr(self, n).copy_(b)
            state.synced.clear()
            raise
        finally:
            self._pass = None
        with torch.no_grad():
            self._sync_buffers_out(state)
        self.popstats_kind, self.popstats_data = "pass", None

    def _feed_pass(self, x, h0, c0, ln, t0):
        """One call inside population_statistics(): feed the pass, return training-mode
        outputs (no graph)."""
        name = type(self).__name__
        if t0 != 0 or h0 is not None:
            raise ValueError(f"{name}: inside population_statistics() a call starts at step 0 "
                             "from the initial state (no hx, t0=0), as `rbn popstats` runs it")
        state = self._pass
        with torch.no_grad(), _precision_scope(self.precision):
            xn = np.ascontiguousarray(_numpy(x))
            state.stack.popstats_feed(xn, ln)
            y, hT, cT = state.stack.forward(xn, ln, None, None, train=True, t0=0,
                                            update_running=False, need_backward=False,
                                            regularize=False)
        state.owner = None
        cT = x.new_zeros(0) if cT is None else torch.from_numpy(cT)  # GRUs: no cell state
        return torch.from_numpy(y), torch.from_numpy(hT), cT

    def popstats(self, batches):
        """population_statistics() over an iterable of (x [T,N,C] time-major, lengths or None)."""
        with self.population_statistics():
            for x, lengths in batches:
                self._forward_tm(x, None, None, lengths, 0)


def _allreduce_fn(group):
    """The stack's statistic all-reduce: float64 sums [n], summed in place over `group`. (It
    holds the group only, not the module: the C++ stack owns it, out of the GC's sight.)"""
    import torch.distributed as dist

    def allreduce(buf):
        dist.all_reduce(torch.from_numpy(buf), op=dist.ReduceOp.SUM, group=group)

    return allreduce


def convert_sync_batchnorm(module, process_group=None):
    """nn.SyncBatchNorm.convert_sync_batchnorm for rbn: every batch-normalized rbn.torch module
    in `module` (BNLSTM, BNxLSTM, BNGRU) synchronizes its batch statistics over `process_group`
    (default: one new gloo group of all ranks, shared by them; a collective call). The modules
    are changed in place; returns `module`."""
    group = process_group
    for m in module.modules():
        if isinstance(m, _RbnLSTMBase) and m._cell in _BN_CELLS:
            if group is None:
                import torch.distributed as dist
                if not dist.is_available() or not dist.is_initialized():
                    raise RuntimeError("convert_sync_batchnorm: torch.distributed is not "
                                       "initialized (init_process_group first)")
                group = dist.new_group(backend="gloo")
            m.set_sync_stats(True, group)
    return module


def _is_lstm_param(name):
    """weight_ih/weight_hh/bias(_ih/_hh) of a layer and direction, in torch or SPEC naming (not
    a norm's): what nn.LSTM / nn.GRU hold."""
    if name.startswith("rnn."):
        return _spec_parts(name)[2] in ("weight_ih", "weight_hh", "bias", "bias_ih", "bias_hh")
    return name.rsplit("_l", 1)[0] in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _is_bias(spec):
    """rnn.k.bias (or rnn.k.reverse.bias), an LSTM stack's single bias (not a norm's bias)."""
    return _spec_parts(spec)[2] == "bias"


def _is_gru_bias(spec):
    """rnn.k.bias_ih or rnn.k.bias_hh (or under rnn.k.reverse.), a GRU stack's two biases."""
    return _spec_parts(spec)[2] in ("bias_ih", "bias_hh")


_BN_CELLS = ("bnlstm", "bnx", "bnx-seq", "bngru", "bnrnn")  # cells with batch statistics


# The normalization keywords each cell uses; another one set away from its default is refused
# (it would do nothing).
_CELL_KEYWORDS = {
    "lstm": set(),
    "bnlstm": {"t_max", "eps", "momentum", "gamma_x", "gamma_h", "gamma_c"},
    "bnx": {"t_max", "eps", "momentum", "gamma_x"},
    "bnx-seq": {"t_max", "eps", "momentum", "gamma_x"},
    "lnlstm": {"eps", "gamma_x", "gamma_h", "gamma_c", "ln_input"},
    "gru": set(),
    "bngru": {"t_max", "eps", "momentum", "gamma_x", "gamma_h"},
    "lngru": {"eps", "gamma_x", "gamma_h", "ln_input"},
    "rnn": set(),
    "bnrnn": {"t_max", "eps", "momentum", "gamma_x", "gamma_h"},
}


def _check_keywords(cls, cell, **given):
    for key, (value, default) in given.items():
        if key not in _CELL_KEYWORDS[cell] and value != default:
            raise TypeError(f"{cls}: {key}={value!r} does not apply to this cell (it would do "
                            f"nothing); it applies to: "
                            f"{', '.join(sorted(_CELL_KEYWORDS[cell])) or 'none of them'}")


def _check_size(cls, what, v, lo):
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ValueError(f"{cls}: {what} must be an integer >= {lo}, got {v!r}")


def _check_dtype(cls, dtype):
    if dtype not in _DTYPES:
        raise TypeError(f"{cls}: dtype {dtype} is not supported: rbn computes in float32 or "
                        "float64 (convert with .float() or .double())")


class LSTM(_RbnLSTMBase):
    """The plain LSTM (SPEC `lstm`): torch.nn.LSTM's arguments and results; initialized as
    nn.LSTM by default (init='spec' for the SPEC's orthogonal init)."""
    _cell = "lstm"
    _default_init = "torch"


class BNLSTM(_RbnLSTMBase):
    """Recurrent batch normalization (Cooijmans et al. 2017): BN_t of W x, of W h and of c, with
    per-step population statistics for t < t_max (later steps use row t_max - 1)."""
    _cell = "bnlstm"


class BNxLSTM(_RbnLSTMBase):
    """Batch normalization of W x only (Laurent et al. 2016): frame-wise (per step, default) or
    sequence-wise (sequence_wise=True: one statistic over every valid (t, n))."""

    def __init__(self, *args, sequence_wise=False, **kwargs):
        self._cell = "bnx-seq" if sequence_wise else "bnx"
        super().__init__(*args, **kwargs)

    @property
    def sequence_wise(self):
        return self._cell == "bnx-seq"

    def extra_repr(self):
        return super().extra_repr() + (", sequence_wise=True" if self.sequence_wise else "")


class LNLSTM(_RbnLSTMBase):
    """Layer normalization (Ba et al. 2016) of W x (ln_input=True), W h and c."""
    _cell = "lnlstm"

    def __init__(self, input_size, *args, **kwargs):
        super().__init__(input_size, *args, **kwargs)
        if input_size == 1 and self._config["ln_input"]:
            warnings.warn("LNLSTM: input_size=1 with ln_input=True: LN(W x) of one feature is "
                          "LN(w) for every non-zero x (its magnitude is lost) and undefined at "
                          "x = 0; consider ln_input=False (docs/cells.md)")


class _RbnGRUBase(_RbnLSTMBase):
    """nn.GRU's interface over one of rbn's GRU cells (SPEC section 2b): the constructor of
    nn.GRU (no proj_size, no forget bias: a GRU's biases start at 0), hx = h0 [L,N,H] ([L,H]
    unbatched), forward -> (output, h_n), nn.GRU's parameter names and order
    (weight_ih_l0 [3H,C], weight_hh_l0 [3H,H], bias_ih_l0, bias_hh_l0 [3H], ...)."""

    _gru = True

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, t_max=1,
                 eps=1e-5, momentum=0.1, gamma_x=None, gamma_h=None, ln_input=True,
                 learn_init_state=False, recurrent_init="orthogonal", init=None,
                 sync_stats=False, process_group=None, precision="fp32", zoneout_h=0.0,
                 zoneout_c=0.0):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, t_max=t_max, eps=eps,
                         momentum=momentum, gamma_x=gamma_x, gamma_h=gamma_h,
                         ln_input=ln_input, learn_init_state=learn_init_state,
                         recurrent_init=recurrent_init, init=init, sync_stats=sync_stats,
                         process_group=process_group, precision=precision,
                         zoneout_h=zoneout_h, zoneout_c=zoneout_c)

    @classmethod
    def from_gru(cls, gru, **kwargs):
        """A module of this class with the weights and biases of `gru` (a torch.nn.GRU or an
        rbn.torch GRU module); the normalization starts as the SPEC says. kwargs: this class's
        keywords (t_max, gamma_x, ...)."""
        ref = next(gru.parameters())
        m = cls(gru.input_size, gru.hidden_size, gru.num_layers, gru.bias, gru.batch_first,
                gru.dropout, gru.bidirectional, dtype=ref.dtype, **kwargs)
        m._copy_torch_params(gru)
        return m

    @classmethod
    def from_lstm(cls, lstm, **kwargs):
        raise TypeError(f"{cls.__name__}.from_lstm: an LSTM's weights do not fit a GRU (4 gate "
                        "blocks against 3); use from_gru with an nn.GRU")


class GRU(_RbnGRUBase):
    """The plain GRU (SPEC `gru`): torch.nn.GRU's arguments and results; initialized as nn.GRU
    by default (init='spec' for the SPEC's orthogonal init)."""
    _cell = "gru"
    _default_init = "torch"


class BNGRU(_RbnGRUBase):
    """Recurrent batch normalization of a GRU: BN_t of W x and of W h over all 3H features (no
    beta, gains 0.1), per-step population statistics for t < t_max (later steps use row
    t_max - 1)."""
    _cell = "bngru"


class LNGRU(_RbnGRUBase):
    """Layer-normalized GRU (Ba et al. 2016, eqs. 26-28): LN of the r,z block and of the n block
    of W x (ln_input=True) and of W h, each with its own statistics."""
    _cell = "lngru"

    def __init__(self, input_size, *args, **kwargs):
        super().__init__(input_size, *args, **kwargs)
        if input_size == 1 and self._config["ln_input"]:
            warnings.warn("LNGRU: input_size=1 with ln_input=True: LN(W x) of one feature is "
                          "LN(w) for every non-zero x (its magnitude is lost) and undefined at "
                          "x = 0; consider ln_input=False (docs/cells.md)")


class _RbnRNNBase(_RbnLSTMBase):
    """nn.RNN's interface over rbn's tanh RNNs (SPEC `rnn`, `bnrnn`; docs/cells.md): the
    constructor of nn.RNN (nonlinearity 'tanh' only, no forget bias), hx = h0 [D*L,N,H], forward
    -> (output, h_n), nn.RNN's parameter names (weight_ih_l0 [H,C], weight_hh_l0 [H,H],
    bias_ih_l0, bias_hh_l0 [H], summed into rbn's one bias rnn.k.bias as for the LSTMs)."""

    _gru = True  # as a GRU: hx = h0 alone, no cell state, no forget gate
    _mode = "RNN_TANH"

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None, *,
                 t_max=1, eps=1e-5, momentum=0.1, gamma_x=None, gamma_h=None,
                 learn_init_state=False, recurrent_init="orthogonal", init=None,
                 sync_stats=False, process_group=None, zoneout_h=0.0):
        if nonlinearity != "tanh":
            raise ValueError(f"{type(self).__name__}: nonlinearity={nonlinearity!r}: rbn's RNN "
                             "cells are tanh RNNs (nonlinearity='tanh')")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, t_max=t_max, eps=eps,
                         momentum=momentum, gamma_x=gamma_x, gamma_h=gamma_h,
                         learn_init_state=learn_init_state, recurrent_init=recurrent_init,
                         init=init, sync_stats=sync_stats, process_group=process_group,
                         zoneout_h=zoneout_h)
        self.nonlinearity = "tanh"

    @property
    def _gates(self):
        return 1

    @classmethod
    def from_rnn(cls, rnn, **kwargs):
        """A module of this class with the weights and biases of `rnn` (a tanh torch.nn.RNN or
        an rbn.torch RNN module); the normalization starts as the SPEC says."""
        ref = next(rnn.parameters())
        m = cls(rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.nonlinearity, rnn.bias,
                rnn.batch_first, rnn.dropout, rnn.bidirectional, dtype=ref.dtype, **kwargs)
        m._copy_torch_params(rnn)
        return m

    @classmethod
    def from_lstm(cls, lstm, **kwargs):
        raise TypeError(f"{cls.__name__}.from_lstm: an LSTM's weights do not fit a tanh RNN; use "
                        "from_rnn with an nn.RNN")

    @classmethod
    def from_gru(cls, gru, **kwargs):
        raise TypeError(f"{cls.__name__}.from_gru: a GRU's weights do not fit a tanh RNN; use "
                        "from_rnn with an nn.RNN")


class RNN(_RbnRNNBase):
    """The tanh RNN (SPEC `rnn`, Elman): torch.nn.RNN's arguments and results (tanh);
    initialized as nn.RNN by default (init='spec' for the SPEC's orthogonal init)."""
    _cell = "rnn"
    _default_init = "torch"


class BNRNN(_RbnRNNBase):
    """Batch-normalized tanh RNN (SPEC `bnrnn`, Cooijmans et al.'s gradient-flow figure): BN_t of
    W x and of W h (no beta, gains 0.1), per-step population statistics for t < t_max."""
    _cell = "bnrnn"


__all__ = ["LSTM", "BNLSTM", "BNxLSTM", "LNLSTM", "GRU", "BNGRU", "LNGRU", "RNN", "BNRNN",
           "convert_sync_batchnorm"]
