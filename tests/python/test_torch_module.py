"""rbn.torch as a drop-in for torch.nn.LSTM and torch.nn.GRU: constructor, forward contract, parameter names,
state_dict interop, initialization, dropout, pickling, dtype moves, and parameter syncing.
Run with Debian's python3, PYTHONPATH=build/python."""
import copy
import io
import itertools
import os
import pickle
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rbn.torch as rt

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
import torch_cells  # noqa: E402

T, N, C, H = 5, 3, 4, 6
LENGTHS = torch.tensor([3, 5, 1])


def assert_close(got, ref, dtype, what=""):
    """max|got - ref| <= tol * max(1, max|ref|): tol 1e-5 in float32, 1e-10 in float64."""
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    bound = tol * max(1.0, ref.abs().max().item())
    err = (got - ref).abs().max().item()
    assert err <= bound, f"{what}: max|delta| = {err:.3g} > {bound:.3g}"


def pair(num_layers, batch_first, dtype, classes=(nn.LSTM, rt.LSTM), **kw):
    torch.manual_seed(0)
    ref = classes[0](C, H, num_layers, batch_first=batch_first, dtype=dtype, **kw)
    m = classes[1](C, H, num_layers, batch_first=batch_first, dtype=dtype, **kw)
    m.load_state_dict(ref.state_dict())
    return ref, m


def make_inputs(form, batch_first, L, dtype, with_hx):
    g = torch.Generator().manual_seed(1)
    shape = (T, C) if form == "unbatched" else ((N, T, C) if batch_first else (T, N, C))
    x = torch.randn(shape, generator=g, dtype=dtype, requires_grad=True)
    hshape = (L, H) if form == "unbatched" else (L, N, H)
    hx = None
    if with_hx:
        hx = tuple(torch.randn(hshape, generator=g, dtype=dtype, requires_grad=True)
                   for _ in range(2))
    return x, hx


def run(module, form, x, hx, batch_first):
    """-> output (padded, zero past each row's end where lengths apply), h_n, c_n."""
    if form == "packed":
        packed = pack_padded_sequence(x, LENGTHS, batch_first=batch_first, enforce_sorted=False)
        out, (h, c) = module(packed, hx)
        assert isinstance(out, nn.utils.rnn.PackedSequence)
        y, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first, total_length=T)
        return y, h, c, out
    if form == "lengths":
        if isinstance(module, nn.LSTM):  # nn.LSTM's equivalent of lengths=: a packed input
            return run(module, "packed", x, hx, batch_first)
        y, (h, c) = module(x, hx, lengths=LENGTHS)
        return y, h, c, None
    y, (h, c) = module(x, hx)
    return y, h, c, None


CASES = list(itertools.product([False, True], [1, 2], ["padded", "packed", "unbatched", "lengths"],
                               [False, True], [torch.float32, torch.float64]))


@pytest.mark.parametrize("batch_first,L,form,with_hx,dtype", CASES)
def test_matches_nn_lstm(batch_first, L, form, with_hx, dtype):
    ref, m = pair(L, batch_first, dtype)
    x, hx = make_inputs(form, batch_first, L, dtype, with_hx)
    got = run(m, form, x, hx, batch_first)
    want = run(ref, form, x, hx, batch_first)
    if form == "packed":
        assert torch.equal(got[3].batch_sizes, want[3].batch_sizes)
        assert torch.equal(got[3].sorted_indices, want[3].sorted_indices)
        assert_close(got[3].data, want[3].data, dtype, "packed data")
    for a, b, what in zip(got[:3], want[:3], ("output", "h_n", "c_n")):
        assert a.shape == b.shape and a.dtype == b.dtype, what
        assert_close(a, b, dtype, what)
    g = torch.Generator().manual_seed(2)
    w = [torch.randn(t.shape, generator=g, dtype=dtype) for t in want[:3]]
    wrt_m = [x, *(hx or ()), *m.parameters()]
    wrt_r = [x, *(hx or ()), *ref.parameters()]
    gm = torch.autograd.grad(sum((a * b).sum() for a, b in zip(got[:3], w)), wrt_m)
    gr = torch.autograd.grad(sum((a * b).sum() for a, b in zip(want[:3], w)), wrt_r)
    names = ["x", "h0", "c0"][:1 + 2 * with_hx] + [n for n, _ in ref.named_parameters()]
    for a, b, n in zip(gm, gr, names):
        assert_close(a, b, dtype, "grad " + n)


def test_dropout_in_eval_matches_nn_lstm():
    ref, m = pair(3, False, torch.float64, dropout=0.3)
    ref.eval()
    m.eval()
    x, hx = make_inputs("padded", False, 3, torch.float64, True)
    for a, b in zip(run(m, "padded", x, hx, False)[:3], run(ref, "padded", x, hx, False)[:3]):
        assert_close(a, b, torch.float64)


