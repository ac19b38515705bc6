"""A world model's learned reward (`world_model(..., reward=true)`, `dyn.reward(x, u)` in costs):
fitting it with `loss model` lowers the held-out reward error, gradients through it in a plan
match central finite differences (float64), it survives a state_dict round trip, and plans and
data without a reward are refused with clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import planlang
from planlang.errors import PlanError
from planlang.world_models import fit_world_model, model_windows, the_world_model
from runtime.losses import ModelLoss
from runtime.training import TrainConfig
from runtime.transitions import TransitionsError, check_transitions

torch.set_num_threads(1)

PLAN = """plan reward_wm
horizon 4
state x[2] = [2.5, 0.0]
control u in [-2, 2]
block dyn = world_model(kind=KIND, hidden=[16, 16], members=2, angles=[0], reward=true)
dynamics x' = dyn(x, u)
cost stage = -dyn.reward(x, u) + 0.001 * u^2
solve SOLVER
"""


def plan_text(kind: str = "ensemble", solver: str = "mppi(samples=32, iters=1)") -> str:
    return PLAN.replace("KIND", kind).replace("SOLVER", solver)


def compiled(text: str, **kwargs):
    torch.manual_seed(0)
    return planlang.compile(planlang.loads(text, "reward.plan"), dtype=torch.float64, **kwargs)


def true_reward(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    return -(1 - np.cos(x[:, 0])) - 0.1 * x[:, 1] ** 2 - 0.05 * u[:, 0] ** 2


def transitions(episodes: int, steps: int, seed: int) -> dict:
    """Random-action pendulum-like episodes (Pendulum-v1's step) with a smooth reward of (x, u)."""
    rng = np.random.default_rng(seed)
    x = np.stack([rng.uniform(-np.pi, np.pi, episodes), rng.uniform(-2, 2, episodes)], 1)
    rows = {"x": [], "u": [], "x_next": [], "reward": [], "episode": []}
    for _ in range(steps):
        u = rng.uniform(-2, 2, (episodes, 1))
        thdot = np.clip(x[:, 1] + (15 * np.sin(x[:, 0]) + 3 * u[:, 0]) * 0.05, -8, 8)
        th = (x[:, 0] + thdot * 0.05 + np.pi) % (2 * np.pi) - np.pi
        nxt = np.stack([th, thdot], 1)
        for key, value in (("x", x), ("u", u), ("x_next", nxt), ("reward", true_reward(x, u)),
                           ("episode", np.arange(episodes))):
            rows[key].append(value)
        x = nxt
    return {k: np.stack(v, 1).reshape((episodes * steps,) + np.shape(v[0])[1:]) for k, v in rows.items()}


def held_out_reward_mse(module, data: dict) -> float:
    block = module.blocks["dyn"]
    x, u = torch.as_tensor(data["x"]), torch.as_tensor(data["u"])
    with torch.no_grad():
        return float(((block.reward(x, u) - torch.as_tensor(data["reward"])) ** 2).mean())


@pytest.mark.parametrize("kind", ["ensemble", "mlp"])
def test_fitting_lowers_the_held_out_reward_error(kind):
    module = compiled(plan_text(kind))
    train, test = transitions(12, 30, seed=0), transitions(6, 30, seed=1)
    fit_world_model(module, train, TrainConfig(loss="model", lr=1e-2, epochs=1, batch=64, validation=0.0),
                    callbacks=[])                                     # fits the normalization, one epoch
    before = held_out_reward_mse(module, test)
    history = fit_world_model(module, train, TrainConfig(loss="model", lr=1e-2, epochs=40, batch=64,
                                                         validation=0.1, seed=3), callbacks=[])
    after = held_out_reward_mse(module, test)
    assert after < 0.2 * before and after < 0.05 * float(np.var(test["reward"]))
    assert "val_reward_mse" in history[-1] and history[-1]["val_reward_mse"] < history[0]["val_reward_mse"]


def test_model_loss_reports_the_reward_error_in_reward_units():
    module = compiled(plan_text())
    data = check_transitions(transitions(4, 10, seed=2))
    batch = model_windows(module, the_world_model(module), data, 2, with_reward=True)
    block = module.blocks["dyn"]
    block.fit_normalization(data["x"], data["u"], data["x_next"])
    block.fit_reward_normalization(data["reward"] + 100.0)               # shift the units: the metric follows
    _, metrics = ModelLoss()(block, batch)
    x, u = batch["state"][:, :-1].reshape(-1, 2), batch["others"].reshape(-1, 1)
    with torch.no_grad():
        expected = ((block.reward(x, u) - batch["reward"].reshape(-1)) ** 2).mean()
    torch.testing.assert_close(metrics["reward_mse"], expected)


@pytest.mark.parametrize("solver", ["mppi(samples=16, iters=1)", "ilqr(iters=3)",
                                    "descent(iters=10, lr=0.05, backward=unroll)"])
def test_gradients_through_the_learned_reward_match_finite_differences(solver):
    module = compiled(plan_text(solver=solver))
    data = check_transitions(transitions(4, 10, seed=4))
    module.blocks["dyn"].fit_normalization(data["x"], data["u"], data["x_next"])
    module.blocks["dyn"].fit_reward_normalization(data["reward"])
    weight = module.blocks["dyn"].reward_layers[0].weight
    direction = torch.randn(weight.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x0 = torch.tensor([[2.0, 0.5]], dtype=torch.float64, requires_grad=True)
    x_direction = torch.tensor([[0.6, -0.8]], dtype=torch.float64)

    def loss(start):
        sol = module(x=start)
        return sol.u.sum() + sol.cost.sum()

    g_weight, g_x0 = torch.autograd.grad(loss(x0), (weight, x0))
    h = 1e-6
    with torch.no_grad():
        weight.add_(h * direction)
        plus = loss(x0)
        weight.sub_(2 * h * direction)
        minus = loss(x0)
        weight.add_(h * direction)
        fd_weight = float((plus - minus) / (2 * h))
        fd_x0 = float((loss(x0 + h * x_direction) - loss(x0 - h * x_direction)) / (2 * h))
    assert abs(fd_weight) > 1e-6                                # the reward head shapes the plan
    assert float((g_weight * direction).sum()) == pytest.approx(fd_weight, rel=1e-4, abs=1e-7)
    assert float((g_x0 * x_direction).sum()) == pytest.approx(fd_x0, rel=1e-4, abs=1e-7)


def test_the_reward_head_survives_a_state_dict_round_trip():
    module = compiled(plan_text())
    fit_world_model(module, transitions(6, 20, seed=5), TrainConfig(loss="model", lr=1e-2, epochs=3, batch=64,
                                                                    validation=0.0), callbacks=[])
    fresh = compiled(plan_text())
    fresh.load_state_dict(module.state_dict())
    x, u = torch.randn(7, 2, dtype=torch.float64), torch.randn(7, 1, dtype=torch.float64)
    torch.testing.assert_close(fresh.blocks["dyn"].reward(x, u), module.blocks["dyn"].reward(x, u))
    assert float(fresh.blocks["dyn"].reward_std) != 1.0                  # the normalization came along


def test_transitions_without_rewards_are_refused_for_a_reward_head():
    module = compiled(plan_text())
    data = transitions(3, 10, seed=6)
    del data["reward"]
    with pytest.raises(TransitionsError, match="no 'reward' column.*world model 'dyn' has a reward head"):
        fit_world_model(module, data, TrainConfig(loss="model", epochs=1))


def test_a_reward_call_on_a_model_without_a_reward_head_is_a_located_error():
    text = plan_text().replace(", reward=true", "")
    with pytest.raises(PlanError) as err:
        compiled(text)
    rendered = err.value.render()
    assert "reward.plan:7:15: error: block 'dyn': it has no reward head; declare it with reward=true" in rendered


@pytest.mark.parametrize("call, message", [
    ("sin.reward(x, u)", "'sin' is not a block"),
    ("dyn.value(x, u)", "a world_model block has no method 'value'"),
    ("(x[0]).reward(x, u)", "a method call `.reward(...)` is made on a block's name"),
    ("dyn.reward(x[0], u)", "called with sizes (1, 1) here and (2, 1) elsewhere"),
])
def test_bad_method_calls_are_located_errors(call, message):
    with pytest.raises(PlanError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace(".", r"\.")):
        compiled(plan_text().replace("dyn.reward(x, u)", call))
