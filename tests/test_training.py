"""Training behaviour through the Python API: regression fit, early stopping, schedules, init,
scaling, memory-mapped data, and the README's API example."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

import deltaprop
from deltaprop.errors import ConfigError
from deltaprop.training.config import ScheduleConfig
from deltaprop.training.schedule import lr_at

README = Path(__file__).resolve().parents[1] / "README.md"


def _config(train, **sections):
    base = {"model": {"hidden": [32]}, "data": {"train": str(train), "test": ""},
            "training": {"epochs": 3, "batch_size": 32}, "optimizer": {"name": "adam", "lr": 0.01}}
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return base


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    d = tmp_path_factory.mktemp("cls")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(600, 6)).astype(np.float32)
    y = (X @ rng.normal(size=(6, 3))).argmax(1)
    np.savez(d / "d.npz", X=X, y=y)
    return d / "d.npz"


def test_regression_fits_a_smooth_function(tmp_path):
    """mse on y = sin(2x0) + 0.5 x1^2: the held-out mean squared error drops below 0.01
    (the target's variance is about 0.75)."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-1.5, 1.5, size=(4000, 2))
    y = np.sin(2 * X[:, 0]) + 0.5 * X[:, 1] ** 2
    np.savez(tmp_path / "train.npz", X=X[:3000], y=y[:3000])
    np.savez(tmp_path / "test.npz", X=X[3000:], y=y[3000:])
    cfg = _config(tmp_path / "train.npz", model={"hidden": [64, 64], "activation": "tanh"},
                  data={"test": str(tmp_path / "test.npz")},
                  training={"loss": "mse", "epochs": 60, "batch_size": 64, "dtype": "float64"},
                  optimizer={"lr": 0.003}, schedule={"name": "cosine"})
    run = deltaprop.train(cfg, run_dir=tmp_path / "run")
    assert run.metrics[-1]["test_mse"] < 0.01, run.metrics[-1]
    assert run.metrics[-1]["test_mse"] < run.metrics[0]["test_mse"] / 5
    model = deltaprop.load_model(run.run_dir)
    assert model.predict(X[3000:]).shape == (1000, 1)
    assert model.evaluate(X[3000:], y[3000:])["mse"] == pytest.approx(run.metrics[-1]["test_mse"])


def test_readme_api_example_runs(tmp_path, classes, monkeypatch):
    """The README's Python API block, run against a small dataset instead of Fashion-MNIST."""
    block = re.search(r"### Python API\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[model]\nhidden = [16]\n[data]\ntrain = "{classes}"\ntest = "{classes}"\n'
                   "[training]\nepochs = 3\nbatch_size = 32\n")
    d = np.load(classes)
    code = (block.replace('"examples/fashion-mnist.toml"', repr(str(cfg))).replace('"runs/api"', repr(str(tmp_path / "api")))
            .replace('"fashion-mnist:test"', repr(str(classes))))
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["proba"].shape == (len(d["X"]), 3)
    assert (namespace["labels"] == namespace["proba"].argmax(1)).all()
    assert namespace["run"].metrics[-1]["epoch"] == 4  # trained with training__epochs=2, then resumed to 4


def test_early_stopping_restores_best_weights(tmp_path, classes):
    cfg = _config(classes, data={"validation_fraction": 0.25}, training={"epochs": 40},
                  optimizer={"lr": 0.05}, early_stopping={"patience": 2, "monitor": "val_loss"})
    run = deltaprop.train(cfg, run_dir=tmp_path / "run")
    assert run.stopped_early and len(run.metrics) < 40
    best = min(m["val_loss"] for m in run.metrics)
    assert run.metrics[-1]["val_loss"] > best  # stopped after it got worse...
    d = np.load(classes)
    model = deltaprop.load_model(run.run_dir)
    from deltaprop.api import read_config
    from deltaprop.plugins.manager import get_registry
    from deltaprop.training.prepare import (
        prepare,  # ...and the saved model is the best one
    )
    prep = prepare(read_config(cfg), get_registry())
    assert model.evaluate(prep.val.X, prep.val.y)["loss"] == pytest.approx(best, rel=1e-5)
    assert d["X"].shape[0] == 600


def test_validation_split_is_deterministic(tmp_path, classes):
    from deltaprop.api import read_config
    from deltaprop.plugins.manager import get_registry
    from deltaprop.training.prepare import prepare
    cfg = read_config(_config(classes, data={"validation_fraction": 0.2}))
    a, b = prepare(cfg, get_registry()), prepare(cfg, get_registry())
    assert len(a.val.y) == 120 and len(a.train_idx) == 480
    assert np.array_equal(a.train_idx, b.train_idx)
    assert not set(a.train_idx) & set(np.setdiff1d(np.arange(600), a.train_idx)) 


@pytest.mark.parametrize("name,expect", [
    ("constant", [1.0, 1.0, 1.0]),
    ("step", [1.0, 0.1, 0.01]),
    ("exponential", [1.0, 0.5, 0.25]),
])
def test_schedules(name, expect):
    s = ScheduleConfig(name=name, step_epochs=1, gamma=0.1 if name == "step" else 0.5)
    assert [lr_at(e * 10, 1.0, 10, 30, s) for e in range(3)] == pytest.approx(expect)


def test_cosine_and_warmup():
    s = ScheduleConfig(name="cosine", warmup_epochs=1.0, min_lr=0.1)
    lrs = [lr_at(i, 1.0, 10, 100, s) for i in range(100)]
    assert lrs[0] == pytest.approx(0.1 * (0.1 + 0.9 * 0.5 * (1 + np.cos(0))))  # warm-up 1/10
    assert lrs[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 9 / 100)))
    assert min(lrs) >= 0.1 and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_init_from_safetensors_continues_training(tmp_path, classes):
    first = deltaprop.train(_config(classes), run_dir=tmp_path / "a")
    second = deltaprop.train(_config(classes, model={"init": str(first.run_dir / "model.safetensors")},
                                     training={"epochs": 1}), run_dir=tmp_path / "b")
    assert second.metrics[0]["loss"] < first.metrics[0]["loss"]
    with pytest.raises(ConfigError, match="layer sizes"):
        deltaprop.train(_config(classes, model={"hidden": [8], "init": str(first.run_dir / "model.safetensors")}),
                        run_dir=tmp_path / "c")


