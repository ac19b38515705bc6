"""`block f = world_model(...)` in plans: shapes and located errors, `step` with conditioning
inputs, fitting from a transitions file (`loss model`) with checkpoints, and gradients through
world-model dynamics in ilqr, descent and mppi against central finite differences (float64)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import planlang
from planlang.errors import PlanError
from runtime.training import TrainConfig
from runtime.transitions import TransitionsError
from runtime.world_model import member_assignment

torch.set_num_threads(1)

PLAN = """plan pendulum_wm
horizon 6
state x[2] = [2.5, 0.0]
control u in [-2, 2]
input m = 1.0
input l = 1.0
block dyn = world_model(kind=KIND, hidden=[16, 16], members=2, angles=[0])
dynamics x' = dyn(x, u, m, l)
cost stage = 2 * (1 - cos(x[0])) + 0.1 * x[1]^2 + 0.001 * u^2
solve SOLVER
"""


def plan_text(kind: str = "ensemble", solver: str = "mppi(samples=32, iters=1)") -> str:
    return PLAN.replace("KIND", kind).replace("SOLVER", solver)


def compiled(text: str, **kwargs):
    torch.manual_seed(0)
    return planlang.compile(planlang.loads(text, "wm.plan"), dtype=torch.float64, **kwargs)


def pendulum(x: np.ndarray, u: np.ndarray, m: np.ndarray, l: np.ndarray) -> np.ndarray:
    """Gymnasium's Pendulum-v1 step (g = 10, dt = 0.05), angle wrapped."""
    thdot = np.clip(x[:, 1] + (15 / l * np.sin(x[:, 0]) + 3 / (m * l ** 2) * np.clip(u[:, 0], -2, 2)) * 0.05, -8, 8)
    th = x[:, 0] + thdot * 0.05
    return np.stack([(th + np.pi) % (2 * np.pi) - np.pi, thdot], 1)


