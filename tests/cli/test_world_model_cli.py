"""World models from the command line, in process (`planlang.cli.main`): `planlang train` fits a
world-model block from a transitions file and writes a checkpoint that `compile(weights=)`
loads; bad transition files are refused with one clear line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import planlang
from planlang.cli import main

PLAN = """plan wm_cli
horizon 5
state x[2] = [1.0, 0.0]
control u in [-1, 1]
block dyn = world_model(kind=ensemble, hidden=[16], members=2)
dynamics x' = dyn(x, u)
cost stage = sum(x^2) + 0.1 * u^2
solve mppi(samples=16)
train {
  data "transitions.npz"
  loss model(steps=2)
  optimizer adam(lr=0.01)
  epochs 15
  batch 32
}
"""


def linear_transitions(rows: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    x, u = rng.normal(size=(rows, 2)), rng.uniform(-1, 1, (rows, 1))
    x_next = x @ np.array([[1.0, 0.1], [0.0, 0.95]]).T + np.array([[0.0, 0.1]]) * u
    return {"x": x, "u": u, "x_next": x_next}


def test_train_fits_the_world_model_and_writes_a_loadable_checkpoint(tmp_path, capsys):
    plan_file = tmp_path / "wm.plan"
    plan_file.write_text(PLAN)
    np.savez(tmp_path / "transitions.npz", **linear_transitions(200, 0))
    assert main(["train", str(plan_file), "-o", str(tmp_path / "wm.pt"), "--quiet", "--option", "steps=1"]) == 0
    out = capsys.readouterr().out
    assert "loss      model" in out and "weights" in out
    module = planlang.compile(planlang.load(plan_file), weights=tmp_path / "wm.pt", dtype=torch.float64)
    held = {k: torch.as_tensor(v) for k, v in linear_transitions(50, 1).items()}
    fresh = planlang.compile(planlang.load(plan_file), dtype=torch.float64)
    with torch.no_grad():
        errors = [float((m.step(held["x"], held["u"]) - held["x_next"]).pow(2).mean()) for m in (fresh, module)]
    assert errors[1] < 0.2 * errors[0]


def test_bad_transition_files_are_refused_in_one_line(tmp_path, capsys):
    plan_file = tmp_path / "wm.plan"
    plan_file.write_text(PLAN)
    data = linear_transitions(20, 0)
    del data["x_next"]
    np.savez(tmp_path / "transitions.npz", **data)
    assert main(["train", str(plan_file), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "missing 'x_next'" in err and "Traceback" not in err
    (tmp_path / "transitions.npz").write_text("garbage")
    assert main(["train", str(plan_file), "--quiet"]) == 2
    assert "not a readable .npz archive" in capsys.readouterr().err


TINY_PENDULUM = """plan tiny_pendulum_wm
horizon 5
state x[2] = [3.0, 0.0]
control u in [-2, 2]
block dyn = world_model(kind=ensemble, hidden=[16], members=2, angles=[0])
dynamics x' = dyn(x, u)
cost stage = wrap(x[0])^2 + 0.1 * x[1]^2 + 0.001 * u^2
env "Pendulum-v1" {
  observe obs[3]
  state = [atan2(obs[1], obs[0]), obs[2]]
  steps 20
}
train {
  loss model(steps=2)
  optimizer adam(lr=0.01)
  epochs 3
  batch 32
}
solve mppi(samples=16, noise=1.0)
"""


def test_collect_from_a_gymnasium_environment_and_from_the_plan_itself(tmp_path, capsys):
    pytest.importorskip("gymnasium")
    plan_file = tmp_path / "tiny.plan"
    plan_file.write_text(TINY_PENDULUM)
    out = tmp_path / "env.npz"
    assert main(["collect", str(plan_file), "--env", "--steps", "30", "--seed", "3", "-o", str(out)]) == 0
    assert "40 transitions in 2 episodes from environment Pendulum-v1" in capsys.readouterr().out
    with np.load(out) as data:
        assert data["x"].shape == (40, 2) and data["u"].shape == (40, 1) and data["reward"].shape == (40,)
        np.testing.assert_allclose(data["x_next"][:19], data["x"][1:20])
        assert data["done"].tolist() == ([False] * 19 + [True]) * 2
        assert np.all(np.abs(data["x"][:, 0]) <= np.pi) and np.all(np.abs(data["u"]) <= 2)
        reward = -(data["x"][:, 0] ** 2 + 0.1 * data["x"][:, 1] ** 2 + 0.001 * data["u"][:, 0] ** 2)
        np.testing.assert_allclose(data["reward"], reward, rtol=1e-4, atol=1e-4)   # states are the env's
    simulated = tmp_path / "plan.npz"
    assert main(["collect", "examples/pendulum_mppi.plan", "--steps", "40", "--episode-steps", "10",
                 "--range", "th=-3:3", "-o", str(simulated)]) == 0
    with np.load(simulated) as data:
        assert data["x"].shape == (40, 2) and sorted(data.files) == ["done", "episode", "u", "x", "x_next"]
        th, thdot = data["x"][:, 0], data["x"][:, 1]
        thdot_next = np.clip(thdot + (15 * np.sin(th) + 3 * data["u"][:, 0]) * 0.05, -8, 8)
        np.testing.assert_allclose(data["x_next"][:, 1], thdot_next, rtol=1e-9)


def test_mbrl_end_to_end_on_a_tiny_budget(tmp_path, capsys):
    pytest.importorskip("gymnasium")
    plan_file = tmp_path / "tiny.plan"
    plan_file.write_text(TINY_PENDULUM)
    out_json, ckpt, png = tmp_path / "out.json", tmp_path / "wm.pt", tmp_path / "returns.png"
    assert main(["mbrl", str(plan_file), "--env", "Pendulum-v1", "--episodes", "2", "--seed", "5",
                 "--json", str(out_json), "-o", str(ckpt), "--plot", str(png)]) == 0
    result = json.loads(out_json.read_text())
    assert len(result["returns"]) == 2 and all(isinstance(r, float) and r < 0 for r in result["returns"])
    assert [e["policy"] for e in result["episodes"]] == ["random", "plan"]
    assert result["episodes"][0]["fit_epochs"] >= 1
    assert png.read_bytes().startswith(b"\x89PNG")
    module = planlang.compile(planlang.load(plan_file), weights=ckpt)
    assert bool(module.blocks["dyn"].fitted)
    assert "episode   2  plan" in capsys.readouterr().out


def test_mbrl_needs_a_model_loss(tmp_path):
    plan_file = tmp_path / "tiny.plan"
    plan_file.write_text(TINY_PENDULUM.replace("loss model(steps=2)", "loss imitation"))
    assert main(["mbrl", str(plan_file), "--episodes", "1"]) == 2


def test_collect_from_the_plan_with_its_own_solver_records_inputs(tmp_path):
    out = tmp_path / "plan.npz"
    plan_file = tmp_path / "pend.plan"
    plan_file.write_text(open("examples/pendulum_mppi.plan").read().replace("const m = 1.0", "input m = 1.0")
                         .replace("samples=100", "samples=16"))
    assert main(["collect", str(plan_file), "--steps", "6", "--episode-steps", "3", "--policy", "plan",
                 "--range", "m=0.5:2", "--seed", "1", "-o", str(out)]) == 0
    with np.load(out) as data:
        assert data["input_m"].shape == (6,) and np.all((0.5 <= data["input_m"]) & (data["input_m"] <= 2))
        assert data["input_m"][0] == data["input_m"][2] != data["input_m"][3]       # one mass per episode
        assert np.all(np.abs(data["u"]) <= 2)
        m, th, thdot = data["input_m"], data["x"][:, 0], data["x"][:, 1]
        thdot_next = np.clip(thdot + (15 * np.sin(th) + 3 / m * data["u"][:, 0]) * 0.05, -8, 8)
        np.testing.assert_allclose(data["x_next"][:, 1], thdot_next, rtol=1e-9)
    with pytest.raises(SystemExit):
        main(["collect", str(plan_file), "--steps", "6", "--policy", "greedy", "-o", str(out)])


def test_random_actions_are_seeded_uniform_and_held():
    from types import SimpleNamespace

    from planlang.mbrl import random_controller

    space = SimpleNamespace(low=np.array([-2.0, 0.0]), high=np.array([2.0, 1.0]))
    act = random_controller(space, seed=3, dtype=torch.float64, hold=4)
    actions = torch.stack([act(torch.zeros(3)) for _ in range(12)])
    assert torch.equal(actions[0], actions[3]) and not torch.equal(actions[3], actions[4])
    assert torch.equal(actions[4], actions[7]) and not torch.equal(actions[7], actions[8])
    assert bool(((actions >= torch.tensor([-2.0, 0.0])) & (actions <= torch.tensor([2.0, 1.0]))).all())
    again = random_controller(space, seed=3, dtype=torch.float64, hold=4)
    torch.testing.assert_close(torch.stack([again(torch.zeros(3)) for _ in range(12)]), actions)
