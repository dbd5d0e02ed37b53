"""rbn.torch with bidirectional=True (SPEC section 2b) as a drop-in for nn.LSTM / nn.GRU: outputs
[T,N,2H] (batch_first too), h_n / c_n [2L,N,H], PackedSequence, parameter names, state_dict,
repeated backward; the normalized cells against tools/torch_cells.py (the reverse-statistics
rule), train-mode padding invariance, per-direction population statistics, the statistics pass,
checkpoints. Run with Debian's python3, PYTHONPATH=build/python."""
import copy
import io
import itertools
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import rbn
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


# ==== the plain cells against nn.LSTM / nn.GRU(bidirectional=True) ==============================

def pair(gru, L, batch_first, dtype):
    torch.manual_seed(0)
    ref = (nn.GRU if gru else nn.LSTM)(C, H, L, batch_first=batch_first, dtype=dtype,
                                       bidirectional=True)
    m = (rt.GRU if gru else rt.LSTM)(C, H, L, batch_first=batch_first, dtype=dtype,
                                     bidirectional=True)
    m.load_state_dict(ref.state_dict())
    return ref, m


def make_inputs(gru, form, batch_first, L, dtype, with_hx):
    g = torch.Generator().manual_seed(1)
    shape = (T, C) if form == "unbatched" else ((N, T, C) if batch_first else (T, N, C))
    x = torch.randn(shape, generator=g, dtype=dtype, requires_grad=True)
    hshape = (2 * L, H) if form == "unbatched" else (2 * L, N, H)
    if not with_hx:
        return x, None
    hs = [torch.randn(hshape, generator=g, dtype=dtype, requires_grad=True) for _ in range(2)]
    return x, (hs[0] if gru else tuple(hs))


def run(module, gru, form, x, hx, batch_first):
    """-> [output (padded, 0 past each row's end), h_n, (c_n)], the PackedSequence or None."""
    def split(state):
        return [state] if gru else list(state)

    if form == "packed":
        packed = pack_padded_sequence(x, LENGTHS, batch_first=batch_first, enforce_sorted=False)
        out, state = module(packed, hx)
        assert isinstance(out, PackedSequence)
        y, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
        return [y, *split(state)], out
    if form == "lengths":
        if isinstance(module, nn.RNNBase):  # nn's equivalent of lengths=: packed input
            return run(module, gru, "packed", x, hx, batch_first)
        y, state = module(x, hx, lengths=LENGTHS)
        return [y, *split(state)], None
    y, state = module(x, hx)
    return [y, *split(state)], None


CASES = list(itertools.product([False, True], [False, True], [1, 2],
                               ["padded", "packed", "unbatched", "lengths"], [False, True],
                               [torch.float32, torch.float64]))


@pytest.mark.parametrize("gru,batch_first,L,form,with_hx,dtype", CASES)
def test_matches_nn_bidirectional(gru, batch_first, L, form, with_hx, dtype):
    """Outputs, final states and every gradient (input, initial state, each parameter) of
    nn.LSTM / nn.GRU(bidirectional=True), ragged lengths through a PackedSequence."""
    ref, m = pair(gru, L, batch_first, dtype)
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in ref.named_parameters()]
    x, hx = make_inputs(gru, form, batch_first, L, dtype, with_hx)
    got, gp = run(m, gru, form, x, hx, batch_first)
    want, wp = run(ref, gru, form, x, hx, batch_first)
    if form == "packed":
        assert torch.equal(gp.batch_sizes, wp.batch_sizes)
        assert torch.equal(gp.sorted_indices, wp.sorted_indices)
        assert_close(gp.data, wp.data, dtype, "packed data")
    for a, b, what in zip(got, want, ("output", "h_n", "c_n")):
        assert a.shape == b.shape and a.dtype == b.dtype, what
        assert_close(a, b, dtype, what)
    if form != "unbatched":
        assert got[0].shape[-1] == 2 * H and got[1].shape == (2 * L, N, H)
    g = torch.Generator().manual_seed(2)
    w = [torch.randn(t.shape, generator=g, dtype=dtype) for t in want]
    hxs = [] if hx is None else ([hx] if gru else list(hx))
    gm = torch.autograd.grad(sum((a * b).sum() for a, b in zip(got, w)),
                             [x, *hxs, *m.parameters()])
    gr = torch.autograd.grad(sum((a * b).sum() for a, b in zip(want, w)),
                             [x, *hxs, *ref.parameters()])
    names = ["x"] + ["h0", "c0"][:len(hxs)] + [n for n, _ in ref.named_parameters()]
    for a, b, n in zip(gm, gr, names):
        assert_close(a, b, dtype, "grad " + n)