@pytest.mark.parametrize("cls", [rt.LSTM, rt.BNLSTM, rt.LNLSTM])
def test_dropout_in_training_between_layers(cls):
    """As nn.LSTM: F.dropout on every layer's output but the last. Torch's random stream cannot
    be matched inside nn.LSTM, so the reference is the layers one by one with F.dropout."""
    torch.manual_seed(0)
    p = 0.4
    bn = {"t_max": T} if cls is rt.BNLSTM else {}
    m = cls(C, H, 3, dropout=p, dtype=torch.float64, **bn)
    layers = []
    for k in range(3):
        one = type(m)(C if k == 0 else H, H, 1, dtype=torch.float64, **bn)
        sd = {n[:-3] + "_l0": v for n, v in m.state_dict().items() if n.endswith(f"_l{k}")}
        one.load_state_dict(sd)
        layers.append(one)
    x, hx = make_inputs("padded", False, 3, torch.float64, True)
    torch.manual_seed(7)
    y, (h, c) = m(x, hx)
    torch.manual_seed(7)
    inp, hs, cs = x, [], []
    for k, one in enumerate(layers):
        out, (hk, ck) = one(inp, (hx[0][k:k + 1], hx[1][k:k + 1]))
        hs.append(hk)
        cs.append(ck)
        inp = torch.nn.functional.dropout(out, p, True) if k < 2 else out
    assert torch.equal(y, inp) and torch.equal(h, torch.cat(hs)) and torch.equal(c, torch.cat(cs))
    (gx,) = torch.autograd.grad(y.sum(), [x])
    (rx,) = torch.autograd.grad(inp.sum(), [x])
    assert_close(gx, rx, torch.float64)
    # the same seed gives the same run, another seed another one
    torch.manual_seed(7)
    assert torch.equal(m(x, hx)[0], y)
    assert not torch.equal(m(x, hx)[0], y)
    # p = 1: every layer above the first sees zeros; eval mode: no dropout at all
    m.dropout = 1.0
    y1, (h1, _) = m(x, hx)
    zeros = torch.zeros(T, N, H, dtype=torch.float64)
    top, (ht, _) = layers[2](zeros, (hx[0][2:], hx[1][2:]))
    assert torch.equal(y1, top) and torch.equal(h1[2:], ht)
    m.eval()
    plain = cls(C, H, 3, dtype=torch.float64, **bn).eval()
    plain.load_state_dict(m.state_dict())
    assert torch.equal(m(x, hx)[0], plain(x, hx)[0])


def test_initialization_like_nn_lstm_and_spec():
    torch.manual_seed(11)
    ref = nn.LSTM(C, H, 2)
    torch.manual_seed(11)
    m = rt.LSTM(C, H, 2)
    for (n, a), (rn, b) in zip(m.named_parameters(), ref.named_parameters()):
        assert n == rn and torch.equal(a, b)
    bn = rt.BNLSTM(C, H, 2, t_max=T)  # SPEC: orthogonal W per gate block, b_f = 1, gains 0.1
    w = bn.weight_hh_l1.detach()[:H]
    assert torch.allclose(w @ w.T, torch.eye(H), atol=1e-5)
    b = bn.bias_ih_l0 + bn.bias_hh_l0
    assert torch.equal(b[H:2 * H], torch.ones(H)) and b[:H].abs().max() == 0
    assert torch.equal(bn.bn_x_weight_l0, torch.full((4 * H,), 0.1))
    assert torch.equal(bn.bn_c_bias_l1, torch.zeros(H))
    assert torch.equal(bn.bn_h_running_var_l0, torch.ones(T, 4 * H))
    ln = rt.LNLSTM(C, H, gamma_x=0.5)
    assert torch.equal(ln.ln_x_weight_l0, torch.full((4 * H,), 0.5))
    assert torch.equal(ln.ln_h_weight_l0, torch.ones(4 * H))
    tu = rt.BNLSTM(C, H, init="torch")
    assert tu.weight_ih_l0.abs().max() <= 1 / H ** 0.5
    assert torch.equal(tu.bn_x_weight_l0, torch.full((4 * H,), 0.1))
    so = rt.LSTM(C, H, init="spec")
    assert torch.equal((so.bias_ih_l0 + so.bias_hh_l0)[H:2 * H], torch.ones(H))
    torch.manual_seed(1)
    a = rt.BNLSTM(C, H)
    torch.manual_seed(1)
    assert torch.equal(a.weight_ih_l0, rt.BNLSTM(C, H).weight_ih_l0)  # seeded by torch


