"""Tests of tools/torch_cells.py, the PyTorch reference modules behind the golden fixtures.

Run with Debian's interpreter: /usr/bin/python3 -m pytest tests/python/test_torch_cells.py
"""

import copy
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
from torch_cells import (BN_CELLS, CELLS, GRU_CELLS, RecurrentStack, TimeBatchNorm,  # noqa: E402
                         TorchGRU)



@pytest.fixture(autouse=True)
def _double_precision():
    """Every test here runs in double; restore the default for other test files."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def make_stack(cell, C=3, H=4, L=2, t_max=5, seed=0, ln_input=True, **kw):
    """A stack with random parameters (gains and betas away from their init, so they matter)."""
    torch.manual_seed(seed)
    m = RecurrentStack(cell, C, H, L, t_max=t_max, ln_input=ln_input, **kw).double()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("weight") and ("bn_" in name or "ln_" in name):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias") and ("bn_" in name or "ln_" in name):
                p.normal_(0.0, 0.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.5)
            else:
                p.normal_(0.0, 0.6)
    return m


def random_pop(m, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g))
            else:
                b.copy_(torch.rand(b.shape, generator=g) + 0.2)


# ---- an independent, deliberately naive reference: gathers the valid rows by index --------------

def naive_bn(m, train, stats):
    """BN of the rows `idx` of z at statistics row `row`: batch statistics gathered by index and
    recorded in `stats` (train), or the population row clamped at T_max (inference)."""
    P = dict(m.named_parameters())
    B = dict(m.named_buffers())

    def bn(name, z, idx, row):
        if train:
            zv = z[idx]
            mu = zv.mean(0)
            var = ((zv - mu) ** 2).mean(0)
            stats.setdefault(name, []).append((row, mu, var, len(idx)))
        else:
            r = min(row, m.t_max - 1)
            mu, var = B[name + ".running_mean"][r], B[name + ".running_var"][r]
        out = (z - mu) / torch.sqrt(var + m.eps) * P[name + ".weight"]
        if name + ".bias" in P:
            out = out + P[name + ".bias"]
        return out
    return bn


def naive_forward(m, x, lengths, h0, c0, train, t0=0):
    """Returns y, hT, cT and the batch statistics {bn name: [(row, mean, var, count)]}."""
    P = dict(m.named_parameters())
    B = dict(m.named_buffers())
    T, N, _ = x.shape
    L, H, eps, cell = m.num_layers, m.hidden_size, m.eps, m.cell
    stats = {}
    bn = naive_bn(m, train, stats)

    def ln(name, z):
        mu = z.mean(-1, keepdim=True)
        var = ((z - mu) ** 2).mean(-1, keepdim=True)
        out = (z - mu) / torch.sqrt(var + eps) * P[name + ".weight"]
        if name + ".bias" in P:
            out = out + P[name + ".bias"]
        return out

    inp = x
    hs, cs = [], []
    for k in range(L):
        p = f"rnn.{k}."
        W, R, b = P[p + "weight_ih"], P[p + "weight_hh"], P[p + "bias"]
        h = h0[k].clone() if h0 is not None else torch.zeros(N, H)
        c = c0[k].clone() if c0 is not None else torch.zeros(N, H)
        wx = torch.einsum("tnc,gc->tng", inp, W)
        if cell == "bnx-seq":
            pairs = [(t, n) for t in range(T) for n in range(N) if t < lengths[n]]
            allz = torch.stack([wx[t, n] for t, n in pairs])
            if train:
                mu = allz.mean(0)
                var = ((allz - mu) ** 2).mean(0)
                stats.setdefault(p + "bn_x", []).append((0, mu, var, len(pairs)))
            else:
                mu, var = B[p + "bn_x.running_mean"], B[p + "bn_x.running_var"]
            wx = (wx - mu) / torch.sqrt(var + eps) * P[p + "bn_x.weight"]
        y = torch.zeros(T, N, H)
        for t in range(T):
            idx = [n for n in range(N) if t < lengths[n]]
            if not idx:
                continue
            ax = wx[t]
            if cell in ("bnlstm", "bnx"):
                ax = bn(p + "bn_x", ax, idx, t0 + t)
            if cell == "lnlstm" and m.ln_input:
                ax = ln(p + "ln_x", ax)
            ah = h @ R.T
            if cell == "bnlstm":
                ah = bn(p + "bn_h", ah, idx, t0 + t)
            if cell == "lnlstm":
                ah = ln(p + "ln_h", ah)
            pre = ax + ah + b
            i, f, g, o = (torch.sigmoid(pre[:, :H]), torch.sigmoid(pre[:, H:2 * H]),
                          torch.tanh(pre[:, 2 * H:3 * H]), torch.sigmoid(pre[:, 3 * H:]))
            cn = f * c + i * g
            ch = cn
            if cell == "bnlstm":
                ch = bn(p + "bn_c", cn, idx, t0 + t)
            if cell == "lnlstm":
                ch = ln(p + "ln_c", cn)
            hn = o * torch.tanh(ch)
            h = h.clone()
            c = c.clone()
            h[idx], c[idx], y[t, idx] = hn[idx], cn[idx], hn[idx]
        hs.append(h)
        cs.append(c)
        inp = y
    return inp, torch.stack(hs), torch.stack(cs), stats


def rand_case(T=5, N=4, C=3, H=4, L=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T, N, C, generator=g), torch.randn(L, N, H, generator=g),
            torch.randn(L, N, H, generator=g))


LENGTHS = [5, 3, 5, 1]
ALL_VARIANTS = [(c, True) for c in CELLS] + [("lnlstm", False)]


# ---- lstm equals torch.nn.LSTM ------------------------------------------------------------------

def copy_to_nn_lstm(m):
    ref = torch.nn.LSTM(m.input_size, m.hidden_size, m.num_layers).double()
    with torch.no_grad():
        for k, layer in enumerate(m.rnn):
            getattr(ref, f"weight_ih_l{k}").copy_(layer.weight_ih)
            getattr(ref, f"weight_hh_l{k}").copy_(layer.weight_hh)
            # nn.LSTM has two biases; only their sum matters
            getattr(ref, f"bias_ih_l{k}").copy_(0.3 * layer.bias)
            getattr(ref, f"bias_hh_l{k}").copy_(0.7 * layer.bias)
    return ref


def test_lstm_equals_nn_lstm_full_lengths():
    m = make_stack("lstm")
    ref = copy_to_nn_lstm(m)
    x, h0, c0 = rand_case()
    y, (hT, cT) = m(x, None, h0, c0)
    ry, (rh, rc) = ref(x, (h0, c0))
    assert torch.allclose(y, ry, atol=1e-6, rtol=0)
    assert torch.allclose(hT, rh, atol=1e-6, rtol=0)
    assert torch.allclose(cT, rc, atol=1e-6, rtol=0)
    assert (y - ry).abs().max() < 1e-12  # in practice it agrees to rounding


def test_lstm_equals_nn_lstm_packed_uneven():
    m = make_stack("lstm")
    ref = copy_to_nn_lstm(m)
    x, h0, c0 = rand_case()
    y, (hT, cT) = m(x, LENGTHS, h0, c0)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(LENGTHS),
                                                     enforce_sorted=False)
    ry, (rh, rc) = ref(packed, (h0, c0))
    ry, _ = torch.nn.utils.rnn.pad_packed_sequence(ry, total_length=x.shape[0])
    assert torch.allclose(y, ry, atol=1e-6, rtol=0)
    assert torch.allclose(hT, rh, atol=1e-6, rtol=0)
    assert torch.allclose(cT, rc, atol=1e-6, rtol=0)


# ---- against the naive reference, both modes ----------------------------------------------------

@pytest.mark.parametrize("cell,ln_input", ALL_VARIANTS)
@pytest.mark.parametrize("train", [True, False])
def test_matches_naive_reference(cell, ln_input, train):
    m = make_stack(cell, ln_input=ln_input, t_max=4)  # t_max < T: eval clamps, train skips rows
    random_pop(m)
    before = {k: v.clone() for k, v in m.named_buffers()}
    m.train(train)
    x, h0, c0 = rand_case(T=6)
    lengths = [6, 3, 5, 1]
    y, (hT, cT) = m(x, lengths, h0, c0)
    ny, nh, nc, stats = naive_forward(m, x, lengths, h0, c0, train)
    assert torch.allclose(y, ny, atol=1e-12, rtol=0)
    assert torch.allclose(hT, nh, atol=1e-12, rtol=0)
    assert torch.allclose(cT, nc, atol=1e-12, rtol=0)
    assert (y[3:, 1] == 0).all() and (y[1:, 3] == 0).all()
    # running averages: pop <- (1-m) pop + m batch for rows < t_max with valid rows, else unchanged
    buffers = dict(m.named_buffers())
    for name, before_b in before.items():
        bn_name, kind = name.rsplit(".", 1)
        want = before_b.clone()
        if train:
            for row, mu, var, cnt in stats[bn_name]:
                if row >= m.t_max:
                    continue
                batch = mu if kind == "running_mean" else var
                tgt = want[row] if want.dim() == 2 else want
                tgt.mul_(1 - m.momentum).add_(m.momentum * batch)
        assert torch.allclose(buffers[name], want, atol=1e-12, rtol=0), name


# ---- BN properties ------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", BN_CELLS)
def test_bn_output_statistics(cell):
    """In training, each BN output has per-feature mean beta and variance g^2 s^2/(s^2+eps)."""
    m = make_stack(cell)
    x, h0, c0 = rand_case()
    bns = {name: mod for name, mod in m.named_modules() if isinstance(mod, TimeBatchNorm)}
    for bn in bns.values():
        bn.capture = []
    m(x, LENGTHS, h0, c0)
    checked = 0
    for name, bn in bns.items():
        assert bn.capture, name
        for z, valid, out in bn.capture:
            if valid is None:
                valid = torch.ones(z.shape[:-1], dtype=torch.bool)
            zv, ov = z[valid], out[valid]  # [M, F] over the valid rows only
            s2 = zv.var(0, unbiased=False)
            beta = bn.bias.detach() if bn.bias is not None else torch.zeros(z.shape[-1])
            gamma = bn.weight.detach()
            assert torch.allclose(ov.mean(0), beta, atol=1e-10), name
            want = gamma ** 2 * s2 / (s2 + bn.eps)
            assert torch.allclose(ov.var(0, unbiased=False), want, atol=1e-10), name
            checked += 1
    assert checked >= (1 if cell == "bnx-seq" else 5)


@pytest.mark.parametrize("cell", BN_CELLS)
def test_eval_uses_last_row_past_t_max(cell):
    m = make_stack(cell, t_max=3)
    random_pop(m)
    m.eval()
    x, h0, c0 = rand_case(T=7)
    y, (hT, cT) = m(x, [7, 4, 6, 2], h0, c0)
    # the same model with rows 3..6 spelled out as copies of row 2
    big = RecurrentStack(cell, 3, 4, 2, t_max=7).double().eval()
    sd = m.state_dict()
    for name, v in list(sd.items()):
        if "running_" in name and v.dim() == 2:
            sd[name] = torch.cat([v, v[-1:].expand(4, -1)])
    big.load_state_dict(sd)
    by, (bh, bc) = big(x, [7, 4, 6, 2], h0, c0)
    assert torch.equal(y, by) and torch.equal(hT, bh) and torch.equal(cT, bc)


# ---- padding ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell,ln_input", ALL_VARIANTS)
@pytest.mark.parametrize("train", [True, False])
def test_padding_invariance(cell, ln_input, train):
    """Extra padded steps and all-padding rows, filled with junk, change nothing valid."""
    m1 = make_stack(cell, ln_input=ln_input)
    random_pop(m1)
    m2 = copy.deepcopy(m1)
    m1.train(train)
    m2.train(train)
    x, h0, c0 = rand_case()
    g = torch.Generator().manual_seed(9)
    xp = 50 * torch.randn(8, 6, 3, generator=g)  # junk everywhere, then the real data
    xp[:5, :4] = x
    for n, ln_ in enumerate(LENGTHS):
        xp[ln_:, n] = 1e3 * torch.randn(8 - ln_, 3, generator=g)
    h0p = torch.cat([h0, torch.randn(2, 2, 4, generator=g)], 1)
    c0p = torch.cat([c0, torch.randn(2, 2, 4, generator=g)], 1)
    y1, (h1, c1) = m1(x, LENGTHS, h0, c0)
    y2, (h2, c2) = m2(xp, LENGTHS + [0, 0], h0p, c0p)
    assert torch.allclose(y2[:5, :4], y1, atol=1e-12, rtol=0)
    assert (y2[5:] == 0).all() and (y2[:, 4:] == 0).all()
    assert torch.allclose(h2[:, :4], h1, atol=1e-12, rtol=0)
    assert torch.allclose(c2[:, :4], c1, atol=1e-12, rtol=0)
    assert torch.equal(h2[:, 4:], h0p[:, 4:]) and torch.equal(c2[:, 4:], c0p[:, 4:])
    b1, b2 = dict(m1.named_buffers()), dict(m2.named_buffers())
    for k in b1:
        assert torch.allclose(b1[k], b2[k], atol=1e-12, rtol=0), k
    # gradients of a loss on the valid part
    wy = torch.randn(8, 6, 4, generator=g)
    (wy[:5, :4] * y1).sum().add(h1.sum() + c1.sum()).backward()
    (wy * y2).sum().add(h2[:, :4].sum() + c2[:, :4].sum()).backward()
    p1, p2 = dict(m1.named_parameters()), dict(m2.named_parameters())
    for k in p1:
        assert torch.allclose(p1[k].grad, p2[k].grad, atol=1e-10, rtol=0), k


# ---- statistics pass, step API ------------------------------------------------------------------

@pytest.mark.parametrize("cell", BN_CELLS)
def test_popstats_pass(cell):
    m = make_stack(cell, t_max=5)
    random_pop(m)
    before = {k: v.clone() for k, v in m.named_buffers()}
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(4, 3, 3, generator=g), [4, 2, 3]),
               (torch.randn(2, 4, 3, generator=g), [2, 2, 1, 2]),
               (torch.randn(6, 2, 3, generator=g), [3, 4])]  # padded past t_max: row 4 unreached
    m.popstats_begin()
    for xb, lb in batches:
        m.popstats_feed(xb, lb)
    m.popstats_finish()
    # naive: count-weighted averages of the per-step batch statistics
    sums = {}
    for xb, lb in batches:
        _, _, _, stats = naive_forward(m, xb, lb, None, None, True)
        for name, rows in stats.items():
            for row, mu, var, cnt in rows:
                if row >= m.t_max:
                    continue
                s = sums.setdefault((name, row), [0.0, 0.0, 0])
                s[0] = s[0] + cnt * mu
                s[1] = s[1] + cnt * var
                s[2] += cnt
    for name, b in m.named_buffers():
        bn_name, kind = name.rsplit(".", 1)
        want = before[name].clone()
        for (nm, row), (sm, sv, cnt) in sums.items():
            if nm != bn_name:
                continue
            val = (sm if kind == "running_mean" else sv) / cnt
            if want.dim() == 2:
                want[row] = val
            else:
                want.copy_(val)
        assert torch.allclose(b, want, atol=1e-12, rtol=0), name
        if b.dim() == 2:
            assert torch.equal(b[4], before[name][4])  # no batch reached step 4


# Not bnx-seq in training: its statistics span the call by definition, so chunks differ.
@pytest.mark.parametrize("cell,ln_input,train", [
    (c, li, tr) for c, li in ALL_VARIANTS for tr in (True, False) if not (c == "bnx-seq" and tr)])
def test_step_api_chunks_equal_one_call(cell, ln_input, train):
    m = make_stack(cell, ln_input=ln_input, t_max=4)
    random_pop(m)
    m.train(train)
    m.set_update_running(False)
    x, h0, c0 = rand_case(T=7, N=3)
    y, (hT, cT) = m(x, None, h0, c0)
    ys, h, c = [], h0, c0
    for a, b in [(0, 2), (2, 3), (3, 7)]:
        yc, (h, c) = m(x[a:b], None, h, c, t0=a)
        ys.append(yc)
    assert torch.allclose(torch.cat(ys), y, atol=1e-12, rtol=0)
    assert torch.allclose(h, hT, atol=1e-12, rtol=0) and torch.allclose(c, cT, atol=1e-12, rtol=0)


# ---- gradients ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cell,ln_input", ALL_VARIANTS)
def test_gradcheck(cell, ln_input):
    m = make_stack(cell, C=2, H=3, L=2, t_max=4, ln_input=ln_input)
    m.train()
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in m.parameters())
    g = torch.Generator().manual_seed(11)
    x = torch.randn(4, 3, 2, generator=g, requires_grad=True)
    h0 = torch.randn(2, 3, 3, generator=g, requires_grad=True)
    c0 = torch.randn(2, 3, 3, generator=g, requires_grad=True)
    lengths = [4, 2, 3]
    wy = torch.randn(4, 3, 3, generator=g)
    wh = torch.randn(2, 3, 3, generator=g)
    wc = torch.randn(2, 3, 3, generator=g)
    from torch.nn.utils.stateless import functional_call

    def f(x, h0, c0, *ps):
        y, (hT, cT) = functional_call(m, dict(zip(names, ps)), (x, lengths, h0, c0))
        return (wy * y).sum() + (wh * hT).sum() + (wc * cT).sum()

    assert torch.autograd.gradcheck(f, (x, h0, c0) + params, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_eval_mode_bnlstm():
    m = make_stack("bnlstm", C=2, H=3, L=2, t_max=2)
    random_pop(m)
    m.eval()
    g = torch.Generator().manual_seed(12)
    x = torch.randn(4, 3, 2, generator=g, requires_grad=True)
    h0 = torch.randn(2, 3, 3, generator=g, requires_grad=True)
    c0 = torch.randn(2, 3, 3, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h, c: m(x, [4, 2, 3], h, c)[0].sum(), (x, h0, c0))


def test_parameter_names_follow_spec():
    m = RecurrentStack("bnlstm", 3, 4, 2, t_max=5, learn_init_state=True)
    sd = m.state_dict()
    assert sd["rnn.1.weight_ih"].shape == (16, 4) and sd["rnn.0.weight_ih"].shape == (16, 3)
    assert sd["rnn.0.weight_hh"].shape == (16, 4) and sd["rnn.0.bias"].shape == (16,)
    assert sd["rnn.0.bn_x.weight"].shape == (16,) and sd["rnn.0.bn_c.bias"].shape == (4,)
    assert sd["rnn.0.bn_h.running_mean"].shape == (5, 16)
    assert sd["rnn.0.bn_c.running_var"].shape == (5, 4)
    assert sd["rnn.0.h0"].shape == (4,) and sd["rnn.0.c0"].shape == (4,)
    assert "rnn.0.bn_x.bias" not in sd and "rnn.0.bn_h.bias" not in sd
    s = RecurrentStack("bnx-seq", 3, 4, 1, t_max=5).state_dict()
    assert s["rnn.0.bn_x.running_mean"].shape == (16,)
    ln = RecurrentStack("lnlstm", 3, 4, 1, ln_input=False).state_dict()
    assert set(ln) == {"rnn.0.weight_ih", "rnn.0.weight_hh", "rnn.0.bias", "rnn.0.ln_h.weight",
                       "rnn.0.ln_c.weight", "rnn.0.ln_c.bias"}
    # defaults: BN gains 0.1, forget bias 1, running mean 0 / var 1
    assert torch.all(sd["rnn.0.bn_x.weight"] == 0.1) and torch.all(sd["rnn.0.bias"][4:8] == 1)
    assert torch.all(sd["rnn.0.bn_h.running_var"] == 1)


def test_learned_initial_state_gets_gradient():
    m = make_stack("lnlstm", learn_init_state=True)
    x, _, _ = rand_case()
    y, (hT, cT) = m(x, LENGTHS)
    (y.sum() + cT.sum()).backward()
    assert m.rnn[0].h0.grad is not None and m.rnn[0].h0.grad.abs().sum() > 0
    # a row of length 0 returns the learned state
    y, (hT, cT) = m(x, [5, 0, 2, 1])
    assert torch.equal(hT[1, 1], m.rnn[1].h0.detach())


# ==== the GRU family (SPEC 2b) ===================================================================

GRU_VARIANTS = [(c, True) for c in GRU_CELLS] + [("lngru", False)]


def naive_gru_forward(m, x, lengths, h0, train, t0=0):
    """A deliberately naive GRU stack (valid rows gathered by index, LN block by block):
    y, hT and the batch statistics {bn name: [(row, mean, var, count)]}."""
    P = dict(m.named_parameters())
    T, N, _ = x.shape
    L, H, eps, cell = m.num_layers, m.hidden_size, m.eps, m.cell
    stats = {}
    bn = naive_bn(m, train, stats)  # the GRU's BNs have no beta: no ".bias" in P

    def ln_block(name, z):
        parts = []
        for a, b in ((0, 2 * H), (2 * H, 3 * H)):  # r,z block, then n block
            zb = z[:, a:b]
            mu = zb.mean(-1, keepdim=True)
            var = ((zb - mu) ** 2).mean(-1, keepdim=True)
            parts.append((zb - mu) / torch.sqrt(var + eps) * P[name + ".weight"][a:b])
        return torch.cat(parts, 1)

    inp = x
    hs = []
    for k in range(L):
        p = f"rnn.{k}."
        W, R = P[p + "weight_ih"], P[p + "weight_hh"]
        bi, bh = P[p + "bias_ih"], P[p + "bias_hh"]
        h = h0[k].clone() if h0 is not None else torch.zeros(N, H)
        y = torch.zeros(T, N, H)
        for t in range(T):
            idx = [n for n in range(N) if t < lengths[n]]
            if not idx:
                continue
            ax = inp[t] @ W.T
            ah = h @ R.T
            if cell == "bngru":
                ax, ah = bn(p + "bn_x", ax, idx, t0 + t), bn(p + "bn_h", ah, idx, t0 + t)
            if cell == "lngru":
                ax = ln_block(p + "ln_x", ax) if m.ln_input else ax
                ah = ln_block(p + "ln_h", ah)
            ax, ah = ax + bi, ah + bh
            r = torch.sigmoid(ax[:, :H] + ah[:, :H])
            z = torch.sigmoid(ax[:, H:2 * H] + ah[:, H:2 * H])
            n = torch.tanh(ax[:, 2 * H:] + r * ah[:, 2 * H:])
            hn = (1 - z) * n + z * h
            h = h.clone()
            h[idx], y[t, idx] = hn[idx], hn[idx]
        hs.append(h)
        inp = y
    return inp, torch.stack(hs), stats


def copy_to_torch_gru(m):
    ref = TorchGRU(m.input_size, m.hidden_size, m.num_layers).double()
    P = dict(m.named_parameters())
    with torch.no_grad():
        for name, p in ref.spec_parameters():
            p.copy_(P[name])
    return ref


@pytest.mark.parametrize("lengths", [None, LENGTHS, [5, 0, 2, 1]])
def test_gru_equals_nn_gru(lengths):
    """The loop shared by the GRU family, without normalization, is torch.nn.GRU: outputs,
    final states and every gradient (nn.GRU through a PackedSequence for uneven lengths)."""
    m = make_stack("gru")
    ref = copy_to_torch_gru(m)
    x, h0, _ = rand_case()
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    h1, h2 = h0.clone().requires_grad_(), h0.clone().requires_grad_()
    y, hT = m(x1, lengths, h1)
    ry, rh = ref(x2, lengths, h2)
    assert (y - ry).abs().max() < 1e-12 and (hT - rh).abs().max() < 1e-12
    g = torch.Generator().manual_seed(4)
    wy, wh = torch.randn(y.shape, generator=g), torch.randn(hT.shape, generator=g)
    ((wy * y).sum() + (wh * hT).sum()).backward()
    ((wy * ry).sum() + (wh * rh).sum()).backward()
    assert (x1.grad - x2.grad).abs().max() < 1e-12 and (h1.grad - h2.grad).abs().max() < 1e-12
    P = dict(m.named_parameters())
    for name, p in ref.spec_parameters():
        assert (P[name].grad - p.grad).abs().max() < 1e-12, name


def test_torch_gru_is_nn_gru():
    """TorchGRU (the `gru` fixtures' source) is nn.GRU: the same module, the SPEC names mapped."""
    ref = TorchGRU(3, 4, 2).double()
    names = [n for n, _ in ref.spec_parameters()]
    assert names[:4] == ["rnn.0.weight_ih", "rnn.0.weight_hh", "rnn.0.bias_ih", "rnn.0.bias_hh"]
    assert {id(p) for _, p in ref.spec_parameters()} == {id(p) for p in ref.gru.parameters()}
    x, h0, _ = rand_case()
    y, hT = ref(x, None, h0)
    ry, rh = ref.gru(x, h0)
    assert torch.equal(y, ry) and torch.equal(hT, rh)


@pytest.mark.parametrize("cell,ln_input", GRU_VARIANTS)
@pytest.mark.parametrize("train", [True, False])
def test_gru_matches_naive_reference(cell, ln_input, train):
    m = make_stack(cell, ln_input=ln_input, t_max=4)
    random_pop(m)
    before = {k: v.clone() for k, v in m.named_buffers()}
    m.train(train)
    x, h0, _ = rand_case(T=6)
    lengths = [6, 3, 5, 1]
    y, hT = m(x, lengths, h0)
    ny, nh, stats = naive_gru_forward(m, x, lengths, h0, train)
    assert torch.allclose(y, ny, atol=1e-12, rtol=0)
    assert torch.allclose(hT, nh, atol=1e-12, rtol=0)
    assert (y[3:, 1] == 0).all() and (y[1:, 3] == 0).all()
    buffers = dict(m.named_buffers())
    assert (cell == "bngru") == bool(buffers)
    for name, before_b in before.items():
        bn_name, kind = name.rsplit(".", 1)
        want = before_b.clone()
        if train:
            for row, mu, var, cnt in stats[bn_name]:
                if row >= m.t_max:
                    continue
                want[row].mul_(1 - m.momentum).add_(m.momentum * (mu if kind == "running_mean"
                                                                  else var))
        assert torch.allclose(buffers[name], want, atol=1e-12, rtol=0), name


def test_lngru_normalizes_each_block_separately():
    """Four LNs: scaling the n block of W_x x (or of W_h h) changes nothing, as each block is
    normalized with its own statistics; one LN over all 3H would change r and z. (eps tiny, so
    that it does not see the scale.)"""
    m = make_stack("lngru", L=1, eps=1e-14)
    x, h0, _ = rand_case()
    y, hT = m(x, LENGTHS, h0)
    H = m.hidden_size
    with torch.no_grad():
        m.rnn[0].weight_ih[2 * H:] *= 7.0
        m.rnn[0].weight_hh[:2 * H] *= 0.2
    y2, hT2 = m(x, LENGTHS, h0)
    assert torch.allclose(y, y2, atol=1e-10, rtol=0) and torch.allclose(hT, hT2, atol=1e-10, rtol=0)
    with torch.no_grad():
        m.rnn[0].weight_ih[:H] *= 3.0  # within the r,z block: changes the block's statistics
    y3, _ = m(x, LENGTHS, h0)
    assert (y3 - y).abs().max() > 1e-3


def test_bngru_output_statistics():
    """In training, each BN output (3H features) has per-feature mean 0 and variance
    g^2 s^2/(s^2+eps) over the valid rows of its step."""
    m = make_stack("bngru")
    x, h0, _ = rand_case()
    bns = {name: mod for name, mod in m.named_modules() if isinstance(mod, TimeBatchNorm)}
    assert len(bns) == 4 and all(bn.bias is None and bn.features == 12 for bn in bns.values())
    for bn in bns.values():
        bn.capture = []
    m(x, LENGTHS, h0)
    checked = 0
    for name, bn in bns.items():
        for z, valid, out in bn.capture:
            if valid is None:
                valid = torch.ones(z.shape[:-1], dtype=torch.bool)
            zv, ov = z[valid], out[valid]
            s2 = zv.var(0, unbiased=False)
            assert torch.allclose(ov.mean(0), torch.zeros(12), atol=1e-10), name
            want = bn.weight.detach() ** 2 * s2 / (s2 + bn.eps)
            assert torch.allclose(ov.var(0, unbiased=False), want, atol=1e-10), name
            checked += 1
    assert checked == 4 * 5


def test_bngru_eval_uses_last_row_past_t_max():
    m = make_stack("bngru", t_max=3)
    random_pop(m)
    m.eval()
    x, h0, _ = rand_case(T=7)
    y, hT = m(x, [7, 4, 6, 2], h0)
    big = RecurrentStack("bngru", 3, 4, 2, t_max=7).double().eval()
    sd = m.state_dict()
    for name, v in list(sd.items()):
        if "running_" in name:
            sd[name] = torch.cat([v, v[-1:].expand(4, -1)])
    big.load_state_dict(sd)
    by, bh = big(x, [7, 4, 6, 2], h0)
    assert torch.equal(y, by) and torch.equal(hT, bh)


@pytest.mark.parametrize("cell,ln_input", GRU_VARIANTS)
@pytest.mark.parametrize("train", [True, False])
def test_gru_padding_invariance(cell, ln_input, train):
    m1 = make_stack(cell, ln_input=ln_input)
    random_pop(m1)
    m2 = copy.deepcopy(m1)
    m1.train(train)
    m2.train(train)
    x, h0, _ = rand_case()
    g = torch.Generator().manual_seed(9)
    xp = 50 * torch.randn(8, 6, 3, generator=g)
    xp[:5, :4] = x
    for n, ln_ in enumerate(LENGTHS):
        xp[ln_:, n] = 1e3 * torch.randn(8 - ln_, 3, generator=g)
    h0p = torch.cat([h0, torch.randn(2, 2, 4, generator=g)], 1)
    y1, h1 = m1(x, LENGTHS, h0)
    y2, h2 = m2(xp, LENGTHS + [0, 0], h0p)
    assert torch.allclose(y2[:5, :4], y1, atol=1e-12, rtol=0)
    assert (y2[5:] == 0).all() and (y2[:, 4:] == 0).all()
    assert torch.allclose(h2[:, :4], h1, atol=1e-12, rtol=0)
    assert torch.equal(h2[:, 4:], h0p[:, 4:])
    b1, b2 = dict(m1.named_buffers()), dict(m2.named_buffers())
    for k in b1:
        assert torch.allclose(b1[k], b2[k], atol=1e-12, rtol=0), k
    wy = torch.randn(8, 6, 4, generator=g)
    (wy[:5, :4] * y1).sum().add(h1.sum()).backward()
    (wy * y2).sum().add(h2[:, :4].sum()).backward()
    p1, p2 = dict(m1.named_parameters()), dict(m2.named_parameters())
    for k in p1:
        assert torch.allclose(p1[k].grad, p2[k].grad, atol=1e-10, rtol=0), k


def test_bngru_popstats_pass():
    m = make_stack("bngru", t_max=5)
    random_pop(m)
    before = {k: v.clone() for k, v in m.named_buffers()}
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(4, 3, 3, generator=g), [4, 2, 3]),
               (torch.randn(2, 4, 3, generator=g), [2, 2, 1, 2]),
               (torch.randn(6, 2, 3, generator=g), [3, 4])]
    m.popstats_begin()
    for xb, lb in batches:
        m.popstats_feed(xb, lb)
    m.popstats_finish()
    sums = {}
    for xb, lb in batches:
        _, _, stats = naive_gru_forward(m, xb, lb, None, True)
        for name, rows in stats.items():
            for row, mu, var, cnt in rows:
                s = sums.setdefault((name, row), [0.0, 0.0, 0])
                s[0], s[1], s[2] = s[0] + cnt * mu, s[1] + cnt * var, s[2] + cnt
    for name, b in m.named_buffers():
        bn_name, kind = name.rsplit(".", 1)
        want = before[name].clone()
        for (nm, row), (sm, sv, cnt) in sums.items():
            if nm == bn_name:
                want[row] = (sm if kind == "running_mean" else sv) / cnt
        assert torch.allclose(b, want, atol=1e-12, rtol=0), name
        assert torch.equal(b[4], before[name][4])  # no batch reached step 4


