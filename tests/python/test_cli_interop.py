"""The rbn tool with PyTorch: nn.LSTM weights in and out (rbn convert), rbn forward against
nn.LSTM, and a trained checkpoint through forward and sample."""
import json
import os
import struct
import subprocess

import numpy as np
import pytest
import torch

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
RBN = os.environ.get("RBN_BIN", os.path.join(ROOT, "build", "rbn"))

pytestmark = pytest.mark.skipif(not os.path.exists(RBN), reason="the rbn tool is not built")


def write_safetensors(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype=np.float32)
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = metadata or {"format": "pt"}
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + b:8 + n + e], dtype=np.float32).reshape(t["shape"])
    return out, header.get("__metadata__", {})


def run(*args):
    r = subprocess.run([RBN, *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r


def test_nn_lstm_weights_both_ways(tmp_path):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 5, num_layers=2)
    sd = {k: v.detach().numpy() for k, v in lstm.state_dict().items()}
    write_safetensors(tmp_path / "torch.safetensors", sd)
    run("convert", "--from-torch", str(tmp_path / "torch.safetensors"), "--out", str(tmp_path / "rbn.safetensors"))
    x = torch.randn(7, 4, 3)
    np.save(tmp_path / "x.npy", x.numpy())
    run("forward", "--checkpoint", str(tmp_path / "rbn.safetensors"), "--input", str(tmp_path / "x.npy"),
        "--output", str(tmp_path / "y.npy"))
    y = np.load(tmp_path / "y.npy")
    with torch.no_grad():
        want, _ = lstm(x)
    np.testing.assert_allclose(y, want.numpy(), atol=1e-5)
    # and back: an nn.LSTM loaded with the exported weights gives the same outputs
    run("convert", "--to-torch", str(tmp_path / "rbn.safetensors"), "--out", str(tmp_path / "back.safetensors"))
    back, _ = read_safetensors(tmp_path / "back.safetensors")
    lstm2 = torch.nn.LSTM(3, 5, num_layers=2)
    lstm2.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in back.items()})
    with torch.no_grad():
        y2, _ = lstm2(x)
    np.testing.assert_allclose(y2.numpy(), want.numpy(), atol=1e-5)


def test_trained_checkpoint_forward_and_sample(tmp_path):
    out = tmp_path / "run"
    run("train", "--task", "ptb", "--data", os.path.join(ROOT, "data", "ptb"), "--cell", "bnlstm",
        "--hidden", "16", "--seq-len", "20", "--batch-size", "8", "--steps", "20", "--eval-every", "10",
        "--eval-batches", "2", "--popstats-batches", "2", "--out", str(out))
    ck = str(out / "best.safetensors")
    ids = np.random.default_rng(0).integers(0, 50, size=(30, 2)).astype(np.int64)
    np.save(tmp_path / "ids.npy", ids)
    run("forward", "--checkpoint", ck, "--input", str(tmp_path / "ids.npy"), "--output", str(tmp_path / "logits.npy"))
    logits = np.load(tmp_path / "logits.npy")
    assert logits.shape == (30, 2, 50) and np.isfinite(logits).all()
    r = run("sample", "--checkpoint", ck, "--length", "40", "--seed", "2")
    assert len(r.stdout.strip()) >= 40
    r2 = run("sample", "--checkpoint", ck, "--length", "40", "--seed", "2")
    assert r.stdout == r2.stdout  # seeded
    info = json.loads(run("info", ck, "--json").stdout)
    assert info["metadata"]["cell"] == "bnlstm" and info["metadata"]["popstats"] == "pass"


# ---- bidirectional nn.LSTM / nn.GRU through rbn convert (SPEC 2b) ------------------------------

def packed_run(module, x, lengths):
    """nn.LSTM / nn.GRU on a PackedSequence -> output padded with zeros [T,N,D*H], h_n."""
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, state = module(packed)
    y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=x.shape[0])
    return y, state if isinstance(module, torch.nn.GRU) else state[0]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bidirectional_both_ways(tmp_path, kind):
    """nn.LSTM / nn.GRU(bidirectional=True): `_reverse` tensors <-> rnn.k.reverse.*; rbn forward
    of the converted stack is the module's packed output [T,N,2H], with a head its logits of
    [forward h_n || reverse h_n] of the top layer; --to-torch gives the module back."""
    torch.manual_seed(0)
    cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    rnn = cls(3, 5, num_layers=2, bidirectional=True)
    sd = {k: v.detach().numpy() for k, v in rnn.state_dict().items()}
    write_safetensors(tmp_path / "bare.safetensors", sd)
    r = run("convert", "--from-torch", str(tmp_path / "bare.safetensors"), "--out",
            str(tmp_path / "bare_rbn.safetensors"))
    assert "bidirectional" in r.stdout
    t, md = read_safetensors(tmp_path / "bare_rbn.safetensors")
    assert md["bidirectional"] == "true" and md["cell"] == kind and md["head"] == "none"
    assert t["rnn.1.reverse.weight_ih"].shape == ((4 if kind == "lstm" else 3) * 5, 10)
    if kind == "lstm":  # the two biases summed, per direction
        np.testing.assert_allclose(t["rnn.1.reverse.bias"],
                                   sd["bias_ih_l1_reverse"] + sd["bias_hh_l1_reverse"], rtol=1e-6)
    else:  # kept apart
        np.testing.assert_array_equal(t["rnn.0.reverse.bias_hh"], sd["bias_hh_l0_reverse"])
    x = torch.randn(7, 4, 3)
    lengths = torch.tensor([7, 3, 5, 1])
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "len.npy", lengths.numpy().astype(np.int32))
    run("forward", "--checkpoint", str(tmp_path / "bare_rbn.safetensors"), "--input",
        str(tmp_path / "x.npy"), "--lengths", str(tmp_path / "len.npy"), "--output",
        str(tmp_path / "y.npy"))
    with torch.no_grad():
        want_y, hn = packed_run(rnn, x, lengths)
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (7, 4, 10)
    np.testing.assert_allclose(y, want_y.numpy(), atol=1e-5)
    # with a classifier head [K, 2H]
    head = torch.nn.Linear(10, 4)
    sdh = dict(sd, **{"head.weight": head.weight.detach().numpy(),
                      "head.bias": head.bias.detach().numpy()})
    write_safetensors(tmp_path / "head.safetensors", sdh)
    run("convert", "--from-torch", str(tmp_path / "head.safetensors"), "--out",
        str(tmp_path / "head_rbn.safetensors"))
    run("forward", "--checkpoint", str(tmp_path / "head_rbn.safetensors"), "--input",
        str(tmp_path / "x.npy"), "--lengths", str(tmp_path / "len.npy"), "--output",
        str(tmp_path / "logits.npy"))
    with torch.no_grad():
        want = head(torch.cat([hn[-2], hn[-1]], -1)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), want, atol=1e-5)
    # and back: the same module
    run("convert", "--to-torch", str(tmp_path / "head_rbn.safetensors"), "--out",
        str(tmp_path / "back.safetensors"))
    back, _ = read_safetensors(tmp_path / "back.safetensors")
    assert set(back) == set(sdh)
    rnn2 = cls(3, 5, num_layers=2, bidirectional=True)
    rnn2.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in back.items()
                          if not k.startswith("head.")})
    if kind == "gru":
        for k in sd:
            np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
    with torch.no_grad():
        y2, _ = packed_run(rnn2, x, lengths)
    np.testing.assert_allclose(y2.numpy(), want_y.numpy(), atol=1e-5)


