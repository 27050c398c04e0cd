"""Tests for deltaprop.io.safetensors and io.checkpoints: round trip, interop, truncation, corruption, hostile
headers, crash safety, pruning and fallback to the newest valid checkpoint."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import deltaprop.io.safetensors as ck
from deltaprop.errors import CheckpointError, WriteError
from deltaprop.io.checkpoints import (
    checkpoint_name,
    latest_valid,
    list_checkpoints,
    prune,
    save_checkpoint,
)
from deltaprop.io.safetensors import FORMAT, read_safetensors, write_safetensors

META = {"config": {"layers": [784, 128, 10], "lr": 0.1}, "epoch": 3, "step": 1234,
        "activations": [{"name": "relu", "version": "1.0"}], "rng": [1, 2, 3], "note": None}


def _tensors():
    rng = np.random.default_rng(0)
    return {
        "layers.0.weight": rng.standard_normal((5, 4)).astype(np.float32),
        "layers.0.bias": rng.standard_normal(5).astype(np.float32),
        "layers.1.weight": rng.standard_normal((3, 5)),
        "optimizer.step": np.array([7, -1, 2**40], dtype=np.int64),
        "optimizer.scalar": np.array(2.5),
        "optimizer.empty": np.zeros((0, 3), dtype=np.float32),
    }


@pytest.fixture
def good(tmp_path) -> Path:
    p = tmp_path / "model.safetensors"
    write_safetensors(p, _tensors(), META)
    return p


def _assert_same(got, want):
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v)
        assert got[k].flags.writeable and got[k].dtype.isnative


def test_round_trip(good):
    tensors, meta = read_safetensors(good)
    _assert_same(tensors, _tensors())
    assert meta == META
    tensors["layers.0.weight"][0, 0] = 42.0  # writable copies


def test_big_endian_and_noncontiguous_inputs(tmp_path):
    a = np.arange(12, dtype=">f8").reshape(3, 4)
    t = {"a": a, "b": np.arange(20, dtype=np.int32).reshape(4, 5)[:, ::2]}
    write_safetensors(tmp_path / "x.safetensors", t, {})
    got, meta = read_safetensors(tmp_path / "x.safetensors")
    assert meta == {} and got["a"].dtype == np.float64
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], t["b"])


def test_loads_with_safetensors_library(good):
    loaded = safetensors.numpy.load_file(str(good))
    want = _tensors()
    assert set(loaded) == set(want)
    for k, v in want.items():
        assert loaded[k].shape == v.shape and loaded[k].dtype == v.dtype
        np.testing.assert_array_equal(loaded[k], v)
    from safetensors import safe_open

    with safe_open(str(good), framework="numpy") as f:
        md = f.metadata()
    assert md["format"] == FORMAT and json.loads(md["deltaprop"]) == META
    assert len(md["checksum"]) == 64


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        write_safetensors(tmp_path / "x.safetensors", {"a": np.array(["s"], dtype=object)}, {})
    with pytest.raises(ValueError, match="name"):
        write_safetensors(tmp_path / "x.safetensors", {"__metadata__": np.zeros(1)}, {})
    assert list(tmp_path.iterdir()) == []


def test_truncation_at_every_header_offset_and_sampled_data(good, tmp_path):
    blob = good.read_bytes()
    header_end = 8 + struct.unpack("<Q", blob[:8])[0]
    cuts = list(range(header_end + 1)) + list(range(header_end + 1, len(blob), 7)) + [len(blob) - 1]
    p = tmp_path / "cut.safetensors"
    for n in cuts:
        p.write_bytes(blob[:n])
        with pytest.raises(CheckpointError) as e:
            read_safetensors(p)
        assert str(p) in str(e.value), n
    p.write_bytes(blob[:header_end + 3])
    with pytest.raises(CheckpointError, match=r"is truncated: header says \d+ bytes of tensor data, file has 3"):
        read_safetensors(p)


def test_bit_flips_in_data_are_detected(good, tmp_path):
    blob = good.read_bytes()
    header_end = 8 + struct.unpack("<Q", blob[:8])[0]
    p = tmp_path / "flip.safetensors"
    for i in range(header_end, len(blob), 5):
        for bit in (0, 7):
            b = bytearray(blob)
            b[i] ^= 1 << bit
            p.write_bytes(bytes(b))
            with pytest.raises(CheckpointError, match="checksum mismatch: the file is corrupted"):
                read_safetensors(p)


def test_bit_flips_in_header_are_detected(good, tmp_path):
    blob = good.read_bytes()
    header_end = 8 + struct.unpack("<Q", blob[:8])[0]
    p = tmp_path / "flip.safetensors"
    for i in range(header_end):
        for bit in (0, 3, 7):
            b = bytearray(blob)
            b[i] ^= 1 << bit
            p.write_bytes(bytes(b))
            with pytest.raises(CheckpointError) as e:
                read_safetensors(p)
            assert str(p) in str(e.value)
    # a digit inside the metadata JSON changes (still valid JSON): only the checksum catches it
    i = blob.index(b"1234", 8, header_end)
    p.write_bytes(blob[:i] + b"1235" + blob[i + 4:])
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        read_safetensors(p)


def test_trailing_garbage_rejected(good):
    with open(good, "ab") as f:
        f.write(b"junk")
    with pytest.raises(CheckpointError, match="trailing bytes"):
        read_safetensors(good)


def _craft(path: Path, header, data: bytes = b"", raw_len: int | None = None) -> Path:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h) if raw_len is None else raw_len) + h + data)
    return path


def _meta(**over):
    m = {"format": FORMAT, "deltaprop": "{}", "checksum": "0" * 64}
    m.update(over)
    return m


def _entry(dtype="F32", shape=(2,), offs=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offs)}


HOSTILE = {
    "huge_header_len": (b"{}", b"", 2**63, "over the 16 MiB limit"),
    "huge_shape": ({"__metadata__": _meta(), "a": _entry(shape=[10**300] * 3000)}, b"\0" * 8, None,
                   "not a valid safetensors file: invalid JSON in header"),
    "overflowing_shape": ({"__metadata__": _meta(), "a": _entry(shape=[2**40] * 3)}, b"\0" * 8, None,
                          "not a valid safetensors file: overflow"),
    "zero_dim_huge": ({"__metadata__": _meta(), "a": _entry(shape=[2**62, 0], offs=(0, 0))}, b"", None,
                      "not a valid safetensors file"),
    "header_len_past_eof": (b"{}", b"", 500, "is truncated: header length is 500"),
    "not_json": (b"\x00\xffnot json", b"", None, "not valid UTF-8 JSON"),
    "json_array": (b"[1, 2]", b"", None, "JSON list, not an object"),
    "deep_nesting": (b"[" * 200000, b"", None, "not valid UTF-8 JSON"),
    "duplicate_keys": (b'{"a": 1, "a": 2}', b"", None, "not valid UTF-8 JSON"),
    "no_metadata": ({"a": _entry()}, b"\0" * 8, None, "no __metadata__"),
    "metadata_not_strings": ({"__metadata__": {"format": 1}}, b"", None, "no __metadata__"),
    "wrong_format": ({"__metadata__": _meta(format="other/9")}, b"", None, "format is 'other/9'"),
    "offsets_out_of_range": ({"__metadata__": _meta(), "a": _entry(offs=(100, 108))}, b"\0" * 8, None,
                             "is truncated: header says 108 bytes"),
    "offsets_reversed": ({"__metadata__": _meta(), "a": _entry(offs=(8, 0))}, b"\0" * 8, None,
                         "invalid offset for tensor `a`"),
    "offsets_negative": ({"__metadata__": _meta(), "a": _entry(offs=(-8, 0))}, b"\0" * 8, None,
                         "invalid JSON in header"),
    "offsets_overlap": ({"__metadata__": _meta(), "a": _entry(offs=(0, 8)), "b": _entry(offs=(4, 12))},
                        b"\0" * 12, None, "invalid offset for tensor `b`"),
    "offsets_gap": ({"__metadata__": _meta(), "a": _entry(offs=(4, 12))}, b"\0" * 12, None,
                    "invalid offset for tensor `a`"),
    "shape_negative": ({"__metadata__": _meta(), "a": _entry(shape=(-2,))}, b"\0" * 8, None,
                       "invalid JSON in header"),
    "shape_float": ({"__metadata__": _meta(), "a": _entry(shape=(2.0,))}, b"\0" * 8, None,
                    "invalid JSON in header"),
    "shape_bool": ({"__metadata__": _meta(), "a": _entry(shape=(True,))}, b"\0" * 8, None,
                   "invalid JSON in header"),
    "shape_not_list": ({"__metadata__": _meta(), "a": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}},
                       b"\0" * 8, None, "expected a sequence"),
    "size_mismatch": ({"__metadata__": _meta(), "a": _entry(shape=(3,))}, b"\0" * 8, None,
                      "invalid shape, data type, or offset for tensor"),
    "unknown_dtype": ({"__metadata__": _meta(), "a": _entry(dtype="C64")}, b"\0" * 8, None,
                      "invalid shape, data type, or offset for tensor"),
    "dtype_numpy_lacks": ({"__metadata__": _meta(), "a": _entry(dtype="BF16", shape=(4,))}, b"\0" * 8, None,
                          "not a valid safetensors file"),
    "entry_not_object": ({"__metadata__": _meta(), "a": [1, 2]}, b"", None, "invalid JSON in header"),
    "bad_checksum": ({"__metadata__": _meta(), "a": _entry()}, b"\0" * 8, None, "checksum mismatch"),
    "no_checksum": ({"__metadata__": {"format": FORMAT, "deltaprop": "{}"}}, b"", None, "no checksum"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_files(tmp_path, case):
    header, data, raw_len, msg = HOSTILE[case]
    p = _craft(tmp_path / f"{case}.safetensors", header, data, raw_len)
    with pytest.raises(CheckpointError) as e:
        read_safetensors(p)
    assert str(p) in str(e.value)
    assert msg in str(e.value)


def test_bad_deltaprop_metadata_with_valid_checksum(tmp_path):
    p = tmp_path / "m.safetensors"
    meta = {"format": FORMAT, "deltaprop": "[1]", "checksum": ck._checksum([], "[1]")}
    p.write_bytes(safetensors.numpy.save({}, metadata=meta))
    with pytest.raises(CheckpointError, match="not a JSON object"):
        read_safetensors(p)


@pytest.mark.parametrize("shape", [[1] * 100 + [0], [2**62, 0], [2**40, 2**40, 0]])
def test_hostile_shape_with_valid_checksum(tmp_path, shape):
    """The checksum is not a MAC: a crafted file can carry a matching one and must still fail cleanly."""
    p = tmp_path / "s.safetensors"
    mj = "{}"
    meta = {"format": FORMAT, "deltaprop": mj, "checksum": ck._checksum([("a", "F32", shape, b"")], mj)}
    _craft(p, {"__metadata__": meta, "a": _entry(shape=shape, offs=(0, 0))})
    try:
        tensors, _ = read_safetensors(p)
    except CheckpointError as e:
        assert str(p) in str(e)
    else:
        assert tensors["a"].size == 0


@pytest.mark.parametrize("content", [None, b"", b"1234567"])
def test_missing_or_tiny_file(tmp_path, content):
    p = tmp_path / "f.safetensors"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(CheckpointError, match="does not exist" if content is None else "only"):
        read_safetensors(p)
    with pytest.raises(CheckpointError, match="is a directory"):
        read_safetensors(tmp_path)


@pytest.mark.parametrize("victim", ["replace", "fsync", "write"])
def test_crash_mid_write_keeps_previous_file(good, monkeypatch, victim):
    before = good.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    if victim == "write":
        real_fdopen = os.fdopen

        class Half:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, b):
                self.f.write(b[:3])
                boom()

        monkeypatch.setattr(ck.os, "fdopen", lambda fd, mode: Half(real_fdopen(fd, mode)))
    else:
        monkeypatch.setattr(ck.os, victim, boom)
    with pytest.raises(WriteError, match=r"cannot write .*No space left on device \(ENOSPC\)"):
        write_safetensors(good, {"a": np.ones(3)}, {"new": True})
    monkeypatch.undo()
    assert good.read_bytes() == before
    assert sorted(p.name for p in good.parent.iterdir()) == [good.name]
    assert read_safetensors(good)[1] == META


def test_keyboard_interrupt_mid_write_removes_temp(good, monkeypatch):
    before = good.read_bytes()

    def interrupt(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_safetensors(good, {"a": np.ones(3)}, {})
    monkeypatch.undo()
    assert good.read_bytes() == before
    assert [p.name for p in good.parent.iterdir()] == [good.name]


def test_names_listing_and_prune(tmp_path):
    assert checkpoint_name(42) == "step-0000000042.safetensors"
    with pytest.raises(ValueError):
        checkpoint_name(-1)
    d = tmp_path / "run" / "checkpoints"
    assert list_checkpoints(d) == []
    steps = [5, 100, 1, 20, 3]
    for s in steps:
        save_checkpoint(d, s, {"w": np.full(2, s, dtype=np.float32)}, {"step": s}, keep=10)
    (d / ".step-0000000999.safetensors.abc.tmp").write_bytes(b"partial")
    (d / "step-0000009999.safetensors.bak").write_bytes(b"x")
    (d / "notes.txt").write_text("hi")
    assert [p.name for p in list_checkpoints(d)] == [checkpoint_name(s) for s in sorted(steps)]
    prune(d, 2)
    assert [p.name for p in list_checkpoints(d)] == [checkpoint_name(20), checkpoint_name(100)]
    assert (d / "notes.txt").exists() and (d / ".step-0000000999.safetensors.abc.tmp").exists()
    with pytest.raises(ValueError):
        prune(d, 0)
    path = save_checkpoint(d, 200, {"w": np.zeros(2)}, {"step": 200}, keep=2)
    assert path == d / checkpoint_name(200)
    assert list_checkpoints(d) == [d / checkpoint_name(100), path]


def test_latest_valid_falls_back_past_corrupt(tmp_path):
    d = tmp_path / "ck"
    for s in (1, 2, 3):
        save_checkpoint(d, s, {"w": np.full(4, s, dtype=np.float64)}, {"step": s}, keep=5)
    newest, middle = d / checkpoint_name(3), d / checkpoint_name(2)
    newest.write_bytes(newest.read_bytes()[:-5])
    b = bytearray(middle.read_bytes())
    b[-1] ^= 0x10
    middle.write_bytes(bytes(b))
    path, tensors, meta, skipped = latest_valid(d)
    assert path == d / checkpoint_name(1) and meta == {"step": 1}
    np.testing.assert_array_equal(tensors["w"], np.full(4, 1.0))
    assert [p for p, _ in skipped] == [newest, middle]
    assert "truncated" in skipped[0][1] and "checksum mismatch" in skipped[1][1]


def test_latest_valid_none_valid_or_empty(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoints"):
        latest_valid(tmp_path / "missing")
    p = tmp_path / checkpoint_name(7)
    p.write_bytes(b"garbage!garbage!")
    with pytest.raises(CheckpointError) as e:
        latest_valid(tmp_path)
    assert "no valid checkpoint" in str(e.value) and str(p) in str(e.value)


def test_latest_valid_check_rejects_and_falls_back(tmp_path):
    """A `check` that raises CheckpointError skips that checkpoint like a corrupt one."""
    d = tmp_path / "ck"
    for s in (1, 2, 3):
        save_checkpoint(d, s, {"w": np.full(2, s, dtype=np.float64)}, {"step": s, "ok": s < 3}, keep=5)

    def check(path, tensors, meta):
        if not meta["ok"]:
            raise CheckpointError(f"{path}: not ok")

    path, tensors, meta, skipped = latest_valid(d, check=check)
    assert path == d / checkpoint_name(2) and meta["step"] == 2
    assert skipped == [(d / checkpoint_name(3), f"{d / checkpoint_name(3)}: not ok")]
    with pytest.raises(CheckpointError, match="no valid checkpoint.*not ok"):
        latest_valid(d, check=lambda p, t, m: check(p, t, {"ok": False}))


# ---- model metadata: a valid checksum does not make a file a usable model -----------------------

def _model_file(path: Path) -> Path:
    from deltaprop.training.model import Model
    rng = np.random.default_rng(3)
    theta = rng.normal(size=4 * 8 + 8 + 8 * 3 + 3).astype(np.float32)
    Model([4, 8, 3], ["relu", "identity"], "cross_entropy", "float32", theta, np.zeros(4, np.float32),
          np.ones(4, np.float32), "standardize", {"relu": {"source": "deltaprop", "version": "0"}}).save(path)
    return path


def _pre(meta, **over):
    return {**meta["preprocess"], **over}


# name -> (metadata change, tensor change, message)
BAD_MODELS = {
    "too_few_activations": (lambda m: {"activations": ["relu"]}, None, "lists 1 activations for 2 dense layers"),
    "too_many_activations": (lambda m: {"activations": ["relu", "relu", "identity"]}, None,
                             "lists 3 activations for 2 dense layers"),
    "activations_not_names": (lambda m: {"activations": "relu"}, None, "'activations' must be a list"),
    "unknown_loss": (lambda m: {"loss": "hinge"}, None, "unknown loss 'hinge'"),
    "unknown_dtype": (lambda m: {"dtype": "float16"}, None, "unknown dtype 'float16'"),
    "no_sizes": (lambda m: {"sizes": None}, None, "'sizes' must list"),
    "sizes_not_ints": (lambda m: {"sizes": [4.0, 8, 3]}, None, "'sizes' must list"),
    "short_mean": (lambda m: {"preprocess": _pre(m, mean=[0.0] * 3)}, None,
                   "preprocess.mean has 3 values for 4 input features"),
    "long_inv_std": (lambda m: {"preprocess": _pre(m, inv_std=[1.0] * 400)}, None,
                     "preprocess.inv_std has 400 values for 4 input features"),
    "inv_std_strings": (lambda m: {"preprocess": _pre(m, inv_std=["1"] * 4)}, None,
                        "preprocess.inv_std must be a list of numbers"),
    "no_preprocess": (lambda m: {"preprocess": None}, None, "'preprocess' must hold"),
    "plugins_not_a_table": (lambda m: {"plugins": {"relu": "deltaprop"}}, None, "'plugins' must map"),
    "config_not_a_table": (lambda m: {"config": {"data": "x"}}, None, "'config' must be a table"),
    "sample_weights_not_a_table": (lambda m: {"sample_weights": True}, None, "'sample_weights' must be"),
    "sample_weights_zero_total": (lambda m: {"sample_weights": {"from": "array 'w'", "rows": 10, "total": 0.0}},
                                  None, "'sample_weights' must be"),
    "missing_bias": (lambda m: {}, lambda t: t.pop("layers.1.bias"), "layers.1.bias is missing"),
    "nan_weight": (lambda m: {}, lambda t: t["layers.0.weight"].__setitem__((0, 0), np.nan),
                   "1 weight(s) are NaN or Inf"),
    "int_weights": (lambda m: {}, lambda t: t.__setitem__("layers.1.bias", np.zeros(3, np.int32)),
                    "not floating point"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_hand_crafted_model_metadata_is_rejected(tmp_path, case):
    """Each of these once reached the engine (ValueError, KeyError) or compiled code (a short
    preprocess.mean was read out of bounds); now load_model names the file and the problem."""
    from deltaprop.training.model import load_model
    change_meta, change_tensors, msg = BAD_MODELS[case]
    good = _model_file(tmp_path / "good.safetensors")
    assert load_model(good).sizes == [4, 8, 3]
    tensors, meta = read_safetensors(good)
    meta.update(change_meta(meta))
    if change_tensors:
        change_tensors(tensors)
    p = tmp_path / f"{case}.safetensors"
    write_safetensors(p, tensors, meta)  # a valid checksum
    read_safetensors(p)
    with pytest.raises(CheckpointError) as e:
        load_model(p)
    assert str(p) in str(e.value) and msg in str(e.value)


# ---- files from before the move to the safetensors library ----------------------------------------

FORMAT_V1 = Path(__file__).resolve().parent / "fixtures" / "format-v1"


def test_files_written_by_the_hand_written_writer_still_load_predict_and_resume(tmp_path):
    """fixtures/format-v1 was written by deltaprop's own safetensors writer (before the library
    took over): the model predicts as it did, and the epoch-1 checkpoint resumes to exactly the
    weights of an uninterrupted run of the same config."""
    import shutil

    from deltaprop.api import read_config
    from deltaprop.io.rundir import RunDir
    from deltaprop.training.model import load_model
    from deltaprop.training.runs import resume_run, train_run
    X = np.load(FORMAT_V1 / "data.npz")["X"]
    model = load_model(FORMAT_V1 / "model.safetensors")
    np.testing.assert_allclose(model.predict_proba(X), np.load(FORMAT_V1 / "expected_proba.npy"), atol=1e-6)
    assert sorted(safetensors.numpy.load_file(FORMAT_V1 / "model.safetensors")) == \
        ["layers.0.bias", "layers.0.weight", "layers.1.bias", "layers.1.weight"]

    shutil.copy(FORMAT_V1 / "data.npz", tmp_path / "data.npz")
    cfg = read_config({"model": {"hidden": [8], "activation": "tanh"},
                       "data": {"train": str(tmp_path / "data.npz"), "test": "", "scale": "standardize"},
                       "training": {"epochs": 3, "batch_size": 16, "seed": 3},
                       "optimizer": {"name": "adam", "lr": 0.01},
                       "checkpoint": {"every_epochs": 1, "keep": 3}})
    fresh = train_run(cfg, tmp_path / "fresh")
    rd = RunDir(tmp_path / "resumed")
    rd.checkpoint_dir.mkdir(parents=True)
    rd.write_config(cfg.to_toml())
    shutil.copy(FORMAT_V1 / "step-0000000004.safetensors", rd.checkpoint_dir)
    resumed = resume_run(rd.path)
    assert [m["loss"] for m in resumed.metrics] == [m["loss"] for m in fresh.metrics]
    assert np.array_equal(resumed.model.theta, fresh.model.theta)


def test_the_same_contents_give_the_same_bytes_in_every_process(tmp_path):
    """The library writes its metadata map in a per-process order; deltaprop's files are canonical."""
    import subprocess
    import sys
    code = ("import sys, numpy as np; from deltaprop.io.safetensors import write_safetensors; "
            "write_safetensors(sys.argv[1], {'b': np.arange(3.0), 'a': np.ones(2, np.float32)}, "
            "{'z': 1, 'a': [1, 2], 'm': {'y': 2, 'x': 1}})")
    for i in range(4):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{i}.safetensors")], check=True)
    assert len({(tmp_path / f"{i}.safetensors").read_bytes() for i in range(4)}) == 1
