"""A small safetensors reader and writer (pure Python + NumPy), as rbn's checkpoints use it
(docs/file-format.md): an 8-byte little-endian header length, a JSON header with each tensor's
dtype, shape and data_offsets and a "__metadata__" object of strings, then the raw little-endian
bytes. Writing matches rbn's own: names sorted, header padded with spaces to a multiple of 8,
a crc32 of the data region in the metadata ("checksum"), written atomically (temporary file,
fsync, rename)."""
import json
import os
import struct
import zlib

import numpy as np

_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
           "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class SafetensorsError(ValueError):
    """A file that is not a well-formed safetensors file (the message names it)."""


def read(path):
    """path -> (tensors {name: np.ndarray (a copy, native byte order)}, metadata {str: str}).
    Checks the header length, every dtype, shape and offset range, overlaps, and the rbn
    checksum when the metadata has one; each problem is a SafetensorsError naming the file."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()

    def bad(what):
        raise SafetensorsError(f"{path}: {what}")

    if len(data) < 8:
        bad(f"too short for a safetensors header ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        bad(f"header length {n} runs past the end of the file")
    try:
        header = json.loads(data[8:8 + n])
    except ValueError:
        bad("header is not valid JSON")
    if not isinstance(header, dict):
        bad("header is not a JSON object")
    blob = memoryview(data)[8 + n:]
    metadata = header.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        bad("__metadata__ must be an object of strings")
    tensors, ranges = {}, []
    for name, t in header.items():
        if not isinstance(t, dict) or t.get("dtype") not in _DTYPES:
            bad(f"tensor {name}: unknown or missing dtype")
        shape, off = t.get("shape"), t.get("data_offsets")
        if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
                or not isinstance(off, list) or len(off) != 2
                or not all(isinstance(o, int) and o >= 0 for o in off)):
            bad(f"tensor {name}: bad shape or data_offsets")
        b, e = off
        dt = np.dtype(_DTYPES[t["dtype"]])
        if not b <= e <= len(blob):
            bad(f"tensor {name}: data_offsets [{b},{e}] out of range (data is {len(blob)} bytes)")
        if e - b != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
            bad(f"tensor {name}: {e - b} bytes for shape {shape} of {t['dtype']}")
        tensors[name] = np.frombuffer(blob[b:e], dtype=dt).reshape(shape).astype(dt.newbyteorder("="))
        ranges.append((b, e, name))
    ranges.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(ranges, ranges[1:]):
        if b1 < e0 and e1 > b1:
            bad(f"tensors {n0} and {n1} overlap")
    want = metadata.get("checksum")
    if want is not None and want != f"crc32:{zlib.crc32(blob) & 0xffffffff:08x}":
        bad("checksum mismatch (file corrupted?)")
    return tensors, dict(metadata)


def write(path, tensors, metadata=None, checksum=True):
    """Write {name: array} and {str: str} metadata to `path` atomically. Arrays keep their dtype
    (float32, float64, int32, ...) and are written little-endian, C order."""
    path = os.fspath(path)
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        if a.dtype.newbyteorder("=") not in _NAMES:
            raise TypeError(f"{path}: tensor {name} has dtype {a.dtype}, which safetensors "
                            "cannot hold")
        kind = _NAMES[a.dtype.newbyteorder("=")]
        b = np.ascontiguousarray(a, dtype=np.dtype(_DTYPES[kind])).tobytes()
        header[name] = {"dtype": kind, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    blob = b"".join(blobs)
    md = {str(k): str(v) for k, v in (metadata or {}).items()}
    md.pop("checksum", None)
    if checksum:
        md["checksum"] = f"crc32:{zlib.crc32(blob) & 0xffffffff:08x}"
    if md:
        header["__metadata__"] = md
    h = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    h += b" " * (-len(h) % 8)
    d = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h + blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
