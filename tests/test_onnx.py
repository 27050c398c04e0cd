"""ONNX export (README "Export to ONNX"), checked by a real runtime: every exported file is run in
onnxruntime and compared with `deltaprop predict` on the same raw input.

Models of the activation matrix get calibrated random weights (each hidden unit's z has its own
spread, up to ~15 standard deviations, so softplus passes its threshold of 20, sigmoid/tanh
saturate and elu/gelu see their negative side); the dropout, scaling and scikit-learn cases are
trained. The matrix is parametrised over the builtins' registry list, so a new builtin is covered
without editing this file.
"""

import json
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
from fixtures.cli import ROOT, assert_exit, cli, use_registry
from fixtures.data import write_classification, write_config, write_regression
from fixtures.fakedist import make_fake_dist, module_name

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from deltaprop.compute import layout  # noqa: E402
from deltaprop.errors import CheckpointError, ExportError  # noqa: E402
from deltaprop.plugins.builtin import BUILTINS  # noqa: E402
from deltaprop.plugins.manager import load_registry  # noqa: E402
from deltaprop.training.export import DEFAULT_OPSET, MIN_OPSET  # noqa: E402
from deltaprop.training.model import Model, load_model  # noqa: E402

BUILTIN_NAMES = [a.name for a in BUILTINS]
N_IN, N_ROWS = 8, 200
TOL32, TOL64 = 1e-5, 1e-10
MAX_OPSET = onnx.defs.onnx_opset_version()
MEASURED: dict[str, float] = {}  # case -> max abs difference, printed at the end (pytest -s)


@pytest.fixture(scope="module", autouse=True)
def _report():
    """After the module: the worst differences measured (shown with pytest -s)."""
    yield
    if MEASURED:
        width = max(map(len, MEASURED))
        print("\nmax abs difference, onnxruntime vs deltaprop predict (or the estimator):")
        for case, diff in sorted(MEASURED.items(), key=lambda kv: -kv[1]):
            print(f"  {case:<{width}}  {diff:.3g}")


@pytest.fixture(autouse=True)
def _registry(monkeypatch, registry):
    """The session registry (builtins + swish) as the process-wide one."""
    use_registry(monkeypatch, registry)
    monkeypatch.delenv("DELTAPROP_LOAD_PLUGINS", raising=False)


@pytest.fixture(scope="module")
def X():
    """(200, 8) raw inputs, spread N(0, 2), a few rows far out."""
    rng = np.random.default_rng(7)
    X = rng.normal(0.0, 2.0, size=(N_ROWS, N_IN))
    X[:5] *= 6
    return X


@pytest.fixture(scope="module")
def xfile(X, tmp_path_factory):
    path = tmp_path_factory.mktemp("x") / "x.npz"
    np.savez(path, X=X.astype(np.float32))
    return path


def calibrated_model(registry, X, sizes, activations, loss, dtype="float32", *, mean=None, inv_std=None,
                     scale="none", seed=0):
    """A Model with random weights scaled so unit j of every hidden layer has z with standard deviation
    geomspace(0.5, 15)[j] on X (after the preprocessing); output z with sd ~1.5. Returns (model, zs):
    zs[l] is layer l's z on X (float64, computed with the activations' own scalar functions)."""
    rng = np.random.default_rng(seed)
    mean = np.zeros(sizes[0]) if mean is None else np.asarray(mean, np.float64)
    inv_std = np.ones(sizes[0]) if inv_std is None else np.asarray(inv_std, np.float64)
    a = (np.asarray(X, np.float64) - mean) * inv_std
    layers, zs = [], []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        W = rng.normal(size=(n_out, n_in))
        b = rng.normal(0.0, 0.5, size=n_out)
        sd = np.full(n_out, 1.5) if last else np.geomspace(0.5, 15.0, n_out)
        W *= (sd / np.maximum((a @ W.T).std(0), 1e-12))[:, None]
        z = a @ W.T + b
        zs.append(z)
        f = np.vectorize(registry.activations[activations[i]].forward, otypes=[np.float64])
        a = f(z)
        layers.append((W, b))
    plugins = {n: {"source": registry.activations[n].source, "version": registry.activations[n].version}
               for n in activations}
    model = Model(list(sizes), list(activations), loss, dtype, layout.flatten(layers, dtype),
                  mean.astype(dtype), inv_std.astype(dtype), scale, plugins)
    return model, zs


