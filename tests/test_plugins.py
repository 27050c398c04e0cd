"""The activation-plugin contract (the README's "Activation plugins" section).

Broken plugins (tests/fixtures/plugins/) are loaded three ways: in-process as
`load_registry(extra=...)` modules, in-process through real entry points of a fake installed
distribution (tests/fixtures/fakedist.py), and through the real `deltaprop` command in a
subprocess. Each must be reported by name as broken, with a reason, while the builtins, the swish
example plugin and the CLI keep working. Every test builds its own registry with `load_registry()`.
"""

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import tomllib

import numpy as np
import pytest
from fixtures.cli import assert_exit, cli, run_real, use_registry
from fixtures.data import write_classification, write_config
from fixtures.fakedist import DIST, NAMES, VERSION, make_fake_dist, module_name
from safetensors import safe_open

import deltaprop
from deltaprop.errors import PluginError
from deltaprop.plugins import builtin, hookspecs
from deltaprop.plugins.manager import load_registry, make_plugin_manager

BUILTIN_NAMES = {"identity", "relu", "leaky_relu", "sigmoid", "tanh", "elu", "gelu", "softplus", "silu"}

# fixture plugin -> a fragment its "broken" reason must contain
BROKEN_REASONS = {
    "bad_import": "fixture plugin exploded at import",
    "bad_hook": "fixture hook exploded",
    "dup_name": "'relu' is already registered",
    "not_jitted": "not a numba.njit function",
    "misspelt_hook": "register_activation",
}
# What each broken plugin would have registered (must not appear in the registry).
BROKEN_ACTIVATIONS = {"dup_name": None, "not_jitted": "plainsquare", "misspelt_hook": "misspelt"}
IN_PROCESS = sorted(set(BROKEN_REASONS) - {"bad_import"})  # importing bad_import raises, by design

# Meta-test bookkeeping: hookspec name -> the tests in this file that drive it through a real
# plugin manager (builtins, entry points, `extra` modules, the CLI).
EXERCISED_HOOKS = {
    "register_activations": [
        "test_builtins_register_through_the_same_hook",
        "test_broken_plugin_in_process_is_reported_and_the_rest_load",
        "test_all_broken_plugins_at_once_through_extra",
        "test_wrong_derivative_loads_but_is_refused",
        "test_broken_entry_points_in_process",
        "test_broken_entry_points_through_the_real_cli",
        "test_swish_is_listed_with_its_distribution",
        "test_swish_trains_and_is_recorded_in_the_model",
    ],
    "register_loggers": [
        "test_loggers::test_builtin_loggers_register_through_the_same_hook",
        "test_loggers::test_a_logger_gets_every_step_multiple_whatever_the_chunking",
        "test_loggers::test_a_broken_logger_is_reported_by_name_and_training_goes_on",
        "test_loggers::test_a_third_party_logger_through_a_real_entry_point",
    ],
}


def fixture_module(name: str):
    return importlib.import_module(f"fixtures.plugins.{name}")


def plugin(registry, name: str):
    found = [p for p in registry.plugins if p.name == name]
    assert len(found) == 1, f"plugin {name!r} listed {len(found)} times: {registry.plugins}"
    return found[0]


def assert_healthy(registry) -> None:
    """Builtins and the swish example plugin loaded, whatever else broke."""
    assert plugin(registry, "builtin").status == "ok"
    assert BUILTIN_NAMES <= set(registry.activations)
    assert all(registry.activations[n].source == "deltaprop" for n in BUILTIN_NAMES)
    assert plugin(registry, "swish").status == "ok"
    assert "swish" in registry.activations


@pytest.fixture(autouse=True)
def _all_entry_points(monkeypatch):
    monkeypatch.delenv("DELTAPROP_LOAD_PLUGINS", raising=False)


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """The fixture plugins installed as entry points of a fake distribution on sys.path."""
    root = make_fake_dist(tmp_path / "site")
    monkeypatch.syspath_prepend(str(root))
    yield root
    for n in NAMES:
        sys.modules.pop(module_name(n), None)


@pytest.fixture
def tiny_config(tmp_path):
    train = write_classification(tmp_path / "train.npz")
    return write_config(tmp_path / "tiny.toml", train)