def test_names_init_repr_and_from_lstm():
    torch.manual_seed(11)
    ref = nn.LSTM(C, H, 2, bidirectional=True)
    torch.manual_seed(11)
    m = rt.LSTM(C, H, 2, bidirectional=True)  # init='torch': nn.LSTM's draws, in its order
    for (n, a), (rn, b) in zip(m.named_parameters(), ref.named_parameters()):
        assert n == rn and torch.equal(a, b)
    assert repr(m) == repr(ref) and m.bidirectional is True
    bn = rt.BNLSTM(C, H, 2, t_max=T, bidirectional=True)
    names = [n for n, _ in bn.named_parameters()]
    assert names[names.index("weight_ih_l0_reverse") - 1] == "bn_c_bias_l0"
    assert bn.weight_ih_l1_reverse.shape == (4 * H, 2 * H)
    assert bn.bn_h_running_mean_l1_reverse.shape == (T, 4 * H)
    assert "bidirectional=True" in repr(bn)
    b = bn.bias_ih_l1_reverse + bn.bias_hh_l1_reverse  # SPEC init per direction: b_f = 1
    assert torch.equal(b[H:2 * H], torch.ones(H))
    f = rt.BNGRU.from_gru(nn.GRU(C, H, 2, bidirectional=True), t_max=T)
    assert f.bidirectional and f.weight_hh_l1_reverse.shape == (3 * H, H)
    g = rt.BNLSTM.from_lstm(ref, t_max=T)
    for n, p in ref.named_parameters():
        assert torch.equal(getattr(g, n), p)


def test_state_dict_round_trips():
    torch.manual_seed(0)
    m = rt.BNLSTM(C, H, 2, t_max=T, bidirectional=True, dtype=torch.float64)
    x = torch.randn(T, N, C, dtype=torch.float64)
    m(x, lengths=LENGTHS)  # running statistics away from their start
    m.eval()
    want = m(x, lengths=LENGTHS)[0]
    # the torch names
    m2 = rt.BNLSTM(C, H, 2, t_max=T, bidirectional=True, dtype=torch.float64).eval()
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2(x, lengths=LENGTHS)[0], want)
    # the SPEC names, which tools/torch_cells.py holds too (strict)
    sd = m.state_dict_rbn()
    assert torch.equal(sd["rnn.1.reverse.bias"], m.bias_ih_l1_reverse + m.bias_hh_l1_reverse)
    assert torch.equal(sd["rnn.0.reverse.bn_c.running_var"], m.bn_c_running_var_l0_reverse)
    torch_cells.RecurrentStack("bnlstm", C, H, 2, t_max=T, bidirectional=True).double() \
        .load_state_dict(sd)
    m3 = rt.BNLSTM(C, H, 2, t_max=T, bidirectional=True, dtype=torch.float64).eval()
    m3.load_state_dict_rbn(sd)
    assert torch.equal(m3(x, lengths=LENGTHS)[0], want)
    with pytest.raises(KeyError, match="rnn.1.reverse.bias"):
        m3.load_state_dict_rbn({k: v for k, v in sd.items() if k != "rnn.1.reverse.bias"})
    # a one-directional state dict does not fit
    with pytest.raises(RuntimeError, match="weight_ih_l0_reverse"):
        m3.load_state_dict(rt.BNLSTM(C, H, 2, t_max=T, dtype=torch.float64).state_dict())
    # pickling and torch.save
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    m4 = torch.load(buf)
    assert torch.equal(m4(x, lengths=LENGTHS)[0], want)
    assert torch.equal(copy.deepcopy(m)(x, lengths=LENGTHS)[0], want)


