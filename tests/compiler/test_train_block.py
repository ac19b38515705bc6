"""`train { ... }` settings: parsed by a typed schema into TrainConfig fields, with located errors."""
from __future__ import annotations

from pathlib import Path

import pytest

import planlang
from planlang.errors import PlanError
from planlang.training import plan_train_config

ROOT = Path(__file__).resolve().parents[2]
BASE = (ROOT / "examples" / "robot_obstacle.plan").read_text()


def with_train(body: str) -> str:
    head = BASE[:BASE.index("train {")]
    return head + "train {\n" + body + "}\n"


def test_train_block_maps_onto_the_training_config(tmp_path):
    path = tmp_path / "robot.plan"
    path.write_text(with_train('  data "d.npz"\n  loss nll(negatives=langevin(steps=5), samples=4)\n'
                               '  optimizer sgd(lr=0.5)\n  epochs 3\n  batch 2\n  validation 0.5\n  dagger 2\n'
                               '  teacher "t.plan"\n'))
    config = plan_train_config(planlang.load(path))
    assert (config.loss, config.optimizer, config.lr, config.epochs, config.batch) == ("nll", "sgd", 0.5, 3, 2)
    assert config.loss_options == {"negatives": {"name": "langevin", "steps": 5, "step_size": 0.01, "noise": 0.1},
                                   "samples": 4, "temperature": 1.0}
    assert config.data == str(tmp_path / "d.npz") and config.teacher == str(tmp_path / "t.plan")
    assert config.dagger_rounds == 2 and config.validation == 0.5


@pytest.mark.parametrize("body, message", [
    ("  loss max_margine\n", "train setting 'loss' must be one of"),
    ("  epoch 3\n", "unknown train setting 'epoch'"),
    ("  optimizer adam(lr=-1)\n", "option 'lr' must be a number"),
    ("  data demos.npz\n", "must be a string in double quotes"),
])
def test_bad_train_settings_are_located(body, message):
    text = with_train(body)
    with pytest.raises(PlanError) as info:
        plan_train_config(planlang.loads(text, "robot.plan"))
    d = info.value.diagnostics[0]
    assert message in d.message and d.span.line == text.count("\n", 0, text.index(body.strip().split()[0] + " ")) + 1