def convert_error(tmp_path, tensors):
    write_safetensors(tmp_path / "in.safetensors", tensors)
    r = subprocess.run([RBN, "convert", "--from-torch", str(tmp_path / "in.safetensors"), "--out",
                        str(tmp_path / "out.safetensors")], capture_output=True, text=True)
    assert r.returncode != 0 and not (tmp_path / "out.safetensors").exists()
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_bidirectional_convert_refusals(tmp_path):
    torch.manual_seed(0)
    sd = {k: v.detach().numpy() for k, v in
          torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True).state_dict().items()}
    # a reverse direction with a tensor missing
    line = convert_error(tmp_path, {k: v for k, v in sd.items() if k != "weight_hh_l1_reverse"})
    assert "weight_hh_l1_reverse" in line
    # a reverse tensor of a layer the module does not have
    line = convert_error(tmp_path, dict(sd, weight_ih_l2_reverse=np.zeros((20, 10))))
    assert "weight_ih_l2_reverse" in line and "maps onto nothing" in line
    # reverse tensors in a module whose layer 0 has none
    one = {k: v for k, v in sd.items() if not k.endswith("_l0_reverse")}
    line = convert_error(tmp_path, one)
    assert "_l1_reverse" in line and "maps onto nothing" in line
    # a head that reads one direction only
    line = convert_error(tmp_path, dict(sd, **{"head.weight": np.zeros((4, 5)),
                                               "head.bias": np.zeros(4)}))
    assert "head.weight" in line and "[K, 10]" in line
    # projections
    proj = {k: v.detach().numpy() for k, v in
            torch.nn.LSTM(3, 5, bidirectional=True, proj_size=2).state_dict().items()}
    assert "proj_size" in convert_error(tmp_path, proj)


@pytest.mark.parametrize("kind,head", [("bnlstm", "classify"), ("lngru", "none"),
                                       ("bngru", "tag")])
def test_bidirectional_python_checkpoint_under_the_tool(tmp_path, kind, head):
    """A bidirectional stack saved from Python (rbn.save): `rbn forward` computes what rbn.load's
    model does (population statistics per direction, the head on both directions), `rbn info`
    reports it."""
    import rbn
    import rbn.torch as rt
    torch.manual_seed(0)
    C, H, T, K = 3, 5, 6, 3
    cls = {"bnlstm": rt.BNLSTM, "lngru": rt.LNGRU, "bngru": rt.BNGRU}[kind]
    m = cls(C, H, 2, bidirectional=True, **({} if kind == "lngru" else {"t_max": T}))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    m(torch.randn(T, 4, C), lengths=torch.tensor([6, 2, 4, 3]))  # statistics of each direction
    lin = None if head == "none" else torch.nn.Linear(2 * H, K)
    rbn.save(tmp_path / "m.safetensors", m, lin, head_kind=head)
    x = np.random.default_rng(1).standard_normal((T + 2, 3, C)).astype(np.float32)
    lengths = np.array([T + 2, 2, 4], dtype=np.int32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "len.npy", lengths)
    run("forward", "--checkpoint", str(tmp_path / "m.safetensors"), "--input",
        str(tmp_path / "x.npy"), "--lengths", str(tmp_path / "len.npy"), "--output",
        str(tmp_path / "y.npy"))
    with torch.no_grad():
        want = rbn.load(tmp_path / "m.safetensors")(torch.from_numpy(x),
                                                    lengths=torch.from_numpy(lengths)).numpy()
    got = np.load(tmp_path / "y.npy")
    assert got.shape == want.shape == ((T + 2, 3, 2 * H) if head == "none" else
                                       (3, K) if head == "classify" else (T + 2, 3, K))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    info = json.loads(run("info", str(tmp_path / "m.safetensors"), "--json").stdout)
    assert info["metadata"]["bidirectional"] == "true"
