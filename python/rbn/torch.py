"""rbn kernels as torch.nn.Modules: a fast BN-LSTM / LN-LSTM on CPU inside a PyTorch model.

    from rbn.torch import BNLSTM
    rnn = BNLSTM(input_size=1, hidden_size=100, t_max=784)
    y, (hT, cT) = rnn(x, lengths)          # x [T, N, C], time-major

Parameters and buffers carry the rbn / SPEC names (rnn.0.weight_ih, rnn.0.bn_x.weight,
rnn.0.bn_x.running_mean, ...) with '.' replaced by '_' inside the module (torch forbids dots);
`state_dict_rbn()` gives them under their SPEC names. Training mode uses batch statistics and
updates the running averages; eval mode uses the population statistics.
"""
import numpy as np
import torch

from . import Stack

_CELLS = ("lstm", "bnlstm", "bnx", "bnx-seq", "lnlstm")


def _attr(name):
    return name.replace(".", "_")


class _StackFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, module, x, lengths, h0, c0, *params):
        st = module._stack
        module._sync_params_in()
        train = module.training
        need_bw = torch.is_grad_enabled() or any(p.requires_grad for p in params) or x.requires_grad
        xs = x.detach().cpu().numpy()
        ln = None if lengths is None else lengths.detach().cpu().numpy().astype(np.int32)
        h0n = None if h0 is None else h0.detach().cpu().numpy()
        c0n = None if c0 is None else c0.detach().cpu().numpy()
        y, hT, cT = st.forward(xs, ln, h0n, c0n, train=train, t0=module._t0,
                               update_running=train, need_backward=True)
        if train:
            module._sync_buffers_out()
        module._forward_id += 1
        ctx.module = module
        ctx.forward_id = module._forward_id
        ctx.saved = (xs, ln, h0n, c0n, train)
        ctx.has_h0 = h0 is not None
        ctx.has_c0 = c0 is not None
        del need_bw
        dt = x.dtype
        return torch.from_numpy(y).to(dt), torch.from_numpy(hT).to(dt), torch.from_numpy(cT).to(dt)

    @staticmethod
    def backward(ctx, dy, dhT, dcT):
        module = ctx.module
        st = module._stack
        xs, ln, h0n, c0n, train = ctx.saved
        if module._forward_id != ctx.forward_id:
            # Another forward ran since: recompute this one (no running-statistics update).
            module._sync_params_in()
            st.forward(xs, ln, h0n, c0n, train=train, t0=module._t0, update_running=False,
                       need_backward=True)
        st.zero_grad()
        np_or_none = (lambda t: None if t is None else t.detach().cpu().contiguous().numpy())
        dx, dh0, dc0 = st.backward(np_or_none(dy), np_or_none(dhT), np_or_none(dcT))
        grads = st.grads()
        dt = dy.dtype if dy is not None else dhT.dtype
        pgrads = [torch.from_numpy(grads[n]).to(dt) for n in module._param_names]
        return (None, torch.from_numpy(dx).to(dt), None,
                torch.from_numpy(dh0).to(dt) if ctx.has_h0 else None,
                torch.from_numpy(dc0).to(dt) if ctx.has_c0 else None, *pgrads)


class RbnRNN(torch.nn.Module):
    """A stack of rbn recurrent layers as a torch Module (dtype float32 or float64, CPU)."""

    def __init__(self, cell, input_size, hidden_size, num_layers=1, t_max=1, dtype=torch.float32,
                 **kwargs):
        super().__init__()
        if cell not in _CELLS:
            raise ValueError(f"cell: one of {_CELLS}")
        self.cell = cell
        npdt = "float64" if dtype == torch.float64 else "float32"
        self._stack = Stack(cell, input_size, hidden_size, num_layers, t_max, dtype=npdt, **kwargs)
        self._param_names = list(self._stack.param_names)
        self._buffer_names = list(self._stack.buffer_names)
        for name, v in self._stack.params().items():
            self.register_parameter(_attr(name), torch.nn.Parameter(torch.from_numpy(v.copy())))
        for name, v in self._stack.buffers().items():
            self.register_buffer(_attr(name), torch.from_numpy(v.copy()))
        self._t0 = 0
        self._forward_id = 0

    def _sync_params_in(self):
        for name in self._param_names:
            self._stack.set(name, getattr(self, _attr(name)).detach().cpu().numpy())
        for name in self._buffer_names:
            self._stack.set(name, getattr(self, _attr(name)).detach().cpu().numpy())

    def _sync_buffers_out(self):
        for name, v in self._stack.buffers().items():
            getattr(self, _attr(name)).copy_(torch.from_numpy(v))

    def forward(self, x, lengths=None, state=None, t0=0):
        """x [T,N,C]; lengths [N] (optional); state = (h0, c0) each [L,N,H] (optional); t0: global
        time of x[0] (population-statistics row; the step API). Returns y, (hT, cT)."""
        self._t0 = int(t0)
        h0, c0 = (None, None) if state is None else state
        params = [getattr(self, _attr(n)) for n in self._param_names]
        y, hT, cT = _StackFunction.apply(self, x, lengths, h0, c0, *params)
        return y, (hT, cT)

    def state_dict_rbn(self):
        """Parameters and buffers under their rbn / SPEC names."""
        out = {n: getattr(self, _attr(n)).detach().clone() for n in self._param_names}
        out.update({n: getattr(self, _attr(n)).detach().clone() for n in self._buffer_names})
        return out

    def load_state_dict_rbn(self, tensors):
        with torch.no_grad():
            for n in self._param_names + self._buffer_names:
                if n in tensors:
                    getattr(self, _attr(n)).copy_(torch.as_tensor(tensors[n]))

    def popstats(self, batches):
        """The authors' statistics pass over an iterable of (x, lengths) batches: the population
        statistics become the valid-row-weighted average of the per-step batch statistics."""
        self._sync_params_in()
        self._stack.popstats_begin()
        for x, lengths in batches:
            ln = None if lengths is None else lengths.cpu().numpy().astype(np.int32)
            self._stack.popstats_feed(x.detach().cpu().numpy(), ln)
        self._stack.popstats_finish()
        self._sync_buffers_out()


def LSTM(input_size, hidden_size, num_layers=1, **kw):
    return RbnRNN("lstm", input_size, hidden_size, num_layers, **kw)


def BNLSTM(input_size, hidden_size, num_layers=1, t_max=1, **kw):
    return RbnRNN("bnlstm", input_size, hidden_size, num_layers, t_max, **kw)


def BNxLSTM(input_size, hidden_size, num_layers=1, t_max=1, sequence_wise=False, **kw):
    return RbnRNN("bnx-seq" if sequence_wise else "bnx", input_size, hidden_size, num_layers, t_max, **kw)


def LNLSTM(input_size, hidden_size, num_layers=1, **kw):
    return RbnRNN("lnlstm", input_size, hidden_size, num_layers, **kw)