def test_parameter_and_buffer_names():
    m = rt.BNLSTM(C, H, 2, t_max=T)
    assert [n for n, _ in m.named_parameters()][:6] == [
        "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "bn_x_weight_l0",
        "bn_h_weight_l0"]
    assert set(dict(m.named_buffers())) == {
        f"bn_{w}_running_{s}_l{k}" for w in "xhc" for s in ("mean", "var") for k in (0, 1)}
    assert m.bn_c_bias_l1.shape == (H,) and m.bn_x_running_mean_l0.shape == (T, 4 * H)
    seq = rt.BNxLSTM(C, H, sequence_wise=True, t_max=T)
    assert seq.bn_x_running_mean_l0.shape == (4 * H,)
    ln = rt.LNLSTM(C, H, learn_init_state=True, ln_input=False, bias=False)
    assert [n for n, _ in ln.named_parameters()] == [
        "weight_ih_l0", "weight_hh_l0", "ln_h_weight_l0", "ln_c_weight_l0", "ln_c_bias_l0",
        "h0_l0", "c0_l0"]


def test_state_dict_interop_and_strict_errors():
    torch.manual_seed(0)
    ref = nn.LSTM(C, H, 2)
    bn = rt.BNLSTM(C, H, 2, t_max=T)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*bn_x_weight_l0"):
        bn.load_state_dict(ref.state_dict())
    res = bn.load_state_dict(ref.state_dict(), strict=False)
    assert "bn_x_weight_l0" in res.missing_keys and not res.unexpected_keys
    assert torch.equal(bn.weight_hh_l1, ref.weight_hh_l1)
    m = rt.LSTM(C, H, 2)
    bad = dict(ref.state_dict(), weight_ih_l7=torch.zeros(1))
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*weight_ih_l7"):
        m.load_state_dict(bad)
    # from_lstm: the plain LSTM's weights, the normalization as the SPEC starts it
    f = rt.BNLSTM.from_lstm(ref, t_max=T)
    assert isinstance(f, rt.BNLSTM) and f.num_layers == 2 and f.t_max == T
    for n, p in ref.named_parameters():
        assert torch.equal(getattr(f, n), p)
    assert torch.equal(f.bn_h_weight_l0, torch.full((4 * H,), 0.1))


def test_spec_names_round_trip_and_strict():
    torch.manual_seed(0)
    m = rt.BNLSTM(C, H, 2, t_max=T)
    sd = m.state_dict_rbn()
    assert torch.equal(sd["rnn.1.bias"], m.bias_ih_l1 + m.bias_hh_l1)
    ref = torch_cells.RecurrentStack("bnlstm", C, H, 2, t_max=T)
    ref.load_state_dict(sd)  # the reference modules use the SPEC names: strict load
    m2 = rt.BNLSTM(C, H, 2, t_max=T)
    m2.load_state_dict_rbn(sd)
    x = torch.randn(T, N, C)
    torch.testing.assert_close(m2(x)[0], m(x)[0], rtol=0, atol=0)
    with pytest.raises(KeyError, match="rnn.0.bn_x.wieght"):
        m2.load_state_dict_rbn(dict(sd, **{"rnn.0.bn_x.wieght": sd["rnn.0.bn_x.weight"]}))
    with pytest.raises(KeyError, match="missing keys.*rnn.1.bias"):
        m2.load_state_dict_rbn({k: v for k, v in sd.items() if k != "rnn.1.bias"})


def test_constructor_contract():
    m = rt.BNLSTM(C, H, 2, False, True, t_max=T)  # nn.LSTM's positional order
    assert (m.input_size, m.hidden_size, m.num_layers, m.bias, m.batch_first) == (C, H, 2, False,
                                                                                  True)
    assert isinstance(m, rt.BNLSTM) and isinstance(m, nn.Module)
    assert repr(rt.LSTM(C, H, 2, batch_first=True)) == repr(nn.LSTM(C, H, 2, batch_first=True))
    assert repr(m) == f"BNLSTM({C}, {H}, num_layers=2, bias=False, batch_first=True, t_max={T})"
    assert repr(rt.LSTM(C, H, bidirectional=True)) == repr(nn.LSTM(C, H, bidirectional=True))
    with pytest.raises(NotImplementedError, match="proj_size"):
        rt.LSTM(C, H, proj_size=2)
    with pytest.raises(ValueError, match="device"):
        rt.LSTM(C, H, device="meta")
    with pytest.raises(ValueError, match="hidden_size"):
        rt.LSTM(C, 0)
    with pytest.raises(ValueError, match="dropout"):
        rt.LSTM(C, H, 2, dropout=1.5)
    with pytest.raises(ValueError, match="init"):
        rt.LSTM(C, H, init="xavier")
    with pytest.warns(UserWarning, match="dropout"):
        rt.LSTM(C, H, 1, dropout=0.5)
    with pytest.warns(UserWarning, match="ln_input=False"):
        rt.LNLSTM(1, H)
    with pytest.raises(TypeError, match="t_max=9 does not apply"):
        rt.LNLSTM(C, H, t_max=9)
    with pytest.raises(TypeError, match="gamma_h=0.5 does not apply"):
        rt.BNxLSTM(C, H, gamma_h=0.5)
    with pytest.raises(TypeError, match="eps"):
        rt.LSTM(C, H, eps=1e-3)
    with pytest.raises(TypeError, match="init='spec' only"):
        rt.LSTM(C, H, forget_bias=2.0)
    m = rt.LSTM(C, H, forget_bias=2.0, init="spec")
    assert torch.equal((m.bias_ih_l0 + m.bias_hh_l0)[H:2 * H], torch.full((H,), 2.0))


