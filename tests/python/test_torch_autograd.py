"""rbn.torch under every use of autograd: repeated backwards through a retained graph, several
forwards before one backward, partial outputs, hooks, double backward, gradcheck (with its
reentrancy check) in float64, and dtypes. Run with Debian's python3, PYTHONPATH=build/python."""
import os
import sys

import pytest
import torch

import rbn.torch as rt

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
import torch_cells  # noqa: E402

T, N, C, H, L = 6, 4, 3, 5, 2
LENGTHS = torch.tensor([6, 2, 5, 1])
KINDS = ["lstm", "bnlstm", "bnx", "bnx-seq", "lnlstm"]


def make(kind, dtype=torch.float64, **kw):
    """A module with every parameter moved away from its initial value (so each one matters)."""
    torch.manual_seed(0)
    if kind in ("bnx", "bnx-seq"):
        m = rt.BNxLSTM(C, H, L, t_max=T, dtype=dtype, sequence_wise=kind == "bnx-seq", **kw)
    else:
        cls = {"lstm": rt.LSTM, "bnlstm": rt.BNLSTM, "lnlstm": rt.LNLSTM}[kind]
        m = cls(C, H, L, dtype=dtype, **({"t_max": T} if kind == "bnlstm" else {}), **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def inputs(dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, N, C, dtype=dtype, generator=g, requires_grad=True)
    h0 = torch.randn(L, N, H, dtype=dtype, generator=g, requires_grad=True)
    c0 = torch.randn(L, N, H, dtype=dtype, generator=g, requires_grad=True)
    return x, h0, c0


def weighted_loss(y, hT, cT, seed=2):
    g = torch.Generator().manual_seed(seed)
    return ((torch.randn(y.shape, generator=g, dtype=y.dtype) * y).sum()
            + (torch.randn(hT.shape, generator=g, dtype=y.dtype) * hT).sum() + cT.sum())


def reference(m):
    """tools/torch_cells.py's plain PyTorch stack with m's parameters and statistics."""
    c = m._config
    ref = torch_cells.RecurrentStack(
        c["cell"], C, H, L, t_max=c["t_max"], eps=c["eps"], momentum=c["momentum"],
        ln_input=c["ln_input"], learn_init_state=c["learn_init_state"]).to(m.weight_ih_l0.dtype)
    ref.load_state_dict(m.state_dict_rbn())
    ref.train(m.training)
    return ref


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("train", [True, False])
def test_repeated_backward_gives_identical_gradients(kind, train):
    m = make(kind).train(train)
    x, h0, c0 = inputs()
    y, (hT, cT) = m(x, (h0, c0), lengths=LENGTHS)
    loss = weighted_loss(y, hT, cT)
    wrt = [x, h0, c0, *m.parameters()]
    first = torch.autograd.grad(loss, wrt, retain_graph=True)
    for _ in range(3):
        again = torch.autograd.grad(loss, wrt, retain_graph=True)
        for a, b in zip(first, again):
            assert torch.equal(a, b)
    # ... and they are the right ones: the plain PyTorch stack's (float64; relative to size too:
    # bnlstm's recurrent weight gradients, of size 10, differed by 1.6e-10 with another BLAS's
    # summation order)
    ref = reference(make(kind).train(train))
    ry, (rhT, rcT) = ref(x, LENGTHS, h0, c0)
    want = torch.autograd.grad(weighted_loss(ry, rhT, rcT), [x, h0, c0, *ref.parameters()])
    for a, b in zip(first[:3], want[:3]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    got = dict(zip([n for n, _ in m.named_parameters()], first[3:]))
    for (n, _), b in zip(ref.named_parameters(), want[3:]):
        if n.endswith(".bias") and n.count(".") == 2:
            k = n.split(".")[1]
            torch.testing.assert_close(got[f"bias_ih_l{k}"], b, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(got[f"bias_hh_l{k}"], b, rtol=1e-10, atol=1e-10)
        else:
            torch.testing.assert_close(got[rt._torch_name(n)], b, rtol=1e-10, atol=1e-10, msg=n)


@pytest.mark.parametrize("kind", ["lstm", "bnlstm", "lnlstm"])
def test_two_forwards_then_backwards_in_any_order(kind):
    m = make(kind)
    x1, h1, c1 = inputs(seed=3)
    x2, h2, c2 = inputs(seed=4)
    wrt1, wrt2 = [x1, h1, *m.parameters()], [x2, c2, *m.parameters()]

    def grads(x, h0, c0, wrt, seed):
        y, (hT, cT) = m(x, (h0, c0))
        return torch.autograd.grad(weighted_loss(y, hT, cT, seed), wrt)

    alone1 = grads(x1, h1, c1, wrt1, 5)
    alone2 = grads(x2, h2, c2, wrt2, 6)
    ya, (ha, ca) = m(x1, (h1, c1))
    yb, (hb, cb) = m(x2, (h2, c2))
    got1 = torch.autograd.grad(weighted_loss(ya, ha, ca, 5), wrt1)  # its activations were replaced
    got2 = torch.autograd.grad(weighted_loss(yb, hb, cb, 6), wrt2)
    for a, b in zip(got1 + got2, alone1 + alone2):
        assert torch.equal(a, b)
    # one loss over both calls: the sum of the two
    ya, (ha, ca) = m(x1, (h1, c1))
    yb, (hb, cb) = m(x2, (h2, c2))
    both = torch.autograd.grad(weighted_loss(ya, ha, ca, 5) + weighted_loss(yb, hb, cb, 6),
                               list(m.parameters()))
    for a, b, c in zip(both, alone1[2:], alone2[2:]):
        torch.testing.assert_close(a, b + c, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["lstm", "bnlstm", "lnlstm"])
def test_partial_outputs_and_hooks(kind):
    m = make(kind)
    ref = reference(make(kind))
    x, h0, c0 = inputs()
    _, (hT, _) = m(x, (h0, c0), lengths=LENGTHS)
    _, (rhT, _) = ref(x, LENGTHS, h0, c0)
    got = torch.autograd.grad(hT[-1].sum(), [x, h0, c0])  # hT only: y and cT get no gradient
    want = torch.autograd.grad(rhT[-1].sum(), [x, h0, c0])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    # a tensor hook doubling dL/dy doubles every gradient of a loss on y alone
    seen = []
    m.register_forward_hook(lambda mod, inp, out: seen.append(out[0].shape))
    y, _ = m(x, (h0, c0))
    plain = torch.autograd.grad(y.sum(), [x], retain_graph=True)[0]
    y.register_hook(lambda g: 2 * g)
    doubled = torch.autograd.grad(y.sum(), [x])[0]
    torch.testing.assert_close(doubled, 2 * plain, rtol=0, atol=1e-12)
    assert seen == [y.shape]


def test_double_backward_raises_a_clear_error():
    m = make("bnlstm")
    x, h0, c0 = inputs()
    y, _ = m(x, (h0, c0))
    (gx,) = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        gx.sum().backward()


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float64_with_reentrancy(kind):
    m = make(kind)
    x, h0, c0 = inputs()
    names = [n for n, _ in m.named_parameters()]

    def fn(x, h0, c0, *params):  # the parameters as inputs: gradcheck perturbs them
        saved = [p.data for p in m.parameters()]
        for p, v in zip(m.parameters(), params):
            p.data = v
        try:
            y, (hT, cT) = m(x, (h0, c0), lengths=LENGTHS)
        finally:
            for p, v in zip(m.parameters(), saved):
                p.data = v
        return y, hT, cT

    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    assert len(params) == len(names)
    assert torch.autograd.gradcheck(fn, (x, h0, c0, *params), nondet_tol=0.0)


def test_gradcheck_eval_mode_bnlstm():
    m = make("bnlstm")
    with torch.no_grad():
        for n, b in m.named_buffers():
            b.copy_(torch.rand_like(b) + (0.2 if "var" in n else -0.5))
    m.eval()
    x, h0, c0 = inputs()
    assert torch.autograd.gradcheck(lambda x, h0: m(x, (h0, c0))[0], (x, h0))


def test_float64_computes_in_float64():
    m = make("lnlstm")
    ref = reference(m)
    x, h0, c0 = inputs()
    y, (hT, cT) = m(x, (h0, c0))
    ry, (rhT, rcT) = ref(x, None, h0, c0)
    assert y.dtype == torch.float64
    for a, b in ((y, ry), (hT, rhT), (cT, rcT)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # .double() of a float32 module too
    m32 = make("bnlstm", dtype=torch.float32)
    m64 = m32.double()
    assert m64.weight_ih_l0.dtype == torch.float64
    y64, _ = m64(x, (h0, c0))
    torch.testing.assert_close(y64, reference(m64)(x, None, h0, c0)[0], rtol=0, atol=1e-12)


def test_unsupported_dtypes_and_mismatches_raise():
    with pytest.raises(TypeError, match="float16"):
        rt.BNLSTM(C, H, dtype=torch.float16)
    m = rt.LNLSTM(C, H).to(torch.bfloat16)
    with pytest.raises(TypeError, match="bfloat16"):
        m(torch.randn(T, N, C, dtype=torch.bfloat16))
    m = rt.LSTM(C, H)
    with pytest.raises(RuntimeError, match="float32"):
        m(torch.randn(T, N, C, dtype=torch.float64))


def test_inplace_change_before_backward_raises():
    m = make("lstm")
    x, h0, c0 = inputs()
    y, _ = m(x, (h0, c0))
    with torch.no_grad():
        m.weight_hh_l0.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    # eval-mode population statistics changed by a training forward before the backward
    m = make("bnlstm").eval()
    y, _ = m(x, (h0, c0))
    m.train()
    m(x.detach())
    with pytest.raises(RuntimeError, match="population statistics"):
        y.sum().backward()


# ==== the GRU family (hx = h0 alone, forward -> (output, h_n)) ====================================

GRU_KINDS = ["gru", "bngru", "lngru"]


def make_gru(kind, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    cls = {"gru": rt.GRU, "bngru": rt.BNGRU, "lngru": rt.LNGRU}[kind]
    m = cls(C, H, L, dtype=dtype, **({"t_max": T} if kind == "bngru" else {}), **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def gru_loss(y, hT, seed=2):
    g = torch.Generator().manual_seed(seed)
    return ((torch.randn(y.shape, generator=g, dtype=y.dtype) * y).sum()
            + (torch.randn(hT.shape, generator=g, dtype=y.dtype) * hT).sum())


@pytest.mark.parametrize("kind", GRU_KINDS)
@pytest.mark.parametrize("train", [True, False])
def test_gru_repeated_backward_gives_identical_and_right_gradients(kind, train):
    m = make_gru(kind).train(train)
    x, h0, _ = inputs()
    y, hT = m(x, h0, lengths=LENGTHS)
    loss = gru_loss(y, hT)
    wrt = [x, h0, *m.parameters()]
    first = torch.autograd.grad(loss, wrt, retain_graph=True)
    for _ in range(3):
        for a, b in zip(first, torch.autograd.grad(loss, wrt, retain_graph=True)):
            assert torch.equal(a, b)
    ref = reference(make_gru(kind).train(train))
    ry, rhT = ref(x, LENGTHS, h0)
    names = [n for n, _ in ref.named_parameters()]
    want = torch.autograd.grad(gru_loss(ry, rhT), [x, h0, *ref.parameters()])
    for a, b in zip(first[:2], want[:2]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    got = dict(zip([n for n, _ in m.named_parameters()], first[2:]))
    for n, b in zip(names, want[2:]):  # one to one: nn.GRU's names are the SPEC's
        torch.testing.assert_close(got[rt._torch_name(n)], b, rtol=0, atol=1e-10, msg=n)


@pytest.mark.parametrize("kind", GRU_KINDS)
def test_gru_two_forwards_then_backwards(kind):
    m = make_gru(kind)
    x1, h1, _ = inputs(seed=3)
    x2, h2, _ = inputs(seed=4)
    wrt1, wrt2 = [x1, h1, *m.parameters()], [x2, h2, *m.parameters()]
    alone1 = torch.autograd.grad(gru_loss(*m(x1, h1), 5), wrt1)
    alone2 = torch.autograd.grad(gru_loss(*m(x2, h2), 6), wrt2)
    a = m(x1, h1)
    b = m(x2, h2)
    got1 = torch.autograd.grad(gru_loss(*a, 5), wrt1)  # its activations were replaced
    got2 = torch.autograd.grad(gru_loss(*b, 6), wrt2)
    for u, v in zip(got1 + got2, alone1 + alone2):
        assert torch.equal(u, v)


@pytest.mark.parametrize("kind", GRU_KINDS)
def test_gru_gradcheck_float64_with_reentrancy(kind):
    m = make_gru(kind)
    x, h0, _ = inputs()

    def fn(x, h0, *params):
        saved = [p.data for p in m.parameters()]
        for p, v in zip(m.parameters(), params):
            p.data = v
        try:
            y, hT = m(x, h0, lengths=LENGTHS)
        finally:
            for p, v in zip(m.parameters(), saved):
                p.data = v
        return y, hT

    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    assert torch.autograd.gradcheck(fn, (x, h0, *params), nondet_tol=0.0)


def test_gru_gradcheck_eval_mode_bngru():
    m = make_gru("bngru")
    with torch.no_grad():
        for n, b in m.named_buffers():
            b.copy_(torch.rand_like(b) + (0.2 if "var" in n else -0.5))
    m.eval()
    x, h0, _ = inputs()
    assert torch.autograd.gradcheck(lambda x, h0: m(x, h0)[0], (x, h0))


def test_gru_float64_computes_in_float64_and_float32_runs():
    m = make_gru("lngru")
    x, h0, _ = inputs()
    y, hT = m(x, h0)
    ry, rhT = reference(m)(x, None, h0)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, ry, rtol=0, atol=1e-12)
    torch.testing.assert_close(hT, rhT, rtol=0, atol=1e-12)
    m32 = make_gru("bngru", dtype=torch.float32)
    y32, _ = m32(x.float().detach(), h0.float().detach())
    ry32, _ = reference(m32.double())(x, None, h0)
    torch.testing.assert_close(y32.double(), ry32, rtol=0, atol=1e-5)
