"""The README's bad-input table, one test per row: input -> exit 2 and a message naming the place.

Each case's `input` text is a row of the README table ("Bad input" section); a meta-test keeps
the two in step.
"""

import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from deltaprop.cli.main import app
from deltaprop.io.safetensors import read_safetensors, write_safetensors

README = Path(__file__).resolve().parents[1] / "README.md"
BASE = '[model]\nhidden = [8]\n[data]\ntrain = "{train}"\ntest = ""\n[training]\nepochs = 1\n'


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)), rng.integers(0, 3, 60)
    np.savez(d / "ok.npz", X=X, y=y)
    Xn = X.copy()
    Xn[7, 2], Xn[9, 1] = np.nan, np.inf
    np.savez(d / "nan.npz", X=Xn, y=y)
    np.savez(d / "negative.npz", X=X, y=np.where(np.arange(60) == 5, -1, y))
    np.savez(d / "fraction.npz", X=X, y=y + 0.5)
    np.savez(d / "five.npz", X=X[:, :3].copy(), y=y)
    np.savez(d / "short.npz", X=X, y=y[:40])
    np.savez(d / "empty.npz", X=X[:0], y=y[:0])
    np.savez(d / "nokey.npz", features=X, y=y)
    np.savez(d / "biglabel.npz", X=X, y=np.where(np.arange(60) == 3, 9, y))
    (d / "bad.csv").write_text("a,b,label\n1,2,0\n3,x,1\n")
    w = np.ones(60)
    np.savez(d / "negw.npz", X=X, y=y, w=np.where(np.arange(60) == 4, -2.0, w))
    np.savez(d / "nanw.npz", X=X, y=y, w=np.where(np.arange(60) == 8, np.nan, w))
    np.savez(d / "shortw.npz", X=X, y=y, w=w[:50])
    np.savez(d / "zerow.npz", X=X, y=y, w=np.zeros(60))
    (d / "negw.csv").write_text("a,w,label\n1,1,0\n2,1,1\n3,-1,0\n")
    (d / "trunc-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, 10, 28, 28) + b"\0" * 100)
    (d / "trunc-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, 10) + b"\0" * 10)
    (d / "ok.toml").write_text(BASE.format(train=d / "ok.npz"))
    (d / "syntax.toml").write_text("[model]\nhidden = = 3\n")
    result = CliRunner().invoke(app, ["train", str(d / "ok.toml"), "--run-dir", str(d / "run")])
    assert result.exit_code == 0, result.output
    model = (d / "run" / "model.safetensors").read_bytes()
    (d / "truncated.safetensors").write_bytes(model[: len(model) // 2])
    (d / "hostile.safetensors").write_bytes(struct.pack("<Q", 2 ** 62) + b"{}")
    flipped = bytearray(model)
    flipped[-3] ^= 0x10
    (d / "flipped.safetensors").write_bytes(bytes(flipped))
    # hand-crafted metadata with a valid checksum
    tensors, meta = read_safetensors(d / "run" / "model.safetensors")
    for name, change in [("acts", {"activations": ["relu"]}), ("loss", {"loss": "hinge"}),
                         ("stats", {"preprocess": {**meta["preprocess"], "mean": [0.0] * 3}})]:
        write_safetensors(d / f"{name}.safetensors", tensors, {**meta, **change})
    shutil.copytree(d / "run", d / "badstate")
    (d / "badstate" / "model.safetensors").unlink()
    for path in (d / "badstate" / "checkpoints").iterdir():
        tensors, meta = read_safetensors(path)
        del meta["state"]["pos"]
        write_safetensors(path, tensors, meta)
    return d


def cfg(d: Path, train="ok.npz", extra="") -> str:
    path = d / f"c{abs(hash((train, extra)))}.toml"
    path.write_text(BASE.format(train=d / train) + extra)
    return str(path)


# (README input text, argv builder, message fragments)
CASES = [
    ("config file missing", lambda d: ["train", str(d / "nope.toml")], ["nope.toml", "does not exist"]),
    ("TOML syntax error", lambda d: ["train", str(d / "syntax.toml")], ["syntax.toml", "not valid TOML", "line 2"]),
    ("misspelt key", lambda d: ["train", cfg(d), "--set", "optimizer.lrr=0.1"],
     ["optimizer.lrr", "did you mean 'lr'"]),
    ("misspelt section", lambda d: ["train", cfg(d, extra="[optimiser]\nlr = 0.1\n")],
     ["[optimiser]", "did you mean 'optimizer'"]),
    ("wrong type", lambda d: ["train", cfg(d), "--set", 'training.epochs="ten"'],
     ["training.epochs", "must be an integer"]),
    ("value out of range", lambda d: ["train", cfg(d), "--set", "optimizer.lr=-1"],
     ["optimizer.lr", "out of range"]),
    ("unknown choice", lambda d: ["train", cfg(d), "--set", 'training.loss="msee"'],
     ["training.loss", "did you mean 'mse'"]),
    ("early-stopping monitor the loss does not have",
     lambda d: ["train", cfg(d), "--set", 'training.loss="mse"', "--set", 'early_stopping.monitor="val_accuracy"'],
     ["early_stopping.monitor = 'val_accuracy'", "training.loss = 'cross_entropy'", "val_r2"]),
    ("negative seed", lambda d: ["train", cfg(d), "--set", "training.seed=-1"],
     ["training.seed = -1", "out of range", ">= 0"]),
    ("negative weight decay", lambda d: ["train", cfg(d), "--set", "optimizer.weight_decay=-5.0"],
     ["optimizer.weight_decay = -5.0", "out of range", ">= 0.0"]),
    ("malformed --set", lambda d: ["train", cfg(d), "--set", "optimizer.lr"], ["section.key=value"]),
    ("unknown activation", lambda d: ["train", cfg(d), "--set", 'model.activation="relux"'],
     ["unknown activation 'relux'", "relu"]),
    ("data file missing", lambda d: ["train", cfg(d, "missing.npz")], ["missing.npz", "does not exist"]),
    ("NaN/Inf in features", lambda d: ["train", cfg(d, "nan.npz")], ["nan.npz", "2 non-finite", "row 7, column 2"]),
    ("non-integer class label", lambda d: ["train", cfg(d, "fraction.npz")], ["fraction.npz", "row 0", "1.5"]),
    ("X/y length mismatch", lambda d: ["train", cfg(d, "short.npz")], ["short.npz", "60", "40"]),
    ("empty data", lambda d: ["train", cfg(d, "empty.npz")], ["empty.npz", "empty"]),
    ("npz without X", lambda d: ["train", cfg(d, "nokey.npz")], ["nokey.npz", "features"]),
    ("non-numeric CSV cell", lambda d: ["train", cfg(d, "bad.csv")], ["bad.csv", "line 3", "'b'"]),
    ("negative sample weight", lambda d: ["train", cfg(d, "negw.npz")],
     ["negw.npz", "array 'w' at row 4", "-2.0, negative"]),
    ("NaN sample weight", lambda d: ["train", cfg(d, "nanw.npz")], ["nanw.npz", "array 'w' at row 8", "not a finite"]),
    ("sample weights of the wrong length", lambda d: ["train", cfg(d, "shortw.npz")],
     ["shortw.npz", "X has 60 rows", "shape (50,)"]),
    ("all sample weights zero", lambda d: ["train", cfg(d, "zerow.npz")], ["zerow.npz", "all zero"]),
    ("negative weight in a CSV weight column",
     lambda d: ["train", cfg(d, "negw.csv"), "--set", 'data.weight_column="w"'],
     ["negw.csv", "column 'w' at line 4", "negative"]),
    ("weight column missing", lambda d: ["train", cfg(d, "bad.csv"), "--set", 'data.weight_column="wt"'],
     ["bad.csv", "weight column 'wt'", "not found", "a, b, label"]),
    ("truncated IDX file", lambda d: ["train", cfg(d, "trunc-images-idx3-ubyte")], ["trunc-images-idx3-ubyte", "truncated"]),
    ("test labels beyond the trained classes",
     lambda d: ["train", cfg(d, extra=""), "--set", f'data.test="{d / "biglabel.npz"}"'],
     ["biglabel.npz", "row 3", "9"]),
    ("feature count differs from the model", lambda d: ["evaluate", str(d / "run"), "--data", str(d / "five.npz")],
     ["five.npz", "3", "4"]),
    ("model file missing", lambda d: ["evaluate", str(d / "nothere.safetensors"), "--data", str(d / "ok.npz")],
     ["nothere.safetensors", "does not exist"]),
    ("truncated model or checkpoint", lambda d: ["evaluate", str(d / "truncated.safetensors"), "--data",
                                                 str(d / "ok.npz")], ["truncated.safetensors", "truncated"]),
    ("bit-flipped model or checkpoint", lambda d: ["evaluate", str(d / "flipped.safetensors"), "--data",
                                                   str(d / "ok.npz")], ["flipped.safetensors", "checksum"]),
    ("hostile safetensors header", lambda d: ["evaluate", str(d / "hostile.safetensors"), "--data",
                                              str(d / "ok.npz")], ["hostile.safetensors", "header"]),
    ("model metadata with the wrong number of activations",
     lambda d: ["evaluate", str(d / "acts.safetensors"), "--data", str(d / "ok.npz")],
     ["acts.safetensors", "lists 1 activations for 2 dense layers"]),
    ("model metadata with an unknown loss",
     lambda d: ["evaluate", str(d / "loss.safetensors"), "--data", str(d / "ok.npz")],
     ["loss.safetensors", "unknown loss 'hinge'"]),
    ("preprocessing statistics of the wrong length",
     lambda d: ["evaluate", str(d / "stats.safetensors"), "--data", str(d / "ok.npz")],
     ["stats.safetensors", "preprocess.mean has 3 values for 4 input features"]),
    ("checkpoint with a malformed training state", lambda d: ["resume", str(d / "badstate")],
     ["no valid checkpoint", "step-", "invalid training state", "missing pos"]),
    ("train into a directory holding a run", lambda d: ["train", cfg(d), "--run-dir", str(d / "run")],
     ["already holds a run", "deltaprop resume"]),
    ("resume a directory that is not a run", lambda d: ["resume", str(d)], ["not a run directory", "config.toml"]),
    ("export to a file that exists", lambda d: ["export", str(d / "run"), "-o", str(d / "ok.npz")],
     ["ok.npz already exists", "--overwrite"]),
    ("export into a missing directory", lambda d: ["export", str(d / "run"), "-o", str(d / "out" / "m.onnx")],
     ["cannot write", "m.onnx", "does not exist"]),
    ("export at an unsupported opset", lambda d: ["export", str(d / "run"), "-o", str(d / "m.onnx"), "--opset", "7"],
     ["opset 7 is not supported", "opsets 13 to"]),
]


@pytest.mark.parametrize("name,argv,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input(files, name, argv, fragments):
    before = {p: p.read_bytes() for p in (files / "run").rglob("*") if p.is_file()}
    result = CliRunner().invoke(app, argv(files))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    message = " ".join(result.output.split())
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert message.count("error:") == 1
    after = {p: p.read_bytes() for p in (files / "run").rglob("*") if p.is_file()}
    assert after == before  # an existing run is never damaged


def test_every_case_is_a_readme_row():
    rows = re.findall(r"^\| (.+?) \|", README.read_text(), flags=re.M)
    missing = [name for name, _, _ in CASES if name not in rows]
    assert not missing, f"add rows to README's bad-input table: {missing}"
