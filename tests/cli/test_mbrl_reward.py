"""`planlang mbrl` with a learned reward in the cost (`world_model(..., reward=true)`,
`cost stage = -dyn.reward(x, u)`), end to end on a tiny budget, in process."""
from __future__ import annotations

import json

import pytest
import torch

import planlang
from planlang.cli import main

PLAN = """plan tiny_reward_wm
horizon 5
state x[2] = [3.0, 0.0]
control u in [-2, 2]
block dyn = world_model(kind=ensemble, hidden=[16], members=2, angles=[0], reward=true)
dynamics x' = dyn(x, u)
cost stage = -dyn.reward(x, u)
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


def test_mbrl_fits_and_plans_with_the_learned_reward(tmp_path, capsys):
    pytest.importorskip("gymnasium")
    plan_file = tmp_path / "tiny.plan"
    plan_file.write_text(PLAN)
    out_json, ckpt = tmp_path / "out.json", tmp_path / "wm.pt"
    assert main(["mbrl", str(plan_file), "--env", "Pendulum-v1", "--episodes", "2", "--seed", "5",
                 "--json", str(out_json), "-o", str(ckpt)]) == 0
    result = json.loads(out_json.read_text())
    assert len(result["returns"]) == 2 and all(r < 0 for r in result["returns"])
    first = result["episodes"][0]
    assert first["fit_epochs"] >= 1 and 0 < first["val_reward_mse"] < float("inf")
    assert "reward mse" in capsys.readouterr().out
    module = planlang.compile(planlang.load(plan_file), weights=ckpt)
    block = module.blocks["dyn"]
    assert float(block.reward_std) > 0.1                          # fitted from Pendulum's rewards
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    upright, down = block.reward(x, torch.zeros(2, 1)).tolist()
    assert upright > down                                         # it learned that upright pays more


def test_mbrl_shows_each_episode_to_on_data_before_the_refit(tmp_path):
    pytest.importorskip("gymnasium")
    from planlang.mbrl import mbrl

    seen = []

    def on_data(module, part, data):
        seen.append((part["x"].shape[0], data["x"].shape[0], float(module.blocks["dyn"].reward_std)))

    plan_file = tmp_path / "tiny.plan"
    plan_file.write_text(PLAN)
    result = mbrl(planlang.load(plan_file), "Pendulum-v1", episodes=2, seed=1, on_data=on_data)
    assert [(p, d) for p, d, _ in seen] == [(20, 20), (20, 40)]
    assert seen[0][2] == 1.0 and seen[1][2] != 1.0           # the second episode was played by a fitted model
    assert len(result["returns"]) == 2


def test_a_resumed_run_plays_the_episodes_the_whole_run_plays(tmp_path):
    """resume=(k, weights, data) from `on_data` after episode k: the same later returns."""
    pytest.importorskip("gymnasium")
    import copy

    from planlang.mbrl import mbrl

    plan = planlang.loads(PLAN, "tiny.plan")
    saved = {}

    def keep(module, part, data):
        saved[part["episode"].max().item() + 1] = (copy.deepcopy(module.state_dict()), data)

    whole = mbrl(plan, "Pendulum-v1", episodes=3, seed=2, on_data=keep)
    weights, data = saved[2]
    resumed = mbrl(plan, "Pendulum-v1", episodes=3, seed=2, resume=(2, weights, data))
    assert resumed["returns"] == whole["returns"][2:]
    with pytest.raises(ValueError, match="nothing to continue"):
        mbrl(plan, "Pendulum-v1", episodes=2, seed=2, resume=(2, weights, data))