def transitions(episodes: int, steps: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    x = np.stack([rng.uniform(-np.pi, np.pi, episodes), rng.uniform(-2, 2, episodes)], 1)
    m, l = rng.uniform(0.7, 1.5, episodes), rng.uniform(0.7, 1.3, episodes)
    rows = {"x": [], "u": [], "x_next": [], "episode": [], "input_m": [], "input_l": []}
    for _ in range(steps):
        u = rng.uniform(-2, 2, (episodes, 1))
        nxt = pendulum(x, u, m, l)
        for key, value in (("x", x), ("u", u), ("x_next", nxt), ("episode", np.arange(episodes)),
                           ("input_m", m), ("input_l", l)):
            rows[key].append(value)
        x = nxt
    return {k: np.stack(v, 1).reshape((episodes * steps,) + np.shape(v[0])[1:]) for k, v in rows.items()}


def test_step_predicts_the_first_argument_with_scalar_conditioning():
    module = compiled(plan_text())
    x, u = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    m, l = torch.rand(5, dtype=torch.float64) + 0.5, torch.rand(5, dtype=torch.float64) + 0.5
    nxt = module.step(x, u, m=m, l=l)
    assert nxt.shape == (5, 2)
    block = module.blocks["dyn"]
    expected = block(x, torch.cat([u.clamp(-2, 2), m[:, None], l[:, None]], 1))
    torch.testing.assert_close(nxt, expected)
    assert not torch.allclose(module.step(x, u, m=m + 1, l=l), nxt)
    assert {"blocks.dyn.in_mean", "blocks.dyn.out_std", "blocks.dyn.fitted"} <= set(module.state_dict())


def test_vector_conditioning_and_a_scalar_state():
    text = """plan v
horizon 3
state s = 0.5
control u in [-1, 1]
input ctx[3] = [1.0, 2.0, 3.0]
block f = world_model(kind=mlp, hidden=[4])
dynamics s' = f(s, u, ctx)
cost stage = s^2 + u^2
solve ilqr(iters=5)
"""
    module = compiled(text)
    assert module.blocks["f"].others == 4 and module.blocks["f"].members == 1
    assert module.step(torch.zeros(3, 1, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64),
                       ctx=torch.ones(3, 3, dtype=torch.float64)).shape == (3, 1)


@pytest.mark.parametrize("change, message", [
    ("angles=[0]", None),
    ("angles=[2]", r"angles \[2\] are not entries of its first argument"),
    ("kind=latentish", "option 'kind' given twice"),
])
def test_world_model_options_are_checked_with_locations(change, message):
    text = plan_text().replace("angles=[0]", change)
    if change.startswith("kind"):
        text = plan_text("latent_space").replace(", angles=[0]", "")
        message = "'kind' must be one of"
    if message is None:
        compiled(text)
        return
    with pytest.raises(PlanError, match=message) as info:
        compiled(text)
    assert ":7:" in str(info.value) or ":8:" in str(info.value)


def test_one_signature_per_block():
    text = plan_text().replace("cost stage = ", "cost stage = sum(dyn(x, u, m, 1.0)) + sum(dyn(x, u, [m, l, m], l)) + ")
    with pytest.raises(PlanError, match="called with sizes"):
        compiled(text)


def _held_out_error(module, data) -> float:
    d = {k: torch.as_tensor(v) for k, v in data.items()}
    with torch.no_grad():
        pred = module.step(d["x"], d["u"], m=d["input_m"], l=d["input_l"])
    block = module.blocks["dyn"]
    return float(block.difference(pred, d["x_next"]).pow(2).mean())


@pytest.mark.parametrize("kind", ["mlp", "ensemble"])
def test_fitting_from_transitions_reduces_held_out_error_and_checkpoints(tmp_path, kind):
    path = tmp_path / "train.npz"
    np.savez(path, **transitions(24, 20, seed=0))
    held = transitions(8, 20, seed=1)
    text = plan_text(kind)
    plan = planlang.loads(text, str(tmp_path / "wm.plan"))
    module = compiled(text)
    before = _held_out_error(module, held)
    config = TrainConfig(loss="model", loss_options={"steps": 3}, lr=3e-3, epochs=25, batch=64, seed=0,
                         patience=10, progress=False, checkpoint=str(tmp_path / "ck.pt"))
    history = planlang.train(module, path, config, plan=plan)
    after = _held_out_error(module, held)
    assert after < 0.1 * before
    assert history[-1]["val_mse"] < history[0]["val_mse"]
    assert ("val_nll" in history[-1]) == (kind == "ensemble")
    assert bool(module.blocks["dyn"].fitted)
    reloaded = planlang.compile(plan, weights=tmp_path / "ck.pt", dtype=torch.float64)
    assert _held_out_error(reloaded, held) == pytest.approx(after, rel=1e-12)


def test_transitions_that_do_not_fit_the_plan_are_rejected(tmp_path):
    module = compiled(plan_text())
    data = transitions(2, 5, seed=0)
    bad = {**data, "u": np.ones((10, 2))}
    with pytest.raises(TransitionsError, match="2 control columns; plan 'pendulum_wm' has m = 1"):
        planlang.train(module, bad, TrainConfig(loss="model", progress=False))
    with pytest.raises(TransitionsError, match="'input_mass' names no input or param"):
        planlang.train(module, {**data, "input_mass": data["input_m"]}, TrainConfig(loss="model", progress=False))
    with pytest.raises(TransitionsError, match="no run of 6 consecutive transitions"):
        planlang.train(module, data, TrainConfig(loss="model", loss_options={"steps": 6}, progress=False))


def test_loss_model_needs_the_block_called_on_its_state():
    text = plan_text().replace("dynamics x' = dyn(x, u, m, l)", "dynamics x' = dyn(x, u, m, l) + 0 * x")
    with pytest.raises(ValueError, match="fits one world_model block"):
        planlang.train(compiled(text), transitions(2, 5, 0), TrainConfig(loss="model", progress=False))


def _fitted(text: str):
    """A compiled plan whose world model has non-trivial normalization (as after fitting)."""
    module = compiled(text)
    block = module.blocks["dyn"]
    with torch.no_grad():
        block.in_std.mul_(torch.linspace(0.8, 1.5, block.in_std.numel(), dtype=torch.float64))
        block.out_std.fill_(0.05)
        block.fitted.fill_(True)
    return module


@pytest.mark.parametrize("solver", [
    "ilqr(iters=100, tol=1e-12, model=newton)",
    "descent(iters=30, lr=0.05, backward=unroll)",
    "mppi(samples=32, iters=2, noise=0.5)",
    "cem(samples=32, elites=8, iters=2, noise=0.5)",
])
def test_gradients_through_world_model_dynamics_match_finite_differences(solver):
    module = _fitted(plan_text("ensemble", solver))
    weight = module.blocks["dyn"].head.weight
    direction = torch.randn(weight.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    m = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)

    def loss(mass):
        return module(m=mass).u.sum() + module(m=mass).cost.sum()

    value = loss(m)
    g_weight, g_m = torch.autograd.grad(value, (weight, m))
    h = 1e-6
    with torch.no_grad():
        weight.add_(h * direction)
        plus = loss(m)
        weight.sub_(2 * h * direction)
        minus = loss(m)
        weight.add_(h * direction)
        fd_weight = float((plus - minus) / (2 * h))
        fd_m = float((loss(m + h) - loss(m - h)) / (2 * h))
    assert float((g_weight * direction).sum()) == pytest.approx(fd_weight, rel=1e-4, abs=1e-7)
    assert float(g_m) == pytest.approx(fd_m, rel=1e-4, abs=1e-7)


def test_sampling_planners_propagate_samples_through_seeded_random_members():
    module = _fitted(plan_text("ensemble", "mppi(samples=8, iters=1, seed=3)"))
    block = module.blocks["dyn"]
    env, x0, like = module.bind({})
    problem, _ = module.backend._planner(env, like, 1)       # the sampled callables of the planner
    problem.rebind(env, like)
    x = x0.unsqueeze(1).expand(1, 8, 2) + torch.linspace(-1, 1, 8, dtype=torch.float64)[None, :, None]
    u = torch.linspace(-2, 2, 8, dtype=torch.float64).reshape(1, 8, 1)
    c = torch.cat([u[0], torch.ones(8, 2, dtype=torch.float64)], 1)           # u, m, l
    members = block.members_next(x[0], c)                                     # (M, K, n)
    nxt = problem.dynamics(x, u, 0)
    index = member_assignment(8, 2, seed=3)
    torch.testing.assert_close(nxt[0], members[index, torch.arange(8)])
    assert not torch.allclose(nxt[0], members.mean(0))
    one = problem.dynamics(x[:, :1], u[:, :1], 0)                             # the plan itself: the mean
    torch.testing.assert_close(one[0], members[:, :1].mean(0))
    first, again = module(), module()
    torch.testing.assert_close(first.u, again.u, rtol=0, atol=0)