# ---- builtins ------------------------------------------------------------------------------------

def test_builtins_register_through_the_same_hook():
    assert hasattr(builtin.register_activations, f"{hookspecs.hookimpl.project_name}_impl"), \
        "deltaprop.plugins.builtin.register_activations is not a @hookimpl"
    pm = make_plugin_manager()
    pm.register(builtin, name="builtin")
    pm.check_pending()
    assert [impl.plugin for impl in pm.hook.register_activations.get_hookimpls()] == [builtin]

    reg = load_registry(entry_points=False)
    info = plugin(reg, "builtin")
    assert (info.source, info.version, info.status, info.reason) == ("deltaprop", deltaprop.__version__, "ok", "")
    assert set(info.activations) == BUILTIN_NAMES and len(info.activations) == len(BUILTIN_NAMES)
    assert set(reg.activations) == BUILTIN_NAMES
    for name in BUILTIN_NAMES:
        act = reg.activations[name]
        assert (act.source, act.version) == ("deltaprop", deltaprop.__version__)
        assert act.problems() == []


def test_every_registered_activation_passes_its_derivative_check():
    reg = load_registry()
    for name in reg.activations:
        result = reg.check(name)
        assert result.ok, f"{name}: worst error {result.worst_error} at {result.worst_at}"
        assert result.points > 500
        assert reg.require_checked(name) is reg.activations[name]


# ---- broken plugins, in-process ------------------------------------------------------------------

@pytest.mark.parametrize("name", IN_PROCESS)
def test_broken_plugin_in_process_is_reported_and_the_rest_load(name):
    reg = load_registry(extra=((name, fixture_module(name)),))
    info = plugin(reg, name)
    assert info.status == "broken"
    assert BROKEN_REASONS[name] in info.reason
    # it lists what it tried to register (so errors can name it), but none of it is registered
    assert all(reg.activations[a].source != info.source for a in info.activations if a in reg.activations)
    assert_healthy(reg)
    lost = BROKEN_ACTIVATIONS.get(name)
    if lost:
        assert lost not in reg.activations
        with pytest.raises(PluginError, match=lost):
            reg.require_checked(lost)
    if name == "dup_name":  # the builtin keeps the name
        assert reg.activations["relu"].forward is builtin.relu


def test_all_broken_plugins_at_once_through_extra():
    extra = tuple((n, fixture_module(n)) for n in IN_PROCESS + ["bad_derivative"])
    reg = load_registry(extra=extra)
    assert_healthy(reg)
    assert [p.name for p in reg.plugins][-len(extra):] == [n for n, _ in extra]
    for n in IN_PROCESS:
        assert plugin(reg, n).status == "broken", n
    # a good plugin after the broken ones still loads
    assert plugin(reg, "bad_derivative").status == "ok"
    assert plugin(reg, "bad_derivative").activations == ["badcube"]


def test_wrong_derivative_loads_but_is_refused():
    reg = load_registry(extra=(("bad_derivative", fixture_module("bad_derivative")),))
    info = plugin(reg, "bad_derivative")
    assert (info.status, info.activations) == ("ok", ["badcube"])
    result = reg.check("badcube")
    assert not result.ok and result.worst_error > 0.1
    with pytest.raises(PluginError, match="badcube"):
        reg.require_checked("badcube")


def test_wrong_derivative_through_the_cli(monkeypatch, tmp_path, tiny_config):
    use_registry(monkeypatch, load_registry(extra=(("bad_derivative", fixture_module("bad_derivative")),)))
    r = cli("plugins", "check", "badcube")
    assert_exit(r, 1)
    assert "badcube" in r.output and "MISMATCH" in r.output

    run_dir = tmp_path / "run"
    r = cli("train", tiny_config, "--set", 'model.activation="badcube"', "--run-dir", run_dir)
    assert_exit(r, 2)
    assert "badcube" in r.stderr and "derivative" in r.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.toml"]

    # the other activations and commands still work
    assert_exit(cli("plugins", "check", "relu"), 0)
    r = cli("plugins", "list", "--json")
    assert_exit(r, 0)
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(rows) >= {"builtin", "swish", "bad_derivative"}
    # the list shows the check's result (it showed a plain "ok")
    check = rows["bad_derivative"]["checks"]["badcube"]
    assert check["ok"] is False and check["worst_error"] > 0.1
    assert all(c["ok"] for c in rows["builtin"]["checks"].values())
    r = cli("plugins", "list")
    words = " ".join(w for line in r.output.splitlines() for w in line.strip("│┃ ").split())
    assert "derivative" in words and "wrong" in words and "badcube: off by" in words, r.output



