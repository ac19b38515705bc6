"""`continual f by vcl(...)` / `progressive()` on a `world_model(kind=mlp)` block: the architecture
method builds the world model's network (Bayesian layers / progressive columns, inside a
`NetworkWorldModel`); forgetting is reduced against naive fine-tuning on a stream certain to make
it forget; a stopped stream resumes exactly; the columns round-trip through the state_dict; an
ensemble is a located error."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

import planlang
from planlang.continual import train_stream
from planlang.errors import PlanError
from runtime.continual import VCL, BayesLinear, Progressive, ProgressiveMLP
from runtime.continual_world_model import NetworkWorldModel
from runtime.streams import pendulum_step
from runtime.training import TrainConfig
from runtime.world_model import EnsembleLinear

PLAN = """plan regimes
state x[2] = [0.5, 0]
control u in [-2, 2]
input m = 1
input l = 1
horizon 5
block f = world_model(kind=mlp, hidden=[32], angles=[0])
dynamics x' = f(x, u, m, l)
cost stage = x[0]^2 + 0.1 * x[1]^2 + 0.01 * u^2
{continual}
solve mppi(samples=20, iters=1)
"""
REGIMES = ((1.0, 1.0), (2.0, 0.6), (0.6, 1.4))
CONFIG = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, epochs=8, batch=32, validation=0.25, seed=0,
                     progress=False)
VCL_LINE = "continual f by vcl(beta=1, init_sigma=0.05)"
PROGRESSIVE_LINE = "continual f by progressive()"


def plan_with(continual: str, block: str = "world_model(kind=mlp, hidden=[32], angles=[0])") -> planlang.Plan:
    text = PLAN.replace("{continual}", continual).replace("world_model(kind=mlp, hidden=[32], angles=[0])", block)
    return planlang.loads(text, "regimes.plan")


def compiled(continual: str = "", seed: int = 0):
    torch.manual_seed(seed)
    return planlang.compile(plan_with(continual))


@pytest.fixture(scope="module")
def stream():
    """Three pendulum regimes; regime k visits only th in [-pi + 2 pi k / 3, -pi + 2 pi (k + 1) / 3],
    so a model trained on one regime after another is certain to forget the angles it no longer sees."""
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
    assert result.bwt > 0.03, f"the test stream must make naive training forget (BWT {result.bwt:.4f})"
    return result


@pytest.mark.parametrize("continual, layers", [(VCL_LINE, BayesLinear), (PROGRESSIVE_LINE, ProgressiveMLP)])
def test_the_method_builds_the_world_models_network(continual, layers):
    module = compiled(continual)
    block = module.blocks["f"]
    assert isinstance(block, NetworkWorldModel) and isinstance(block.network, torch.nn.Module)
    assert any(isinstance(m, layers) for m in block.network.modules())
    assert not any(isinstance(m, EnsembleLinear) for m in block.modules())
    first = next(m for m in block.network.modules() if isinstance(m, (BayesLinear, torch.nn.Linear)))
    weight = first.weight_mu if layers is BayesLinear else first.weight
    assert weight.shape == (32, 2 + 1 + 3)                     # th as (sin, cos), thdot; u, m, l
    plugin = module.continual["f"].plugins[0]
    assert isinstance(plugin, VCL if layers is BayesLinear else Progressive)
    module.eval()
    x, u = torch.randn(5, 2), torch.randn(5, 1)
    assert module.step(x, u).shape == (5, 2)
    key = "blocks.f.network.0.prior_weight_sigma" if layers is BayesLinear else "blocks.f.network.active"
    assert key in module.state_dict()


def test_an_ensemble_world_model_is_a_located_error():
    continual = "continual f by progressive()"
    with pytest.raises(PlanError) as err:
        planlang.compile(plan_with(continual, "world_model(kind=ensemble, members=3, hidden=[32])"))
    text = str(err.value)
    assert "it needs a `world_model(kind=mlp)` block, not kind=ensemble" in text
    assert f"regimes.plan:10:{continual.index('progressive(') + 1}:" in text


@pytest.mark.parametrize("continual", [VCL_LINE, PROGRESSIVE_LINE])
def test_the_method_reduces_forgetting_of_a_world_model(stream, naive, continual):
    result = train_stream(compiled(continual), CONFIG, files=stream)
    assert result.bwt < 0.5 * naive.bwt, (result.bwt, naive.bwt)
    assert result.acc < naive.acc, (result.acc, naive.acc)


@pytest.mark.parametrize("continual", [VCL_LINE, PROGRESSIVE_LINE])
def test_a_stopped_world_model_stream_resumes_exactly(stream, tmp_path, continual):
    """Posterior-as-prior buffers / grown columns and the normalization are in the checkpoint."""
    plan = plan_with(continual)
    config = replace(CONFIG, epochs=2)
    whole = train_stream(compiled(continual), config, files=stream, plan=plan)
    checkpoint = str(tmp_path / "stream.pt")
    assert train_stream(compiled(continual), replace(config, checkpoint=checkpoint), files=stream, plan=plan,
                        stop=2) is None
    resumed = train_stream(compiled(continual, seed=123), config, files=stream, plan=plan, resume=checkpoint)
    torch.testing.assert_close(resumed.R, whole.R, rtol=0, atol=0)


def test_progressive_world_model_round_trips_and_selects_columns(stream):
    trained = compiled(PROGRESSIVE_LINE)
    train_stream(trained, replace(CONFIG, epochs=1), files=stream)
    network = trained.blocks["f"].network
    assert len(network.columns) == len(REGIMES)
    fresh = compiled(PROGRESSIVE_LINE, seed=5)
    fresh.load_state_dict(trained.state_dict())
    assert len(fresh.blocks["f"].network.columns) == len(REGIMES)
    x, u = torch.randn(6, 2), torch.randn(6, 1)
    outputs = []
    for task in range(len(REGIMES)):
        for module in (trained, fresh):
            module.eval()
            module.blocks["f"].network.select(task)
        torch.testing.assert_close(fresh.step(x, u), trained.step(x, u), rtol=0, atol=0)
        outputs.append(trained.step(x, u))
    assert not torch.equal(outputs[0], outputs[-1])           # each column is its own model
    with pytest.raises(ValueError, match="column 3 does not exist"):
        network.select(3)
