"""rbn checkpoints from Python: `rbn.load(path)` -> Model, `rbn.save(path, module, ...)`.

The file format, tensor names and metadata are docs/file-format.md's (SPEC section 5); this
module reads and writes them with the package's own safetensors code (pure Python + NumPy), so
a model trained with `rbn train` opens in PyTorch and a model trained in PyTorch runs under
`rbn eval`, `rbn forward` and `rbn sample`.
"""
import json
import os
import warnings

import numpy as np
import torch
from torch import nn

from . import safetensors
from . import torch as rtorch

_CLASSES = {"lstm": (rtorch.LSTM, {}), "bnlstm": (rtorch.BNLSTM, {}),
            "bnx": (rtorch.BNxLSTM, {}), "bnx-seq": (rtorch.BNxLSTM, {"sequence_wise": True}),
            "lnlstm": (rtorch.LNLSTM, {}), "gru": (rtorch.GRU, {}), "bngru": (rtorch.BNGRU, {}),
            "lngru": (rtorch.LNGRU, {}), "rnn": (rtorch.RNN, {}), "bnrnn": (rtorch.BNRNN, {})}
_HEADS = ("none", "classify", "lm", "tag", "regress")
# metadata keys rbn.save derives from the modules; a given `metadata` cannot override them
_MODEL_KEYS = ("format", "cell", "input_size", "hidden_size", "num_layers", "t_max", "eps", "head",
               "num_classes", "embed_dim", "ln_input", "learn_init_state", "bn_momentum",
               "bidirectional",
               "dropout", "zoneout_h", "zoneout_c",
               "popstats", "popstats_data", "vocab", "checksum", "per_step",
               "optim", "schedule")  # a model file: no optimizer state (as `rbn popstats` writes)


class CheckpointError(ValueError):
    """A checkpoint rbn cannot use (the message names the file)."""


class Model(nn.Module):
    """What an rbn checkpoint holds, as torch modules (SPEC section 4):

    rnn          the recurrent stack: an rbn.torch LSTM / BNLSTM / BNxLSTM / LNLSTM / GRU / BNGRU /
                 LNGRU (float32)
    head         nn.Linear(H, K) or None ('none'); nn.Linear(2H, K) on a bidirectional stack
    embed        nn.Embedding(V, E) for a language model with an embedding, else None
    head_kind    'none' | 'classify' (logits from the top layer's state after each row's last
                 valid step) | 'lm' (logits at every step; input one-hot when embed is None) |
                 'tag' (`--task seq`: logits at every step) | 'regress' (`--task seq`: values
                 per sequence, or per step where per_step is True)
    per_step     'regress' only: one output per step instead of one per sequence
    vocab        language models: {"kind": ..., "symbols": [...]} as the file holds it, else None
    permutation  permuted-pixel tasks: np.int32 [784], the pixel read at step t is
                 image[permutation[t]]; else None
    metadata     every metadata string of the file (docs/file-format.md), the config included

    forward(x, lengths=None, hx=None) gives what `rbn forward` writes: for 'none' the stack's
    output [T,N,H] ([T,N,2H] bidirectional); 'classify': x [T,N,C] -> logits [N,K] (a
    bidirectional stack's head reads [forward h at len-1 || reverse h after x[0]]); 'lm': token ids [T,N] -> [T,N,V];
    'tag': x -> [T,N,K]; 'regress': x -> [N,D] or [T,N,D]. A `--task seq` model trained on token
    ids (metadata data.input = 'ids') takes ids [T,N] and feeds them one-hot, as the tool does.
    """

    def __init__(self, rnn, head=None, embed=None, head_kind=None, vocab=None, permutation=None,
                 metadata=None, per_step=False):
        super().__init__()
        self.rnn, self.head, self.embed = rnn, head, embed
        if head_kind is None:
            head_kind = "none" if head is None else "classify"
        if head_kind not in _HEADS:
            raise ValueError(f"rbn.Model: head_kind must be one of {_HEADS}, got {head_kind!r}")
        if (head is None) != (head_kind == "none"):
            raise ValueError(f"rbn.Model: head_kind={head_kind!r} with head={head!r}")
        self.head_kind = head_kind
        self.vocab = vocab
        self.permutation = None if permutation is None else np.asarray(permutation, np.int32)
        self.metadata = dict(metadata or {})
        self.per_step = bool(per_step) if head_kind == "regress" else head_kind in ("lm", "tag")
        self.input_ids = head_kind != "lm" and self.metadata.get("data.input") == "ids"

    def forward(self, x, lengths=None, hx=None):
        if self.head_kind == "lm":
            ids = torch.as_tensor(x).long()
            if self.embed is not None:
                x = self.embed(ids)
            else:
                dtype = next(self.rnn.parameters()).dtype
                x = nn.functional.one_hot(ids, self.head.out_features).to(dtype)
        elif self.input_ids:
            dtype = next(self.rnn.parameters()).dtype
            x = nn.functional.one_hot(torch.as_tensor(x).long(), self.rnn.input_size).to(dtype)
        y, state = self.rnn(x, hx, lengths=lengths)
        hT = state if self.rnn._gru else state[0]  # nn.GRU's h_n, nn.LSTM's (h_n, c_n)
        if self.head_kind == "none":
            return y
        if self.per_step:
            return self.head(y)
        if self.rnn.bidirectional:  # the top layer's two final states: rows 2L-2 and 2L-1
            return self.head(torch.cat([hT[-2], hT[-1]], -1))
        return self.head(hT[-1])