def test_forward_contract_errors():
    m = rt.LSTM(C, H)
    x = torch.randn(T, N, C)
    with pytest.raises(TypeError, match="lengths="):
        m(x, LENGTHS)
    with pytest.raises(TypeError, match=r"\(h0, c0\)"):
        m(x, torch.zeros(1, N, H))
    with pytest.raises(RuntimeError, match="hidden h0"):
        m(x, (torch.zeros(1, N + 1, H), torch.zeros(1, N, H)))
    with pytest.raises(RuntimeError, match="input_size"):
        m(torch.randn(T, N, C + 1))
    with pytest.raises(ValueError, match="lengths"):
        m(x, lengths=torch.tensor([1, 2]))


@pytest.mark.parametrize("kind", ["lstm", "bnlstm", "bnx-seq", "lnlstm"])
def test_pickle_deepcopy_torch_save(kind):
    torch.manual_seed(0)
    m = {"lstm": lambda: rt.LSTM(C, H, 2), "bnlstm": lambda: rt.BNLSTM(C, H, 2, t_max=T),
         "bnx-seq": lambda: rt.BNxLSTM(C, H, t_max=T, sequence_wise=True),
         "lnlstm": lambda: rt.LNLSTM(C, H, eps=1e-3)}[kind]()
    x = torch.randn(T, N, C)
    m(x)  # training forward: running statistics move, the stack exists
    m.eval()
    want = m(x)[0]
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    copies = [pickle.loads(pickle.dumps(m)), copy.deepcopy(m), torch.load(buf)]
    sd_buf = io.BytesIO()
    torch.save(m.state_dict(), sd_buf)
    sd_buf.seek(0)
    fresh = type(m)(C, H, m.num_layers, **({"t_max": T} if kind in ("bnlstm", "bnx-seq") else {}),
                    **({"sequence_wise": True} if kind == "bnx-seq" else {}),
                    **({"eps": 1e-3} if kind == "lnlstm" else {}))
    fresh.load_state_dict(torch.load(sd_buf))
    copies.append(fresh.eval())
    for c in copies:
        assert type(c) is type(m) and repr(c) == repr(m)
        torch.testing.assert_close(c(x)[0], want, rtol=0, atol=0)
    d = copies[1]  # a deep copy is independent of its original
    with torch.no_grad():
        d.weight_hh_l0.add_(1.0)
    torch.testing.assert_close(m(x)[0], want, rtol=0, atol=0)
    assert not torch.equal(d(x)[0], want)


def test_to_dtype_and_back():
    torch.manual_seed(0)
    m = rt.BNLSTM(C, H, t_max=T).eval()
    x = torch.randn(T, N, C)
    y32 = m(x)[0]
    m.double()
    assert m.weight_ih_l0.dtype == m.bn_x_running_mean_l0.dtype == torch.float64
    ref = torch_cells.RecurrentStack("bnlstm", C, H, 1, t_max=T).double().eval()
    ref.load_state_dict(m.state_dict_rbn())
    assert_close(m(x.double())[0], ref(x.double())[0], torch.float64)
    m.float()
    torch.testing.assert_close(m(x)[0], y32, rtol=0, atol=0)


class CountingStack:
    """Wraps a stack and counts what is copied into it."""

    def __init__(self, stack):
        self.stack, self.sets = stack, []

    def set(self, name, value):
        self.sets.append(name)
        self.stack.set(name, value)

    def __getattr__(self, name):
        return getattr(self.stack, name)


def test_parameters_copied_only_when_changed():
    torch.manual_seed(0)
    m = rt.BNLSTM(C, H, 2, t_max=T)
    x = torch.randn(T, N, C)
    m(x)
    state = m._stacks[(torch.float32, None)]
    state.stack = counting = CountingStack(state.stack)
    m(x).__getitem__(0).sum().backward()
    m.eval()
    m(x)
    assert counting.sets == []  # unchanged parameters, buffers written out by the stack itself
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    opt.step()  # in place: every parameter with a gradient changes
    m(x)
    assert set(counting.sets) == set(m._spec_params)
    counting.sets.clear()
    with torch.no_grad():
        m.bias_hh_l1.add_(1.0)  # one of the two summed biases
    y = m(x)[0]
    assert counting.sets == ["rnn.1.bias"]
    fresh = rt.BNLSTM(C, H, 2, t_max=T).eval()
    fresh.load_state_dict(m.state_dict())
    torch.testing.assert_close(y, fresh(x)[0], rtol=0, atol=0)
    m.bn_h_weight_l1.data = torch.full((4 * H,), 0.7)  # new storage: a new data_ptr
    fresh.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x)[0], fresh(x)[0], rtol=0, atol=0)