def test_step_api_and_hx_shape_refused():
    m = rt.BNLSTM(C, H, 2, t_max=T, bidirectional=True)
    x = torch.randn(T, N, C)
    with pytest.raises(ValueError, match=r"t0=3: a bidirectional module has no step API"):
        m(x, t0=3)
    with pytest.raises(RuntimeError, match=r"expected hidden h0 size \(4, 3, 6\)"):
        m(x, (torch.zeros(2, N, H), torch.zeros(2, N, H)))
    g = rt.GRU(C, H, 1, bidirectional=True)
    with pytest.raises(ValueError, match="no step API"):
        g(x, t0=1)
    with pytest.raises(RuntimeError, match=r"expected hidden size \(2, 3, 6\)"):
        g(x, torch.zeros(1, N, H))
    with pytest.raises(NotImplementedError, match="proj_size"):
        rt.LSTM(C, H, bidirectional=True, proj_size=2)


def test_stack_binding():
    """rbn.Stack(bidirectional=True): the shapes of SPEC 2b in and out, checked."""
    s = rbn.Stack("bnlstm", C, H, 2, T, dtype="float64", bidirectional=True)
    assert s.bidirectional and not rbn.Stack("bnlstm", C, H, 2, T).bidirectional
    names = s.param_names
    assert names.index("rnn.0.reverse.weight_ih") < names.index("rnn.1.weight_ih")
    assert s.params()["rnn.1.reverse.weight_ih"].shape == (4 * H, 2 * H)
    assert "rnn.1.reverse.bn_c.running_var" in s.buffer_names
    x = np.random.default_rng(0).standard_normal((T, N, C))
    y, hT, cT = s.forward(x, LENGTHS.numpy())
    assert y.shape == (T, N, 2 * H) and hT.shape == (4, N, H) and cT.shape == (4, N, H)
    assert (y[3:, 0] == 0).all() and (y[1:, 2] == 0).all()
    with pytest.raises(ValueError, match=r"dy: expected shape \[5,3,12\]"):
        s.backward(dy=np.ones((T, N, H)))
    dx, dh0, dc0 = s.backward(dy=np.ones((T, N, 2 * H)), dhT=np.ones((4, N, H)))
    assert dx.shape == (T, N, C) and dh0.shape == (4, N, H) and dc0.shape == (4, N, H)
    with pytest.raises(ValueError, match=r"h0: expected shape \[4,3,6\]"):
        s.forward(x, h0=np.zeros((2, N, H)))
    with pytest.raises(ValueError):  # rbn.RbnError: the step API
        s.forward(x, t0=2)


def test_dropout_between_bidirectional_layers():
    """Training with dropout: as the one-directional case (test_torch_module.py), the layers one
    by one, here each a bidirectional single-layer module reading 2H features, F.dropout between."""
    torch.manual_seed(0)
    m = rt.BNLSTM(C, H, 3, dropout=0.4, bidirectional=True, t_max=T, dtype=torch.float64)
    layers = []
    for k in range(3):
        one = rt.BNLSTM(C if k == 0 else 2 * H, H, 1, bidirectional=True, t_max=T,
                        dtype=torch.float64)
        one.load_state_dict({n.replace(f"_l{k}", "_l0"): v for n, v in m.state_dict().items()
                             if rt._layer_of(n) == k})
        layers.append(one)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, N, C, generator=g, dtype=torch.float64, requires_grad=True)
    h0, c0 = (torch.randn(6, N, H, generator=g, dtype=torch.float64) for _ in range(2))
    torch.manual_seed(7)
    y, (h, c) = m(x, (h0, c0), lengths=LENGTHS)
    torch.manual_seed(7)
    inp, hs = x, []
    for k, one in enumerate(layers):
        out, (hk, _) = one(inp, (h0[2 * k:2 * k + 2], c0[2 * k:2 * k + 2]), lengths=LENGTHS)
        hs.append(hk)
        inp = torch.nn.functional.dropout(out, 0.4, True) if k < 2 else out
    assert y.shape == (T, N, 2 * H) and torch.equal(y, inp) and torch.equal(h, torch.cat(hs))
    (gx,) = torch.autograd.grad(y.sum(), [x])
    (rx,) = torch.autograd.grad(inp.sum(), [x])
    assert_close(gx, rx, torch.float64)


