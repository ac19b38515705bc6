"""World models from the command line, in process (`planlang.cli.main`): `planlang train` fits a
world-model block from a transitions file and writes a checkpoint that `compile(weights=)`
loads; bad transition files are refused with one clear line."""
from __future__ import annotations

import numpy as np
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
    assert "not a NumPy .npz archive" in capsys.readouterr().err
