"""`continual BLOCK by METHOD(...)` in plans: located errors for bad methods and options, the
methods' state in the module's state_dict, and a stream of tasks trained through the plan module
(naive forgets; replay and distillation reduce it; a stopped stream resumes exactly)."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

import planlang
from planlang.continual import train_stream
from planlang.errors import PlanError
from runtime.continual import EWC, Distill, Replay
from runtime.streams import pendulum_step
from runtime.training import TrainConfig
from runtime.transitions import TransitionsError

PLAN = """plan regimes
state x[2] = [0.5, 0]
control u in [-2, 2]
input m = 1
input l = 1
horizon 5
block f = mlp(in=5, out=2, hidden=[32], init=zero)
dynamics x' = x + f(x, u, m, l)
cost stage = x[0]^2 + 0.1 * x[1]^2 + 0.01 * u^2
{continual}
solve mppi(samples=20, iters=1)
"""
REGIMES = ((1.0, 1.0), (2.0, 0.6), (0.6, 1.4))
CONFIG = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, epochs=8, batch=32, validation=0.25, seed=0,
                     progress=False)


def plan_with(continual: str) -> planlang.Plan:
    return planlang.loads(PLAN.replace("{continual}", continual), "regimes.plan")


def compiled(continual: str = "", seed: int = 0):
    torch.manual_seed(seed)
    return planlang.compile(plan_with(continual))


@pytest.fixture(scope="module")
def stream():
    """Three pendulum regimes as dicts of arrays (the generator form of a stream); regime k
    visits only the angles th in [-pi + 2 pi k / 3, -pi + 2 pi (k + 1) / 3], so a model trained
    on one regime after another is certain to forget the angles it no longer sees."""
    g = torch.Generator().manual_seed(0)
    tasks = []
    for k, (mass, length) in enumerate(REGIMES):
        n = 320
        th = -math.pi + 2 * math.pi * (k + torch.rand(n, generator=g)) / len(REGIMES)
        thdot = (2 * torch.rand(n, generator=g) - 1) * 8
        u = (2 * torch.rand(n, generator=g) - 1) * 2
        m, l = torch.full((n,), mass), torch.full((n,), length)
        next_th, next_thdot = pendulum_step(th, thdot, u, m, l)
        tasks.append({"x": torch.stack([th, thdot], 1), "u": u[:, None],
                      "x_next": torch.stack([next_th, next_thdot], 1), "input_m": m[:, None],
                      "input_l": l[:, None]})
    return tasks


@pytest.fixture(scope="module")
def naive(stream):
    result = train_stream(compiled(), CONFIG, files=stream)
    assert result.bwt > 0.5, f"the test stream must make naive training forget (BWT {result.bwt:.3f})"
    return result


def test_methods_become_plugins_in_the_state_dict():
    module = compiled("continual f by ewc(lambda=10, online=true) + replay(capacity=50, policy=ring)")
    ewc, replay = module.continual["f"].plugins
    assert isinstance(ewc, EWC) and ewc.online and ewc.lambda_ == 10
    assert isinstance(replay, Replay) and replay.buffer.capacity == 50 and replay.buffer.policy == "ring"
    assert "continual.f.plugins.1.buffer.rng" in module.state_dict()


@pytest.mark.parametrize("continual, located, message", [
    ("continual f by ewk(lambda=1)", "ewk(", "unknown continual method 'ewk'"),
    ("continual f by ewc(lambda=-1)", "-1", "option 'lambda' must be a number >= 0"),
    ("continual f by ewc(online=1)", "1)", "option 'online' must be one of: false, true"),
    ("continual f by si()", "si(", "si needs c=..."),
    ("continual f by replay(capacity=10, policy=fifo)", "fifo", "option 'policy' must be one of"),
    ("continual f by replay(capacity=10, size=3)", "size", "unknown option 'size' for replay"),
    ("continual f by ewc(lambda=1, every=5)", "ewc(", "it needs online=true"),
    ("continual f by si(c=1) + si(c=2)", "si(c=2", "method 'si' is given twice"),
    ("continual m by si(c=1)", "m by", "'m' is not a block"),
])
def test_bad_methods_and_options_are_located(continual, located, message):
    """Each error names the line (10) and the column of the offending token."""
    with pytest.raises(PlanError) as err:
        planlang.compile(plan_with(continual))
    text = str(err.value)
    assert message in text
    assert f"regimes.plan:10:{continual.index(located) + 1}:" in text


def test_a_block_has_one_continual_line():
    with pytest.raises(PlanError, match="duplicate `continual` declaration"):
        planlang.compile(plan_with("continual f by si(c=1)\ncontinual f by ewc(lambda=1)"))


@pytest.mark.parametrize("continual, task_free", [
    ("continual f by replay(capacity=120, policy=experience_balanced)", False),
    ("continual f by replay(capacity=120)", True),
    ("continual f by distill(weight=1)", False),
    ("continual f by ewc(lambda=1)", False),
])
def test_the_declared_method_reduces_forgetting(stream, naive, continual, task_free):
    result = train_stream(compiled(continual), replace(CONFIG, task_free=task_free), files=stream)
    assert result.bwt < 0.5 * naive.bwt, (result.bwt, naive.bwt)
    assert result.acc < naive.acc


def test_a_stopped_stream_resumes_exactly(stream, tmp_path):
    continual = "continual f by replay(capacity=60, policy=experience_balanced) + distill(weight=1)"
    plan = plan_with(continual)
    config = replace(CONFIG, epochs=2)
    whole = train_stream(compiled(continual), config, files=stream, plan=plan)
    checkpoint = str(tmp_path / "stream.pt")
    stopped = train_stream(compiled(continual), replace(config, checkpoint=checkpoint), files=stream, plan=plan,
                           stop=2)
    assert stopped is None
    resumed_module = compiled(continual, seed=123)          # other initial weights: all comes from the checkpoint
    assert isinstance(resumed_module.continual["f"].plugins[1], Distill)
    resumed = train_stream(resumed_module, config, files=stream, plan=plan, resume=checkpoint)
    torch.testing.assert_close(resumed.R, whole.R, rtol=0, atol=0)
    torch.testing.assert_close(resumed.baseline, whole.baseline, rtol=0, atol=0)


def test_stream_data_that_does_not_fit_the_plan_is_refused(stream, tmp_path):
    bad = dict(stream[0], x_next=stream[0]["x_next"][:, :1])
    with pytest.raises(TransitionsError, match="x_next has 1 columns, x has 2"):
        train_stream(compiled(), CONFIG, files=[bad])
    with pytest.raises(TransitionsError, match="no such transitions file"):
        train_stream(compiled(), CONFIG, files=[tmp_path / "missing.npz"])