def _meta_int(md, key, path):
    try:
        return int(md[key])
    except KeyError:
        raise CheckpointError(f"{path}: metadata key '{key}' missing") from None
    except ValueError:
        raise CheckpointError(f"{path}: metadata '{key}' = '{md[key]}' is not an integer") from None


def load(path, gemm=None):
    """Open an rbn checkpoint (`rbn train`'s best/last.safetensors, `rbn popstats`' output, or
    rbn.save's) -> rbn.Model (float32, eval mode). The population statistics are the file's;
    `model.rnn.popstats_kind` says which ('running' or 'pass', metadata 'popstats').

    gemm: None keeps the process's GEMM backend (rbn.gemm_backend()) and warns when the run that
    wrote the file used another one (metadata 'gemm_backend'; the outputs then agree with the
    run's to float rounding, not bit for bit); "recorded" switches the process to the run's
    backend (process-wide, as rbn.set_gemm_backend), as `rbn eval` does."""
    path = os.fspath(path)
    if gemm not in (None, "recorded"):
        raise ValueError(f"rbn.load: gemm must be None or 'recorded', got {gemm!r}")
    try:
        tensors, md = safetensors.read(path)
    except safetensors.SafetensorsError as e:
        raise CheckpointError(str(e)) from None
    if md.get("format") != "rbn/1":
        raise CheckpointError(f"{path}: unknown format '{md.get('format')}' (expected rbn/1)")
    cell = md.get("cell")
    if cell not in _CLASSES:
        raise CheckpointError(f"{path}: unknown cell '{cell}'")
    head_kind = md.get("head", "none")
    if head_kind not in _HEADS:
        raise CheckpointError(f"{path}: head '{head_kind}' is not one rbn.load knows "
                              f"({', '.join(_HEADS)})")
    C, H, L = (_meta_int(md, k, path) for k in ("input_size", "hidden_size", "num_layers"))
    cls, kw = _CLASSES[cell]
    kw = dict(kw, learn_init_state=md.get("learn_init_state") == "true" or "rnn.0.h0" in tensors)
    bidir = md.get("bidirectional", "false")
    if bidir not in ("true", "false"):
        raise CheckpointError(f"{path}: metadata 'bidirectional' = '{bidir}' (expected true or "
                              "false)")
    kw["bidirectional"] = bidir == "true"
    if kw["bidirectional"] and head_kind == "lm":
        raise CheckpointError(f"{path}: a bidirectional language model: a left-to-right model "
                              "cannot read the characters it predicts")
    try:  # the regularizers (zoneout acts at inference too: its expectation)
        kw.update(dropout=float(md.get("dropout", 0)), zoneout_h=float(md.get("zoneout_h", 0)))
        if md.get("zoneout_c", "0") not in ("0", "0.0"):
            kw.update(zoneout_c=float(md["zoneout_c"]))
    except ValueError:
        raise CheckpointError(f"{path}: metadata dropout / zoneout_h / zoneout_c is not a "
                              "number") from None
    if cell in rtorch._BN_CELLS:
        kw.update(t_max=_meta_int(md, "t_max", path), eps=float(md.get("eps", 1e-5)),
                  momentum=float(md.get("bn_momentum", 0.1)))
    elif cell in ("lnlstm", "lngru"):
        kw.update(eps=float(md.get("eps", 1e-5)),
                  ln_input=md.get("ln_input", "true") == "true" and "rnn.0.ln_x.weight" in tensors)
    with warnings.catch_warnings():  # advice for building a model, not for loading a trained one
        warnings.simplefilter("ignore", UserWarning)
        rnn = cls(C, H, L, dtype=torch.float32, **kw)
    spec = {n: v for n, v in tensors.items() if n.startswith("rnn.")}
    try:
        rnn.load_state_dict_rbn(spec)
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    rnn.popstats_kind = md.get("popstats", "running")
    rnn.popstats_data = md.get("popstats_data")
    rnn._popstats_key = _buffers_key(rnn)
    head = embed = None
    if head_kind != "none":
        K = _meta_int(md, "num_classes", path)
        head = nn.Linear(rnn._directions * H, K)
        _copy(head.weight, tensors, "head.weight", path)
        _copy(head.bias, tensors, "head.bias", path)
        if head_kind == "lm" and "embed.weight" in tensors:
            E = _meta_int(md, "embed_dim", path)
            embed = nn.Embedding(K, E)
            _copy(embed.weight, tensors, "embed.weight", path)
    vocab = None
    if "vocab" in md:
        try:
            vocab = json.loads(md["vocab"])
        except ValueError:
            raise CheckpointError(f"{path}: metadata 'vocab' is not JSON") from None
    perm = tensors.get("data.permutation")
    _use_recorded_gemm(md.get("gemm_backend"), gemm, path)
    return Model(rnn, head, embed, head_kind, vocab, perm, md,
                 per_step=md.get("per_step") == "true").eval()