# ==== the normalized cells against tools/torch_cells.py ==========================================

NORMALIZED = ["bnlstm", "bnx", "bnx-seq", "lnlstm", "bngru", "lngru"]


def make(kind, L=2, dtype=torch.float64, **kw):
    """A bidirectional module, every parameter moved away from its initial value."""
    torch.manual_seed(0)
    if kind in ("bnx", "bnx-seq"):
        m = rt.BNxLSTM(C, H, L, t_max=T, dtype=dtype, sequence_wise=kind == "bnx-seq",
                       bidirectional=True, **kw)
    else:
        cls = {"lstm": rt.LSTM, "bnlstm": rt.BNLSTM, "lnlstm": rt.LNLSTM, "gru": rt.GRU,
               "bngru": rt.BNGRU, "lngru": rt.LNGRU}[kind]
        bn = {"t_max": T} if kind in ("bnlstm", "bngru") else {}
        m = cls(C, H, L, dtype=dtype, bidirectional=True, **bn, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def reference(m):
    """tools/torch_cells.py's bidirectional stack with m's parameters and statistics."""
    c = m._config
    ref = torch_cells.RecurrentStack(
        c["cell"], C, H, m.num_layers, t_max=c["t_max"], eps=c["eps"], momentum=c["momentum"],
        ln_input=c["ln_input"], bidirectional=True).to(m.weight_ih_l0.dtype)
    ref.load_state_dict(m.state_dict_rbn())
    ref.train(m.training)
    return ref


def torch_names(m):
    """SPEC name -> the module's parameter(s) getting its gradient (an LSTM's rnn.k.bias: both
    bias_ih and bias_hh)."""
    out = {}
    for spec in m._spec_params:
        if rt._is_bias(spec):
            _, suffix, _ = rt._spec_parts(spec)
            out[spec] = ["bias_ih" + suffix, "bias_hh" + suffix]
        else:
            out[spec] = [rt._torch_name(spec)]
    return out


def run_both(m, ref, x, h0, c0, lengths):
    gru = m._gru
    hx = h0 if gru else (h0, c0)
    y, state = m(x, hx, lengths=lengths)
    ry, rstate = ref(x, lengths, h0) if gru else ref(x, lengths, h0, c0)
    got = [y, state] if gru else [y, *state]
    want = [ry, rstate] if gru else [ry, *rstate]
    return got, want


def inputs(L, dtype=torch.float64, seed=1, T_=T, N_=N):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T_, N_, C, dtype=dtype, generator=g, requires_grad=True)
    h0 = torch.randn(2 * L, N_, H, dtype=dtype, generator=g, requires_grad=True)
    c0 = torch.randn(2 * L, N_, H, dtype=dtype, generator=g, requires_grad=True)
    return x, h0, c0


