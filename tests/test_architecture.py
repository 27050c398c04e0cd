"""The layout ARCHITECTURE.md describes, checked: layers import only downwards, the job runner
never imports Numba, the run directory's file names live in one module, every file replacement
goes through one atomic-write helper, and no source file grows past 350 lines."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "deltaprop"
MODULES = sorted(SRC.rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _imports(path: Path) -> set[str]:
    """Absolute names of the deltaprop modules `path` imports (relative imports resolved)."""
    package = ["deltaprop", *path.relative_to(SRC).parent.parts]
    out = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                out.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m == "deltaprop" or m.startswith("deltaprop.")}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


# what each layer may import (besides itself and the leaf modules errors, _system, plugins.hookspecs)
ALLOWED = {
    "kernels": set(),
    "io": set(),
    "plugins": {"kernels"},
    "compute": {"kernels", "plugins"},
    "training": {"io", "compute", "plugins"},
    "jobs": {"io"},
    "view": {"io"},
    "cli": {"training", "jobs", "io", "plugins", "api", "view"},
    "api": {"training", "io"},
    "sklearn": {"training", "io", "compute"},
}
LEAVES = {"deltaprop", "deltaprop.errors", "deltaprop._system", "deltaprop._values"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_down_the_layers(path):
    layer = _layer("deltaprop." + ".".join(path.relative_to(SRC).with_suffix("").parts))
    if layer not in ALLOWED:
        return  # __init__, errors, _system
    bad = sorted(m for m in _imports(path) - LEAVES
                 if _layer(m) != layer and _layer(m) not in ALLOWED[layer])
    assert not bad, f"{path.relative_to(SRC)} ({layer}) imports {bad}; see ARCHITECTURE.md"


def test_the_job_runner_and_the_cli_import_no_numba():
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "numba" or name.startswith("numba."):
            raise ImportError("numba is blocked in this test")
sys.meta_path.insert(0, Block())
import deltaprop.jobs.queue, deltaprop.jobs.worker, deltaprop.jobs.sweep, deltaprop.jobs.ray
import deltaprop.jobs.tune, deltaprop.jobs.space, deltaprop.jobs.study, deltaprop.jobs.schema
import deltaprop.cli.main, deltaprop._system
assert deltaprop._system.cores() >= 1
assert "numba" not in sys.modules
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


RUN_DIR_NAMES = {"config.toml", "metrics.jsonl", "steps.jsonl", "status.json", "checkpoints", "model.safetensors", "log.txt"}


def _code_strings(tree: ast.Module):
    """String constants that are not docstrings."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node


def test_run_directory_file_names_live_in_one_module():
    where = {}
    for path in MODULES:
        for node in _code_strings(_tree(path)):
            if node.value in RUN_DIR_NAMES:
                where.setdefault(str(path.relative_to(SRC)), set()).add(node.value)
    assert set(where) == {"io/rundir.py"}, where


def test_one_atomic_write_helper():
    """Only _system.atomic_write renames a temp file onto a target."""
    found = []
    for path in MODULES:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Attribute) and node.attr in ("replace", "rename", "mkstemp", "NamedTemporaryFile") \
                    and isinstance(node.value, ast.Name) and node.value.id in ("os", "tempfile"):
                found.append(f"{path.relative_to(SRC)}:{node.lineno} {node.value.id}.{node.attr}")
    assert found and all(f.startswith("_system.py:") for f in found), found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_source_file_is_over_350_lines(path):
    assert len(path.read_text().splitlines()) <= 350, f"{path.relative_to(SRC)}: split it (STYLE.md)"