def _use_recorded_gemm(recorded, gemm, path):
    """rbn.load's gemm= (see there) for a file whose run used `recorded` (None: not recorded)."""
    from . import _rbn
    if recorded is None or recorded == _rbn.gemm_backend():
        return
    if gemm == "recorded":
        try:  # the binding knows the backends and names them when it refuses one
            _rbn.set_gemm_backend(recorded)
        except _rbn.RbnError as e:
            raise CheckpointError(f"{path}: metadata 'gemm_backend' = '{recorded}': {e}") from None
    else:
        warnings.warn(f"rbn.load: {path} was trained with GEMM backend {recorded}, this process "
                      f"uses {_rbn.gemm_backend()}: outputs agree to float rounding; "
                      "rbn.load(path, gemm='recorded') repeats the run's numbers", stacklevel=3)


def _buffers_key(rnn):
    """Identity of the population statistics' current values (storage, version counter)."""
    return tuple((b.data_ptr(), b._version) for b in rnn.buffers())


def _copy(param, tensors, name, path):
    if name not in tensors:
        raise CheckpointError(f"{path}: missing tensor {name}")
    v = tensors[name]
    if tuple(v.shape) != tuple(param.shape):
        raise CheckpointError(f"{path}: tensor {name} has shape {list(v.shape)}, expected "
                              f"{list(param.shape)}")
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.ascontiguousarray(v)))


