"""Looking at runs: `deltaprop runs` (status, progress, best and final metrics, differing keys),
`deltaprop plot` (a PNG whose series equal metrics.jsonl), `deltaprop summary` and status.json."""

import json
import struct
from pathlib import Path

import pytest
from fixtures.cli import assert_exit, cli
from fixtures.data import write_classification, write_config

import deltaprop
from deltaprop.api import read_config
from deltaprop.errors import TrainingFailed
from deltaprop.io.rundir import RunDir
from deltaprop.training.runs import train_run
from deltaprop.training.summary import model_summary
from deltaprop.view.plot import plot_curves
from deltaprop.view.runlist import scan


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Under one directory: two finished runs (lr 0.01 and 0.05), one stopped by a request after
    its first checkpoint, one that diverged, one whose process was killed (status.json still says
    running), and one that holds nothing yet."""
    root = tmp_path_factory.mktemp("runs")
    train = write_classification(root.parent / "train.npz", n=400)
    cfg = write_config(root.parent / "c.toml", train, epochs=3)
    finished = {}
    for lr in ("0.01", "0.05"):
        finished[lr] = train_run(read_config(cfg, [f"optimizer.lr={lr}", "data.validation_fraction=0.25", "logging.every_steps=5"]),
                                 root / f"lr{lr}")
    calls = iter(range(10**6))
    with pytest.raises(TrainingFailed, match="stopped by request"):
        train_run(read_config(cfg, ["checkpoint.every_steps=3"]), root / "stopped",
                  stop_requested=lambda: "request" if next(calls) == 4 else None)
    with pytest.raises(TrainingFailed, match="diverged"):
        train_run(read_config(cfg, ["optimizer.lr=1e30", "optimizer.name=\"sgd\""]), root / "diverged")
    killed = root / "killed"
    train_run(read_config(cfg, ["training.epochs=1"]), killed)
    RunDir(killed).model_path.unlink()
    RunDir(killed).write_status("running", pid=999999, epoch=0, step=0)
    (root / "new").mkdir()
    RunDir(root / "new").write_config(read_config(cfg).to_toml())
    return root, finished


def test_statuses_progress_best_and_differing_keys(runs):
    root, finished = runs
    r = cli("runs", root, "--json", "--sort", "name")
    assert_exit(r, 0)
    out = json.loads(r.output)
    by = {x["name"]: x for x in out["runs"]}
    assert {n: x["status"] for n, x in by.items()} == {
        "lr0.01": "finished", "lr0.05": "finished", "stopped": "interrupted", "diverged": "failed",
        "killed": "interrupted", "new": "new"}
    assert [x["name"] for x in out["runs"]] == sorted(by)
    assert "diverged" in by["diverged"]["error"] and by["stopped"]["error"] == ""
    history = finished["0.01"].metrics
    assert (by["lr0.01"]["epochs_done"], by["lr0.01"]["epochs"]) == (3, 3)
    assert by["lr0.01"]["final"] == json.loads(json.dumps(history[-1]))
    best = max(history, key=lambda m: m["val_accuracy"])
    assert by["lr0.01"]["best"] == {"metric": "val_accuracy", "value": best["val_accuracy"], "epoch": best["epoch"]}
    assert "optimizer.lr" in out["differing"] and "model.hidden" not in out["differing"]

    r = cli("runs", root / "lr0.01", root / "lr0.05", "--json", "--sort", "val_accuracy")
    ranked = json.loads(r.output)["runs"]
    assert [x["final"]["val_accuracy"] for x in ranked] == sorted((x["final"]["val_accuracy"] for x in ranked),
                                                                   reverse=True)
    assert json.loads(r.output)["differing"] == ["optimizer.lr"]
    r = cli("runs", root / "lr0.01", root / "lr0.05")  # the table, piped: tab-separated lines
    assert_exit(r, 0)
    lines = [x.split("\t") for x in r.output.splitlines()]
    assert lines[0][:4] == ["run", "status", "epochs", "best"] and lines[0][-1] == "optimizer.lr"
    assert {tuple(x[1:3]) for x in lines[1:]} == {("finished", "3/3")}
    missing = cli("runs", root / "nope")
    assert_exit(missing, 2)
    assert "nope: no such directory" in missing.output
    bad = cli("runs", root, "--sort", "colour")
    assert_exit(bad, 2)
    assert "--sort 'colour'" in bad.output


def test_a_running_run_is_running(runs):
    root, _ = runs
    with RunDir(root / "lr0.01").lock():  # as a training process holds it
        assert scan([root / "lr0.01"])[0].status == "running"
    assert scan([root / "lr0.01"])[0].status == "finished"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_a_png_whose_series_are_the_metrics(runs, tmp_path):
    root, finished = runs
    out = tmp_path / "curves.png"
    r = cli("plot", root / "lr0.01", root / "lr0.05", "--metric", "loss,val_accuracy", "-o", out)
    assert_exit(r, 0)
    assert _png_size(out) == (2 * 480, 360)
    import matplotlib.image
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[:2] == (360, 960) and pixels.std() > 0.05  # drawn, not blank

    records = scan([root / "lr0.01", root / "lr0.05"])
    series = plot_curves(records, ["loss", "val_accuracy"], tmp_path / "again.png")
    for lr, result in finished.items():
        label = f"lr{lr} (lr={lr})"
        assert series["loss"][label] == ([m["epoch"] for m in result.metrics], [m["loss"] for m in result.metrics])
        assert series["val_accuracy"][label][1] == [m["val_accuracy"] for m in result.metrics]
    steps = plot_curves(records, None, tmp_path / "steps.png", steps=True)
    assert _png_size(tmp_path / "steps.png") == (480, 360)
    rows = RunDir(root / "lr0.01").read_steps()
    assert steps["loss"]["lr0.01 (lr=0.01)"] == ([m["step"] for m in rows], [m["loss"] for m in rows])


def test_plot_errors_are_one_line(runs, tmp_path):
    root, _ = runs
    for args, fragment in ((["plot"], "name the runs to plot"),
                           (["plot", tmp_path / "nope"], "no such run directory"),
                           (["plot", root / "lr0.01", "--metric", "val_r2"], "--metric val_r2: no run has it in the epoch metrics"),
                           (["plot", tmp_path], "no run directories in")):
        r = cli(*args, "-o", tmp_path / "x.png")
        assert_exit(r, 2)
        assert fragment in r.output and not (tmp_path / "x.png").exists(), (args, r.output)


def test_summary_of_a_model_and_its_repr(runs):
    root, finished = runs
    model = deltaprop.load_model(root / "lr0.01")
    r = cli("summary", root / "lr0.01", "--json")
    assert_exit(r, 0)
    s = json.loads(r.output)
    assert s == json.loads(json.dumps(model_summary(model, "adam")))
    assert s["parameters"] == 8 * 16 + 16 + 16 * 3 + 3 == model.theta.size
    assert s["flops_per_sample"] == 2 * (8 * 16 + 16 * 3)
    assert s["optimizer_bytes"] == 2 * s["weights_bytes"] == 2 * 4 * s["parameters"]
    assert [la["activation"] for la in s["layers"]] == ["relu", "softmax (cross-entropy)"]
    text = cli("summary", root / "lr0.01").output
    assert "16 x 8" in text and f"parameters: {s['parameters']:,}" in text
    assert repr(model).splitlines()[1:] == text.splitlines()[:-1]  # the same, less the optimizer's memory


def test_status_json_records_how_each_run_ended(runs):
    root, _ = runs
    assert RunDir(root / "lr0.01").read_status()["status"] == "finished"
    assert RunDir(root / "stopped").read_status()["status"] == "interrupted"
    st = RunDir(root / "diverged").read_status()
    assert st["status"] == "failed" and "diverged" in st["error"]