@pytest.mark.parametrize("cell,ln_input", GRU_VARIANTS)
@pytest.mark.parametrize("train", [True, False])
def test_gru_step_api_chunks_equal_one_call(cell, ln_input, train):
    m = make_stack(cell, ln_input=ln_input, t_max=4)
    random_pop(m)
    m.train(train)
    m.set_update_running(False)
    x, h0, _ = rand_case(T=7, N=3)
    y, hT = m(x, None, h0)
    ys, h = [], h0
    for a, b in [(0, 2), (2, 3), (3, 7)]:
        yc, h = m(x[a:b], None, h, t0=a)
        ys.append(yc)
    assert torch.allclose(torch.cat(ys), y, atol=1e-12, rtol=0)
    assert torch.allclose(h, hT, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cell,ln_input", GRU_VARIANTS)
def test_gru_gradcheck(cell, ln_input):
    m = make_stack(cell, C=2, H=3, L=2, t_max=4, ln_input=ln_input)
    m.train()
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in m.parameters())
    g = torch.Generator().manual_seed(11)
    x = torch.randn(4, 3, 2, generator=g, requires_grad=True)
    h0 = torch.randn(2, 3, 3, generator=g, requires_grad=True)
    lengths = [4, 2, 3]
    wy = torch.randn(4, 3, 3, generator=g)
    wh = torch.randn(2, 3, 3, generator=g)
    from torch.nn.utils.stateless import functional_call

    def f(x, h0, *ps):
        y, hT = functional_call(m, dict(zip(names, ps)), (x, lengths, h0))
        return (wy * y).sum() + (wh * hT).sum()

    assert torch.autograd.gradcheck(f, (x, h0) + params, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_eval_mode_bngru():
    m = make_stack("bngru", C=2, H=3, L=2, t_max=2)
    random_pop(m)
    m.eval()
    g = torch.Generator().manual_seed(12)
    x = torch.randn(4, 3, 2, generator=g, requires_grad=True)
    h0 = torch.randn(2, 3, 3, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h: m(x, [4, 2, 3], h)[0].sum(), (x, h0))


def test_gru_parameter_names_and_init():
    m = RecurrentStack("bngru", 3, 4, 2, t_max=5, learn_init_state=True)
    sd = m.state_dict()
    assert set(sd) == {f"rnn.{k}.{n}" for k in range(2) for n in (
        "weight_ih", "weight_hh", "bias_ih", "bias_hh", "bn_x.weight", "bn_h.weight",
        "bn_x.running_mean", "bn_x.running_var", "bn_h.running_mean", "bn_h.running_var", "h0")}
    assert sd["rnn.0.weight_ih"].shape == (12, 3) and sd["rnn.1.weight_ih"].shape == (12, 4)
    assert sd["rnn.0.weight_hh"].shape == (12, 4) and sd["rnn.0.bias_hh"].shape == (12,)
    assert sd["rnn.0.bn_h.running_mean"].shape == (5, 12) and sd["rnn.0.h0"].shape == (4,)
    # defaults: BN gains 0.1, both biases 0 (no forget bias), running mean 0 / var 1
    assert torch.all(sd["rnn.0.bn_x.weight"] == 0.1) and torch.all(sd["rnn.0.bn_h.weight"] == 0.1)
    assert torch.all(sd["rnn.0.bias_ih"] == 0) and torch.all(sd["rnn.0.bias_hh"] == 0)
    assert torch.all(sd["rnn.0.bn_h.running_var"] == 1)
    ln = RecurrentStack("lngru", 3, 4, 1).state_dict()
    assert set(ln) == {"rnn.0.weight_ih", "rnn.0.weight_hh", "rnn.0.bias_ih", "rnn.0.bias_hh",
                       "rnn.0.ln_x.weight", "rnn.0.ln_h.weight"}
    assert torch.all(ln["rnn.0.ln_x.weight"] == 1) and ln["rnn.0.ln_h.weight"].shape == (12,)
    off = RecurrentStack("lngru", 3, 4, 1, ln_input=False).state_dict()
    assert "rnn.0.ln_x.weight" not in off and "rnn.0.ln_h.weight" in off
    assert set(RecurrentStack("gru", 3, 4, 1).state_dict()) == {
        "rnn.0.weight_ih", "rnn.0.weight_hh", "rnn.0.bias_ih", "rnn.0.bias_hh"}
    # orthogonal per block; --init-recurrent identity: I on the n block only
    for init in ("orthogonal", "identity"):
        w = RecurrentStack("gru", 3, 4, 1, recurrent_init=init).double().rnn[0].weight_hh
        for b in range(3):
            blk = w[4 * b:4 * b + 4].detach()
            assert torch.allclose(blk @ blk.T, torch.eye(4), atol=1e-12)
        assert torch.equal(w[8:].detach(), torch.eye(4)) == (init == "identity")
    with pytest.raises(ValueError, match="gamma_c"):
        RecurrentStack("bngru", 3, 4, gamma_c=0.5)
    with pytest.raises(ValueError, match="forget_bias"):
        RecurrentStack("gru", 3, 4, forget_bias=1.0)
    with pytest.raises(ValueError, match="c0"):
        make_stack("gru")(torch.zeros(2, 1, 3), None, torch.zeros(2, 1, 4), torch.zeros(2, 1, 4))


def test_gru_learned_initial_state_gets_gradient():
    m = make_stack("lngru", learn_init_state=True)
    assert m.rnn[0].c0 is None
    x, _, _ = rand_case()
    y, hT = m(x, LENGTHS)
    (y.sum() + hT.sum()).backward()
    assert m.rnn[0].h0.grad is not None and m.rnn[0].h0.grad.abs().sum() > 0
    y, hT = m(x, [5, 0, 2, 1])
    assert torch.equal(hT[1, 1], m.rnn[1].h0.detach())
