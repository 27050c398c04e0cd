"""Fuzzing the readers of everything a user or an attacker can hand deltaprop: config TOML, --set,
every data format, model and checkpoint files. Any input gives a result or a DeltapropError (the
CLI's exit 2), never another exception, and nothing is written outside the path given.
Deterministic (derandomized) and bounded, so `make test` stays fast and never flakes."""

import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltaprop.errors import DeltapropError
from deltaprop.io.datasets import load_dataset
from deltaprop.io.safetensors import read_safetensors, write_safetensors
from deltaprop.training.config import config_from_dict, load_config, merge_overrides
from deltaprop.training.model import Model, load_model

FUZZ = settings(max_examples=600, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def _no_data_cache(monkeypatch):
    monkeypatch.setenv("DELTAPROP_CACHE_DIR", "")  # readers must write nothing at all


def _files(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _only_user_errors(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except DeltapropError:
        return None


# ---- config ------------------------------------------------------------------------------------
SECTIONS = ["model", "data", "training", "optimizer", "schedule", "early_stopping", "checkpoint", "modle"]
KEYS = ["hidden", "activation", "dropout", "init", "train", "test", "validation_fraction", "scale", "epochs",
        "batch_size", "loss", "seed", "dtype", "threads", "clip_grad_norm", "name", "lr", "momentum", "nesterov",
        "weight_decay", "betas", "eps", "warmup_epochs", "gamma", "min_lr", "patience", "monitor", "min_delta",
        "best", "every_epochs", "every_steps", "keep", "shuffle_block", "bogus"]
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from(["relu", "mse", "adam", "cosine", "float64", "val_loss", "auto"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                      max_leaves=8)
configs = st.dictionaries(st.sampled_from(SECTIONS), st.dictionaries(st.sampled_from(KEYS), values, max_size=5)
                          | values, max_size=5)


@FUZZ
@given(raw=configs)
def test_config_dicts(raw):
    raw = json.loads(json.dumps(raw, default=str)) if raw else raw  # TOML has no None: strings instead
    _only_user_errors(config_from_dict, raw, "fuzz.toml")


@FUZZ
@given(text=st.text(max_size=300) | st.sampled_from(["[model]\nhidden = " + "[" * 3000, "[[a]]\n" * 50,
                                                       "[training]\nepochs = 1e400\n", "a = 0x" + "f" * 40]))
def test_config_files(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    before = _files(tmp_path)
    _only_user_errors(load_config, p)
    assert _files(tmp_path) == before


@FUZZ
@given(sets=st.lists(st.text(max_size=40) | st.builds(lambda k, v: f"{k}={v}", st.sampled_from(
    ["optimizer.lr", "model.hidden", "training.epochs", "x.y", "model", "a.b.c"]), st.text(max_size=20)), max_size=4))
def test_set_overrides(sets):
    merged = _only_user_errors(merge_overrides, {"training": {"epochs": 1}}, sets)
    if merged is not None:
        _only_user_errors(config_from_dict, merged, "--set")


# ---- data files ----------------------------------------------------------------------------------
DTYPES = ["u1", "i1", "<i2", ">i4", "<f2", ">f4", "<f8", ">f8", "?", "<u8", "c8", "U3"]


@st.composite
def arrays(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=3))
    n = int(np.prod(shape)) if shape else 1
    raw = draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
    return np.frombuffer(raw, dtype=dtype).reshape(shape) if dtype.kind != "U" else np.array(["a"] * n).reshape(shape)


@FUZZ
@given(X=arrays(), y=arrays() | st.none())
def test_npz_arrays(tmp_path, X, y):
    p = tmp_path / "d.npz"
    np.savez(p, **({"X": X} | ({} if y is None else {"y": y})))
    before = _files(tmp_path)
    for labels in (True, False):
        _only_user_errors(load_dataset, str(p), require_labels=labels)
    assert _files(tmp_path) == before


@FUZZ
@given(blob=st.binary(max_size=400), kind=st.sampled_from(["npz", "npy", "csv", "idx", "gzidx"]))
def test_arbitrary_bytes_in_every_format(tmp_path, blob, kind):
    name = {"npz": "d.npz", "npy": "d.npy", "csv": "d.csv", "idx": "d-images-idx3-ubyte",
            "gzidx": "d-images-idx3-ubyte.gz"}[kind]
    p = tmp_path / name
    if kind == "npz":  # a zip holding the bytes, so the npy parser sees them
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("X.npy", blob)
            z.writestr("y.npy", blob[::-1])
        blob = buf.getvalue()
    if kind == "gzidx":
        import gzip
        blob = gzip.compress(blob)
    p.write_bytes(blob)
    if kind == "npy":
        (tmp_path / "d_y.npy").write_bytes(blob[::-1])
    if kind in ("idx", "gzidx"):
        (tmp_path / "d-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01" + struct.pack(">I", 2) + b"\0\1")
    before = _files(tmp_path)
    _only_user_errors(load_dataset, str(p))
    assert _files(tmp_path) == before


@FUZZ
@given(rows=st.lists(st.lists(st.sampled_from(["1", "-2.5", "", "x", "nan", "1e400", '"3"', "cat", " 4 "]),
                              min_size=1, max_size=4), max_size=6),
       header=st.sampled_from(["a,b,label", "label", "a,label,a", "", "1,2,3", "a;b;label"]))
def test_csv_tables(tmp_path, rows, header):
    p = tmp_path / "d.csv"
    p.write_text("\n".join([header] + [",".join(r) for r in rows]) + "\n")
    _only_user_errors(load_dataset, str(p))


@FUZZ
@given(dims=st.lists(st.integers(0, 2**32 - 1), max_size=6), code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07]),
       ndim=st.integers(0, 255), payload=st.binary(max_size=64))
def test_idx_headers_that_lie(tmp_path, dims, code, ndim, payload):
    p = tmp_path / "d-images-idx3-ubyte"
    p.write_bytes(b"\0\0" + bytes([code, ndim]) + b"".join(struct.pack(">I", d) for d in dims) + payload)
    (tmp_path / "d-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01" + struct.pack(">I", 1) + b"\0")
    _only_user_errors(load_dataset, str(p))


# ---- model and checkpoint files ------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    theta = rng.normal(size=3 * 4 + 4 + 4 * 2 + 2).astype(np.float32)
    p = tmp_path_factory.mktemp("model") / "m.safetensors"
    Model([3, 4, 2], ["tanh", "identity"], "cross_entropy", "float32", theta, np.zeros(3, np.float32),
          np.ones(3, np.float32), "standardize", {"tanh": {"source": "deltaprop", "version": "0"}}).save(p)
    return p


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
       cut=st.integers(0, 10_000) | st.none(), extra=st.binary(max_size=16))
def test_mutated_model_files(tmp_path, model_file, edits, cut, extra):
    blob = bytearray(model_file.read_bytes())
    for pos, byte in edits:
        blob[pos % len(blob)] = byte
    blob = bytes(blob[:cut] if cut is not None else blob) + extra
    p = tmp_path / "m.safetensors"
    p.write_bytes(blob)
    before = _files(tmp_path)
    model = _only_user_errors(load_model, p)
    if model is not None:
        _only_user_errors(model.predict_proba, np.zeros((2, 3), np.float32))
    assert _files(tmp_path) == before


meta_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=10)


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(["sizes", "activations", "loss", "dtype", "preprocess", "plugins",
                                                "config", "state", "kind"]), meta_values, max_size=3))
def test_crafted_metadata_with_a_valid_checksum(tmp_path, model_file, changes):
    tensors, meta = read_safetensors(model_file)
    p = tmp_path / "m.safetensors"
    write_safetensors(p, tensors, meta | changes)
    model = _only_user_errors(load_model, p)
    if model is not None:
        _only_user_errors(model.predict_proba, np.zeros((2, 3), np.float32))
