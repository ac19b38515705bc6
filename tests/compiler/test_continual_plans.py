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
from runtime.continual import EWC, VCL, BayesLinear, Distill, Progressive, ProgressiveMLP, Replay
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
    ("continual f by vcl(beta=-1)", "-1", "option 'beta' must be a number >= 0"),
    ("continual f by progressive(columns=2)", "columns", "unknown option 'columns' for progressive"),
    ("continual f by vcl() + progressive()", "progressive(", "progressive and vcl both build block 'f'"),
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
    ("continual f by vcl(beta=1)", False),
    ("continual f by progressive()", False),
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


@pytest.mark.parametrize("continual, located, message", [
    ("continual g by vcl()", "vcl(", "vcl builds block 'g' with Bayesian linear layers: it needs an `mlp` or `world_model(kind=mlp)` block, "
                                     "not a `linear` block"),
    ("continual f by progressive()\ntrain {\n  stream [\"a.npz\"]\n  task_free true\n}", "progressive(",
     "progressive needs task boundaries, and the train block says `task_free true`"),
])
def test_architecture_methods_misused_are_located(continual, located, message):
    source = PLAN.replace("{continual}", continual).replace("block f =", "block g = linear(in=5, out=2)\nblock f =")
    with pytest.raises(PlanError) as err:
        planlang.compile(planlang.loads(source, "regimes.plan"))
    text = str(err.value)
    assert message in text
    assert f"regimes.plan:11:{continual.index(located) + 1}:" in text


@pytest.mark.parametrize("continual, layers", [("continual f by vcl(beta=0.5, init_sigma=0.05)", BayesLinear),
                                               ("continual f by progressive()", ProgressiveMLP)])
def test_architecture_methods_build_the_block(continual, layers):
    module = compiled(continual)
    block = module.blocks["f"]
    assert any(isinstance(m, layers) for m in block.modules())
    if layers is BayesLinear:
        assert not any(isinstance(m, torch.nn.Linear) for m in block.modules())
    x, u = torch.randn(4, 2), torch.randn(4, 1)
    module.eval()
    torch.testing.assert_close(module.step(x, u), x)           # init=zero: the residual starts at 0
    plugin = module.continual["f"].plugins[0]
    if layers is BayesLinear:
        assert isinstance(plugin, VCL) and plugin.beta == 0.5
        sigma = torch.nn.functional.softplus(block[0].weight_rho)
        torch.testing.assert_close(sigma, torch.full_like(sigma, 0.05))
        assert "blocks.f.0.prior_weight_sigma" in module.state_dict()
    else:
        assert isinstance(plugin, Progressive)


def test_architecture_methods_refuse_a_task_free_stream(stream):
    with pytest.raises(ValueError, match="cannot train task-free"):
        train_stream(compiled("continual f by progressive()"), replace(CONFIG, task_free=True), files=stream)


@pytest.mark.parametrize("continual", ["continual f by vcl(beta=1)", "continual f by progressive()"])
def test_architecture_methods_stop_and_resume_exactly(stream, tmp_path, continual):
    """The grown columns / the posterior-as-prior are in the checkpoint: a fresh module resumes."""
    plan = plan_with(continual)
    config = replace(CONFIG, epochs=2)
    whole = train_stream(compiled(continual), config, files=stream, plan=plan)
    checkpoint = str(tmp_path / "stream.pt")
    assert train_stream(compiled(continual), replace(config, checkpoint=checkpoint), files=stream, plan=plan,
                        stop=2) is None
    resumed = train_stream(compiled(continual, seed=123), config, files=stream, plan=plan, resume=checkpoint)
    torch.testing.assert_close(resumed.R, whole.R, rtol=0, atol=0)


def test_progressive_columns_round_trip_through_the_state_dict(stream):
    trained = compiled("continual f by progressive()")
    train_stream(trained, replace(CONFIG, epochs=1), files=stream)
    assert len(trained.blocks["f"].columns) == len(REGIMES)
    fresh = compiled("continual f by progressive()", seed=5)
    fresh.load_state_dict(trained.state_dict())
    assert len(fresh.blocks["f"].columns) == len(REGIMES)
    x, u = torch.randn(6, 2), torch.randn(6, 1)
    for task in range(len(REGIMES)):
        for module in (trained, fresh):
            module.eval()
            module.blocks["f"].active.fill_(task)
        torch.testing.assert_close(fresh.step(x, u), trained.step(x, u), rtol=0, atol=0)
