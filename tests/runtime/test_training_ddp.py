"""Data-parallel training: 2 processes (gloo, CPU) end with the same weights as 1 process on the
same global batch, in float64, through a compiled plan's implicit LQR backward."""
from __future__ import annotations

import torch

import planlang
from planlang.cli_train import train_job
from planlang.training import generate_demos
from runtime.demos import save_demos
from runtime.distributed import launch
from runtime.training import TrainConfig

PLAN = "examples/double_integrator.plan"


def _job(tmp_path, name: str, data) -> dict:
    config = TrainConfig(epochs=3, batch=8, lr=0.05, validation=0.25, seed=0, progress=False, data=str(data),
                         checkpoint=str(tmp_path / f"{name}.pt"))
    return {"plan": PLAN, "config": config.to_dict(), "resume": None, "dtype": "float64",
            "summary": str(tmp_path / f"{name}.json")}


def test_two_processes_match_one_process(tmp_path):
    teacher = planlang.compile(planlang.load(PLAN), dtype=torch.float64)
    with torch.no_grad():
        teacher.learnables["q"].copy_(torch.log(torch.expm1(torch.tensor([4.0, 0.5], dtype=torch.float64))))
    data = tmp_path / "demos.npz"
    save_demos(data, generate_demos(teacher, 20, noise=0.01, seed=0))      # 15 train: a last minibatch of 7

    train_job(_job(tmp_path, "one", data))
    launch(2, train_job, _job(tmp_path, "two", data), backend="gloo", start_method="fork")   # fork: no re-imports

    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert one["epoch"] == two["epoch"] == 3
    start = planlang.compile(planlang.load(PLAN), dtype=torch.float64).state_dict()
    gap = max((two["state_dict"][k] - v).abs().max().item() for k, v in one["state_dict"].items())
    print(f"largest weight difference, 2 processes vs 1: {gap:.2e}")
    for name, value in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][name], value, rtol=0, atol=1e-6)
    assert not torch.allclose(one["state_dict"]["learnables.q"], start["learnables.q"])      # it trained
    for a, b in zip(one["history"], two["history"]):
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-9 * max(1.0, abs(a["train_loss"]))
