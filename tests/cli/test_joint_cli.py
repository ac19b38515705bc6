"""`planlang data interactions` and `planlang train` of a joint plan end to end on tiny data
(in-process through `planlang.cli.main`): the file follows the documented format, its ground truth
is collision-free, and the trained weights load with `planlang.compile(weights=...)`."""
from __future__ import annotations

import numpy as np
import torch

import planlang
from planlang.cli import main
from runtime.joint_energies import min_distance

PLAN = """plan tiny_swap
agents 2
const dt = 0.5
horizon 8
state x[4]
control u[2]
input goal[2]
learn w_u = 1.0 positive
learn w_near = 1.0 positive
dynamics x' = [x[0] + dt * x[2] + 0.5 * dt^2 * u[0], x[1] + dt * x[3] + 0.5 * dt^2 * u[1],
               x[2] + dt * u[0], x[3] + dt * u[1]]
cost stage = dt * sum(u^2)
cost final = 100 * sum((x[0:2] - goal)^2) + 100 * sum(x[2:4]^2)
energy agent = w_u * dt * sum(u^2)
energy pair = 1000 * relu(1.4 - norm(x[0:2] - other.x[0:2])) + w_near * relu(2 - norm(x[0:2] - other.x[0:2]))
solve joint(proposals=lattice(levels=3, spread=1.5), inference=bp(iters=5))
train {
  data "swap.npz"
  loss classification
  epochs 2
  batch 2
  validation 0
}
"""


def test_interactions_data_and_joint_training_end_to_end(tmp_path, capsys, monkeypatch):
    (tmp_path / "sub").mkdir()
    data = tmp_path / "sub" / "swap.npz"
    assert main(["data", "interactions", "--scene", "corridor_swap", "--agents", "2", "--n", "3", "--seed", "1",
                 "--horizon", "8", "--dt", "0.5", "-o", str(data)]) == 0
    assert "3 corridor_swap scenes of 2 agents (T=8, dt=0.5)" in capsys.readouterr().out
    with np.load(data) as archive:
        assert {"x0", "goals", "x", "u", "dt", "scene", "seed"} <= set(archive.files)
        x, u = torch.from_numpy(archive["x"]), torch.from_numpy(archive["u"])
        assert x.shape == (3, 2, 9, 4) and u.shape == (3, 2, 8, 2) and float(archive["dt"]) == 0.5
        assert torch.equal(x[:, :, 0], torch.from_numpy(archive["x0"]))
    assert (min_distance(x) >= 1.0).all()

    plan_path = tmp_path / "sub" / "tiny_swap.plan"
    plan_path.write_text(PLAN)
    weights = tmp_path / "tiny.pt"
    monkeypatch.chdir(tmp_path)              # the train block's data path is relative to the plan file
    assert main(["train", "sub/tiny_swap.plan", "-o", str(weights), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "loss      classification" in out and "epochs    2" in out
    module = planlang.compile(planlang.load(plan_path), weights=weights)
    assert not torch.allclose(module.learned("w_u"), torch.tensor(1.0))        # trained: moved from the init
    with np.load(data) as archive:
        sol = module(x=torch.from_numpy(archive["x0"]).float(), goal=torch.from_numpy(archive["goals"]).float())
    assert sol.x.shape == (3, 2, 9, 4)


def test_training_data_must_fit_the_plan(tmp_path, capsys):
    data = tmp_path / "wrong.npz"
    assert main(["data", "interactions", "--scene", "corridor_swap", "--agents", "2", "--n", "1", "--seed", "2",
                 "--horizon", "10", "--dt", "0.5", "-o", str(data)]) == 0
    plan_path = tmp_path / "tiny_swap.plan"
    plan_path.write_text(PLAN)
    code = main(["train", str(plan_path), "--data", str(data), "-o", str(tmp_path / "w.pt"), "--quiet"])
    assert code != 0
    assert "(generate with --horizon 8)" in capsys.readouterr().err
