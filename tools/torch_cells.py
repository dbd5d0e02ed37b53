"""Reference PyTorch modules for rbn's cells, written to the formulas and the population-statistics rules of docs/cells.md.

These are the plain PyTorch versions a careful user would write: time-major x [T, N, C], gate
order i, f, g, o, weight_ih [4H, C], weight_hh [4H, H] and one bias [4H] (the GRU family: gate
order r, z, n, weight_ih [3H, C], weight_hh [3H, H], bias_ih and bias_hh [3H]); the input
projection is one matrix product over all T*N rows, the recurrence a Python loop over time steps. They exist to
produce golden fixtures (tools/make_fixtures.py) and the PyTorch benchmark baseline
(bench/torch_baseline.py); autograd supplies every gradient.

    stack = RecurrentStack("bnlstm", input_size=3, hidden_size=4, num_layers=2, t_max=5)
    y, (hT, cT) = stack(x, lengths)          # y [T,N,H] is 0 at padded positions
    y, hT = RecurrentStack("bngru", 3, 4, 2, t_max=5)(x, lengths)   # GRUs: nn.GRU's (y, h_n)
    stack.state_dict()                       # rnn.0.weight_ih, rnn.0.bn_x.running_mean, ...

Cells (SPEC 2), with x^ = W_x x_t and h^ = W_h h_{t-1}:
    lstm     pre = x^ + h^ + b                           c~ = c_t
    bnlstm   pre = BN_t(x^; gx) + BN_t(h^; gh) + b       c~ = BN_t(c_t; gc, bc)
    bnx      pre = BN_t(x^; gx) + h^ + b                 c~ = c_t
    bnx-seq  pre = BN_seq(x^; gx) + h^ + b               c~ = c_t
    lnlstm   pre = LN(x^; gx) + LN(h^; gh) + b           c~ = LN(c_t; gc, bc)
    c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g),  h_t = sigmoid(o) tanh(c~); raw c_t is carried.

GRU cells (SPEC 2b), x^, h^ [N, 3H] in blocks r, z, n:
    gru      r,z = sigmoid(x^ + b_i + h^ + b_h)        n = tanh(x^_n + b_in + r (h^_n + b_hn))
    bngru    x^, h^ replaced by BN_t(x^; gx), BN_t(h^; gh) over all 3H features (no beta)
    lngru    x^, h^ replaced by LN of their r,z block and of their n block, each with its own
             statistics (Ba et al. eqs. 26-28; four LNs), gains 1, no beta
    h_t = (1 - z) n + z h_{t-1}.
TorchGRU is `gru` computed by torch.nn.GRU itself (the source of the `gru` fixtures); TorchLSTM
is `lstm` computed by torch.nn.LSTM (the source of the bidirectional `lstm` fixtures).

Bidirectional (SPEC 2b, bidirectional=True): layer k has a reverse direction rnn.k.reverse.* with
its own weights, normalizations and statistics. It reads each row's own valid steps backwards, and
its per-step statistics are indexed by its own step count s = len_n - 1 - t, pooled over the rows
that have a step s. So it is the one-directional layer run on each row's reversed valid prefix,
scattered back: y [T,N,2H] = forward || reverse at the same position, states [2L,N,H] (2k forward,
2k+1 reverse, the reverse final state the one after reading x[0]).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CELLS = ("lstm", "bnlstm", "bnx", "bnx-seq", "lnlstm")
BN_CELLS = ("bnlstm", "bnx", "bnx-seq")
GRU_CELLS = ("gru", "bngru", "lngru")
ALL_CELLS = CELLS + GRU_CELLS


class TimeBatchNorm(nn.Module):
    """Batch normalization over the valid rows of a batch, with per-step population statistics.

    per_step=True is BN_t: statistics per time step, tables running_mean/var [t_max, F].
    per_step=False is BN_seq: one statistic over every valid (t, n), tables [F].
    gamma is shared across time; beta exists only where `bias` is set (the cell norm).
    """

    def __init__(self, features: int, t_max: int, eps: float, momentum: float, bias: bool,
                 per_step: bool = True, gamma: float = 0.1):
        super().__init__()
        if t_max < 1:
            raise ValueError("t_max must be >= 1")
        self.features, self.t_max, self.eps, self.momentum = features, t_max, eps, momentum
        self.per_step = per_step
        self.weight = nn.Parameter(torch.full((features,), float(gamma)))
        if bias:
            self.bias = nn.Parameter(torch.zeros(features))
        else:
            self.register_parameter("bias", None)
        shape = (t_max, features) if per_step else (features,)
        self.register_buffer("running_mean", torch.zeros(shape))
        self.register_buffer("running_var", torch.ones(shape))
        self.update_running = True  # training mode: feed the running average (SPEC 3a)
        self._pass = None           # statistics-pass accumulators (SPEC 3b), in double
        self.capture = None         # tests: a list receiving (z, valid, out) of each call

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)

    # ---- statistics bookkeeping ------------------------------------------------------------

    @torch.no_grad()
    def _record(self, row: int, mean: Tensor, var: Tensor, count: int) -> None:
        """One batch statistic for population row `row` (skipped past t_max, or if empty)."""
        if count == 0 or row >= self.t_max:
            return
        if self._pass is not None:
            s_mean, s_var, s_cnt = self._pass
            idx = row if self.per_step else ...
            s_mean[idx] += count * mean.double()
            s_var[idx] += count * var.double()
            s_cnt[idx if self.per_step else 0] += count
        elif self.training and self.update_running:
            m = self.momentum
            rm = self.running_mean[row] if self.per_step else self.running_mean
            rv = self.running_var[row] if self.per_step else self.running_var
            rm.mul_(1 - m).add_(m * mean.to(rm.dtype))
            rv.mul_(1 - m).add_(m * var.to(rv.dtype))

    def pass_begin(self) -> None:
        dev = self.running_mean.device
        rows = self.t_max if self.per_step else 1
        self._pass = (torch.zeros(self.running_mean.shape, dtype=torch.float64, device=dev),
                      torch.zeros(self.running_var.shape, dtype=torch.float64, device=dev),
                      torch.zeros(rows, dtype=torch.float64, device=dev))

    @torch.no_grad()
    def pass_finish(self) -> None:
        if self._pass is None:
            raise RuntimeError("pass_finish without pass_begin")
        s_mean, s_var, s_cnt = self._pass
        self._pass = None
        if self.per_step:
            hit = s_cnt > 0  # rows that no batch reached keep their previous value
            cnt = s_cnt[hit].unsqueeze(1)
            self.running_mean[hit] = (s_mean[hit] / cnt).to(self.running_mean.dtype)
            self.running_var[hit] = (s_var[hit] / cnt).to(self.running_var.dtype)
        elif s_cnt[0] > 0:
            self.running_mean.copy_(s_mean / s_cnt[0])
            self.running_var.copy_(s_var / s_cnt[0])

    # ---- normalization ---------------------------------------------------------------------

    def _affine(self, xhat: Tensor) -> Tensor:
        out = xhat * self.weight
        return out + self.bias if self.bias is not None else out

    def _batch_stats(self, z: Tensor, valid: Optional[Tensor], count, dim: int):
        """Mean and biased variance over `dim`, counting only valid rows (mask broadcast on F).

        count: the number of valid rows, an int, or a tensor [S] when dim = 1 (one per step)."""
        if valid is None:  # every row valid: the plain reduction
            var, mean = torch.var_mean(z, dim=dim, unbiased=False)
            return mean, var
        m = valid.unsqueeze(-1).to(z.dtype)
        if isinstance(count, Tensor):
            cnt = count.clamp(min=1).to(z.dtype).unsqueeze(-1)
        else:
            cnt = float(max(count, 1))  # an empty step's statistics are never used
        mean = (z * m).sum(dim) / cnt
        var = ((z - mean.unsqueeze(dim)).square() * m).sum(dim) / cnt
        return mean, var

    def step(self, z: Tensor, valid: Optional[Tensor], count: int, t: int) -> Tensor:
        """BN_t of one step: z [N, F], valid [N] bool (None: all), population row t."""
        if self.training or self._pass is not None:
            mean, var = self._batch_stats(z, valid, count, 0)
            self._record(t, mean.detach(), var.detach(), count)
        else:
            row = min(t, self.t_max - 1)  # steps past T_max reuse the last row (Cooijmans)
            mean, var = self.running_mean[row], self.running_var[row]
        out = self._affine((z - mean) * torch.rsqrt(var + self.eps))
        if self.capture is not None:
            self.capture.append((z.detach(), valid, out.detach()))
        return out

    def steps(self, z: Tensor, valid: Optional[Tensor], counts: Sequence[int], t0: int) -> Tensor:
        """BN_t of S steps at once (x^ does not depend on h): z [S, N, F], valid [S, N]."""
        S = z.shape[0]
        if self.training or self._pass is not None:
            cnt = None if valid is None else torch.tensor(list(counts), device=z.device)
            mean, var = self._batch_stats(z, valid, cnt, 1)  # [S, F]
            md, vd = mean.detach(), var.detach()
            for s in range(S):
                self._record(t0 + s, md[s], vd[s], counts[s])
        else:
            rows = torch.arange(t0, t0 + S, device=z.device).clamp(max=self.t_max - 1)
            mean, var = self.running_mean[rows], self.running_var[rows]
        out = self._affine((z - mean.unsqueeze(1)) * torch.rsqrt(var + self.eps).unsqueeze(1))
        if self.capture is not None:
            for s in range(S):
                self.capture.append((z[s].detach(), None if valid is None else valid[s],
                                     out[s].detach()))
        return out

    def sequence(self, z: Tensor, valid: Optional[Tensor], count: int) -> Tensor:
        """BN_seq: z [T, N, F], one statistic over all valid (t, n)."""
        T, N, Fd = z.shape
        if self.training or self._pass is not None:
            flat_valid = None if valid is None else valid.reshape(T * N)
            mean, var = self._batch_stats(z.reshape(T * N, Fd), flat_valid, count, 0)
            self._record(0, mean.detach(), var.detach(), count)
        else:
            mean, var = self.running_mean, self.running_var
        out = self._affine((z - mean) * torch.rsqrt(var + self.eps))
        if self.capture is not None:
            self.capture.append((z.detach(), valid, out.detach()))
        return out


class RowLayerNorm(nn.Module):
    """LN over the features of each row (Ba et al.): the same in training and inference."""

    def __init__(self, features: int, eps: float, bias: bool, gamma: float = 1.0):
        super().__init__()
        self.features, self.eps = features, eps
        self.weight = nn.Parameter(torch.full((features,), float(gamma)))
        if bias:
            self.bias = nn.Parameter(torch.zeros(features))
        else:
            self.register_parameter("bias", None)

    def forward(self, z: Tensor) -> Tensor:
        return F.layer_norm(z, (self.features,), self.weight, self.bias, self.eps)


class RecurrentLayer(nn.Module):
    """One layer of a stack; its parameters are rnn.k.* of SPEC section 5."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, t_max: int, eps: float,
                 momentum: float, ln_input: bool, learn_init_state: bool, gamma_x: float,
                 gamma_h: float, gamma_c: float, forget_bias: float, recurrent_init: str):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; expected one of {CELLS}")
        H, G = hidden_size, 4 * hidden_size
        self.cell, self.input_size, self.hidden_size = cell, input_size, hidden_size
        self.forget_bias, self.recurrent_init = forget_bias, recurrent_init
        self.weight_ih = nn.Parameter(torch.empty(G, input_size))
        self.weight_hh = nn.Parameter(torch.empty(G, H))
        self.bias = nn.Parameter(torch.empty(G))
        self.bn_x = self.bn_h = self.bn_c = None
        self.ln_x = self.ln_h = self.ln_c = None
        if cell in ("bnlstm", "bnx"):
            self.bn_x = TimeBatchNorm(G, t_max, eps, momentum, bias=False, gamma=gamma_x)
        elif cell == "bnx-seq":
            self.bn_x = TimeBatchNorm(G, t_max, eps, momentum, bias=False, per_step=False,
                                      gamma=gamma_x)
        if cell == "bnlstm":
            self.bn_h = TimeBatchNorm(G, t_max, eps, momentum, bias=False, gamma=gamma_h)
            self.bn_c = TimeBatchNorm(H, t_max, eps, momentum, bias=True, gamma=gamma_c)
        if cell == "lnlstm":
            if ln_input:
                self.ln_x = RowLayerNorm(G, eps, bias=False, gamma=gamma_x)
            self.ln_h = RowLayerNorm(G, eps, bias=False, gamma=gamma_h)
            self.ln_c = RowLayerNorm(H, eps, bias=True, gamma=gamma_c)
        if learn_init_state:
            self.h0 = nn.Parameter(torch.zeros(H))
            self.c0 = nn.Parameter(torch.zeros(H))
        else:
            self.h0 = self.c0 = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        H = self.hidden_size
        # orthogonal per gate block (Cooijmans); identity on the g block on request
        for gate in range(4):
            nn.init.orthogonal_(self.weight_ih[gate * H:(gate + 1) * H])
            if gate == 2 and self.recurrent_init == "identity":
                self.weight_hh[gate * H:(gate + 1) * H].copy_(torch.eye(H))
            else:
                nn.init.orthogonal_(self.weight_hh[gate * H:(gate + 1) * H])
        self.bias.zero_()
        self.bias[H:2 * H] = self.forget_bias

    def forward(self, x: Tensor, valid: Optional[Tensor], counts: List[int], h: Tensor, c: Tensor,
                t0: int) -> Tuple[Tensor, Tensor, Tensor]:
        T, N, C = x.shape
        G = 4 * self.hidden_size
        # input projection of every step in one product; its normalization does not depend on h
        ax = F.linear(x.reshape(T * N, C), self.weight_ih).view(T, N, G)
        if self.cell == "bnx-seq":
            ax = self.bn_x.sequence(ax, valid, sum(counts))
        elif self.bn_x is not None:
            ax = self.bn_x.steps(ax, valid, counts, t0)
        elif self.ln_x is not None:
            ax = self.ln_x(ax)
        ax = ax + self.bias
        outs = []
        for t, ax_t in enumerate(ax.unbind(0)):
            if counts[t] == 0:  # nothing valid: state carried, output 0, no statistics
                outs.append(torch.zeros_like(h))
                continue
            valid_t = None if counts[t] == N else valid[t]
            ah = F.linear(h, self.weight_hh)
            if self.bn_h is not None:
                ah = self.bn_h.step(ah, valid_t, counts[t], t0 + t)
            elif self.ln_h is not None:
                ah = self.ln_h(ah)
            i, f, g, o = (ax_t + ah).chunk(4, 1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            if self.bn_c is not None:
                c_out = self.bn_c.step(c_new, valid_t, counts[t], t0 + t)
            elif self.ln_c is not None:
                c_out = self.ln_c(c_new)
            else:
                c_out = c_new
            h_new = torch.sigmoid(o) * torch.tanh(c_out)
            if valid_t is None:
                h, c = h_new, c_new
                outs.append(h_new)
            else:  # rows past their end keep their state and output 0
                m = valid_t.unsqueeze(1)
                h = torch.where(m, h_new, h)
                c = torch.where(m, c_new, c)
                outs.append(h_new.masked_fill(~m, 0.0))
        return torch.stack(outs), h, c


class BlockLayerNorm(nn.Module):
    """LN of the r,z block (2H) and of the n block (H) of a GRU term [.., 3H], each with its own
    statistics (Ba et al. eqs. 26-28); one gain vector [3H] holds both blocks' gains, no beta."""

    def __init__(self, hidden_size: int, eps: float, gamma: float = 1.0):
        super().__init__()
        self.hidden_size, self.eps = hidden_size, eps
        self.weight = nn.Parameter(torch.full((3 * hidden_size,), float(gamma)))

    def forward(self, z: Tensor) -> Tensor:
        H2 = 2 * self.hidden_size
        rz = F.layer_norm(z[..., :H2], (H2,), self.weight[:H2], None, self.eps)
        n = F.layer_norm(z[..., H2:], (self.hidden_size,), self.weight[H2:], None, self.eps)
        return torch.cat([rz, n], -1)


class GRULayer(nn.Module):
    """One GRU layer (SPEC 2b); its parameters are rnn.k.weight_ih [3H,C], weight_hh [3H,H],
    bias_ih, bias_hh [3H], bn_x/bn_h (bngru) or ln_x/ln_h (lngru) .weight [3H], h0 [H]."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, t_max: int, eps: float,
                 momentum: float, ln_input: bool, learn_init_state: bool, gamma_x: float,
                 gamma_h: float, recurrent_init: str):
        super().__init__()
        if cell not in GRU_CELLS:
            raise ValueError(f"unknown GRU cell {cell!r}; expected one of {GRU_CELLS}")
        H, G = hidden_size, 3 * hidden_size
        self.cell, self.input_size, self.hidden_size = cell, input_size, hidden_size
        self.recurrent_init = recurrent_init
        self.weight_ih = nn.Parameter(torch.empty(G, input_size))
        self.weight_hh = nn.Parameter(torch.empty(G, H))
        self.bias_ih = nn.Parameter(torch.empty(G))
        self.bias_hh = nn.Parameter(torch.empty(G))
        self.bn_x = self.bn_h = self.ln_x = self.ln_h = None
        if cell == "bngru":
            self.bn_x = TimeBatchNorm(G, t_max, eps, momentum, bias=False, gamma=gamma_x)
            self.bn_h = TimeBatchNorm(G, t_max, eps, momentum, bias=False, gamma=gamma_h)
        if cell == "lngru":
            if ln_input:
                self.ln_x = BlockLayerNorm(H, eps, gamma=gamma_x)
            self.ln_h = BlockLayerNorm(H, eps, gamma=gamma_h)
        self.h0 = nn.Parameter(torch.zeros(H)) if learn_init_state else None
        self.c0 = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        H = self.hidden_size
        # orthogonal per gate block; identity on the n block on request; no forget bias
        for gate in range(3):
            nn.init.orthogonal_(self.weight_ih[gate * H:(gate + 1) * H])
            if gate == 2 and self.recurrent_init == "identity":
                self.weight_hh[gate * H:(gate + 1) * H].copy_(torch.eye(H))
            else:
                nn.init.orthogonal_(self.weight_hh[gate * H:(gate + 1) * H])
        self.bias_ih.zero_()
        self.bias_hh.zero_()

    def forward(self, x: Tensor, valid: Optional[Tensor], counts: List[int], h: Tensor,
                t0: int) -> Tuple[Tensor, Tensor]:
        T, N, C = x.shape
        G = 3 * self.hidden_size
        ax = F.linear(x.reshape(T * N, C), self.weight_ih).view(T, N, G)
        if self.bn_x is not None:
            ax = self.bn_x.steps(ax, valid, counts, t0)
        elif self.ln_x is not None:
            ax = self.ln_x(ax)
        ax = ax + self.bias_ih
        outs = []
        for t, ax_t in enumerate(ax.unbind(0)):
            if counts[t] == 0:  # nothing valid: state carried, output 0, no statistics
                outs.append(torch.zeros_like(h))
                continue
            valid_t = None if counts[t] == N else valid[t]
            ah = F.linear(h, self.weight_hh)
            if self.bn_h is not None:
                ah = self.bn_h.step(ah, valid_t, counts[t], t0 + t)
            elif self.ln_h is not None:
                ah = self.ln_h(ah)
            ah = ah + self.bias_hh  # b_hn sits inside the reset product
            xr, xz, xn = ax_t.chunk(3, 1)
            hr, hz, hn = ah.chunk(3, 1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h_new = (1 - z) * n + z * h
            if valid_t is None:
                h = h_new
                outs.append(h_new)
            else:  # rows past their end keep their state and output 0
                m = valid_t.unsqueeze(1)
                h = torch.where(m, h_new, h)
                outs.append(h_new.masked_fill(~m, 0.0))
        return torch.stack(outs), h


def _spec_name(torch_name: str) -> str:
    """nn.LSTM / nn.GRU name -> SPEC section 5 name: weight_ih_l0 -> rnn.0.weight_ih,
    bias_hh_l1_reverse -> rnn.1.reverse.bias_hh."""
    what, rest = torch_name.rsplit("_l", 1)
    k, _, rev = rest.partition("_")
    return f"rnn.{k}.{'reverse.' if rev else ''}{what}"


def _run_packed(module: nn.Module, x: Tensor, lengths, hx, D: int):
    """module (nn.LSTM or nn.GRU) on x [T,N,C] with lengths [N] (None: all T) through a
    PackedSequence; rows of length 0 (which a PackedSequence cannot hold) give y = 0 and the
    given state. hx: a tensor [D*L,N,H] or a tuple of two. -> y [T,N,D*H], state as hx."""
    T = x.shape[0]
    if lengths is None:
        return module(x, hx)
    lens = torch.as_tensor(lengths).reshape(-1).to(torch.int64)
    rows = torch.nonzero(lens > 0).reshape(-1)
    pair = isinstance(hx, tuple)
    y = x.new_zeros(T, x.shape[1], D * module.hidden_size)
    out = tuple(h.clone() for h in hx) if pair else hx.clone()
    if len(rows) == 0:
        return y, out
    sub = tuple(h[:, rows].contiguous() for h in hx) if pair else hx[:, rows].contiguous()
    packed = nn.utils.rnn.pack_padded_sequence(x[:, rows], lens[rows], enforce_sorted=False)
    yp, hp = module(packed, sub)
    yp, _ = nn.utils.rnn.pad_packed_sequence(yp, total_length=T)
    y = y.index_copy(1, rows, yp)
    if pair:
        return y, tuple(o.index_copy(1, rows, h) for o, h in zip(out, hp))
    return y, out.index_copy(1, rows, hp)


class TorchGRU(nn.Module):
    """The `gru` cell computed by torch.nn.GRU itself (PackedSequence for uneven lengths).

    forward(x [T,N,C], lengths [N] (None: all T), h0 [D*L,N,H] or None) -> y [T,N,D*H] (0 at
    padded positions), hT [D*L,N,H] (D = 2 when bidirectional); rows of length 0 (which a
    PackedSequence cannot hold) give y = 0 and hT = h0. spec_parameters() names nn.GRU's tensors
    as SPEC section 5 does (weight_ih_l0 -> rnn.0.weight_ih, bias_ih_l0_reverse ->
    rnn.0.reverse.bias_ih, ...)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bidirectional = bidirectional
        self.gru = nn.GRU(input_size, hidden_size, num_layers, bidirectional=bidirectional)

    def spec_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        return [(_spec_name(n), p) for n, p in self.gru.named_parameters()]

    def forward(self, x: Tensor, lengths=None, h0: Optional[Tensor] = None):
        D = 2 if self.bidirectional else 1
        if h0 is None:
            h0 = x.new_zeros(D * self.num_layers, x.shape[1], self.hidden_size)
        return _run_packed(self.gru, x, lengths, h0, D)


class TorchLSTM(nn.Module):
    """The `lstm` cell computed by torch.nn.LSTM itself, as TorchGRU (the bidirectional `lstm`
    fixtures). rbn's one bias rnn.k.bias is nn.LSTM's bias_ih_lk; bias_hh_lk is held at 0 (not
    trained), so the two agree parameter for parameter and gradient for gradient."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bidirectional = bidirectional
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, bidirectional=bidirectional)
        with torch.no_grad():
            for n, p in self.lstm.named_parameters():
                if n.startswith("bias_hh"):
                    p.zero_()
                    p.requires_grad_(False)

    def spec_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        out = []
        for n, p in self.lstm.named_parameters():
            if n.startswith("bias_hh"):
                continue
            out.append((_spec_name(n.replace("bias_ih", "bias")), p))
        return out

    def forward(self, x: Tensor, lengths=None, h0: Optional[Tensor] = None,
                c0: Optional[Tensor] = None):
        D = 2 if self.bidirectional else 1
        zeros = x.new_zeros(D * self.num_layers, x.shape[1], self.hidden_size)
        hx = (zeros if h0 is None else h0, zeros if c0 is None else c0)
        return _run_packed(self.lstm, x, lengths, hx, D)


def reverse_index(lengths: Sequence[int], T: int, device=None) -> Tensor:
    """idx [T, N]: idx[t, n] = len_n - 1 - t for t < len_n, else t. Gathering along time with it
    reverses each row's valid prefix and leaves the padding where it is; it is its own inverse."""
    t = torch.arange(T, device=device).unsqueeze(1)
    ln = torch.tensor(list(lengths), device=device).unsqueeze(0)
    return torch.where(t < ln, ln - 1 - t, t)


def reverse_rows(z: Tensor, idx: Tensor) -> Tensor:
    """z [T, N, F] with each row's valid prefix reversed (idx from reverse_index)."""
    return z.gather(0, idx.unsqueeze(-1).expand(-1, -1, z.shape[2]))


class RecurrentStack(nn.Module):
    """L stacked layers of one cell kind; layer k > 0 reads layer k-1's h.

    forward(x [T,N,C], lengths [N] (None: all T), h0/c0 [D*L,N,H] (None: learned or zero), t0)
    -> y [T,N,D*H] (top layer's h, 0 at padded positions), (hT, cT) [D*L,N,H] (state after each
    row's last valid step); GRU cells take no c0 and return y, hT (nn.GRU's contract). Training
    mode uses batch statistics and updates the running averages; eval mode uses the population
    statistics, row min(t0 + t, t_max - 1). D = 2 with bidirectional=True (module docstring:
    layer k's reverse direction is rnn[k].reverse, named rnn.k.reverse.*; its statistics row is
    its own step count s; t0 must be 0).
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 t_max: int = 1, eps: float = 1e-5, momentum: float = 0.1, ln_input: bool = True,
                 learn_init_state: bool = False, gamma_x: Optional[float] = None,
                 gamma_h: Optional[float] = None, gamma_c: Optional[float] = None,
                 forget_bias: Optional[float] = None, recurrent_init: str = "orthogonal",
                 bidirectional: bool = False):
        super().__init__()
        if cell not in ALL_CELLS:
            raise ValueError(f"unknown cell {cell!r}; expected one of {ALL_CELLS}")
        if recurrent_init not in ("orthogonal", "identity"):
            raise ValueError("recurrent_init must be 'orthogonal' or 'identity'")
        if cell in GRU_CELLS and gamma_c is not None:
            raise ValueError(f"{cell} has no cell state: gamma_c does not apply")
        if cell in GRU_CELLS and forget_bias is not None:
            raise ValueError(f"{cell} has no forget gate: forget_bias does not apply")
        forget_bias = 1.0 if forget_bias is None else forget_bias
        default_gain = 1.0 if cell in ("lnlstm", "lngru") else 0.1  # Ba et al. / Cooijmans et al.
        gx = default_gain if gamma_x is None else gamma_x
        gh = default_gain if gamma_h is None else gamma_h
        gc = default_gain if gamma_c is None else gamma_c
        self.cell, self.input_size, self.hidden_size = cell, input_size, hidden_size
        self.num_layers, self.t_max, self.eps, self.momentum = num_layers, t_max, eps, momentum
        self.ln_input = ln_input
        self.is_gru = cell in GRU_CELLS
        self.bidirectional = bool(bidirectional)
        D = 2 if self.bidirectional else 1

        def layer(C):
            if self.is_gru:
                return GRULayer(cell, C, hidden_size, t_max, eps, momentum, ln_input,
                                learn_init_state, gx, gh, recurrent_init)
            return RecurrentLayer(cell, C, hidden_size, t_max, eps, momentum, ln_input,
                                  learn_init_state, gx, gh, gc, forget_bias, recurrent_init)

        self.rnn = nn.ModuleList(layer(input_size if k == 0 else D * hidden_size)
                                 for k in range(num_layers))
        if self.bidirectional:  # a submodule of layer k: its names are rnn.k.reverse.*
            for k, fwd in enumerate(self.rnn):
                fwd.reverse = layer(input_size if k == 0 else D * hidden_size)

    def batch_norms(self) -> List[TimeBatchNorm]:
        return [m for m in self.modules() if isinstance(m, TimeBatchNorm)]

    def set_update_running(self, on: bool) -> None:
        for bn in self.batch_norms():
            bn.update_running = on

    def reset_running_stats(self) -> None:
        for bn in self.batch_norms():
            bn.reset_running_stats()

    def forward(self, x: Tensor, lengths=None, h0: Optional[Tensor] = None,
                c0: Optional[Tensor] = None, t0: int = 0, h0_noise: float = 0.0):
        T, N, _ = x.shape
        if lengths is None:
            lens = [T] * N
        else:
            lens = [int(v) for v in torch.as_tensor(lengths).reshape(-1).tolist()]
            if len(lens) != N or any(v < 0 or v > T for v in lens):
                raise ValueError(f"lengths must be [N]={N} values in [0, {T}]")
        if all(v == T for v in lens):
            valid, counts = None, [N] * T
        else:
            lt = torch.tensor(lens, device=x.device)
            valid = torch.arange(T, device=x.device).unsqueeze(1) < lt.unsqueeze(0)  # [T, N]
            counts = valid.sum(1).tolist()
        if self.is_gru and c0 is not None:
            raise ValueError(f"{self.cell} has no cell state: c0 must be None")
        if self.bidirectional and t0 != 0:
            raise ValueError("a bidirectional stack reads whole sequences: t0 must be 0")
        idx = reverse_index(lens, T, x.device) if self.bidirectional else None
        hs, cs, inp = [], [], x
        for k, fwd in enumerate(self.rnn):
            dirs = [(fwd, False), (fwd.reverse, True)] if self.bidirectional else [(fwd, False)]
            ys = []
            for layer, rev in dirs:
                j = len(hs)  # index of this direction's state: 2k (+1 reverse), or k
                h, c = self._initial(layer, h0, c0, j, N, x, h0_noise)
                xin = reverse_rows(inp, idx) if rev else inp
                if self.is_gru:
                    y, h = layer(xin, valid, counts, h, t0)
                else:
                    y, h, c = layer(xin, valid, counts, h, c, t0)
                ys.append(reverse_rows(y, idx) if rev else y)
                hs.append(h)
                cs.append(c)
            inp = torch.cat(ys, 2) if len(ys) > 1 else ys[0]
        if self.is_gru:
            return inp, torch.stack(hs)
        return inp, (torch.stack(hs), torch.stack(cs))

    def _initial(self, layer, h0, c0, j, N, x, h0_noise):
        """The initial (h, c) [N, H] of state index j: given, learned, or zero; plus the h0 noise
        in training (Cooijmans et al. on sequential MNIST). GRUs: c is None."""
        H = self.hidden_size
        if h0 is not None:
            h = h0[j]
        elif layer.h0 is not None:
            h = layer.h0.expand(N, H)
        else:
            h = x.new_zeros(N, H)
        c = None
        if not self.is_gru:
            if c0 is not None:
                c = c0[j]
            elif layer.c0 is not None:
                c = layer.c0.expand(N, H)
            else:
                c = x.new_zeros(N, H)
        if self.training and h0_noise > 0:
            h = h + h0_noise * torch.randn_like(h)
        return h, c

    # ---- population statistics, the authors' way (SPEC 3b) ----------------------------------

    def popstats_begin(self) -> None:
        for bn in self.batch_norms():
            bn.pass_begin()

    @torch.no_grad()
    def popstats_feed(self, x: Tensor, lengths=None, h0: Optional[Tensor] = None,
                      c0: Optional[Tensor] = None) -> None:
        """A training-mode forward whose statistics go to the pass, not the running average."""
        was_training = self.training
        self.train()
        try:
            self.forward(x, lengths, h0, c0)
        finally:
            self.train(was_training)

    def popstats_finish(self) -> None:
        for bn in self.batch_norms():
            bn.pass_finish()