@pytest.mark.parametrize("kind", NORMALIZED)
@pytest.mark.parametrize("train", [True, False])
def test_normalized_match_reference(kind, train):
    """Outputs, states, every gradient and (training) the running statistics of each direction;
    in eval mode the population statistics, each direction's own (rows past t_max clamped)."""
    m = make(kind).train(train)
    if not train:  # population statistics: random, and different per direction
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for n, b in m.named_buffers():
                b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype) if "mean" in n
                        else torch.rand(b.shape, generator=g, dtype=b.dtype) + 0.2)
    ref = reference(m)
    T_ = T if train else T + 3  # inference past t_max
    x, h0, c0 = inputs(2, T_=T_)
    lengths = LENGTHS if train else torch.tensor([T_, 4, T_ - 1])
    got, want = run_both(m, ref, x, h0, c0, lengths)
    for a, b, what in zip(got, want, ("y", "h_n", "c_n")):
        assert a.shape == b.shape, what
        assert_close(a, b, torch.float64, what)
    g = torch.Generator().manual_seed(2)
    w = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in want]
    wrt = [x, h0] + ([] if m._gru else [c0])
    names = torch_names(m)
    rp = dict(ref.named_parameters())
    specs = list(names)
    gm = torch.autograd.grad(sum((a * b).sum() for a, b in zip(got, w)),
                             wrt + [getattr(m, n) for s in specs for n in names[s]])
    gr = torch.autograd.grad(sum((a * b).sum() for a, b in zip(want, w)),
                             wrt + [rp[s] for s in specs])
    for a, b, what in zip(gm[:len(wrt)], gr[:len(wrt)], ("x", "h0", "c0")):
        assert_close(a, b, torch.float64, "grad " + what)
    it = iter(gm[len(wrt):])
    for s, b in zip(specs, gr[len(wrt):]):
        for n in names[s]:
            assert_close(next(it), b, torch.float64, "grad " + n)
    got_b, want_b = m.state_dict_rbn(), ref.state_dict()
    for n in m._spec_buffers:
        assert_close(got_b[n], want_b[n], torch.float64, n)


@pytest.mark.parametrize("kind", ["bnlstm", "bngru", "lstm"])
def test_float32_close_to_reference(kind):
    m64 = make(kind)
    ref = reference(m64)
    m = copy.deepcopy(m64).float()
    x, h0, c0 = (t.detach() for t in inputs(2))
    hx = h0.float() if m._gru else (h0.float(), c0.float())
    y, state = m(x.float(), hx, lengths=LENGTHS)
    got = [y, state] if m._gru else [y, *state]
    _, want = run_both(m64, ref, x, h0, c0, LENGTHS)
    # plain cells to float rounding; BN steps with a single valid row (steps 3, 4 here) have
    # variance 0 in double but a rounding-sized one in float, amplified by up to gamma/sqrt(eps)
    tol = 1e-5 if kind == "lstm" else 1e-4
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        assert (a.double() - b).abs().max() < tol


@pytest.mark.parametrize("kind", ["bnlstm", "bnx-seq", "bngru", "lnlstm"])
def test_train_mode_padding_invariance(kind):
    """Junk in padded steps, extra steps and rows of length 0 change nothing valid (outputs,
    states, running statistics of both directions, gradients)."""
    m1 = make(kind)
    m2 = copy.deepcopy(m1)
    x, h0, c0 = inputs(2)
    g = torch.Generator().manual_seed(9)
    xp = 50 * torch.randn(T + 3, N + 2, C, generator=g, dtype=torch.float64)
    with torch.no_grad():
        xp[:T, :N] = x
        for n, ln in enumerate(LENGTHS.tolist()):
            xp[ln:, n] = 1e3 * torch.randn(T + 3 - ln, C, generator=g, dtype=torch.float64)
    h0p = torch.cat([h0.detach(), torch.randn(4, 2, H, generator=g, dtype=torch.float64)], 1)
    c0p = torch.cat([c0.detach(), torch.randn(4, 2, H, generator=g, dtype=torch.float64)], 1)
    lp = torch.cat([LENGTHS, torch.zeros(2, dtype=LENGTHS.dtype)])
    hx1 = h0 if m1._gru else (h0, c0)
    hx2 = h0p if m2._gru else (h0p, c0p)
    y1, s1 = m1(x, hx1, lengths=LENGTHS)
    y2, s2 = m2(xp, hx2, lengths=lp)
    h1, h2 = (s1, s2) if m1._gru else (s1[0], s2[0])
    assert_close(y2[:T, :N], y1, torch.float64, "y")
    assert (y2[T:] == 0).all() and (y2[:, N:] == 0).all()
    assert_close(h2[:, :N], h1, torch.float64, "h_n")
    assert torch.equal(h2[:, N:], h0p[:, N:])
    for (n, a), b in zip(m1.named_buffers(), m2.buffers()):
        assert_close(b, a, torch.float64, n)
    wy = torch.randn(T + 3, N + 2, 2 * H, generator=g, dtype=torch.float64)
    ((wy[:T, :N] * y1).sum() + h1.sum()).backward()
    ((wy * y2).sum() + h2[:, :N].sum()).backward()
    for (n, a), b in zip(m1.named_parameters(), m2.parameters()):
        assert_close(b.grad, a.grad, torch.float64, n)


