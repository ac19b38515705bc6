"""examples/cartpole_regimes.plan: its world model conditions on (mp, l, b), and the true-equation
plan of benchmarks/continual_cartpole_regimes.py (MPPI's upper bound and the closed loop's plant)
steps exactly like runtime.streams.cartpole_step in every regime."""
import importlib.util
from pathlib import Path

import torch

import planlang
from runtime.continual import Replay
from runtime.streams import CARTPOLE_REGIMES, cartpole_step

ROOT = Path(__file__).resolve().parents[2]
PLAN = ROOT / "examples" / "cartpole_regimes.plan"


def benchmark():
    spec = importlib.util.spec_from_file_location("continual_cartpole_regimes",
                                                  ROOT / "benchmarks" / "continual_cartpole_regimes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_world_model_conditions_on_the_regime():
    module = planlang.compile(planlang.load(PLAN))
    assert module.blocks["f"].state == 4 and module.blocks["f"].others == 1 + 3
    assert isinstance(module.continual["f"].plugins[0], Replay)
    s, u = torch.randn(3, 4), torch.randn(3, 1)
    assert module.step(s, u, mp=torch.full((3,), 0.3), l=torch.full((3,), 0.8), b=torch.zeros(3)).shape == (3, 4)


def test_the_true_equation_plan_steps_like_the_stream():
    bench = benchmark()
    g = torch.Generator().manual_seed(0)
    s = torch.randn(16, 4, generator=g, dtype=torch.float64)
    u = 8 * torch.randn(16, 1, generator=g, dtype=torch.float64)
    for regime in CARTPOLE_REGIMES:
        truth = planlang.compile(planlang.loads(bench.true_model_plan(PLAN.read_text(), regime), str(PLAN)),
                                 dtype=torch.float64)
        params = (torch.full((16,), v, dtype=torch.float64) for v in regime)
        torch.testing.assert_close(truth.step(s, u.clamp(-10, 10)), cartpole_step(s, u[:, 0], *params))