def test_no_grad_eval_keeps_no_activations():
    """no_grad + eval: the chunked path, memory independent of T (the C++ cache_bytes)."""

    def cache_after(T, grad):
        torch.manual_seed(0)
        m = rt.LNLSTM(C, H, 2).eval()
        x = torch.randn(T, N, C)
        with torch.set_grad_enabled(grad):
            y = m(x)[0]
        return m._stacks[(torch.float32, None)].stack.cache_bytes, y

    short, _ = cache_after(400, False)
    long, y = cache_after(4000, False)
    kept, y_kept = cache_after(4000, True)
    assert short == long and kept > 50 * long
    torch.testing.assert_close(y, y_kept.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["lstm", "bnlstm", "bnx", "bnx-seq", "lnlstm"])
def test_no_grad_train_keeps_no_activations(kind):
    """no_grad + training mode: chunked too (batch statistics per step, running averages updated),
    same outputs and buffers as with autograd recording; bnx-seq alone keeps the whole call."""
    make = {"lstm": lambda: rt.LSTM(C, H, 2), "bnlstm": lambda: rt.BNLSTM(C, H, 2, t_max=4000),
            "bnx": lambda: rt.BNxLSTM(C, H, 2, t_max=4000),
            "bnx-seq": lambda: rt.BNxLSTM(C, H, 2, sequence_wise=True),
            "lnlstm": lambda: rt.LNLSTM(C, H, 2)}[kind]

    def cache_after(T, grad):
        torch.manual_seed(0)
        m = make().train()
        x = torch.randn(T, N, C)
        with torch.set_grad_enabled(grad):
            y = m(x)[0]
        return m._stacks[(torch.float32, None)].stack.cache_bytes, y, dict(m.named_buffers())

    short, _, _ = cache_after(400, False)
    long, y, buffers = cache_after(4000, False)
    kept, y_kept, buffers_kept = cache_after(4000, True)
    if kind == "bnx-seq":
        assert long > 5 * short and 2 * long > kept  # whole call kept (kept adds the input copy)
    else:
        assert short == long and kept > 50 * long
    torch.testing.assert_close(y, y_kept.detach(), rtol=0, atol=0)
    for name, b in buffers.items():
        torch.testing.assert_close(b, buffers_kept[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("kind,batch_first", [("bnlstm", True), ("bnx", False), ("lnlstm", True)])
def test_normalized_packed_and_batch_first_match_reference(kind, batch_first):
    torch.manual_seed(0)
    m = (rt.BNxLSTM(C, H, 2, batch_first=batch_first, t_max=T, dtype=torch.float64)
         if kind == "bnx" else
         {"bnlstm": rt.BNLSTM, "lnlstm": rt.LNLSTM}[kind](C, H, 2, batch_first=batch_first,
                                                           dtype=torch.float64,
                                                           **({"t_max": T} if kind == "bnlstm"
                                                              else {})))
    ref = torch_cells.RecurrentStack(kind, C, H, 2, t_max=T).double()
    ref.load_state_dict(m.state_dict_rbn())
    x, hx = make_inputs("padded", batch_first, 2, torch.float64, True)
    y, h, c, _ = run(m, "packed", x, hx, batch_first)
    xt = x.transpose(0, 1) if batch_first else x
    ry, (rh, rc) = ref(xt, LENGTHS, *hx)
    ry = ry.transpose(0, 1) if batch_first else ry
    for a, b in ((y, ry), (h, rh), (c, rc)):
        assert_close(a, b, torch.float64)
    gain = {"bnlstm": "rnn.0.bn_c.weight", "bnx": "rnn.1.bn_x.weight",
            "lnlstm": "rnn.0.ln_c.weight"}[kind]
    rp = dict(ref.named_parameters())
    ga = torch.autograd.grad(y.sum() + h.sum(), [x, *hx, m.weight_hh_l1,
                                                 getattr(m, rt._torch_name(gain))])
    gb = torch.autograd.grad(ry.sum() + rh.sum(), [x, *hx, rp["rnn.1.weight_hh"], rp[gain]])
    for a, b in zip(ga, gb):
        assert_close(a, b, torch.float64)
    for n, b in ref.state_dict().items():  # running statistics after the training forward
        if "running" in n:
            assert_close(m.state_dict_rbn()[n], b, torch.float64, n)


# ==== the GRU family as a drop-in for torch.nn.GRU ================================================

GRU_CLASSES = {"gru": rt.GRU, "bngru": rt.BNGRU, "lngru": rt.LNGRU}


def pair_gru(num_layers, batch_first, dtype, **kw):
    return pair(num_layers, batch_first, dtype, classes=(nn.GRU, rt.GRU), **kw)


def make_gru_inputs(form, batch_first, L, dtype, with_hx):
    """make_inputs' x and h0 (the same draws); a GRU has no c0."""
    x, hx = make_inputs(form, batch_first, L, dtype, with_hx)
    return x, (hx[0] if hx is not None else None)


def run_gru(module, form, x, h0, batch_first):
    """-> output (padded, zero past each row's end where lengths apply), h_n, packed output."""
    if form == "packed":
        packed = pack_padded_sequence(x, LENGTHS, batch_first=batch_first, enforce_sorted=False)
        out, h = module(packed, h0)
        assert isinstance(out, nn.utils.rnn.PackedSequence) and isinstance(h, torch.Tensor)
        y, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first, total_length=T)
        return y, h, out
    if form == "lengths":
        if isinstance(module, nn.GRU):  # nn.GRU's equivalent of lengths=: a packed input
            return run_gru(module, "packed", x, h0, batch_first)
        y, h = module(x, h0, lengths=LENGTHS)
        return y, h, None
    y, h = module(x, h0)
    return y, h, None


@pytest.mark.parametrize("batch_first,L,form,with_hx,dtype", CASES)
def test_matches_nn_gru(batch_first, L, form, with_hx, dtype):
    ref, m = pair_gru(L, batch_first, dtype)
    x, h0 = make_gru_inputs(form, batch_first, L, dtype, with_hx)
    got = run_gru(m, form, x, h0, batch_first)
    want = run_gru(ref, form, x, h0, batch_first)
    if form == "packed":
        assert torch.equal(got[2].batch_sizes, want[2].batch_sizes)
        assert torch.equal(got[2].sorted_indices, want[2].sorted_indices)
        assert_close(got[2].data, want[2].data, dtype, "packed data")
    for a, b, what in zip(got[:2], want[:2], ("output", "h_n")):
        assert a.shape == b.shape and a.dtype == b.dtype, what
        assert_close(a, b, dtype, what)
    g = torch.Generator().manual_seed(2)
    w = [torch.randn(t.shape, generator=g, dtype=dtype) for t in want[:2]]
    wrt_m = [x, *([h0] if with_hx else []), *m.parameters()]
    wrt_r = [x, *([h0] if with_hx else []), *ref.parameters()]
    gm = torch.autograd.grad(sum((a * b).sum() for a, b in zip(got[:2], w)), wrt_m)
    gr = torch.autograd.grad(sum((a * b).sum() for a, b in zip(want[:2], w)), wrt_r)
    names = ["x", "h0"][:1 + with_hx] + [n for n, _ in ref.named_parameters()]
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for a, b, n in zip(gm, gr, names):
        assert_close(a, b, dtype, "grad " + n)


def test_gru_dropout_in_eval_matches_nn_gru():
    ref, m = pair_gru(3, False, torch.float64, dropout=0.3)
    ref.eval()
    m.eval()
    x, h0 = make_gru_inputs("padded", False, 3, torch.float64, True)
    for a, b in zip(run_gru(m, "padded", x, h0, False)[:2], run_gru(ref, "padded", x, h0, False)[:2]):
        assert_close(a, b, torch.float64)


@pytest.mark.parametrize("kind", sorted(GRU_CLASSES))
def test_gru_dropout_in_training_between_layers(kind):
    """As nn.GRU: F.dropout on every layer's output but the last (reference: the layers one by
    one with F.dropout)."""
    torch.manual_seed(0)
    p, cls = 0.4, GRU_CLASSES[kind]
    bn = {"t_max": T} if kind == "bngru" else {}
    m = cls(C, H, 3, dropout=p, dtype=torch.float64, **bn)
    layers = []
    for k in range(3):
        one = cls(C if k == 0 else H, H, 1, dtype=torch.float64, **bn)
        one.load_state_dict({n[:-3] + "_l0": v for n, v in m.state_dict().items()
                             if n.endswith(f"_l{k}")})
        layers.append(one)
    x, h0 = make_gru_inputs("padded", False, 3, torch.float64, True)
    torch.manual_seed(7)
    y, h = m(x, h0)
    torch.manual_seed(7)
    inp, hs = x, []
    for k, one in enumerate(layers):
        out, hk = one(inp, h0[k:k + 1])
        hs.append(hk)
        inp = torch.nn.functional.dropout(out, p, True) if k < 2 else out
    assert torch.equal(y, inp) and torch.equal(h, torch.cat(hs))
    (gx,) = torch.autograd.grad(y.sum(), [x])
    (rx,) = torch.autograd.grad(inp.sum(), [x])
    assert_close(gx, rx, torch.float64)


def test_gru_initialization_like_nn_gru_and_spec():
    torch.manual_seed(11)
    ref = nn.GRU(C, H, 2)
    torch.manual_seed(11)
    m = rt.GRU(C, H, 2)
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for (n, a), (_, b) in zip(m.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b), n
    bn = rt.BNGRU(C, H, 2, t_max=T)  # SPEC 2b: orthogonal W per block, biases 0, gains 0.1
    for blk in range(3):
        w = bn.weight_hh_l1.detach()[blk * H:(blk + 1) * H]
        assert torch.allclose(w @ w.T, torch.eye(H), atol=1e-5)
    assert not bn.bias_ih_l0.any() and not bn.bias_hh_l1.any()
    assert torch.equal(bn.bn_x_weight_l0, torch.full((3 * H,), 0.1))
    assert torch.equal(bn.bn_h_running_var_l0, torch.ones(T, 3 * H))
    ln = rt.LNGRU(C, H, gamma_h=0.5)
    assert torch.equal(ln.ln_x_weight_l0, torch.ones(3 * H))
    assert torch.equal(ln.ln_h_weight_l0, torch.full((3 * H,), 0.5))
    ident = rt.GRU(C, H, init="spec", recurrent_init="identity")
    assert torch.equal(ident.weight_hh_l0[2 * H:], torch.eye(H))  # I on the n block
    assert not ident.bias_ih_l0.any()
    tu = rt.BNGRU(C, H, init="torch")
    assert tu.weight_ih_l0.abs().max() <= 1 / H ** 0.5 and tu.bias_hh_l0.abs().max() > 0


def test_gru_parameter_and_buffer_names():
    m = rt.BNGRU(C, H, 2, t_max=T)
    assert [n for n, _ in m.named_parameters()][:6] == [
        "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "bn_x_weight_l0",
        "bn_h_weight_l0"]
    assert set(dict(m.named_buffers())) == {
        f"bn_{w}_running_{s}_l{k}" for w in "xh" for s in ("mean", "var") for k in (0, 1)}
    assert m.weight_ih_l0.shape == (3 * H, C) and m.bn_x_running_mean_l0.shape == (T, 3 * H)
    ln = rt.LNGRU(C, H, learn_init_state=True, ln_input=False, bias=False)
    assert [n for n, _ in ln.named_parameters()] == [
        "weight_ih_l0", "weight_hh_l0", "ln_h_weight_l0", "h0_l0"]
    plain = rt.GRU(C, H, bias=False)
    ref = nn.GRU(C, H, bias=False)
    plain.load_state_dict(ref.state_dict())
    x = torch.randn(T, N, C)
    assert_close(plain(x)[0], ref(x)[0], torch.float32)


def test_gru_state_dict_interop_and_spec_names():
    torch.manual_seed(0)
    ref = nn.GRU(C, H, 2)
    bn = rt.BNGRU(C, H, 2, t_max=T)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*bn_x_weight_l0"):
        bn.load_state_dict(ref.state_dict())
    res = bn.load_state_dict(ref.state_dict(), strict=False)
    assert "bn_x_weight_l0" in res.missing_keys and not res.unexpected_keys
    assert torch.equal(bn.bias_hh_l1, ref.bias_hh_l1)
    f = rt.LNGRU.from_gru(ref)
    assert isinstance(f, rt.LNGRU) and f.num_layers == 2
    for n, p in ref.named_parameters():
        assert torch.equal(getattr(f, n), p)
    with pytest.raises(TypeError, match="from_gru"):
        rt.BNGRU.from_lstm(nn.LSTM(C, H))
    sd = bn.state_dict_rbn()  # SPEC names: rnn.k.bias_ih, rnn.k.bias_hh kept apart
    assert torch.equal(sd["rnn.1.bias_hh"], bn.bias_hh_l1) and "rnn.0.bias" not in sd
    torch_cells.RecurrentStack("bngru", C, H, 2, t_max=T).load_state_dict(sd)  # strict
    m2 = rt.BNGRU(C, H, 2, t_max=T)
    m2.load_state_dict_rbn(sd)
    x = torch.randn(T, N, C)
    torch.testing.assert_close(m2(x)[0], bn(x)[0], rtol=0, atol=0)
    with pytest.raises(KeyError, match="missing keys.*rnn.1.bias_ih"):
        m2.load_state_dict_rbn({k: v for k, v in sd.items() if k != "rnn.1.bias_ih"})
    nb = rt.GRU(C, H, bias=False)
    assert not nb.state_dict_rbn()["rnn.0.bias_hh"].any()
    with pytest.raises(ValueError, match="bias=False"):
        nb.load_state_dict_rbn(rt.GRU(C, H).state_dict_rbn())


def test_gru_constructor_contract():
    m = rt.BNGRU(C, H, 2, False, True, t_max=T)  # nn.GRU's positional order
    assert (m.input_size, m.hidden_size, m.num_layers, m.bias, m.batch_first) == (C, H, 2, False,
                                                                                  True)
    assert m.mode == "GRU" and isinstance(m, nn.Module)
    assert repr(rt.GRU(C, H, 2, batch_first=True)) == repr(nn.GRU(C, H, 2, batch_first=True))
    assert repr(m) == f"BNGRU({C}, {H}, num_layers=2, bias=False, batch_first=True, t_max={T})"
    assert repr(rt.GRU(C, H, bidirectional=True)) == repr(nn.GRU(C, H, bidirectional=True))
    with pytest.raises(TypeError, match="forget_bias"):
        rt.GRU(C, H, forget_bias=1.0)  # nn.GRU has none
    with pytest.raises(TypeError, match="proj_size"):
        rt.GRU(C, H, proj_size=2)
    with pytest.raises(TypeError, match="gamma_c"):
        rt.BNGRU(C, H, gamma_c=0.5)
    with pytest.raises(TypeError, match="t_max=9 does not apply"):
        rt.LNGRU(C, H, t_max=9)
    with pytest.raises(TypeError, match="eps"):
        rt.GRU(C, H, eps=1e-3)
    with pytest.raises(TypeError, match="init='spec' only"):
        rt.GRU(C, H, recurrent_init="identity")
    with pytest.warns(UserWarning, match="ln_input=False"):
        rt.LNGRU(1, H)
    with pytest.warns(UserWarning, match="nn.GRU"):
        rt.GRU(C, H, 1, dropout=0.5)


def test_gru_forward_contract_errors():
    m = rt.GRU(C, H)
    x = torch.randn(T, N, C)
    with pytest.raises(TypeError, match="lengths="):
        m(x, LENGTHS)
    with pytest.raises(TypeError, match="tensor h0"):
        m(x, (torch.zeros(1, N, H), torch.zeros(1, N, H)))
    with pytest.raises(RuntimeError, match="hidden size"):
        m(x, torch.zeros(1, N + 1, H))
    with pytest.raises(RuntimeError, match="input_size"):
        m(torch.randn(T, N, C + 1))


@pytest.mark.parametrize("kind", sorted(GRU_CLASSES))
def test_gru_pickle_deepcopy_torch_save(kind):
    torch.manual_seed(0)
    kw = {"t_max": T} if kind == "bngru" else {}
    m = GRU_CLASSES[kind](C, H, 2, **kw)
    x = torch.randn(T, N, C)
    m(x)
    m.eval()
    want = m(x)[0]
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    copies = [pickle.loads(pickle.dumps(m)), copy.deepcopy(m), torch.load(buf)]
    fresh = GRU_CLASSES[kind](C, H, 2, **kw)
    fresh.load_state_dict(m.state_dict())
    copies.append(fresh.eval())
    for c in copies:
        assert type(c) is type(m) and repr(c) == repr(m)
        torch.testing.assert_close(c(x)[0], want, rtol=0, atol=0)


@pytest.mark.parametrize("kind,batch_first", [("bngru", True), ("lngru", False), ("gru", True)])
def test_gru_normalized_packed_and_batch_first_match_reference(kind, batch_first):
    torch.manual_seed(0)
    kw = {"t_max": T} if kind == "bngru" else {}
    m = GRU_CLASSES[kind](C, H, 2, batch_first=batch_first, dtype=torch.float64, **kw)
    with torch.no_grad():  # every parameter away from its initial value
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ref = torch_cells.RecurrentStack(kind, C, H, 2, t_max=T).double()
    ref.load_state_dict(m.state_dict_rbn())
    x, h0 = make_gru_inputs("padded", batch_first, 2, torch.float64, True)
    y, h, _ = run_gru(m, "packed", x, h0, batch_first)
    xt = x.transpose(0, 1) if batch_first else x
    ry, rh = ref(xt, LENGTHS, h0)
    ry = ry.transpose(0, 1) if batch_first else ry
    assert_close(y, ry, torch.float64, "output")
    assert_close(h, rh, torch.float64, "h_n")
    rp = dict(ref.named_parameters())
    names = [n for n in rp if n.startswith("rnn.1.")]
    ga = torch.autograd.grad(y.sum() + h.sum(),
                             [x, h0, *(getattr(m, rt._torch_name(n)) for n in names)])
    gb = torch.autograd.grad(ry.sum() + rh.sum(), [x, h0, *(rp[n] for n in names)])
    for a, b, n in zip(ga, gb, ["x", "h0", *names]):
        assert_close(a, b, torch.float64, n)
    for n, b in ref.state_dict().items():  # running statistics after the training forward
        if "running" in n:
            assert_close(m.state_dict_rbn()[n], b, torch.float64, n)
    # eval mode: population statistics, steps past t_max on the last row
    m.eval()
    ref.eval()
    with torch.no_grad():
        xl = torch.randn(2 * T, N, C, dtype=torch.float64)
        assert_close(m(xl.transpose(0, 1) if batch_first else xl, h0)[1], ref(xl, None, h0)[1],
                     torch.float64, "eval h_n")