@pytest.mark.parametrize("kind", ["bnlstm", "gru", "lnlstm"])
def test_second_backward_same_gradients(kind):
    """Backward through a retained graph recomputes the forward: the same gradients, also after
    another forward ran in between."""
    m = make(kind)
    x, h0, c0 = inputs(2)
    hx = h0 if m._gru else (h0, c0)
    y, state = m(x, hx, lengths=LENGTHS)
    hT = state if m._gru else state[0]
    loss = (y * torch.linspace(-1, 1, 2 * H, dtype=y.dtype)).sum() + hT.square().sum()
    wrt = [x, h0, *m.parameters()]
    first = torch.autograd.grad(loss, wrt, retain_graph=True)
    m(torch.randn(T, N, C, dtype=torch.float64))  # another forward replaces the activations
    for _ in range(2):
        again = torch.autograd.grad(loss, wrt, retain_graph=True)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


def test_gradcheck_float64():
    m = make("bnlstm", L=2)
    x, h0, c0 = inputs(2, T_=4, N_=3)
    lengths = torch.tensor([4, 2, 3])
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def fn(x, h0, c0, *ps):
        saved = [p.data for p in m.parameters()]
        for p, v in zip(m.parameters(), ps):
            p.data = v
        try:
            y, (hT, cT) = m(x, (h0, c0), lengths=lengths)
        finally:
            for p, v in zip(m.parameters(), saved):
                p.data = v
        return y, hT, cT

    assert torch.autograd.gradcheck(fn, (x, h0, c0, *params), nondet_tol=0.0)


# ==== population statistics per direction ========================================================

def batches():
    g = torch.Generator().manual_seed(3)
    out = []
    for n, lens in ((4, [5, 2, 4, 1]), (3, [3, 5, 5]), (2, None)):
        x = torch.randn(T, n, C, generator=g, dtype=torch.float64)
        out.append((x, None if lens is None else torch.tensor(lens)))
    return out


@pytest.mark.parametrize("kind", ["bnlstm", "bnx-seq", "bngru"])
def test_statistics_pass_and_eval_per_direction(kind):
    """population_statistics() fills each direction's tables as the reference's pass does (the
    reverse ones by reverse step); eval() then normalizes each direction with its own."""
    m = make(kind)
    m(torch.randn(T, 6, C, dtype=torch.float64))  # running averages away from their start
    ref = reference(m)
    with m.population_statistics():
        for x, lengths in batches():
            y, _ = m(x, lengths=lengths)
            assert y.shape == (T, x.shape[1], 2 * H)
    ref.popstats_begin()
    for x, lengths in batches():
        ref.popstats_feed(x, lengths)
    ref.popstats_finish()
    assert m.popstats_kind == "pass"
    got, want = m.state_dict_rbn(), ref.state_dict()
    for n in m._spec_buffers:
        assert_close(got[n], want[n], torch.float64, n)
    assert not torch.allclose(got["rnn.0.bn_x.running_mean"],
                              got["rnn.0.reverse.bn_x.running_mean"])
    m.eval()
    ref.eval()
    x, h0, c0 = inputs(2, T_=T + 2)
    lengths = torch.tensor([T + 2, 3, T + 1])
    a, b = run_both(m, ref, x, h0, c0, lengths)
    for u, v in zip(a, b):
        assert_close(u, v, torch.float64)


# ==== checkpoints ================================================================================