def save(path, module, head=None, *, embed=None, head_kind=None, vocab=None, permutation=None,
         metadata=None, popstats_data=None, per_step=None):
    """Write an rbn checkpoint (float32) that `rbn eval`, `forward`, `sample` and `rbn.load`
    accept.

    module: an rbn.Model (its head, embed, vocab, permutation and metadata are used unless given
    here) or an rbn.torch module. head: nn.Linear(H, K) or None; head_kind 'classify' (default
    with a head), 'lm' (per-step logits; vocab then names the symbols, K of them), 'tag' or
    'regress' (per_step: one value per step rather than per sequence); embed:
    nn.Embedding(K, E) of a language model. metadata: further strings, e.g. the `config` JSON
    that `rbn eval` needs to find its data (a loaded checkpoint's are kept); the architecture
    keys are always the modules'. The population statistics are written with
    `module.popstats_kind` ('pass' after population_statistics(), else 'running');
    popstats_data is the training-data fingerprint `rbn eval --popstats auto` compares."""
    path = os.fspath(path)
    if isinstance(module, Model):
        head = module.head if head is None else head
        embed = module.embed if embed is None else embed
        head_kind = module.head_kind if head_kind is None else head_kind
        per_step = module.per_step if per_step is None else per_step
        vocab = module.vocab if vocab is None else vocab
        permutation = module.permutation if permutation is None else permutation
        metadata = dict(module.metadata, **(metadata or {}))
        module = module.rnn
    if not isinstance(module, rtorch._RbnLSTMBase):
        raise TypeError(f"rbn.save: {type(module).__name__} is not an rbn.torch module or "
                        "rbn.Model (convert an nn.LSTM with rbn.torch.LSTM.from_lstm)")
    head_kind = head_kind or ("none" if head is None else "classify")
    if head_kind not in _HEADS or (head is None) != (head_kind == "none"):
        raise ValueError(f"rbn.save: head_kind={head_kind!r} with head={type(head).__name__}")
    H = module.hidden_size
    tensors = {n: v.detach().float().numpy() for n, v in module.state_dict_rbn().items()}
    md = {k: v for k, v in (metadata or {}).items() if k not in _MODEL_KEYS}
    md.update(format="rbn/1", cell=module._cell, input_size=module.input_size, hidden_size=H,
              num_layers=module.num_layers, eps=repr(float(module.eps)), head=head_kind,
              ln_input="true" if module._config["ln_input"] else "false",
              learn_init_state="true" if module._config["learn_init_state"] else "false",
              bn_momentum=repr(float(module.momentum)), embed_dim=0,
              bidirectional="true" if module.bidirectional else "false",
              dropout=repr(float(module.dropout)), zoneout_h=repr(float(module.zoneout_h)),
              zoneout_c=repr(float(module.zoneout_c)),
              popstats=getattr(module, "popstats_kind", "running"))
    # t_max sizes the statistics of the BN cells; for the others keep the file's (it is a
    # training length there, not a shape)
    md["t_max"] = module.t_max if module._config["cell"] in rtorch._BN_CELLS else \
        (metadata or {}).get("t_max", module.t_max)
    pd = popstats_data
    if pd is None and getattr(module, "_popstats_key", None) == _buffers_key(module):
        pd = module.popstats_data  # the loaded file's, while its statistics are untouched
    if md["popstats"] == "pass" and pd:
        md["popstats_data"] = pd
    if head_kind == "regress":
        md["per_step"] = "true" if per_step else "false"
    elif per_step is not None and bool(per_step) != (head_kind in ("lm", "tag")):
        raise ValueError(f"rbn.save: per_step={per_step!r} does not fit head_kind={head_kind!r}")
    if head_kind == "lm" and module.bidirectional:
        raise ValueError("rbn.save: a bidirectional stack cannot be a language model (a "
                         "left-to-right model cannot read the characters it predicts)")
    if head is not None:
        W = module._directions * H  # a bidirectional head reads forward || reverse
        if not isinstance(head, nn.Linear) or head.in_features != W or head.bias is None:
            raise ValueError(f"rbn.save: head must be nn.Linear({W}, K) with a bias")
        K = head.out_features
        md["num_classes"] = K
        tensors["head.weight"] = head.weight.detach().float().numpy()
        tensors["head.bias"] = head.bias.detach().float().numpy()
    if head_kind == "lm":
        if embed is not None:
            if embed.num_embeddings != K or embed.embedding_dim != module.input_size:
                raise ValueError(f"rbn.save: embed must be nn.Embedding({K}, "
                                 f"{module.input_size}) (vocabulary K, the stack's input size)")
            md["embed_dim"] = module.input_size
            tensors["embed.weight"] = embed.weight.detach().float().numpy()
        elif module.input_size != K:
            raise ValueError(f"rbn.save: a one-hot language model needs input_size = K = {K}, "
                             f"got {module.input_size}")
        if vocab is not None:
            if len(vocab.get("symbols", ())) != K:
                raise ValueError(f"rbn.save: vocab has {len(vocab.get('symbols', ()))} symbols, "
                                 f"the head {K}")
            md["vocab"] = json.dumps(vocab, separators=(",", ":"), ensure_ascii=False)
    elif embed is not None:
        raise ValueError("rbn.save: embed is for language models (head_kind='lm')")
    if permutation is not None:
        tensors["data.permutation"] = np.asarray(permutation, dtype=np.int32)
    safetensors.write(path, tensors, md)
