"""`planlang train` on grid plans (`solve vin`) end to end on a tiny data set, in process through
`planlang.cli.main`: `planlang data gridworld` -> `planlang train` (the train block's VIN settings)
-> the checkpoint loads with `planlang.compile(plan, weights=)` and `planlang run --weights`."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

import planlang
from planlang import cli_train
from planlang.cli import main as planlang_main
from planlang.training import GRID_TRAIN_DEFAULTS, CheckpointError, plan_train_config, read_checkpoint
from runtime.demos import DemoError
from runtime.gridworld import GridworldData
from runtime.vin_training import imitation_loss, map_batches

ROOT = Path(__file__).resolve().parents[2]
PLAN = ROOT / "examples" / "vin_8x8.plan"


def planlang_cmd(*args) -> int:
    return planlang_main([str(a) for a in args])


def error_of(capsys, *args) -> str:
    """The message of a `planlang` command that must fail (exit code 2: bad input; no traceback)."""
    capsys.readouterr()
    assert planlang_cmd(*args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("grid") / "tiny.npz"
    assert planlang_cmd("data", "gridworld", "--size", 8, "--maps", 2, "--seed", 0, "-o", path) == 0
    return path


def _loss_on(module, data: GridworldData) -> float:
    with torch.no_grad():
        loss, _ = imitation_loss(module.planner, map_batches(data))
    return float(loss)


def test_train_lowers_the_loss_and_the_checkpoint_loads(tiny, tmp_path, capsys):
    ckpt = tmp_path / "vin.pt"
    assert planlang_cmd("train", PLAN, "--data", tiny, "--epochs", 1, "--batch", 2, "--lr", 0.002, "-o", ckpt,
                        "--quiet") == 0
    out = capsys.readouterr().out
    assert "loss      imitation  (rmsprop, lr 0.002, batch 2" in out and "VIN = 3260 weights" in out

    plan, data = planlang.load(PLAN), GridworldData.load(tiny)
    torch.manual_seed(0)                       # the train block's seed: the run's initial weights
    before = planlang.compile(plan)
    after = planlang.compile(plan, weights=ckpt)
    assert _loss_on(after, data) < _loss_on(before, data)
    state = read_checkpoint(ckpt, plan)
    assert state["epoch"] == 1 and 0 <= state["history"][0]["train_accuracy"] <= 1

    sol = after(occupancy=torch.as_tensor(data.maps, dtype=torch.float32), goal=torch.as_tensor(data.goals),
                start=torch.as_tensor(data.starts[:, 0]))
    assert sol.values.shape == (2, 8, 8) and sol.logits.shape == (2, 8) and sol.reached.shape == (2,)
    assert planlang_cmd("run", PLAN, "--weights", ckpt) in (0, 1)      # 1: the greedy path failed
    assert "reached" in capsys.readouterr().out


def test_init_starts_a_new_stage_from_the_weights(tiny, tmp_path, capsys):
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    common = ["train", PLAN, "--data", tiny, "--batch", 2, "--quiet"]
    assert planlang_cmd(*common, "--epochs", 1, "-o", first) == 0
    assert planlang_cmd(*common, "--epochs", 1, "--lr", 0.001, "--init", first, "-o", second) == 0
    plan = planlang.load(PLAN)
    a, b = read_checkpoint(first, plan), read_checkpoint(second, plan)
    assert b["epoch"] == 1 and b["config"]["lr"] == 0.001
    assert b["optimizer"]["param_groups"][0]["lr"] == 0.001      # a fresh optimizer, not the first stage's
    moved = [not torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"] if k.startswith("planner.")]
    assert moved and any(moved)
    assert "resume (continue a run) or init" in error_of(capsys, *common, "--init", first, "--resume", first)


def test_the_train_block_of_a_grid_plan():
    config = plan_train_config(planlang.load(PLAN))
    assert (config.optimizer, config.lr, config.batch, config.epochs, config.validation, config.loss) == \
        ("rmsprop", 0.005, 12, 30, 0.0, "imitation")
    assert Path(config.data) == PLAN.parent / "gridworld_8x8.npz"
    bare = planlang.loads(PLAN.read_text().split("train {")[0])
    defaults = plan_train_config(bare)
    assert {k: getattr(defaults, k) for k in GRID_TRAIN_DEFAULTS} == GRID_TRAIN_DEFAULTS


def test_the_command_line_reads_the_blocks_data_path_relative_to_the_plan(monkeypatch):
    monkeypatch.chdir(ROOT)
    parser = argparse.ArgumentParser()
    cli_train.add_parsers(parser.add_subparsers())
    args = parser.parse_args(["train", "examples/vin_8x8.plan"])
    assert cli_train.train_config(planlang.load(args.file), args).data == str(Path("examples") / "gridworld_8x8.npz")


def test_data_that_does_not_fit_the_plan_is_refused(tiny, tmp_path, capsys):
    train = ["train", PLAN, "--quiet", "--data"]
    assert "maps of 8 x 8; plan 'vin_16x16' is a 16 x 16 grid" in \
        error_of(capsys, "train", ROOT / "examples" / "vin_16x16.plan", "--quiet", "--data", tiny)
    four = tmp_path / "four.plan"
    four.write_text(PLAN.read_text().replace("actions 8", "actions 4"))
    assert "moves in 8 directions; plan 'vin_8x8' has actions 4" in error_of(capsys, "train", four, "--quiet", "--data", tiny)
    (tmp_path / "text.npz").write_text("hello")
    assert "not a grid-world data set" in error_of(capsys, *train, tmp_path / "text.npz")
    np.savez(tmp_path / "demos.npz", x0=np.zeros((1, 2)))
    assert "not a grid-world data set from `planlang data gridworld` (missing arrays maps" in \
        error_of(capsys, *train, tmp_path / "demos.npz")
    assert "no such grid-world data file" in error_of(capsys, *train, tmp_path / "absent.npz")
    assert "a grid plan learns by imitation" in error_of(capsys, *train, tiny, "--loss", "nll")


def test_a_grid_checkpoint_is_refused_by_another_plan(tiny, tmp_path):
    ckpt = tmp_path / "vin.pt"
    assert planlang_cmd("train", PLAN, "--data", tiny, "--epochs", 1, "-o", ckpt, "--quiet") == 0
    edited = planlang.loads(PLAN.read_text().replace("solve vin(k=10", "solve vin(k=11"))
    with pytest.raises(CheckpointError, match="different plan"):
        planlang.compile(edited, weights=ckpt)