@pytest.mark.parametrize("kind", ["bnlstm", "bngru"])
def test_save_load_with_a_classifier_head(tmp_path, kind):
    """rbn.save / rbn.load of a bidirectional stack: metadata bidirectional=true, the head reads
    [forward h at len-1 || reverse h after x[0]] (nn.Linear(2H, K))."""
    m = make(kind, dtype=torch.float32)
    m(torch.randn(T, 4, C))
    head = nn.Linear(2 * H, 3)
    with pytest.raises(ValueError, match=r"nn.Linear\(12, K\)"):
        rbn.save(tmp_path / "bad.safetensors", m, nn.Linear(H, 3))
    with pytest.raises(ValueError, match="bidirectional stack cannot be a language model"):
        rbn.save(tmp_path / "bad.safetensors", m, nn.Linear(2 * H, C), head_kind="lm")
    rbn.save(tmp_path / "m.safetensors", m, head)
    back = rbn.load(tmp_path / "m.safetensors")
    assert back.metadata["bidirectional"] == "true" and back.rnn.bidirectional
    assert back.head.in_features == 2 * H
    m.eval()
    x = torch.randn(T, 4, C)
    lengths = torch.tensor([5, 2, 4, 1])
    with torch.no_grad():
        y, state = m(x, lengths=lengths)
        hT = state if m._gru else state[0]
        want = head(torch.cat([hT[-2], hT[-1]], -1))
        got = back(x, lengths=lengths)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # the reverse state of the top layer is the one after reading x[0]: with the valid prefix
    # alone the same
    with torch.no_grad():
        got2 = back(x[:2, 1:2], lengths=torch.tensor([2]))
    torch.testing.assert_close(got2, want[1:2], rtol=1e-6, atol=1e-6)
    one = rt.BNLSTM(C, H, 1, t_max=T)
    rbn.save(tmp_path / "one.safetensors", one)
    assert rbn.load(tmp_path / "one.safetensors").metadata["bidirectional"] == "false"



def test_tanh_rnn_stack_matches_nn_rnn_bidirectional():
    """The tanh RNN (no rbn.torch class; rbn.Stack('rnn')) bidirectional against nn.RNN on packed
    ragged input: outputs, final states, input and parameter gradients (float64)."""
    torch.manual_seed(0)
    ref = nn.RNN(C, H, 2, bidirectional=True, dtype=torch.float64)
    s = rbn.Stack("rnn", C, H, 2, T, dtype="float64", bidirectional=True)
    p = dict(ref.named_parameters())
    for name in s.param_names:
        _, suffix, rest = rt._spec_parts(name)
        v = p["bias_ih" + suffix] + p["bias_hh" + suffix] if rest == "bias" else p[rest + suffix]
        s.set(name, v.detach().numpy())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, N, C, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, N, H, generator=g, dtype=torch.float64)
    out, hn = ref(pack_padded_sequence(x, LENGTHS, enforce_sorted=False), h0)
    want, _ = pad_packed_sequence(out, total_length=T)
    y, hT, _ = s.forward(x.detach().numpy(), LENGTHS.numpy(), h0.numpy())
    assert y.shape == (T, N, 2 * H) and hT.shape == (4, N, H)
    assert_close(torch.from_numpy(y), want, torch.float64, "y")
    assert_close(torch.from_numpy(hT), hn, torch.float64, "h_n")
    wy = torch.randn(T, N, 2 * H, generator=g, dtype=torch.float64)
    wh = torch.randn(4, N, H, generator=g, dtype=torch.float64)
    gr = torch.autograd.grad((want * wy).sum() + (hn * wh).sum(), [x, *p.values()])
    s.zero_grad()
    dx, _, _ = s.backward(dy=wy.numpy(), dhT=wh.numpy())
    assert_close(torch.from_numpy(dx), gr[0], torch.float64, "dx")
    grads, pg = s.grads(), dict(zip(p, gr[1:]))
    for name in s.param_names:
        _, suffix, rest = rt._spec_parts(name)
        key = ("bias_ih" if rest == "bias" else rest) + suffix
        assert_close(torch.from_numpy(grads[name]), pg[key], torch.float64, name)


# ==== the tanh RNNs: rbn.torch.RNN / BNRNN as nn.RNN ==============================================