def test_broken_plugins_are_listed_by_the_cli(monkeypatch):
    extra = tuple((n, fixture_module(n)) for n in IN_PROCESS)
    use_registry(monkeypatch, load_registry(extra=extra))
    r = cli("plugins", "list", "--json")
    assert_exit(r, 0)
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    for n in IN_PROCESS:
        assert rows[n]["status"] == "broken" and BROKEN_REASONS[n] in rows[n]["reason"], rows[n]
    assert rows["builtin"]["status"] == rows["swish"]["status"] == "ok"
    r = cli("plugins", "list")  # the table names them too
    assert_exit(r, 0)
    for n in IN_PROCESS:
        assert n in r.stdout
    assert "broken" in r.stdout

    r = cli("plugins", "check", "bad_hook")  # asking for a broken plugin names it and why
    assert_exit(r, 2)
    assert "bad_hook" in r.stderr and "broken" in r.stderr and BROKEN_REASONS["bad_hook"] in r.stderr
    r = cli("plugins", "check", "plainsquare")  # an activation a broken plugin failed to register
    assert_exit(r, 2)
    assert "plainsquare" in r.stderr
    r = cli("plugins", "check", "nosuch")
    assert_exit(r, 2)
    assert "nosuch" in r.stderr and "relu" in r.stderr  # lists what is registered


def test_unknown_activation_in_train_is_a_usage_error(monkeypatch, tmp_path, tiny_config):
    use_registry(monkeypatch, load_registry())
    r = cli("train", tiny_config, "--set", 'model.activation="swihs"', "--run-dir", tmp_path / "run")
    assert_exit(r, 2)
    assert "swihs" in r.stderr and "swish" in r.stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()


# Regression: the reason of a plugin registering a non-Activation once also claimed a duplicate.
def test_registering_a_non_activation_is_reported_truthfully():
    reg = load_registry(extra=(("not_activation", fixture_module("not_activation")),))
    info = plugin(reg, "not_activation")
    assert info.status == "broken"
    assert "not a deltaprop.Activation" in info.reason
    assert "twice" not in info.reason, info.reason
    assert_healthy(reg)


# Regression: a jitted activation that cannot be called as f(x) (wrong arity, untypable) once let
# numba's TypeError escape the derivative check as a traceback; it must be a PluginError.
@pytest.mark.parametrize("name", ["twoargs", "untypable"])
def test_uncallable_jitted_activation_is_a_plugin_error(monkeypatch, name):
    reg = load_registry(extra=(("uncompilable", fixture_module("uncompilable")),))
    with pytest.raises(PluginError, match=name):
        reg.require_checked(name)
    use_registry(monkeypatch, load_registry(extra=(("uncompilable", fixture_module("uncompilable")),)))
    r = cli("plugins", "check", name)
    assert r.exit_code in (1, 2)
    assert_exit(r, r.exit_code)  # no uncaught exception
    assert name in r.output


# ---- broken plugins, real entry points ------------------------------------------------------------

def test_broken_entry_points_in_process(fake_dist):
    reg = load_registry()
    assert_healthy(reg)
    for n, fragment in BROKEN_REASONS.items():
        info = plugin(reg, n)
        assert (info.source, info.version, info.status) == (DIST, VERSION, "broken"), info
        assert fragment in info.reason, info
    ok = plugin(reg, "bad_derivative")
    assert (ok.source, ok.version, ok.status, ok.activations) == (DIST, VERSION, "ok", ["badcube"])
    assert reg.activations["badcube"].source == DIST
    with pytest.raises(PluginError, match="badcube"):
        reg.require_checked("badcube")