def test_standardize_stats_are_stored_and_reapplied(tmp_path, classes):
    d = np.load(classes)
    X = d["X"] * 100 + 7
    np.savez(tmp_path / "shifted.npz", X=X, y=d["y"])
    run = deltaprop.train(_config(tmp_path / "shifted.npz", data={"scale": "standardize"}), run_dir=tmp_path / "r")
    model = deltaprop.load_model(run.run_dir)
    assert model.scale == "standardize"
    np.testing.assert_allclose(model.mean, X.mean(0), rtol=1e-4)
    np.testing.assert_allclose(1 / model.inv_std, X.std(0), rtol=1e-4)
    meta = json.loads((run.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert model.evaluate(X, d["y"])["accuracy"] == pytest.approx(meta["accuracy"], abs=0.05)
    assert model.evaluate(X, d["y"])["accuracy"] > 0.8


def test_memory_mapped_npy_trains(tmp_path, classes):
    d = np.load(classes)
    np.save(tmp_path / "big.npy", d["X"])
    np.save(tmp_path / "big_y.npy", d["y"])
    a = deltaprop.train(_config(tmp_path / "big.npy"), run_dir=tmp_path / "m")
    b = deltaprop.train(_config(classes), run_dir=tmp_path / "n")
    assert a.metrics[-1]["loss"] == b.metrics[-1]["loss"]  # same data, same result


def test_block_shuffle_is_a_permutation_of_contiguous_blocks(tmp_path, classes):
    """training.shuffle_block: every row once per epoch, in runs of consecutive rows (so a
    memory-mapped file streams), deterministic, and different from epoch to epoch."""
    from deltaprop.training.order import EpochOrder
    order = EpochOrder(np.arange(600), seed=0, shuffle=True, block=64)
    first, state = order.draw(order.initial_state())
    assert np.array_equal(order.draw(order.initial_state())[0], first)  # a function of the state
    assert sorted(first) == list(range(600))
    block_of = first // 64
    assert (np.diff(block_of) != 0).sum() == 600 // 64  # 10 blocks, each visited in one run
    assert not np.array_equal(first, np.arange(600))
    assert not np.array_equal(order.draw(state)[0], first)
    a = deltaprop.train(_config(classes, training={"shuffle_block": 64}), run_dir=tmp_path / "a")
    b = deltaprop.train(_config(classes, training={"shuffle_block": 64}), run_dir=tmp_path / "b")
    assert a.metrics[-1]["loss"] == b.metrics[-1]["loss"]



def test_block_shuffled_memmap_trains_like_in_memory(tmp_path, classes):
    """Memory-mapped data with shuffle_block runs in chunks of one block and reads the next block
    ahead (order.prefetch_blocks); the weights are bit-identical to the same data from an .npz."""
    d = np.load(classes)
    np.save(tmp_path / "big.npy", d["X"])
    np.save(tmp_path / "big_y.npy", d["y"])
    kw = dict(training={"shuffle_block": 64, "epochs": 2})
    a = deltaprop.train(_config(tmp_path / "big.npy", **kw), run_dir=tmp_path / "m")
    b = deltaprop.train(_config(classes, **kw), run_dir=tmp_path / "n")
    np.testing.assert_array_equal(deltaprop.load_model(a.run_dir).theta, deltaprop.load_model(b.run_dir).theta)

# ---- config validation that needs more than one key ---------------------------------------------

@pytest.mark.parametrize("monitor,loss", [("val_accuracy", "mse"), ("train_accuracy", "mse"),
                                          ("val_r2", "cross_entropy")])
def test_monitor_the_loss_does_not_have_is_rejected_before_training(tmp_path, classes, monitor, loss):
    """Rejected at validation (even with early stopping off), not a KeyError after the first epoch."""
    from deltaprop.training.config import config_from_dict
    cfg = _config(classes, data={"validation_fraction": 0.2}, training={"loss": loss},
                  early_stopping={"patience": 2, "monitor": monitor})
    with pytest.raises(ConfigError, match=rf"c\.toml: early_stopping\.monitor = '{monitor}' needs "
                                          rf"training\.loss = '(mse|cross_entropy)'"):
        config_from_dict(cfg, "c.toml")
    cfg["early_stopping"]["patience"] = 0
    with pytest.raises(ConfigError, match="early_stopping.monitor"):
        config_from_dict(cfg, "c.toml")
    with pytest.raises(ConfigError, match="early_stopping.monitor"):
        deltaprop.train(cfg, run_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_monitor_r2_and_accuracy_with_their_losses_are_accepted():
    from deltaprop.training.config import config_from_dict
    for monitor, loss in [("val_r2", "mse"), ("val_accuracy", "cross_entropy"), ("train_loss", "mse")]:
        c = config_from_dict({"training": {"loss": loss}, "data": {"validation_fraction": 0.1},
                              "early_stopping": {"patience": 1, "monitor": monitor}})
        assert c.early_stopping.monitor == monitor


@pytest.mark.parametrize("seed", [-1, 2**63])
def test_seed_out_of_range_names_the_key(seed):
    from deltaprop.training.config import config_from_dict
    with pytest.raises(ConfigError, match=rf"c\.toml: training\.seed = {seed} is out of range: must be >= 0"):
        config_from_dict({"training": {"seed": seed}}, "c.toml")
    assert config_from_dict({"training": {"seed": 2**63 - 1}}).training.seed == 2**63 - 1


@pytest.mark.parametrize("value", [-5.0, -0.5, -1e-9])
def test_negative_weight_decay_is_rejected(value):
    from deltaprop.training.config import config_from_dict
    with pytest.raises(ConfigError, match=rf"c\.toml: optimizer\.weight_decay = {value!r} is out of range"):
        config_from_dict({"optimizer": {"weight_decay": value}}, "c.toml")


def test_unset_weight_decay_keeps_torch_defaults_through_the_run_config():
    """Unset: 0 for sgd/adam, 0.01 for adamw, also after config.toml is written and read back."""
    import tomllib
    from dataclasses import replace

    from deltaprop.training.config import config_from_dict
    for name, expect in [("sgd", 0.0), ("adam", 0.0), ("adamw", 0.01)]:
        c = config_from_dict({"optimizer": {"name": name}})
        assert c.optimizer.resolved_weight_decay() == expect
        again = config_from_dict(tomllib.loads(c.to_toml()))  # written resolved, not as a sentinel
        assert again.optimizer.weight_decay == expect and again.optimizer.resolved_weight_decay() == expect
        assert again == replace(c, optimizer=replace(c.optimizer, weight_decay=expect))
        explicit = config_from_dict({"optimizer": {"name": name, "weight_decay": 0.0}})
        assert explicit.optimizer.resolved_weight_decay() == 0.0


# ---- training.shuffle ----------------------------------------------------------------------------

def test_shuffle_false_trains_in_file_order_whatever_the_seed(tmp_path, classes):
    """With shuffle = false and the initial weights from a file (so the seed decides nothing else:
    no dropout, no validation split), two seeds give identical weights; with shuffling they differ.
    The epoch order is the rows in file order, every epoch."""
    from deltaprop.training.order import EpochOrder
    init = deltaprop.train(_config(classes, training={"epochs": 1}), run_dir=tmp_path / "init")
    init_path = str(init.run_dir / "model.safetensors")

    def weights(seed, shuffle):
        cfg = _config(classes, model={"init": init_path}, training={"seed": seed, "shuffle": shuffle,
                                                                    "epochs": 2, "batch_size": 50})
        return deltaprop.train(cfg, run_dir=tmp_path / f"s{seed}-{shuffle}").model.theta

    w = {(seed, shuffle): weights(seed, shuffle) for seed in (1, 2) for shuffle in (False, True)}
    assert np.array_equal(w[1, False], w[2, False])
    assert not np.array_equal(w[1, True], w[2, True])
    assert not np.array_equal(w[1, False], w[1, True])

    order = EpochOrder(np.arange(600), seed=5, shuffle=False, block=0)
    state = order.initial_state()
    for _ in range(2):
        rows, state = order.draw(state)
        assert np.array_equal(rows, np.arange(600))
