"""rbn.Stack for the GRU family: `gru` against torch.nn.GRU (ragged lengths through a
PackedSequence), `bngru` and `lngru` against the formulas of docs/cells.md written here in a few
lines of torch autograd. Run with Debian's python3, PYTHONPATH=build/python."""
import numpy as np
import pytest
import torch

import rbn

T, N, C, H, L = 6, 5, 3, 7, 2
LENGTHS = [6, 2, 5, 6, 1]


def test_gru_cells_are_listed():
    assert {"gru", "bngru", "lngru"} <= set(rbn.cells())


def gru_from_torch(dtype):
    torch.manual_seed(0)
    ref = torch.nn.GRU(C, H, L).double()
    with torch.no_grad():  # biases away from 0 so that both matter
        for p in ref.parameters():
            p.add_(0.3 * torch.randn_like(p))
    st = rbn.Stack("gru", C, H, L, dtype=dtype)
    for name, p in ref.named_parameters():  # weight_ih_l0 -> rnn.0.weight_ih
        base, layer = name.rsplit("_l", 1)
        st.set(f"rnn.{layer}.{base}", p.detach().numpy().astype(dtype))
    return ref, st


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 2e-5)])
def test_gru_matches_torch_nn_gru(dtype, tol):
    ref, st = gru_from_torch(dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, N, C, dtype=torch.float64, generator=g, requires_grad=True)
    h0 = torch.randn(L, N, H, dtype=torch.float64, generator=g, requires_grad=True)
    lengths = torch.tensor(LENGTHS)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, hT = ref(packed, h0)
    y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    wy, wh = torch.randn_like(y), torch.randn_like(hT)
    ((wy * y).sum() + (wh * hT).sum()).backward()

    c0 = np.random.default_rng(3).standard_normal((L, N, H)).astype(dtype)
    npx = x.detach().numpy().astype(dtype)
    ry, rhT, rcT = st.forward(npx, np.array(LENGTHS, dtype=np.int32),
                              h0.detach().numpy().astype(dtype), c0, train=True)
    np.testing.assert_allclose(ry, y.detach().numpy(), atol=tol)
    np.testing.assert_allclose(rhT, hT.detach().numpy(), atol=tol)
    np.testing.assert_array_equal(rcT, c0)  # no cell state: c is carried unchanged
    st.zero_grad()
    dx, dh0, dc0 = st.backward(wy.numpy().astype(dtype), wh.numpy().astype(dtype))
    np.testing.assert_allclose(dx, x.grad.numpy(), atol=10 * tol)
    np.testing.assert_allclose(dh0, h0.grad.numpy(), atol=10 * tol)
    np.testing.assert_array_equal(dc0, 0)
    grads = st.grads()
    for name, p in ref.named_parameters():
        base, layer = name.rsplit("_l", 1)
        np.testing.assert_allclose(grads[f"rnn.{layer}.{base}"], p.grad.numpy(), atol=10 * tol,
                                   rtol=1e-4 if dtype == "float32" else 1e-7, err_msg=name)


def norm_gru(cell, params, x, h0, lengths, eps=1e-5):
    """bngru / lngru of docs/cells.md, train mode, in torch autograd: BN_t over each step's valid
    rows (biased variance, no beta), LN over the r,z and n blocks apart; padded rows keep h."""
    Tn, Nn, _ = x.shape
    hs, h_layers = [], []
    inp = x
    for k in range(L):
        p = {n.split(".", 2)[2]: v for n, v in params.items() if n.startswith(f"rnn.{k}.")}
        h = h0[k]
        outs = []
        for t in range(Tn):
            valid = torch.tensor([t < n for n in lengths])
            def norm(z, which):
                g = p[f"{'bn' if cell == 'bngru' else 'ln'}_{which}.weight"]
                if cell == "bngru":
                    zv = z[valid]
                    m, v = zv.mean(0), zv.var(0, unbiased=False)
                    return g * (z - m) / torch.sqrt(v + eps)
                parts = [z[:, :2 * H], z[:, 2 * H:]]
                normed = [(q - q.mean(1, keepdim=True)) /
                          torch.sqrt(q.var(1, unbiased=False, keepdim=True) + eps) for q in parts]
                return g * torch.cat(normed, 1)
            xt = norm(inp[t] @ p["weight_ih"].T, "x") + p["bias_ih"]
            ht = norm(h @ p["weight_hh"].T, "h") + p["bias_hh"]
            r = torch.sigmoid(xt[:, :H] + ht[:, :H])
            z = torch.sigmoid(xt[:, H:2 * H] + ht[:, H:2 * H])
            n = torch.tanh(xt[:, 2 * H:] + r * ht[:, 2 * H:])
            hn = (1 - z) * n + z * h
            h = torch.where(valid[:, None], hn, h)
            outs.append(torch.where(valid[:, None], h, torch.zeros_like(h)))
        inp = torch.stack(outs)
        h_layers.append(h)
    return inp, torch.stack(h_layers)


@pytest.mark.parametrize("cell", ["bngru", "lngru"])
def test_normalized_gru_stack_matches_its_formulas(cell):
    st = rbn.Stack(cell, C, H, L, t_max=T, dtype="float64")
    rng = np.random.default_rng(7)
    for name, v in st.params().items():  # away from the initial values
        st.set(name, (v + 0.3 * rng.standard_normal(v.shape)).astype(np.float64))
    params = {k: torch.tensor(v, requires_grad=True) for k, v in st.params().items()}
    g = torch.Generator().manual_seed(8)
    x = torch.randn(T, N, C, dtype=torch.float64, generator=g, requires_grad=True)
    h0 = torch.randn(L, N, H, dtype=torch.float64, generator=g, requires_grad=True)
    y, hT = norm_gru(cell, params, x, h0, LENGTHS)
    wy, wh = torch.randn_like(y), torch.randn_like(hT)
    ((wy * y).sum() + (wh * hT).sum()).backward()

    ry, rhT, _ = st.forward(x.detach().numpy(), np.array(LENGTHS, dtype=np.int32),
                            h0.detach().numpy(), train=True)
    np.testing.assert_allclose(ry, y.detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(rhT, hT.detach().numpy(), atol=1e-10)
    st.zero_grad()
    dx, dh0, _ = st.backward(wy.numpy(), wh.numpy())
    np.testing.assert_allclose(dx, x.grad.numpy(), atol=1e-9)
    np.testing.assert_allclose(dh0, h0.grad.numpy(), atol=1e-9)
    for name, v in st.grads().items():
        np.testing.assert_allclose(v, params[name].grad.numpy(), atol=1e-9, err_msg=name)
    if cell == "bngru":  # population statistics exist and are used in inference
        assert set(st.buffer_names) == {f"rnn.{k}.bn_{w}.running_{s}" for k in range(L)
                                        for w in "xh" for s in ("mean", "var")}
        yi, _, _ = st.forward(x.detach().numpy(), train=False, need_backward=False)
        assert np.isfinite(yi).all() and not np.allclose(yi, ry)


def test_forget_bias_on_a_gru_is_refused():
    with pytest.raises(ValueError, match="forget_bias"):
        rbn.Stack("bngru", C, H, forget_bias=1.0)
    rbn.Stack("lstm", C, H, forget_bias=2.0)  # the LSTMs keep it
