"""`planlang.train` on compiled plans: DAgger with a teacher plan, and its argument errors."""
from __future__ import annotations

import pytest
import torch

import planlang
from planlang.training import dagger_collector, generate_demos
from runtime.training import TrainConfig

PLAN = "examples/double_integrator.plan"


def _teacher():
    teacher = planlang.compile(planlang.load(PLAN), dtype=torch.float64)
    with torch.no_grad():
        teacher.learnables["q"].copy_(torch.log(torch.expm1(torch.tensor([4.0, 0.5], dtype=torch.float64))))
    return teacher


def test_dagger_collector_labels_the_learners_visited_states_with_the_teacher():
    teacher = _teacher()
    learner = planlang.compile(planlang.load(PLAN), dtype=torch.float64)
    demos = generate_demos(teacher, 4, seed=0)
    labels = dagger_collector(teacher, steps=3)(learner, demos)
    assert labels["x0"].shape == (12, 2) and labels["x"].shape == (12, 31, 2) and labels["u"].shape == (12, 30, 1)
    with torch.no_grad():
        visited = learner.simulate(3, x=demos["x0"]).x[:, 1:].reshape(12, 2)
        torch.testing.assert_close(labels["x0"], visited)
        torch.testing.assert_close(labels["u"], teacher(x=visited).u)


def test_dagger_rounds_aggregate_and_train():
    teacher = _teacher()
    learner = planlang.compile(planlang.load(PLAN), dtype=torch.float64)
    demos = generate_demos(teacher, 6, seed=0)
    config = TrainConfig(epochs=2, batch=8, lr=0.1, validation=0, dagger_rounds=2, dagger_steps=2, progress=False)
    history = planlang.train(learner, demos, config, teacher=teacher)
    assert [r["examples"] for r in history] == [6, 6, 18, 18, 30, 30]
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_train_argument_errors(tmp_path):
    plan = planlang.load(PLAN)
    module = planlang.compile(plan, dtype=torch.float64)
    demos = generate_demos(module, 4, seed=0)
    with pytest.raises(ValueError, match="needs plan="):
        planlang.train(module, demos, TrainConfig(checkpoint=str(tmp_path / "c.pt"), progress=False))
    with pytest.raises(ValueError, match="needs a teacher plan"):
        planlang.train(module, demos, TrainConfig(dagger_rounds=1, progress=False))
    frozen = planlang.compile(planlang.loads(plan.source.text.replace("learn q[2] = [1, 1] positive", "param q[2] = [1, 1]")
                                             .replace("learn r = 0.1 positive", "param r = 0.1")))
    with pytest.raises(ValueError, match="no learnables"):
        planlang.train(frozen, demos, TrainConfig(progress=False))
