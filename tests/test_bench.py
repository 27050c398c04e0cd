"""Smoke test of bench/bench.py: the harness runs end to end on tiny sizes and its JSON has the
documented shape. No timing assertions (the numbers of a tiny run on a shared machine mean nothing)."""

import ast
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "bench.py"
SYSTEMS = ("deltaprop", "pytorch", "numpy", "sklearn")
PEERS = SYSTEMS[1:]
MODULES = {"pytorch": "torch", "sklearn": "sklearn"}


def run_bench(*args, env=None):
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def check_report(report, batch_sizes):
    assert report["flops_per_sample"] == 2 * 234752 + 2 * 234752 + 2 * (256 * 128 + 128 * 10)
    assert report["config"]["sizes"] == [784, 256, 128, 10]
    assert report["config"]["batch_sizes"] == batch_sizes and report["config"]["repeats"] == 1
    m = report["machine"]
    assert m["cpu"] and m["threads"] >= 1 and m["versions"]["numpy"] and m["versions"]["numba"]
    assert number(report["gemm_peak"]["gflops"])
    systems = report["systems"]
    assert set(systems) == set(SYSTEMS)
    assert systems["deltaprop"]["status"] == "ok" and systems["numpy"]["status"] == "ok"
    for name, st in systems.items():
        assert st["status"] in ("ok", "skipped"), (name, st)  # "failed" carries the worker's error
        if st["status"] == "skipped":
            assert st["note"]
    assert [row["batch"] for row in report["results"]] == batch_sizes
    for row in report["results"]:
        assert number(row["samples_per_s"]["deltaprop"])
        assert number(row["deltaprop_gflops"]) and number(row["peak_fraction"])
        for p in PEERS:
            if systems[p]["status"] == "ok":
                assert number(row["samples_per_s"][p]) and number(row["ratios"][p]), (p, row)
            else:
                assert row["samples_per_s"][p] is None and row["ratios"][p] is None
        for peer, tg in row["targets"].items():  # reported, never asserted
            assert tg["met"] in (True, False, None)
    return systems


def test_quick_json():
    report = run_bench()
    systems = check_report(report, [128])
    for system, module in MODULES.items():
        if importlib.util.find_spec(module) is None:
            assert systems[system]["status"] == "skipped" and "not installed" in systems[system]["note"]
        else:
            assert systems[system]["status"] == "ok", systems[system]
    assert systems["pytorch"]["status"] != "ok" or set(report["results"][0]["targets"]) == {"pytorch", "numpy"}


def test_missing_peers_are_skipped_with_a_note(tmp_path):
    """torch and scikit-learn made unimportable: reported as skipped, not an error."""
    for mod in MODULES.values():
        (tmp_path / mod).mkdir()
        (tmp_path / mod / "__init__.py").write_text(f"raise ImportError('no {mod} here (test)')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    report = run_bench("--samples", "256", "--batch-sizes", "32", env=env)
    systems = check_report(report, [32])
    for system in MODULES:
        assert systems[system]["status"] == "skipped" and "not installed" in systems[system]["note"]
    row = report["results"][0]
    assert row["targets"]["pytorch"]["met"] is None and row["targets"]["numpy"]["met"] in (True, False)


def test_phases_smoke():
    """bench/phases.py calls the kernels' phases with their current signatures (it breaks
    silently otherwise: nothing else imports it) and every phase reports a time."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "phases.py"), "--batch", "8,160",
                           "--sizes", "12,70,10", "--reps", "3", "--threads", "2"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["batch 8", "batch 160"]
    for line in lines:
        for phase in ("gather", "forward", "forward+update", "loss", "backward", "update", "empty", "step"):
            assert f" {phase} " in line, (phase, line)


def test_bench_modules_are_small_and_documented():
    """bench/ stays split by what each part does: every module says what it is for, none grows
    past 350 lines (the limit tests/test_architecture.py keeps for src/)."""
    for path in sorted((ROOT / "bench").glob("*.py")):
        text = path.read_text()
        assert ast.get_docstring(ast.parse(text)), f"{path.name}: no module docstring"
        assert len(text.splitlines()) <= 350, f"{path.name}: split it"