def test_broken_entry_points_through_the_real_cli(tmp_path):
    site = make_fake_dist(tmp_path / "site")
    r = run_real("plugins", "list", "--json", pythonpath=site, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    for n, fragment in BROKEN_REASONS.items():
        assert rows[n]["status"] == "broken" and fragment in rows[n]["reason"], rows[n]
        assert (rows[n]["source"], rows[n]["version"]) == (DIST, VERSION)
    assert rows["bad_derivative"]["status"] == "ok"
    assert rows["builtin"]["status"] == "ok" and set(rows["builtin"]["activations"]) == BUILTIN_NAMES
    assert rows["swish"]["status"] == "ok" and rows["swish"]["activations"] == ["swish"]

    r = run_real("plugins", "check", "badcube", pythonpath=site, cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "badcube" in r.stdout and "MISMATCH" in r.stdout

    config = write_config(tmp_path / "tiny.toml", write_classification(tmp_path / "train.npz"))
    run_dir = tmp_path / "run"
    r = run_real("train", config, "--set", 'model.activation="badcube"', "--run-dir", run_dir,
                 pythonpath=site, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "badcube" in r.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.toml"]

    r = run_real("plugins", "check", "swish", pythonpath=site, cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


# ---- DELTAPROP_LOAD_PLUGINS ---------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("", ["builtin"]),
    ("swish", ["builtin", "swish"]),
    (" swish , bad_hook ", ["builtin", "bad_hook", "swish"]),
])
def test_load_plugins_env_limits_entry_points(fake_dist, monkeypatch, value, expected):
    monkeypatch.setenv("DELTAPROP_LOAD_PLUGINS", value)
    reg = load_registry()
    assert sorted(p.name for p in reg.plugins) == sorted(expected)
    expected_acts = BUILTIN_NAMES | ({"swish"} if "swish" in expected else set())
    assert set(reg.activations) == expected_acts


def test_load_plugins_env_empty_in_a_real_process(tmp_path):
    r = run_real("plugins", "list", "--json", cwd=tmp_path, extra_env={"DELTAPROP_LOAD_PLUGINS": ""})
    assert r.returncode == 0, r.stderr
    assert [row["name"] for row in json.loads(r.stdout)] == ["builtin"]


# ---- the swish example plugin ---------------------------------------------------------------------

def test_swish_is_listed_with_its_distribution(monkeypatch):
    reg = load_registry()
    info = plugin(reg, "swish")
    assert (info.source, info.version, info.status, info.activations) == ("deltaprop-swish", "0.1.0", "ok", ["swish"])
    act = reg.activations["swish"]
    assert (act.source, act.version, act.derivative_of) == ("deltaprop-swish", "0.1.0", "input")
    assert reg.check("swish").ok

    use_registry(monkeypatch, reg)
    r = cli("plugins", "check", "swish")
    assert_exit(r, 0)
    assert "swish" in r.stdout and "deltaprop-swish" in r.stdout and "ok" in r.stdout


def test_swish_trains_and_is_recorded_in_the_model(tmp_path, tiny_config, monkeypatch):
    from deltaprop.api import read_config
    from deltaprop.training.model import load_model
    from deltaprop.training.runs import train_run

    reg = load_registry()
    cfg = read_config(tiny_config, ['model.activation="swish"'])
    result = train_run(cfg, tmp_path / "run", registry=reg)
    losses = [m["loss"] for m in result.metrics]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert losses[-1] < losses[0]

    path = tmp_path / "run" / "model.safetensors"
    with safe_open(str(path), "np") as f:
        meta = json.loads(f.metadata()["deltaprop"])
    assert meta["activations"] == ["swish", "identity"]
    assert meta["plugins"]["swish"] == {"source": "deltaprop-swish", "version": "0.1.0"}
    assert meta["plugins"]["identity"] == {"source": "deltaprop", "version": deltaprop.__version__}
    assert load_model(tmp_path / "run").plugins["swish"]["source"] == "deltaprop-swish"
    saved = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert saved["model"]["activation"] == "swish"

    # a swish model needs the plugin: without it, evaluate names it instead of crashing
    monkeypatch.setenv("DELTAPROP_LOAD_PLUGINS", "")
    use_registry(monkeypatch, load_registry())
    data = write_classification(tmp_path / "eval.npz", n=40, seed=3)
    r = cli("evaluate", tmp_path / "run", "--data", data, "--json")
    assert_exit(r, 2)
    assert "swish" in r.stderr and "deltaprop-swish" in r.stderr
    assert r.stdout.strip() == ""


# ---- meta ------------------------------------------------------------------------------------------

def test_every_hookspec_is_exercised():
    marker = f"{hookspecs.hookspec.project_name}_spec"
    specs = {name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, marker)}
    assert specs, "no hookspecs found in deltaprop.plugins.hookspecs"
    missing = specs - set(EXERCISED_HOOKS)
    assert not missing, f"hookspecs without a test: {sorted(missing)}; add tests and list them in EXERCISED_HOOKS"
    for hook, tests in EXERCISED_HOOKS.items():
        assert hook in specs, f"EXERCISED_HOOKS lists {hook!r}, which is not a hookspec"
        for t in tests:  # "test_x" here, or "test_module::test_x" in another test file
            module, _, name = t.rpartition("::")
            where = importlib.import_module(module).__dict__ if module else globals()
            assert callable(where.get(name)), f"EXERCISED_HOOKS[{hook!r}] names a missing test {t}"


# ---- the kernel cache key covers what an activation compiles from ---------------------------------------
PLUGIN_SOURCE = '''
import math
import numba
import numpy as np

SCALE = {scale}
OFFSETS = (0.0, {offset})
TABLE = np.array([1.0, {table}])


@numba.njit
def _helper(x):
    return x * {factor} + OFFSETS[1] + TABLE[1]


@numba.njit
def _ping(x):  # mutual recursion: the walk must end
    return x if x < 1.0 else _pong(x - 1.0)


@numba.njit
def _pong(x):
    return _ping(x)


@numba.njit
def forward(x):
    return _helper(x) * SCALE + math.tanh(x) + _ping(0.0)


@numba.njit
def derivative(x):
    return {factor} * SCALE
'''
PLUGIN_DEFAULTS = dict(scale=1.5, offset=0.25, table=2.0, factor=2.0)


def _plugin_module(tmp_path, **changes):
    """The module above with some values changed, imported under one fixed name from its own dir
    (as an edited plugin would be in a new process)."""
    values = {**PLUGIN_DEFAULTS, **changes}
    path = tmp_path / "-".join(f"{k}{v}" for k, v in values.items()) / "edited_plugin.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PLUGIN_SOURCE.format(**values))
    spec = importlib.util.spec_from_file_location("edited_plugin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kernel_cache_key_follows_helpers_and_constants(tmp_path, monkeypatch):
    """Editing a plugin's module constant, a tuple or array it reads, or the body of a jitted helper
    changes the compiled kernels' cache key, with the plugin's own functions and version unchanged;
    the same source gives the same key."""
    from deltaprop.compute.factory import activation_blocks
    from deltaprop.plugins.activation import Activation
    from deltaprop.plugins.fingerprint import fingerprint as _fingerprint
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "cache"))  # the generated files go there

    def key(module):
        act = Activation("edited", module.forward, module.derivative, source="edited-plugin", version="1.0")
        return activation_blocks(act, "float64").__name__

    base = _plugin_module(tmp_path)
    assert key(_plugin_module(tmp_path / "again")) == key(base)
    for change in (dict(scale=2.5), dict(offset=0.5), dict(table=3.0)):
        edited = _plugin_module(tmp_path, **change)
        assert edited.forward.py_func.__code__.co_code == base.forward.py_func.__code__.co_code
        assert _fingerprint(edited.forward) != _fingerprint(base.forward), change
        assert key(edited) != key(base), change
    helper = _plugin_module(tmp_path, factor=3.0)  # forward's own bytecode is the same: only _helper's differs
    assert helper.forward.py_func.__code__.co_code == base.forward.py_func.__code__.co_code
    assert _fingerprint(helper.forward) != _fingerprint(base.forward)
    assert key(helper) != key(base)


