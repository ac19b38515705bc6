"""Grid plans: `grid H x W`, `actions`, `solve value_iteration` and `solve vin`; the module contract
and the shipped VIN checkpoint."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import planlang
from planlang.errors import PlanError
from runtime.grid import shortest_path_distances
from runtime.gridworld import generate

ROOT = Path(__file__).resolve().parents[2]
VI = """plan vi
grid 8 x 8
actions 8
input occupancy[8, 8]
input goal[2] = [6, 6]
input start[2] = [1, 1]
COST
solve value_iteration
"""


def maps(count: int = 16, seed: int = 3):
    data = generate(8, count, trajs=1, seed=seed)
    start = torch.as_tensor(data.starts).long().reshape(count, -1, 2)[:, 0]
    return torch.as_tensor(data.maps, dtype=torch.float64), torch.as_tensor(data.goals).long(), start


def test_value_iteration_plan_agrees_with_dijkstra_and_reaches_every_goal():
    occupancy, goal, start = maps()
    module = planlang.compile(planlang.loads(VI.replace("COST", "")), dtype=torch.float64)
    sol = module(occupancy=occupancy, goal=goal, start=start)
    distances = shortest_path_distances(torch.ones_like(occupancy), occupancy, goal, 8)
    free = occupancy == 0
    torch.testing.assert_close(-sol.values[free], distances[free], rtol=0, atol=1e-9)
    assert sol.reached.all() and sol.logits.shape == (16, 8) and sol.path.shape[-1] == 2


def test_cell_costs_are_maps_of_the_inputs():
    occupancy, goal, start = maps(4)
    text = VI.replace("COST", "input mud[8, 8] = zeros(8, 8)\ncost stage = 1 + 4 * mud")
    module = planlang.compile(planlang.loads(text), dtype=torch.float64)
    mud = torch.zeros(4, 8, 8, dtype=torch.float64)
    plain = module(occupancy=occupancy, goal=goal, start=start, mud=mud)
    muddy = module(occupancy=occupancy, goal=goal, start=start, mud=mud + 1)
    torch.testing.assert_close(muddy.values[occupancy == 0], 5 * plain.values[occupancy == 0])


def test_shipped_vin_checkpoint_loads_through_the_contract():
    plan = planlang.load(ROOT / "examples" / "vin_8x8.plan")
    module = planlang.compile(plan, weights=ROOT / "examples" / "weights" / "vin_8x8.pt")
    occupancy, goal, start = maps(64, seed=11)
    with torch.no_grad():
        sol = module(occupancy=occupancy.float(), goal=goal, start=start)
    assert sol.values.shape == (64, 8, 8) and sol.logits.shape == (64, 8) and sol.reached.dtype == torch.bool
    assert sol.path.shape[0] == 64 and sol.path.shape[2] == 2
    assert (sol.path[:, 0] == start).all()
    assert sol.reached.float().mean() >= 0.9       # trained: ~98% on fresh maps (docs/vin.md)


def test_vin_gradients_reach_its_weights():
    module = planlang.compile(planlang.load(ROOT / "examples" / "vin_8x8.plan"))
    occupancy, goal, start = maps(2)
    sol = module(occupancy=occupancy.float(), goal=goal, start=start)
    sol.logits.logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in module.planner.parameters())


@pytest.mark.parametrize("change, message", [
    ("solve value_iteration", "solve lqr plans over states, controls and dynamics"),
    ("actions 8", "a grid plan moves in 4 or 8 directions"),
    ("input occupancy[8, 8]", "a grid plan declares `input occupancy[8, 8]`"),
    ("input goal[2] = [6, 6]", "a grid plan (`grid H x W`) has no `horizon`"),
])
def test_grid_plan_errors(change, message):
    replacement = {"solve value_iteration": "solve lqr", "actions 8": "actions 6", "input occupancy[8, 8]": "",
                   "input goal[2] = [6, 6]": "input goal[2] = [6, 6]\nhorizon 3"}[change]
    with pytest.raises(PlanError, match=re.escape(message)):
        planlang.compile(planlang.loads(VI.replace("COST", "").replace(change, replacement)))


def test_vin_refuses_cost_lines_it_would_ignore():
    text = VI.replace("COST", "cost stage = 1 + occupancy").replace("solve value_iteration", "solve vin(k=5)")
    with pytest.raises(PlanError, match="solve vin learns its reward"):
        planlang.compile(planlang.loads(text))


def test_a_trajectory_plan_cannot_use_vin():
    text = (ROOT / "examples" / "double_integrator.plan").read_text().replace("solve lqr", "solve vin(k=5)")
    with pytest.raises(PlanError, match="solve vin plans over a grid"):
        planlang.compile(planlang.loads(text))


def test_trajectory_methods_on_a_grid_plan_say_what_to_call_instead():
    module = planlang.compile(planlang.load(ROOT / "examples" / "vin_8x8.plan"))
    for call in (lambda: module.step(torch.zeros(1, 2), torch.zeros(1, 1)), lambda: module.simulate(2),
                 module.controller):
        with pytest.raises(ValueError, match="for trajectory plans; a grid plan has no states"):
            call()
