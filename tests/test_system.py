"""deltaprop._system.atomic_write, the one way a file is replaced: all or nothing, exclusive temp
files that a planted symlink cannot redirect, fsynced, and a clear error on a full disk."""

import errno
import os

import numpy as np
import pytest

import deltaprop._system as system
from deltaprop.errors import CheckpointError, WriteError


def test_writes_and_replaces_leaving_no_temp_file(tmp_path):
    p = tmp_path / "f.txt"
    system.atomic_write(p, "one")
    system.atomic_write(p, b"two")
    system.atomic_write(p, lambda f: f.write(b"three"))
    assert p.read_text() == "three"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_a_planted_symlink_at_the_temp_name_is_never_written_through(tmp_path, monkeypatch):
    """The temp name is random; even when an attacker guesses it, O_EXCL | O_NOFOLLOW refuses the
    planted link instead of writing into its target."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    monkeypatch.setattr("secrets.token_hex", lambda n: "guessed")
    (tmp_path / ".f.txt.guessed.tmp").symlink_to(victim)
    with pytest.raises(WriteError, match=r"cannot write .*f\.txt: File exists \(EEXIST\)"):
        system.atomic_write(tmp_path / "f.txt", "attack")
    assert victim.read_text() == "precious"
    assert not (tmp_path / "f.txt").exists()


def test_the_old_fixed_temp_names_are_harmless(tmp_path):
    """Symlinks planted where deltaprop once wrote its temp files (RUN/.config.toml.tmp,
    RUN/metrics.jsonl.tmp, OUT/.p.npy.tmp) leave their targets alone."""
    from typer.testing import CliRunner

    from deltaprop.cli.main import app
    victim = tmp_path / "victim"
    victim.write_text("precious")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", X=X, y=(X[:, 0] > 0).astype(int))
    run = tmp_path / "run"
    run.mkdir()
    for name in (".config.toml.tmp", "metrics.jsonl.tmp"):
        (run / name).symlink_to(victim)
    (tmp_path / ".p.npy.tmp").symlink_to(victim)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[model]\nhidden = [4]\n[data]\ntrain = "{tmp_path / "d.npz"}"\ntest = ""\n'
                   '[training]\nepochs = 1\nbatch_size = 16\n')
    runner = CliRunner()
    r = runner.invoke(app, ["train", str(cfg), "--run-dir", str(run)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["predict", str(run), "--data", str(tmp_path / "d.npz"), "--output",
                            str(tmp_path / "p.npy")])
    assert r.exit_code == 0, r.output
    assert victim.read_text() == "precious"
    assert np.load(tmp_path / "p.npy").shape == (64, 2)


@pytest.mark.parametrize("victim", ["write", "fsync", "replace"])
def test_a_full_disk_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch, victim):
    p = tmp_path / "f.txt"
    p.write_text("old")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    if victim == "write":
        def data(f):
            f.write(b"par")
            full()
    else:
        data = b"new"
        monkeypatch.setattr(system.os, victim, full)
    with pytest.raises(WriteError, match=r"cannot write .*f\.txt: No space left on device \(ENOSPC\)"):
        system.atomic_write(p, data)
    monkeypatch.undo()
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_the_error_class_can_be_chosen(tmp_path):
    with pytest.raises(CheckpointError, match="cannot write"):
        system.atomic_write(tmp_path / "missing-dir" / "f", b"x", error=CheckpointError)