def test_fingerprint_is_the_same_in_another_process():
    """No memory address or other per-process value in the fingerprint (else the cache never hits):
    builtins that call a jitted helper (silu -> sigmoid) and read a constant (gelu -> _SQRT1_2)."""
    from deltaprop.plugins.fingerprint import fingerprint as _fingerprint
    names = ("silu", "silu_grad", "gelu", "gelu_grad", "softplus_grad")
    here = [hashlib.sha256(_fingerprint(getattr(builtin, n))).hexdigest() for n in names]
    code = ("import hashlib; from deltaprop.plugins import builtin; "
            "from deltaprop.plugins.fingerprint import fingerprint as _fingerprint; "
            f"print(*[hashlib.sha256(_fingerprint(getattr(builtin, n))).hexdigest() for n in {names!r}])")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert there.returncode == 0, there.stderr
    assert there.stdout.split() == here
    assert b"_SQRT1_2', '0.7071067811865475'" in _fingerprint(builtin.gelu)
    assert b"'sigmoid'" in _fingerprint(builtin.silu) and b"0x" not in _fingerprint(builtin.silu)


def test_a_model_with_a_wrong_derivative_activation_still_predicts(monkeypatch, tmp_path, tiny_config):
    """evaluate/predict run forward only: they once refused such a model "refusing to train with it"."""
    import numpy as np

    from deltaprop.plugins.manager import load_registry as fresh
    from deltaprop.training.model import load_model
    cli("train", tiny_config, "--run-dir", tmp_path / "run")
    model = load_model(tmp_path / "run")
    model.activations = ["badcube", "identity"]  # as if trained with it
    model.plugins = {"badcube": {"source": "fixture", "version": ""}}
    use_registry(monkeypatch, fresh(extra=(("bad_derivative", fixture_module("bad_derivative")),)))
    model._engine = None
    out = model.predict_proba(np.zeros((3, model.sizes[0]), np.float32))
    assert out.shape == (3, model.sizes[-1])


