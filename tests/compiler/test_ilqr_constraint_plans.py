"""Plans with nonlinear `constraint` lines solved by iLQR (augmented Lagrangian), through the compiler."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import planlang
from planlang.errors import PlanError

ROOT = Path(__file__).resolve().parents[2]
PLAN = (ROOT / "examples" / "unicycle_obstacle.plan").read_text()


def test_the_obstacle_constraint_holds_and_is_active():
    module = planlang.compile(planlang.loads(PLAN), dtype=torch.float64)
    sol = module()
    assert sol.status_names() == ["solved"] and float(sol.violation) <= 1e-6
    distance = (sol["p"][0] - torch.tensor([1.5, 0.05], dtype=torch.float64)).norm(dim=-1)
    assert float(distance.min()) == pytest.approx(0.5, abs=1e-6)          # active: the path grazes it
    free = planlang.compile(planlang.loads(PLAN.replace("constraint norm(p - obs) >= 0.5\n", "")),
                            dtype=torch.float64)()
    assert float(free.cost) < float(sol.cost)


def test_constrained_gradients_match_finite_differences():
    """Along one random direction of the obstacle's position (the constraint is active)."""
    module = planlang.compile(planlang.loads(PLAN.replace("horizon 30", "horizon 15")), dtype=torch.float64)
    obs = torch.tensor([1.5, 0.05], dtype=torch.float64, requires_grad=True)
    weights = torch.linspace(-1, 1, 30, dtype=torch.float64).reshape(1, 15, 2)
    loss = lambda o: (module(obs=o).u * weights).sum()                   # noqa: E731
    direction = torch.tensor([0.6, -0.8], dtype=torch.float64)
    analytic = float(torch.autograd.grad(loss(obs), obs)[0] @ direction)
    h = 1e-5
    with torch.no_grad():
        fd = float((loss(obs + h * direction) - loss(obs - h * direction)) / (2 * h))
    assert analytic == pytest.approx(fd, rel=1e-3, abs=1e-5)
    assert abs(fd) > 1e-3                                                 # the constraint moves the plan


def test_non_smooth_constraints_are_refused_by_ilqr():
    text = PLAN.replace("constraint norm(p - obs) >= 0.5", "constraint abs(p[1] - obs[1]) >= 0.5")
    with pytest.raises(PlanError, match=re.escape("abs() of a state or control is not smooth")):
        planlang.compile(planlang.loads(text))
