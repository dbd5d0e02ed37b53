"""Bidirectional models through the rbn tool: `rbn train --bidirectional` on a classification and
a tagging task, then info, eval and forward on the checkpoint; the one-line errors where a reverse
direction cannot apply (a language-model task, `sample`).

Run with Debian's interpreter: /usr/bin/python3 -m pytest tests/python/test_cli_bidir.py
"""
import json
import os
import struct
import subprocess

import numpy as np
import pytest

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
RBN = os.environ.get("RBN_BIN", os.path.join(ROOT, "build", "rbn"))

pytestmark = pytest.mark.skipif(not os.path.exists(RBN), reason="the rbn tool is not built")


def cli(*args, code=0):
    r = subprocess.run([RBN, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == code, r.stderr
    return r


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def header(path):
    """(tensor shapes, metadata) of a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        h = json.loads(f.read(n))
    md = h.pop("__metadata__", {})
    return {k: tuple(v["shape"]) for k, v in h.items()}, md


def seq_data(tmp_path, tag):
    """60 sequences of 3 features, ragged; a class per sequence or (tag) per step."""
    rng = np.random.default_rng(7)
    d = tmp_path / ("tag" if tag else "cls")
    d.mkdir()
    np.save(d / "train.x.npy", rng.standard_normal((9, 60, 3)).astype(np.float32))
    y = rng.integers(0, 3, size=(9, 60) if tag else 60).astype(np.int32)
    np.save(d / "train.y.npy", y)
    np.save(d / "train.lengths.npy", rng.integers(3, 10, size=60).astype(np.int32))
    return d


@pytest.mark.parametrize("cell,tag", [("bnlstm", False), ("gru", True)])
def test_train_info_eval_forward(tmp_path, cell, tag):
    run = tmp_path / "run"
    r = cli("train", "--task", "seq", "--data", seq_data(tmp_path, tag), "--batch-size", "8",
            "--cell", cell, "--hidden", "5", "--layers", "2", "--bidirectional", "--steps", "3",
            "--eval-every", "3", "--popstats-batches", "1", "--threads", "1", "--dropout", "0.2",
            "--zoneout-h", "0.1", "--out", run)
    # the start line says what is trained
    assert "H=5, L=2, bidirectional, dropout 0.2, zoneout h 0.1 c 0," in r.stderr, r.stderr
    ck = run / "best.safetensors"
    shapes, md = header(ck)
    G = 20 if cell == "bnlstm" else 15
    assert md["bidirectional"] == "true"
    assert shapes["rnn.0.reverse.weight_ih"] == (G, 3)
    assert shapes["rnn.1.weight_ih"] == (G, 10) and shapes["rnn.1.reverse.weight_ih"] == (G, 10)
    assert shapes["head.weight"] == (3, 10)
    if cell == "bnlstm":
        assert shapes["rnn.1.reverse.bn_c.running_var"] == (int(md["t_max"]), 5)
    assert "(bidirectional)" in cli("info", ck).stdout
    r = cli("eval", "--checkpoint", ck, "--split", "valid", "--threads", "1")
    assert "accuracy" in r.stdout and "nan" not in r.stdout.lower(), r.stdout
    x = np.random.default_rng(1).random((12, 4, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "len.npy", np.array([12, 3, 7, 1], dtype=np.int32))
    cli("forward", "--checkpoint", ck, "--input", tmp_path / "x.npy", "--lengths",
        tmp_path / "len.npy", "--output", tmp_path / "y.npy")
    y = np.load(tmp_path / "y.npy")
    assert y.shape == ((12, 4, 3) if tag else (4, 3)) and np.isfinite(y).all()
    # a checkpoint is not a language model: sample names the reason
    r = cli("sample", "--checkpoint", ck, code=2)
    assert "bidirectional" in one_line(r.stderr)


def test_language_model_is_refused(tmp_path):
    r = cli("train", "--task", "ptb", "--data", os.path.join(ROOT, "data", "ptb"),
            "--bidirectional", "--steps", "1", "--out", tmp_path / "run", code=2)
    line = one_line(r.stderr)
    assert "--bidirectional" in line and "language model" in line
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_bidirectional_with_dropout_and_zoneout(tmp_path):
    """--bidirectional with --dropout, --zoneout-h and --zoneout-c together: the checkpoint records
    all four, info shows them, eval and forward run (inference: zoneout's expectation), and the
    regularizers change the run; --zoneout-c with a GRU stays a one-line error."""
    data = seq_data(tmp_path, False)
    base = ["train", "--task", "seq", "--data", data, "--batch-size", "8", "--cell", "bnlstm",
            "--hidden", "5", "--layers", "2", "--bidirectional", "--steps", "3", "--eval-every", "3",
            "--popstats-batches", "1", "--threads", "2"]
    cli(*base, "--dropout", "0.3", "--zoneout-h", "0.1", "--zoneout-c", "0.5",
        "--out", tmp_path / "reg")
    cli(*base, "--out", tmp_path / "plain")
    ck = tmp_path / "reg" / "last.safetensors"
    shapes, md = header(ck)
    assert md["bidirectional"] == "true" and md["zoneout_c"] == "0.5" and md["dropout"] != "0"
    assert shapes["rnn.1.reverse.weight_ih"] == (20, 10)
    out = cli("info", ck).stdout
    assert "(bidirectional)" in out and "zoneout_c 0.5" in out
    r = cli("eval", "--checkpoint", ck, "--split", "valid", "--threads", "1")
    assert "accuracy" in r.stdout and "nan" not in r.stdout.lower(), r.stdout
    x = np.random.default_rng(1).random((12, 4, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    cli("forward", "--checkpoint", ck, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert np.isfinite(np.load(tmp_path / "y.npy")).all()
    def tensors(path):  # the bytes after the header (the metadata differ anyway)
        raw = open(path, "rb").read()
        return raw[8 + struct.unpack("<Q", raw[:8])[0]:]
    assert tensors(ck) != tensors(tmp_path / "plain" / "last.safetensors"), \
        "the regularizers should change the run"
    r = cli("train", "--task", "seq", "--data", data, "--cell", "gru", "--bidirectional",
            "--zoneout-c", "0.2", "--steps", "1", "--out", tmp_path / "g", code=2)
    assert "--zoneout-c" in one_line(r.stderr)
