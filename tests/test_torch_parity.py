"""Behaviour that claims to be torch's, against the torch loop a user would write (torch is a
test-only oracle that `make test` installs; deltaprop never imports it): the learning-rate
schedules and warm-up, and softplus with torch's threshold rule."""

import math

import numpy as np
import pytest
import torch

from deltaprop.plugins import builtin
from deltaprop.training.config import ScheduleConfig
from deltaprop.training.schedule import Schedule

STEPS_PER_EPOCH, EPOCHS, BASE_LR = 7, 6, 0.3


def _torch_rates(s: ScheduleConfig) -> list[float]:
    """The learning rate of every step of a torch training loop with the documented schedulers."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=BASE_LR)
    total = STEPS_PER_EPOCH * EPOCHS
    per_batch, per_epoch = [], []
    warm = s.warmup_epochs * STEPS_PER_EPOCH
    if warm > 0:
        assert warm == int(warm), "LinearLR needs a whole number of warm-up steps"
        per_batch.append(torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / warm, end_factor=1.0,
                                                           total_iters=int(warm) - 1))
    if s.name == "cosine":
        per_batch.append(torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=s.min_lr))
    elif s.name == "step":
        per_epoch.append(torch.optim.lr_scheduler.StepLR(opt, step_size=s.step_epochs, gamma=s.gamma))
    elif s.name == "exponential":
        per_epoch.append(torch.optim.lr_scheduler.ExponentialLR(opt, gamma=s.gamma))
    rates = []
    for epoch in range(EPOCHS):
        for _ in range(STEPS_PER_EPOCH):
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            for sched in per_batch:
                sched.step()
        for sched in per_epoch:
            sched.step()
    return rates


SCHEDULES = [ScheduleConfig("constant"), ScheduleConfig("step", step_epochs=2, gamma=0.5),
             ScheduleConfig("exponential", gamma=0.8), ScheduleConfig("cosine")]


@pytest.mark.parametrize("warmup", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("s", SCHEDULES + [ScheduleConfig("cosine", min_lr=0.01)],
                         ids=lambda s: f"{s.name}-min_lr{s.min_lr:g}")
def test_schedules_are_torchs_scheduler_loops(s, warmup):
    """Warm-up multiplies the schedule's rate. torch's chained CosineAnnealingLR adds eta_min after
    the warm-up factor, so with min_lr > 0 and a warm-up the torch equivalent is a LambdaLR of the
    product (see training/schedule.py); that combination is checked against one below."""
    s = ScheduleConfig(s.name, warmup, s.step_epochs, s.gamma, s.min_lr)
    if s.min_lr and warmup:
        total, warm = STEPS_PER_EPOCH * EPOCHS, warmup * STEPS_PER_EPOCH
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=BASE_LR)
        cosine = lambda i: s.min_lr / BASE_LR + (1 - s.min_lr / BASE_LR) * (1 + math.cos(math.pi * i / total)) / 2  # noqa: E731
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warm) * cosine(i))
        want = []
        for _ in range(total):
            want.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    else:
        want = _torch_rates(s)
    ours = Schedule(BASE_LR, STEPS_PER_EPOCH, STEPS_PER_EPOCH * EPOCHS, s).lrs(0, STEPS_PER_EPOCH * EPOCHS)
    np.testing.assert_allclose(ours, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("warmup_epochs", [0.35, 0.5, 1.25, 2.9])
def test_a_fractional_warm_up_never_overshoots_the_base_rate(warmup_epochs):
    """0.35 epochs of 10 steps is 3.5 steps: the factors are 1/3.5, 2/3.5, 3/3.5, then 1 (the
    fourth step once got 4/3.5 = 1.143)."""
    s = ScheduleConfig("constant", warmup_epochs=warmup_epochs)
    factors = Schedule(1.0, 10, 1000, s).lrs(0, 100)
    warm = warmup_epochs * 10
    assert factors.max() == 1.0
    assert np.all(np.diff(factors) >= 0)
    assert factors[math.ceil(warm) - 1] == 1.0 and factors[0] == pytest.approx(1 / warm)


def test_softplus_follows_torchs_threshold_rule():
    """torch.nn.functional.softplus(x) (beta 1, threshold 20) returns x itself above 20; its
    gradient is then exactly 1."""
    x = np.concatenate([np.linspace(-40, 40, 801), [19.999, 20.0, 20.001, 25.0, 700.0, -700.0]])
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    want = torch.nn.functional.softplus(t)
    want.sum().backward()
    ours = np.array([builtin.softplus(v) for v in x])
    grad = np.array([builtin.softplus_grad(v) for v in x])
    np.testing.assert_allclose(ours, want.detach().numpy(), rtol=1e-15, atol=0)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-15, atol=1e-300)
    assert ours[x > 20].tolist() == x[x > 20].tolist()


def test_model_init_takes_the_weights_of_a_torch_sequential(tmp_path):
    """model.init = a file written by safetensors.torch.save_file(nn.Sequential(...).state_dict())
    (names 0.weight, 2.weight, ...: no deltaprop metadata): training starts from exactly those
    weights, and a file whose shapes do not fit the config is refused naming the layer."""
    import safetensors.torch

    import deltaprop
    from deltaprop.api import read_config
    from deltaprop.errors import ConfigError
    from deltaprop.training.prepare import prepare
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    safetensors.torch.save_file(net.state_dict(), tmp_path / "torch.safetensors")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", X=X, y=rng.integers(0, 3, 60))
    raw = {"model": {"hidden": [8], "init": str(tmp_path / "torch.safetensors")},
           "data": {"train": str(tmp_path / "d.npz"), "test": ""}, "training": {"epochs": 1}}
    model = prepare(read_config(raw), deltaprop.plugins.manager.get_registry()).model
    for i, k in enumerate((0, 2)):
        np.testing.assert_array_equal(model.layer_tensors()[f"layers.{i}.weight"], net[k].weight.detach().numpy())
        np.testing.assert_array_equal(model.layer_tensors()[f"layers.{i}.bias"], net[k].bias.detach().numpy())
    raw["model"]["hidden"] = [16]
    with pytest.raises(ConfigError, match=r"layer 0 has weight \(8, 4\) and bias \(8,\), this config needs \(16, 4\)"):
        prepare(read_config(raw), deltaprop.plugins.manager.get_registry())