def run_onnx(path, X, name="input"):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {name: X})[0]


def predict_cli(model_path, xfile, tmp_path):
    out = tmp_path / "pred.npy"
    r = cli("predict", model_path, "--data", xfile, "--output", out)
    assert_exit(r, 0)
    return np.load(out)


def export_cli(model_path, out, *extra):
    r = cli("export", model_path, "--format", "onnx", "-o", out, *extra)
    assert_exit(r, 0)
    assert f"wrote {out}" in r.stdout
    return onnx.load(str(out))


def ops(proto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def compare(case, model, X, xfile, tmp_path, tol=TOL32, *extra):
    """Save, export through the CLI, run in onnxruntime and `deltaprop predict`; returns (proto, diff)."""
    model.save(tmp_path / "m.safetensors")
    proto = export_cli(tmp_path / "m.safetensors", tmp_path / "m.onnx", *extra)
    got = run_onnx(tmp_path / "m.onnx", X.astype(np.float32).astype(model.dtype))  # the values xfile holds
    want = predict_cli(tmp_path / "m.safetensors", xfile, tmp_path)
    assert got.shape == want.shape and got.dtype == want.dtype == np.dtype(model.dtype)
    assert want.std() > 0.01, "a constant output compares nothing"
    diff = float(np.abs(got.astype(np.float64) - want).max())
    MEASURED[case] = diff
    assert diff <= tol, f"{case}: onnxruntime differs from deltaprop predict by {diff:.3g}"
    return proto, diff


# ---- every builtin, both losses ------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("act", BUILTIN_NAMES)
def test_builtin_activation_matches_onnxruntime(registry, X, xfile, tmp_path, act, loss):
    k = 3 if loss == "cross_entropy" else 2
    model, zs = calibrated_model(registry, X, [N_IN, 16, k], [act, "identity"], loss)
    assert (zs[0] > 20).any() and (zs[0] < -5).any()  # the far ends of every activation are used
    proto, _ = compare(f"{act}/{loss}", model, X, xfile, tmp_path)
    assert proto.graph.output[0].name == ("probabilities" if loss == "cross_entropy" else "outputs")
    assert ("Softmax" in ops(proto)) == (loss == "cross_entropy")
    assert ops(proto).count("Gemm") == 2 and proto.opset_import[0].version == DEFAULT_OPSET
    onnx.checker.check_model(proto, full_check=True)


def test_the_builtins_forms_use_their_own_ops(registry, X):
    """Relu as Relu, LeakyRelu and Elu with their alphas, softplus with torch's threshold."""
    def graph(act, dtype="float32", opset=None):
        m, _ = calibrated_model(registry, X, [N_IN, 4, 3], [act, "identity"], "cross_entropy", dtype)
        return m.to_onnx(opset=opset)
    attrs = {n.op_type: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
             for n in [*graph("leaky_relu").graph.node, *graph("elu").graph.node]}
    assert attrs["LeakyRelu"]["alpha"] == pytest.approx(0.01) and attrs["Elu"]["alpha"] == 1.0
    assert "Relu" in ops(graph("relu")) and {"Sigmoid", "Mul"} <= set(ops(graph("silu")))
    soft = graph("softplus")
    assert {"Softplus", "Greater", "Where"} <= set(ops(soft))
    thresholds = [onnx.numpy_helper.to_array(t) for t in soft.graph.initializer if t.name.endswith("/const")]
    assert [float(t) for t in thresholds] == [20.0]
    assert set(ops(graph("identity"))) == {"Gemm", "Softmax", "Identity"}  # identity adds no node
    # float64: compositions (onnxruntime has no double Elu/Softplus/Erf), constants in float64
    for act in ("elu", "softplus", "gelu", "leaky_relu"):
        g64 = graph(act, "float64")
        assert not {"Elu", "Softplus", "Erf", "Gelu", "LeakyRelu"} & set(ops(g64)), act
        assert {t.data_type for t in g64.graph.initializer} == {onnx.TensorProto.DOUBLE}


def test_sigmoid_output_activation(registry, X, xfile, tmp_path):
    model, _ = calibrated_model(registry, X, [N_IN, 16, 2], ["relu", "sigmoid"], "mse")
    proto, _ = compare("relu/mse/sigmoid output", model, X, xfile, tmp_path)
    assert ops(proto)[-2:] == ["Sigmoid", "Identity"]


def test_float64_model_every_builtin(registry, X, xfile, tmp_path):
    """One float64 network with every builtin in turn (one compile), both losses, <= 1e-10."""
    for loss, k in (("mse", 2), ("cross_entropy", 3)):
        sizes = [N_IN] + [12] * len(BUILTIN_NAMES) + [k]
        model, zs = calibrated_model(registry, X, sizes, BUILTIN_NAMES + ["identity"], loss, "float64")
        assert (zs[BUILTIN_NAMES.index("softplus")] > 20).any()
        (tmp_path / loss).mkdir()
        proto, _ = compare(f"float64 chain/{loss}", model, X, xfile, tmp_path / loss, TOL64)
        assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
        assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE


# ---- gelu at old and new opsets ----------------------------------------------------------------

@pytest.mark.parametrize("opset", sorted({MIN_OPSET, DEFAULT_OPSET, 20, MAX_OPSET}))
def test_gelu_at_each_opset(registry, X, xfile, tmp_path, opset):
    """Exact (erf) gelu: an Erf composition below opset 20, the Gelu op from 20."""
    model, _ = calibrated_model(registry, X, [N_IN, 16, 3], ["gelu", "identity"], "cross_entropy")
    proto, _ = compare(f"gelu/opset {opset}", model, X, xfile, tmp_path, TOL32, "--opset", opset)
    assert proto.opset_import[0].version == opset
    assert ("Gelu" in ops(proto)) == (opset >= 20) and ("Erf" in ops(proto)) == (opset < 20)


# ---- the graph's interface -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def relu_model(registry, X, tmp_path_factory):
    """A cross-entropy relu model file and its export."""
    d = tmp_path_factory.mktemp("relu")
    model, _ = calibrated_model(registry, X, [N_IN, 16, 3], ["relu", "identity"], "cross_entropy")
    model.classes = ["cat", "dog", "emu"]
    model.save(d / "m.safetensors")
    model.to_onnx(d / "m.onnx")
    return d


def test_dynamic_batch(relu_model, X, xfile, tmp_path):
    proto = onnx.load(str(relu_model / "m.onnx"))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert proto.graph.input[0].name == "input" and dims == ["batch", N_IN]
    want = predict_cli(relu_model / "m.safetensors", xfile, tmp_path)
    sess = ort.InferenceSession(str(relu_model / "m.onnx"), providers=["CPUExecutionProvider"])
    x32 = X.astype(np.float32)
    for rows in (slice(0, 1), slice(3, 40)):  # batch 1, batch 37
        got = sess.run(["probabilities"], {"input": x32[rows]})[0]
        assert got.shape == (len(x32[rows]), 3)
        assert np.abs(got - want[rows]).max() <= TOL32


def test_logits_output(relu_model, X, xfile, tmp_path):
    proto = export_cli(relu_model / "m.safetensors", tmp_path / "logits.onnx", "--output", "logits")
    assert [o.name for o in proto.graph.output] == ["logits"] and "Softmax" not in ops(proto)
    logits = run_onnx(tmp_path / "logits.onnx", X.astype(np.float32)).astype(np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    want = predict_cli(relu_model / "m.safetensors", xfile, tmp_path)
    MEASURED["logits -> softmax"] = float(np.abs(e / e.sum(1, keepdims=True) - want).max())
    assert MEASURED["logits -> softmax"] <= TOL32
    assert np.ptp(logits, axis=1).max() > 1  # logits, not probabilities


def test_metadata_names_version_activations_and_classes(relu_model):
    import deltaprop
    proto = onnx.load(str(relu_model / "m.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["deltaprop_version"] == deltaprop.__version__ == proto.producer_version
    assert proto.producer_name == "deltaprop"
    assert json.loads(meta["activations"]) == ["relu", "identity"]
    assert json.loads(meta["classes"]) == ["cat", "dog", "emu"]
    assert (meta["loss"], meta["input"], meta["output"], meta["dtype"]) == ("cross_entropy", "input",
                                                                            "probabilities", "float32")
    names = {t.name for t in proto.graph.initializer}
    assert {"layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"} <= names


def test_python_api_returns_the_proto_and_writes_atomically(relu_model, tmp_path):
    m = load_model(relu_model / "m.safetensors")
    proto = m.to_onnx()  # no path: nothing written
    assert isinstance(proto, onnx.ModelProto) and list(tmp_path.iterdir()) == []
    m.to_onnx(tmp_path / "a.onnx")
    m.to_onnx(tmp_path / "a.onnx")  # the Python API replaces, as Model.save does
    with pytest.raises(ExportError, match="already exists"):
        m.to_onnx(tmp_path / "a.onnx", overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx"]  # no temp files left
    assert (tmp_path / "a.onnx").read_bytes() == proto.SerializeToString()


def test_readme_example_runs(relu_model, xfile, tmp_path):
    """The README's "Export to ONNX" Python block, on the relu model instead of Fashion-MNIST."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"### Export to ONNX\n.*?```python\n(.*?)```", text, re.S).group(1)
    labelled = tmp_path / "test.npz"
    np.savez(labelled, X=np.load(xfile)["X"], y=np.zeros(N_ROWS, np.int64))
    code = (block.replace('"runs/fm"', repr(str(relu_model / "m.safetensors")))
            .replace('"fm.onnx"', repr(str(tmp_path / "fm.onnx"))).replace('"fashion-mnist:test"', repr(str(labelled))))
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    want = predict_cli(relu_model / "m.safetensors", xfile, tmp_path)
    assert np.abs(namespace["proba"] - want).max() <= TOL32
    assert set(namespace["labels"]) <= {"cat", "dog", "emu"} and len(namespace["labels"]) == N_ROWS


# ---- preprocessing and training options --------------------------------------------------------

def test_standardize_and_unit_scaling_are_in_the_graph(registry, X, xfile, tmp_path):
    mean, inv_std = np.linspace(-1, 1, N_IN), 1 / np.linspace(0.5, 3, N_IN)
    model, _ = calibrated_model(registry, X, [N_IN, 16, 3], ["tanh", "identity"], "cross_entropy",
                                mean=mean, inv_std=inv_std, scale="standardize")
    proto, _ = compare("tanh/standardize", model, X, xfile, tmp_path)
    assert ops(proto)[:3] == ["Sub", "Mul", "Gemm"]
    init = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert np.array_equal(init["preprocess.mean"], model.mean)
    assert np.array_equal(init["preprocess.inv_std"], model.inv_std)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Runs trained by `deltaprop train`: uint8 pixels (scale auto -> unit, x/255), standardize,
    dropout 0.5. name -> (run dir, data file)."""
    d = tmp_path_factory.mktemp("trained")
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(240, N_IN)).astype(np.uint8)
    np.savez(d / "pixels.npz", X=pixels, y=(pixels[:, :3].astype(int).argmax(1)))
    write_classification(d / "float.npz", n=240, seed=4)
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        use_registry(mp, load_registry())
        for name, data, sets in (("unit", "pixels.npz", []),
                                 ("standardize", "float.npz", ['data.scale="standardize"']),
                                 ("dropout", "float.npz", ["model.dropout=0.5"])):
            config = write_config(d / f"{name}.toml", d / data, epochs=2)
            argv = ["train", config, "--run-dir", d / name]
            for s in sets:
                argv += ["--set", s]
            assert_exit(cli(*argv), 0)
            out[name] = (d / name, d / data)
    return out


@pytest.mark.parametrize("name", ["unit", "standardize", "dropout"])
def test_trained_runs_match(trained, tmp_path, name):
    run_dir, data = trained[name]
    m = load_model(run_dir)
    assert m.scale == {"unit": "unit", "standardize": "standardize", "dropout": "none"}[name]
    if name == "dropout":
        assert m.config["model"]["dropout"] == 0.5
    proto = export_cli(run_dir, tmp_path / "m.onnx")
    raw = np.load(data)["X"]
    got = run_onnx(tmp_path / "m.onnx", raw.astype(np.float32))  # uint8 pixels as float32 values
    want = predict_cli(run_dir, data, tmp_path)
    MEASURED[f"trained {name}"] = diff = float(np.abs(got - want).max())
    assert diff <= TOL32
    assert "Dropout" not in ops(proto)
    assert ("Mul" in ops(proto)[:2]) == (name != "dropout")
    if name == "unit":
        init = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
        assert np.allclose(init["preprocess.inv_std"], 1 / 255) and "preprocess.mean" not in init


# ---- plugins -------------------------------------------------------------------------------------

def test_swish_plugin_exports(registry, X, xfile, tmp_path):
    assert registry.activations["swish"].onnx is not None
    model, _ = calibrated_model(registry, X, [N_IN, 16, 3], ["swish", "identity"], "cross_entropy")
    proto, _ = compare("swish (plugin)", model, X, xfile, tmp_path)
    assert ops(proto)[1:3] == ["Sigmoid", "Mul"]
    assert json.loads({p.key: p.value for p in proto.metadata_props}["plugins"])["swish"]["source"] == "deltaprop-swish"
    assert [n.name for n in proto.graph.node][1] == "layers.0.swish/Sigmoid"


@pytest.fixture
def onnx_cases(tmp_path, monkeypatch):
    """The registry with tests/fixtures/plugins/onnx_cases.py installed as distribution fakeplug 0.1."""
    root = make_fake_dist(tmp_path / "site", names=("onnx_cases",))
    monkeypatch.syspath_prepend(str(root))
    reg = load_registry()
    use_registry(monkeypatch, reg)
    yield reg
    sys.modules.pop(module_name("onnx_cases"), None)


@pytest.mark.parametrize("act,fragments", [
    ("softsign", ["activation 'softsign' from plugin fakeplug 0.1", "no ONNX form", "Activation plugins"]),
    ("onnx_raises", ["activation 'onnx_raises' from plugin fakeplug 0.1", "raised ValueError",
                     "fixture ONNX form exploded"]),
    ("onnx_badop", ["fails onnx.checker", "NoSuchOperator", "activation 'onnx_badop' from plugin fakeplug 0.1"]),
    ("onnx_notname", ["activation 'onnx_notname' from plugin fakeplug 0.1", "returned 42"]),
])
def test_plugin_without_a_working_onnx_form_is_a_clear_error(onnx_cases, X, tmp_path, act, fragments):
    model, _ = calibrated_model(onnx_cases, X, [N_IN, 4, 3], [act, "identity"], "cross_entropy")
    tmp_path = tmp_path / "out"  # beside the fake distribution's site directory
    tmp_path.mkdir()
    model.save(tmp_path / "m.safetensors")
    (tmp_path / "keep.onnx").write_bytes(b"an older export")
    for argv in (["-o", tmp_path / "new.onnx"], ["-o", tmp_path / "keep.onnx", "--overwrite"]):
        r = cli("export", tmp_path / "m.safetensors", *argv)
        assert_exit(r, 2)
        message = " ".join(r.stderr.split())
        assert message.count("error:") == 1 and all(f in message for f in fragments), message
    with pytest.raises(ExportError):
        model.to_onnx(tmp_path / "api.onnx")
    # nothing written, nothing replaced, no temp file left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.onnx", "m.safetensors"]
    assert (tmp_path / "keep.onnx").read_bytes() == b"an older export"


def test_a_model_whose_plugin_is_not_installed(registry, X, tmp_path, monkeypatch):
    model, _ = calibrated_model(registry, X, [N_IN, 4, 3], ["swish", "identity"], "cross_entropy")
    model.save(tmp_path / "m.safetensors")
    monkeypatch.setenv("DELTAPROP_LOAD_PLUGINS", "")
    use_registry(monkeypatch, load_registry())
    r = cli("export", tmp_path / "m.safetensors", "-o", tmp_path / "m.onnx")
    assert_exit(r, 2)
    assert "activation 'swish' from plugin deltaprop-swish 0.1.0" in r.stderr and "not installed" in r.stderr
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "m.safetensors").to_onnx()


def test_an_onnx_form_that_is_not_a_function_breaks_the_plugin():
    from deltaprop import Activation
    act = Activation("x2", BUILTINS[0].forward, BUILTINS[0].derivative, onnx="Relu")
    assert any("onnx must be a function" in p for p in act.problems())


# ---- scikit-learn --------------------------------------------------------------------------------

def test_sklearn_classifier_to_onnx(tmp_path):
    from deltaprop.sklearn import MLPClassifier
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(5)
    Xs = rng.normal(size=(150, 6))
    y = np.array(["ant", "bee", "cow"])[(Xs[:, :3]).argmax(1)]
    df = pd.DataFrame(Xs, columns=[f"f{i}" for i in range(6)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning after 5 epochs
        clf = MLPClassifier(hidden_layer_sizes=(12,), max_iter=5, random_state=0).fit(df, y)
    proto = clf.to_onnx(tmp_path / "clf.onnx")
    got = run_onnx(tmp_path / "clf.onnx", Xs.astype(np.float32))
    Xs = df
    MEASURED["sklearn MLPClassifier"] = diff = float(np.abs(got - clf.predict_proba(Xs)).max())
    assert diff <= TOL32
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == ["ant", "bee", "cow"] and meta["estimator"] == "MLPClassifier"
    assert json.loads(meta["feature_names_in"]) == list(df.columns)
    labels = np.array(json.loads(meta["classes"]))[got.argmax(1)]
    assert (labels == clf.predict(Xs)).mean() > 0.99  # ties at 1e-7 aside


def test_sklearn_regressor_to_onnx(tmp_path):
    from deltaprop.sklearn import MLPRegressor
    rng = np.random.default_rng(6)
    Xs = rng.normal(size=(150, 5))
    for y in (Xs @ rng.normal(size=5), Xs @ rng.normal(size=(5, 2))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reg = MLPRegressor(hidden_layer_sizes=(10,), max_iter=5, random_state=0).fit(Xs, y)
        proto = reg.to_onnx(tmp_path / "reg.onnx")
        assert [o.name for o in proto.graph.output] == ["outputs"]
        got = run_onnx(tmp_path / "reg.onnx", Xs.astype(np.float32))
        want = reg.predict(Xs).reshape(len(Xs), -1)
        MEASURED[f"sklearn MLPRegressor {want.shape[1]} output(s)"] = diff = float(np.abs(got - want).max())
        assert got.shape == want.shape and diff <= TOL32


def test_sklearn_unfitted_estimator(tmp_path):
    from sklearn.exceptions import NotFittedError

    from deltaprop.sklearn import MLPRegressor
    with pytest.raises(NotFittedError):
        MLPRegressor().to_onnx(tmp_path / "x.onnx")


# ---- the command line: bad input ---------------------------------------------------------------

@pytest.fixture(scope="module")
def files(relu_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "existing.onnx").write_bytes(b"do not touch")
    (d / "empty-dir").mkdir()
    write_regression(d / "reg.npz")
    return d


CLI_CASES = [
    ("model missing", lambda m, d: [d / "nothere.safetensors", "-o", d / "a.onnx"], ["nothere.safetensors", "does not exist"]),
    ("not a model", lambda m, d: [d / "empty-dir", "-o", d / "a.onnx"], ["not a deltaprop run directory"]),
    ("missing directory", lambda m, d: [m, "-o", d / "no" / "a.onnx"], ["directory", "does not exist"]),
    ("existing file", lambda m, d: [m, "-o", d / "existing.onnx"], ["existing.onnx already exists", "--overwrite"]),
    ("a directory", lambda m, d: [m, "-o", d / "empty-dir"], ["is a directory"]),
    ("opset too old", lambda m, d: [m, "-o", d / "a.onnx", "--opset", MIN_OPSET - 1],
     [f"opset {MIN_OPSET - 1} is not supported", f"opsets {MIN_OPSET} to {MAX_OPSET}"]),
    ("opset too new", lambda m, d: [m, "-o", d / "a.onnx", "--opset", MAX_OPSET + 1], ["not supported"]),
    ("output of another loss", lambda m, d: [m, "-o", d / "a.onnx", "--output", "outputs"],
     ["'outputs' is not available for a cross_entropy model", "'probabilities' or 'logits'"]),
    ("unknown format", lambda m, d: [m, "-o", d / "a.onnx", "--format", "tflite"], ["tflite"]),
]


@pytest.mark.parametrize("name,argv,fragments", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(relu_model, files, name, argv, fragments):
    before = sorted(p.name for p in files.iterdir())
    r = cli("export", *argv(relu_model / "m.safetensors", files))
    assert_exit(r, 2)
    message = " ".join(r.output.split())
    assert all(f in message for f in fragments), message
    if name != "unknown format":  # that one is typer's usage error
        assert message.count("error:") == 1
    assert sorted(p.name for p in files.iterdir()) == before
    assert (files / "existing.onnx").read_bytes() == b"do not touch"


def test_overwrite_replaces(relu_model, tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"old")
    export_cli(relu_model / "m.safetensors", tmp_path / "m.onnx", "--overwrite")
    onnx.checker.check_model(str(tmp_path / "m.onnx"))


def test_mse_model_refuses_probabilities(registry, X, tmp_path):
    model, _ = calibrated_model(registry, X, [N_IN, 4, 1], ["relu", "identity"], "mse")
    model.save(tmp_path / "m.safetensors")
    r = cli("export", tmp_path / "m.safetensors", "-o", tmp_path / "m.onnx", "--output", "probabilities")
    assert_exit(r, 2)
    assert "(it is for cross_entropy models): choose 'outputs'" in " ".join(r.stderr.split())


def test_missing_onnx_package_is_a_clear_error(relu_model, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "onnx" or m.startswith("onnx.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    r = cli("export", relu_model / "m.safetensors", "-o", tmp_path / "m.onnx")
    assert_exit(r, 2)
    assert "pip install 'deltaprop[onnx]'" in r.stderr and not (tmp_path / "m.onnx").exists()


def test_onnx_is_not_imported_with_deltaprop():
    code = ("import sys, deltaprop, deltaprop.training.model, deltaprop.training.export, deltaprop.cli.main, "
            "deltaprop.plugins.builtin\nassert 'onnx' not in sys.modules, 'onnx imported'\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
