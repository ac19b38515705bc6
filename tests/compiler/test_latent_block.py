"""`block m = world_model(kind=latent, ...)` in plans: the latent state, `m.encode/filter/reward`,
located errors, trajectory sampling through the prior in mppi (shapes, seeding), gradients
through the latent dynamics in ilqr, descent and mppi against central finite differences
(float64), training on observation sequences (`loss model`), state_dict round trip, the env
block's filter update, and `planlang mbrl` end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import planlang
from planlang.cli import main as cli_main
from planlang.errors import PlanError
from runtime.latent_world_model import LatentWorldModel, latent_sampling
from runtime.training import TrainConfig
from runtime.transitions import TransitionsError

torch.set_num_threads(1)

PLAN = """plan latent
horizon 4
state s[5]
control u in [-2, 2]
block wm = world_model(kind=latent, deter=3, stoch=2, hidden=8)
dynamics s' = wm(s, u)
cost stage = -wm.reward(s, u) + 0.5 * sum(s^2) + u^2
env "Pendulum-v1" {
  observe obs[3]
  state = wm.encode(obs)
  update = wm.filter(s, u, obs)
  steps 12
}
train {
  loss model(steps=6)
  optimizer adam(lr=0.01)
  epochs 3
  batch 16
  validation 0.25
  patience 3
}
solve SOLVER
"""


def plan_text(solver: str = "mppi(samples=16, iters=1, seed=3)") -> str:
    return PLAN.replace("SOLVER", solver)


def compiled(text: str, **kwargs):
    torch.manual_seed(0)
    return planlang.compile(planlang.loads(text, "latent.plan"), dtype=torch.float64, **kwargs)


def sequences(episodes: int, steps: int, seed: int) -> dict:
    """Pendulum-v1 transitions with observations (cos th, sin th, thdot) as x and its reward."""
    rng = np.random.default_rng(seed)
    th, thdot = rng.uniform(-np.pi, np.pi, episodes), rng.uniform(-1, 1, episodes)
    rows = {"x": [], "u": [], "x_next": [], "reward": [], "episode": []}
    obs = lambda a, b: np.stack([np.cos(a), np.sin(a), b], 1)
    for _ in range(steps):
        u = rng.uniform(-2, 2, (episodes, 1))
        wrapped = (th + np.pi) % (2 * np.pi) - np.pi
        reward = -(wrapped ** 2 + 0.1 * thdot ** 2 + 0.001 * u[:, 0] ** 2)
        new_thdot = np.clip(thdot + (15 * np.sin(th) + 3 * u[:, 0]) * 0.05, -8, 8)
        new_th = th + new_thdot * 0.05
        for key, value in (("x", obs(th, thdot)), ("u", u), ("x_next", obs(new_th, new_thdot)), ("reward", reward),
                           ("episode", np.arange(episodes))):
            rows[key].append(value)
        th, thdot = new_th, new_thdot
    return {k: np.stack(v, 1).reshape((episodes * steps,) + np.shape(v[0])[1:]) for k, v in rows.items()}


# ------------------------------------------------------------------ the language

def test_the_plan_state_is_the_latent_and_the_methods_evaluate_the_model():
    module = compiled(plan_text())
    model = module.blocks["wm"]
    assert isinstance(model, LatentWorldModel) and (model.obs, model.actions, model.latent) == (3, 1, 5)
    s, u = torch.randn(4, 5, dtype=torch.float64), torch.rand(4, 1, dtype=torch.float64)
    torch.testing.assert_close(module.step(s, u), model(s, u))
    path = torch.stack([s, model(s, u)], 1)                                  # one stage: (B, 2, 5)
    torch.testing.assert_close(module.trajectory_cost(path, u.reshape(4, 1, 1)),
                               -model.reward(s, u) + 0.5 * s.pow(2).sum(1) + u[:, 0] ** 2)
    obs = torch.randn(4, 3, dtype=torch.float64)
    spec = module.info.env
    env, _, like = module.bind({}, initial_states=False, like=obs)
    first = spec.observe(env, obs, like)
    torch.testing.assert_close(first, model.encode(obs))
    later = spec.advance(env, module.layout.numeric(first, u), obs, like)
    torch.testing.assert_close(later, model.filter(first, u, obs))
    assert not torch.allclose(later, first)
    assert {"blocks.wm.obs_mean", "blocks.wm.reward_std", "blocks.wm.fitted", "blocks.wm.cell.weight_ih"} \
        <= set(module.state_dict())


@pytest.mark.parametrize("change, message, line", [
    (("state s[5]", "state s[4]"), r"wm\(\): its first argument is the model's latent state \[h; z\] of "
                                   r"deter \+ stoch = 3 \+ 2 = 5 entries, got shape \[4\]", 6),
    (("hidden=8)", "hidden=8, reward=false)"), "wm.reward\\(\\): it was declared with reward=false", 7),
    (("wm.encode(obs)", "wm.encode(obs[0:2])"), "wm.filter\\(\\): its observation has 3 entries here and 2 elsewhere", 11),
    (("wm.encode(obs)", "wm.decode(obs)"), "no method 'decode'", 10),
    (("wm.filter(s, u, obs)", "wm.filter(obs)"), "filter takes the latent state, the action and the observation", 11),
    (("hidden=8)", "hidden=8, kind=ensemble)"), "option 'kind' given twice", 5),
    (("deter=3", "deter=0"), "'deter' must be an integer >= 1", 5),
])
def test_misuse_is_a_located_error(change, message, line):
    text = plan_text().replace(*change)
    assert text != plan_text()
    with pytest.raises(PlanError, match=message) as info:
        compiled(text)
    assert f"latent.plan:{line}:" in str(info.value) and "^" in str(info.value)


def test_methods_belong_to_latent_blocks_and_quadratic_solvers_reject_them():
    text = plan_text().replace("block wm = world_model(kind=latent, deter=3, stoch=2, hidden=8)",
                               "block wm = world_model(kind=latent, deter=3, stoch=2, hidden=8)\n"
                               "block f = mlp(in=5, out=1)").replace("+ u^2", "+ u^2 + f.reward(s)")
    with pytest.raises(PlanError, match=r"block 'f': a mlp block has no methods") as info:
        compiled(text)
    assert "latent.plan:8:" in str(info.value)
    with pytest.raises(PlanError) as info:
        compiled(plan_text("lqr"))
    assert "latent.plan:" in str(info.value) and "wm" in str(info.value)


# ------------------------------------------------------------------ trajectory sampling

def test_prior_sampling_is_per_row_and_seeded():
    torch.manual_seed(1)
    model = LatentWorldModel(obs=3, actions=1, deter=3, stoch=2, hidden=8).double()
    s = torch.randn(1, 5, dtype=torch.float64).expand(6, 5)
    u = torch.zeros(6, 1, dtype=torch.float64)
    mean = model(s, u)
    with latent_sampling([model], seed=7):
        first = model(s, u)
    with latent_sampling([model], seed=7):
        again = model(s, u)
    with latent_sampling([model], seed=8):
        other = model(s, u)
    assert first.shape == (6, 5)
    torch.testing.assert_close(first[:, :3], mean[:, :3])                 # h' is deterministic
    assert not torch.allclose(first[0, 3:], first[1, 3:])                 # each row draws its own z'
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)
    torch.testing.assert_close(model(s, u), mean, rtol=0, atol=0)         # outside: the prior's mean


def test_mppi_samples_latents_through_the_prior_and_the_plan_is_the_mean():
    module = compiled(plan_text("mppi(samples=8, iters=1, seed=3)"))
    model = module.blocks["wm"]
    s0 = torch.randn(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    env, x0, like = module.bind({"s": s0})
    problem, _ = module.backend._planner(env, like, 2)
    problem.rebind(env, like)
    x = x0.unsqueeze(1).expand(2, 8, 5)
    u = torch.linspace(-2, 2, 8, dtype=torch.float64).reshape(1, 8, 1).expand(2, 8, 1)
    nxt = problem.dynamics(x, u, 0)
    assert nxt.shape == (2, 8, 5)
    mean = model(x.reshape(16, 5), u.reshape(16, 1)).reshape(2, 8, 5)
    torch.testing.assert_close(nxt[..., :3], mean[..., :3])
    assert not torch.allclose(nxt[..., 3:], mean[..., 3:])
    torch.testing.assert_close(problem.dynamics(x, u, 0), nxt, rtol=0, atol=0)     # seeded by (seed, t)
    assert not torch.allclose(problem.dynamics(x, u, 1), nxt)                      # fresh noise each stage
    torch.testing.assert_close(problem.dynamics(x[:, :1], u[:, :1], 0), mean[:, :1])  # K = 1: the mean
    first, again = module(s=s0), module(s=s0)
    torch.testing.assert_close(first.u, again.u, rtol=0, atol=0)
    assert first.x.shape == (2, 5, 5) and first.u.shape == (2, 4, 1)
    other = compiled(plan_text("mppi(samples=8, iters=1, seed=4)"))
    other.load_state_dict(module.state_dict())
    assert not torch.allclose(other(s=s0).u, first.u)


# ------------------------------------------------------------------ gradients

@pytest.mark.parametrize("solver", [
    "ilqr(iters=100, tol=1e-12, model=newton)",
    "descent(iters=30, lr=0.05, backward=unroll)",
    "mppi(samples=16, iters=2, noise=0.5)",
])
def test_gradients_through_latent_dynamics_match_finite_differences(solver):
    module = compiled(plan_text(solver))
    weight = module.blocks["wm"].cell.weight_hh
    direction = torch.randn(weight.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    s0 = torch.tensor([0.3, -0.2, 0.1, 0.5, -0.4], dtype=torch.float64, requires_grad=True)
    ds = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def loss(start):
        sol = module(s=start)
        return sol.u.sum() + sol.cost.sum()

    g_weight, g_s = torch.autograd.grad(loss(s0), (weight, s0))
    h = 1e-6
    with torch.no_grad():
        weight.add_(h * direction)
        plus = loss(s0)
        weight.sub_(2 * h * direction)
        minus = loss(s0)
        weight.add_(h * direction)
        fd_weight = float((plus - minus) / (2 * h))
        fd_s = float((loss(s0 + h * ds) - loss(s0 - h * ds)) / (2 * h))
    assert float((g_weight * direction).sum()) == pytest.approx(fd_weight, rel=1e-4, abs=1e-7)
    assert float((g_s * ds).sum()) == pytest.approx(fd_s, rel=1e-4, abs=1e-7)


def test_the_model_step_passes_gradcheck():
    torch.manual_seed(2)
    model = LatentWorldModel(obs=3, actions=1, deter=3, stoch=2, hidden=4).double()
    s = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    u = torch.randn(2, 1, dtype=torch.float64, requires_grad=True)
    obs = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: model(a, b), (s, u))
    assert torch.autograd.gradcheck(lambda a, b: model.reward(a, b), (s, u))
    assert torch.autograd.gradcheck(lambda a, b, o: model.filter(a, b, o), (s, u, obs))
    cell = model.cell                                              # the written-out GRU is nn.GRUCell
    x, h = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(model._gru(x, h), cell(x, h))


# ------------------------------------------------------------------ training

def _held_out_loss(module, data) -> float:
    from planlang.latent_models import latent_windows
    from planlang.world_models import the_world_model

    batch = latent_windows(module, the_world_model(module), {k: torch.as_tensor(v) for k, v in data.items()}, 6)
    torch.manual_seed(0)
    with torch.no_grad():
        _, metrics = module.blocks["wm"].loss(batch["obs"], batch["actions"], batch["reward"])
    return float(metrics["mse"] + metrics["reward_mse"])


def test_training_on_sequences_reduces_held_out_error_and_round_trips(tmp_path):
    path = tmp_path / "train.npz"
    np.savez(path, **sequences(16, 20, seed=0))
    held = sequences(6, 20, seed=1)
    text = plan_text()
    plan = planlang.loads(text, str(tmp_path / "latent.plan"))
    module = compiled(text)
    module.blocks["wm"].fit_normalization(torch.as_tensor(held["x"]), torch.as_tensor(held["reward"]))
    before = _held_out_loss(module, held)
    config = TrainConfig(loss="model", loss_options={"steps": 6, "multistep_weight": 1.0}, lr=1e-2, epochs=12,
                         batch=32, seed=0, patience=12, progress=False, checkpoint=str(tmp_path / "ck.pt"))
    history = planlang.train(module, path, config, plan=plan)
    after = _held_out_loss(module, held)
    assert after < 0.6 * before
    assert history[-1]["val_mse"] < history[0]["val_mse"] and {"val_kl", "val_rollout_mse"} <= set(history[-1])
    reloaded = planlang.compile(plan, weights=tmp_path / "ck.pt", dtype=torch.float64)
    for key, value in module.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0)
    s0 = torch.randn(5, dtype=torch.float64)
    torch.testing.assert_close(reloaded(s=s0).u, module(s=s0).u, rtol=0, atol=0)


def test_sequence_data_must_fit_the_model():
    module = compiled(plan_text())
    data = sequences(2, 8, seed=0)
    with pytest.raises(TransitionsError, match="2 observation columns; latent world model 'wm' encodes observations of 3"):
        planlang.train(module, {**data, "x": data["x"][:, :2], "x_next": data["x_next"][:, :2]},
                       TrainConfig(loss="model", progress=False))
    with pytest.raises(TransitionsError, match="no 'reward' column"):
        planlang.train(module, {k: v for k, v in data.items() if k != "reward"}, TrainConfig(loss="model", progress=False))
    with pytest.raises(TransitionsError, match="no run of 9 consecutive transitions"):
        planlang.train(module, data, TrainConfig(loss="model", loss_options={"steps": 9}, progress=False))


def test_the_open_loop_term_is_the_prior_rollout_error():
    torch.manual_seed(0)
    model = LatentWorldModel(obs=3, actions=1, deter=3, stoch=2, hidden=8, likelihood_std=0.5).double().eval()
    data = {k: torch.as_tensor(v) for k, v in sequences(3, 5, seed=0).items()}
    obs = torch.cat([data["x"].reshape(3, 5, 3), data["x_next"].reshape(3, 5, 3)[:, -1:]], 1)
    actions, reward = data["u"].reshape(3, 5, 1), data["reward"].reshape(3, 5)
    plain, metrics = model.loss(obs, actions, reward)
    weighted, _ = model.loss(obs, actions, reward, open_loop_weight=2.0)
    h, z, _, _ = model.observe(obs, actions, sample=False)
    s, obs_sq, reward_sq = torch.cat([h[:, 0], z[:, 0]], -1), 0.0, 0.0
    for t in range(5):                                   # the docstring's L_ol, step by step
        reward_sq = reward_sq + (model.reward(s, actions[:, t]) - reward[:, t]).pow(2) / model.reward_std ** 2
        s = model(s, actions[:, t])
        obs_sq = obs_sq + ((model.decode(*s.split([3, 2], -1)) - obs[:, t + 1]) / model.obs_std).pow(2).sum(-1)
    expected = 0.5 * (obs_sq.mean() + reward_sq.mean()) / 5 / 0.25
    torch.testing.assert_close(weighted - plain, 2.0 * expected)
    assert float(metrics["rollout_mse"]) > 0


# ------------------------------------------------------------------ mbrl end to end

def test_mbrl_cli_end_to_end_on_a_tiny_budget(tmp_path, capsys):
    pytest.importorskip("gymnasium")
    plan = tmp_path / "latent.plan"
    plan.write_text(plan_text("mppi(samples=16, iters=1)").replace("steps 12", "steps 10"))
    out = tmp_path / "out.json"
    assert cli_main(["mbrl", str(plan), "--env", "Pendulum-v1", "--episodes", "2", "--seed", "0",
                     "--json", str(out), "-o", str(tmp_path / "ck.pt")]) == 0
    result = json.loads(out.read_text())
    assert len(result["returns"]) == 2 and all(np.isfinite(result["returns"]))
    assert result["episodes"][0]["policy"] == "random" and result["episodes"][1]["policy"] == "plan"
    assert result["episodes"][1]["transitions"] == 20
    reloaded = planlang.compile(planlang.load(plan), weights=tmp_path / "ck.pt")
    assert bool(reloaded.blocks["wm"].fitted)
    assert "returns" in capsys.readouterr().out