STALE_INIT = '''
import math
import numba
import deltaprop
from . import consts


@numba.njit(cache=True)
def scaled(x):
    return consts.K * math.tanh(x)


@numba.njit(cache=True)
def scaled_grad(x):
    return consts.K * (1.0 - math.tanh(x) ** 2)


@deltaprop.hookimpl
def register_activations(register):
    register(deltaprop.Activation(name="scaled", forward=scaled, derivative=scaled_grad))
'''
STALE_RUN = '''
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import stalepkg
from deltaprop.compute.engine import Engine
from deltaprop.plugins.manager import load_registry
reg = load_registry(extra=(("stalepkg", stalepkg),), entry_points=False)
reg.require_checked("scaled")
e = Engine([3, 4, 1], ["scaled", "identity"], "mse", "float64", reg, 1, training=False)
X = np.array([[0.1, 0.2, 0.3], [-0.5, 0.4, 0.0]])
print(*e.predict(X, np.zeros(3), np.ones(3), np.full(e.n_params, 0.1))[:, 0])
'''


def test_editing_a_constant_in_another_module_of_a_plugin_is_never_served_stale(tmp_path):
    """Numba keys its own cache of a jitted function by that function's file alone, so a plugin
    activation that reads a constant from another module of its package (consts.K) came back from
    that cache with the old value after the constant was edited: in the derivative check and in
    training. deltaprop's key follows the constant (plugins/fingerprint.py), and the plugin's own
    Numba cache is off, so a new process computes with the new value."""
    pkg = tmp_path / "src" / "stalepkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(STALE_INIT)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    X = np.array([[0.1, 0.2, 0.3], [-0.5, 0.4, 0.0]])
    for k in (1.0, 3.0, 1.0):
        (pkg / "consts.py").write_text(f"K = {k}\n")
        out = subprocess.run([sys.executable, "-c", STALE_RUN, str(tmp_path / "src")], env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        hidden = k * np.tanh(X @ np.full((3, 4), 0.1) + 0.1)
        want = hidden @ np.full(4, 0.1) + 0.1
        np.testing.assert_allclose([float(v) for v in out.stdout.split()], want, rtol=1e-12)
