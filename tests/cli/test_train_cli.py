"""`planlang demos` and `planlang train` end to end on a tiny dataset, through the handlers of
planlang.cli_train (in-process; planlang.cli hooks them in): demos -> train -> resume -> load the
weights; bad data files and a checkpoint for another plan are refused with clear messages."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

import planlang
from planlang import cli_train
from planlang.training import CheckpointError, load_weights, read_checkpoint
from runtime.demos import DemoError

PLAN = "examples/double_integrator.plan"
OTHER = "examples/point_mass_2d.plan"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def planlang_cmd(*args) -> int:
    parser = argparse.ArgumentParser(prog="planlang")
    cli_train.add_parsers(parser.add_subparsers(dest="verb", required=True))
    parsed = parser.parse_args([str(a) for a in args])
    return parsed.handler(parsed)


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    path = tmp_path_factory.mktemp("demos") / "demos.npz"
    assert planlang_cmd("demos", PLAN, "--n", 12, "--noise", 0.05, "--seed", 3, "--range", "x=-2:2", "-o", path) == 0
    return path


def test_demos_follow_the_format_and_ranges(demos, capsys):
    with np.load(demos) as archive:
        assert sorted(archive.files) == ["u", "x", "x0"]
        x0, x, u = archive["x0"], archive["x"], archive["u"]
    assert x0.shape == (12, 2) and x.shape == (12, 31, 2) and u.shape == (12, 30, 1)
    assert (x0 >= -2).all() and (x0 <= 2).all() and np.allclose(x[:, 0], x0)
    teacher = planlang.compile(planlang.load(PLAN), dtype=torch.float64)
    clean = teacher(x=torch.from_numpy(x0)).u.detach().numpy()
    assert 0.02 < np.std(u - clean) < 0.08                       # the executed controls carry noise 0.05


def test_train_resume_and_load_weights(demos, tmp_path, capsys):
    ckpt, log, plot = tmp_path / "w.pt", tmp_path / "log.json", tmp_path / "curves.png"
    common = ["train", PLAN, "--data", demos, "--batch", 4, "--lr", 0.1, "--quiet", "--json", log]
    assert planlang_cmd(*common, "--epochs", 2, "-o", ckpt, "--plot", plot) == 0
    out = capsys.readouterr().out
    assert "epochs    2" in out and "learned   q = [" in out and str(ckpt) in out
    assert plot.read_bytes()[:8] == PNG_MAGIC
    assert planlang_cmd(*common, "--epochs", 4, "-o", ckpt, "--resume", ckpt) == 0
    history = json.loads(log.read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]

    plan = planlang.load(PLAN)
    module = load_weights(planlang.compile(plan, dtype=torch.float64), ckpt, plan)
    state = read_checkpoint(ckpt, plan)
    assert state["epoch"] == 4 and state["plan_text"] == plan.source.text
    torch.testing.assert_close(module.state_dict()["learnables.q"], state["state_dict"]["learnables.q"])
    assert not torch.allclose(module.learned("q"), planlang.compile(plan, dtype=torch.float64).learned("q"))


def test_max_margin_and_nll_from_the_command_line(demos, capsys):
    for loss, options in (("max_margin", ["--option", "margin=0.1", "--option", "samples=2"]),
                          ("nll", ["--option", "negatives=perturbation", "--option", "samples=3"])):
        assert planlang_cmd("train", PLAN, "--data", demos, "--loss", loss, *options, "--epochs", 1, "--quiet") == 0
        assert f"loss      {loss}" in capsys.readouterr().out


def test_checkpoint_for_another_plan_is_refused(demos, tmp_path):
    ckpt = tmp_path / "w.pt"
    assert planlang_cmd("train", PLAN, "--data", demos, "--epochs", 1, "--quiet", "-o", ckpt) == 0
    other = planlang.load(OTHER)
    with pytest.raises(CheckpointError, match="trained for a different plan .'double_integrator'"):
        load_weights(planlang.compile(other), ckpt, other)
    edited = planlang.loads(planlang.load(PLAN).source.text.replace("horizon 30", "horizon 31"))
    with pytest.raises(CheckpointError, match="different plan"):
        load_weights(planlang.compile(edited), ckpt, edited)
    with pytest.raises(CheckpointError, match="different plan"):
        planlang_cmd("train", OTHER, "--data", demos, "--epochs", 1, "--quiet", "--resume", ckpt)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a planlang checkpoint"):
        read_checkpoint(junk, planlang.load(PLAN))


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("u"), "missing 'u'"),
    (lambda d: d.update(input_gaol=np.zeros((12, 2))), "'input_gaol' names no input or param"),
    (lambda d: d.update(states=d.pop("x")), "missing 'x'"),
    (lambda d: d.update(extra=np.zeros(12)), "unexpected key"),
    (lambda d: d.update(input_goal=np.zeros((12, 3))), r"'input_goal' has shape \(12, 3\); expected \(N, 2\)"),
    (lambda d: d.update(u=d["u"][:, :20]), "'x' has 31 steps and 'u' 20"),
    (lambda d: d.update(u=np.concatenate([d["u"], d["u"]], axis=2)), "2 controls per step; plan 'double_integrator' has m = 1"),
    (lambda d: d.update(x=d["x"][:, :11], u=d["u"][:, :10]), "horizon 10 .* has horizon 30"),
    (lambda d: d["x"].__setitem__((3, 5, 0), np.nan), r"'x' has NaN or Inf values \(demonstration\(s\) \[3\]"),
    (lambda d: d.update(x0=d["x0"][:5]), "disagree on the number of demonstrations"),
    (lambda d: d.update(x0=d["x0"] + 1), "differs from x0"),
])
def test_bad_data_files_give_clear_errors(demos, tmp_path, change, message):
    with np.load(demos) as archive:
        arrays = {k: archive[k].copy() for k in archive.files}
    change(arrays)
    bad = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DemoError, match=message):
        planlang_cmd("train", PLAN, "--data", bad, "--epochs", 1, "--quiet")


def test_unreadable_and_missing_data_files(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DemoError, match="not a readable .npz archive"):
        planlang_cmd("train", PLAN, "--data", tmp_path / "text.npz", "--quiet")
    with pytest.raises(DemoError, match="no such demonstrations file"):
        planlang_cmd("train", PLAN, "--data", tmp_path / "absent.npz", "--quiet")
    with pytest.raises(ValueError, match="no demonstrations: give --data"):
        planlang_cmd("train", PLAN, "--quiet")


def test_demos_range_errors(tmp_path):
    with pytest.raises(ValueError, match="--range expects NAME=LO:HI"):
        planlang_cmd("demos", PLAN, "--range", "x=2:1", "-o", tmp_path / "d.npz")
    with pytest.raises(ValueError, match="no state, input or param of that name"):
        planlang_cmd("demos", PLAN, "--range", "y=0:1", "-o", tmp_path / "d.npz")