@pytest.mark.parametrize("bidirectional,form,dtype", list(itertools.product(
    [False, True], ["padded", "packed", "unbatched", "lengths"], [torch.float32, torch.float64])))
def test_rnn_matches_nn_rnn(bidirectional, form, dtype):
    torch.manual_seed(0)
    ref = nn.RNN(C, H, 2, bidirectional=bidirectional, dtype=dtype)
    m = rt.RNN(C, H, 2, bidirectional=bidirectional, dtype=dtype)
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert repr(m) == repr(ref) and m.mode == ref.mode == "RNN_TANH"
    m.load_state_dict(ref.state_dict())
    D = 2 if bidirectional else 1
    g = torch.Generator().manual_seed(1)
    x = torch.randn((T, C) if form == "unbatched" else (T, N, C), generator=g, dtype=dtype,
                    requires_grad=True)
    h0 = torch.randn((2 * D, H) if form == "unbatched" else (2 * D, N, H), generator=g,
                     dtype=dtype, requires_grad=True)
    got, _ = run(m, True, form, x, h0, False)
    want, _ = run(ref, True, form, x, h0, False)
    for a, b, what in zip(got, want, ("output", "h_n")):
        assert a.shape == b.shape, what
        assert_close(a, b, dtype, what)
    w = [torch.randn(t.shape, generator=g, dtype=dtype) for t in want]
    gm = torch.autograd.grad(sum((a * b).sum() for a, b in zip(got, w)), [x, h0, *m.parameters()])
    gr = torch.autograd.grad(sum((a * b).sum() for a, b in zip(want, w)),
                             [x, h0, *ref.parameters()])
    for a, b, n in zip(gm, gr, ["x", "h0"] + [n for n, _ in ref.named_parameters()]):
        assert_close(a, b, dtype, "grad " + n)


def test_bnrnn_bidirectional_reverse_rule_and_contract():
    """BNRNN's reverse direction is the one-directional BNRNN on each row's reversed valid
    prefix (outputs, final state, running statistics of the reverse tables); names, refusals."""
    torch.manual_seed(0)
    m = rt.BNRNN(C, H, 1, bidirectional=True, t_max=T, dtype=torch.float64)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    assert {"bn_x_weight_l0_reverse", "bn_h_weight_l0_reverse"} <= set(dict(m.named_parameters()))
    assert m.bn_h_running_var_l0_reverse.shape == (T, H)
    one = rt.BNRNN(C, H, 1, t_max=T, dtype=torch.float64)
    one.load_state_dict({n.replace("_reverse", ""): v for n, v in m.state_dict().items()
                         if n.endswith("_reverse")})
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T, N, C, generator=g, dtype=torch.float64)
    h0 = torch.randn(2, N, H, generator=g, dtype=torch.float64)
    y, hn = m(x, h0, lengths=LENGTHS)
    xr = torch.zeros_like(x)
    for n, ln in enumerate(LENGTHS.tolist()):
        xr[:ln, n] = x[:ln, n].flip(0)
    yr, hr = one(xr, h0[1:], lengths=LENGTHS)
    for n, ln in enumerate(LENGTHS.tolist()):
        assert_close(y[:ln, n, H:], yr[:ln, n].flip(0), torch.float64, f"row {n}")
    assert_close(hn[1], hr[0], torch.float64, "reverse h_n")
    for name, b in one.named_buffers():
        assert_close(getattr(m, name + "_reverse"), b, torch.float64, name)
    with pytest.raises(ValueError, match="nonlinearity='relu'"):
        rt.RNN(C, H, nonlinearity="relu")
    with pytest.raises(TypeError, match="gamma_c"):
        rt.BNRNN(C, H, gamma_c=0.5)
    with pytest.raises(ValueError, match="no step API"):
        m(x, t0=1)
    f = rt.BNRNN.from_rnn(nn.RNN(C, H, 2, bidirectional=True), t_max=T)
    assert f.bidirectional and f.weight_ih_l1_reverse.shape == (H, 2 * H)
