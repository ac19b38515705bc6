"""`train { ... }`: the settings of `planlang train`, checked by a typed schema.

    train {
      data "demos.npz"                          # demonstrations (relative to the plan file)
      loss imitation                            # | max_margin(margin=1) | nll(negatives=langevin(steps=20))
                                                # | model(steps=3, multistep_weight=1): fit a world_model block
      optimizer adam(lr=1e-2)                   # | sgd(lr=..., momentum=0) | rmsprop(lr=2e-3)
      epochs 200
      batch 32
      validation 0.2
      seed 0
      patience 20                               # early stopping on the validation metric
      dagger 3                                  # DAgger rounds (0: off), labelled by the teacher plan
      teacher "teacher.plan"
      dagger_steps 10                           # closed-loop steps rolled out per round
      stream ["a.npz", "b.npz"]                 # a continual stream: tasks trained in order
      task_free false                           # true: the methods are not told where tasks end
    }

The result is a dict of `runtime.training.TrainConfig` fields. Grid plans (`solve vin`) take
`data` from `planlang data gridworld` and learn by `loss imitation` (cross-entropy on the expert's
actions); their defaults are the VIN paper's (`planlang.training.GRID_TRAIN_DEFAULTS`).
"""
from __future__ import annotations

from compiler.options import ListOf, Number, Option, OptionError, Schema, Structured, Symbol, Text, Variant
from planlang import ast
from planlang.errors import Collector, did_you_mean

_INT = Number(integer=True, minimum=1)
_POS = Number(minimum=1e-300)
NEGATIVES = Variant({
    "langevin": Schema(steps=Option(_INT, 20), step_size=Option(_POS, 0.01), noise=Option(Number(minimum=0), 0.1)),
    "perturbation": Schema(noise=Option(_POS, 0.3)),
})
LOSS = Variant({
    "imitation": Schema(control_weight=Option(Number(minimum=0), 1.0)),
    "max_margin": Schema(margin=Option(Number(minimum=0), 1.0), samples=Option(Number(integer=True, minimum=0), 8),
                         sample_noise=Option(Number(minimum=0), 0.1), bandwidth=Option(_POS, None)),
    "nll": Schema(negatives=Option(NEGATIVES, NEGATIVES.parse_default("langevin")), samples=Option(_INT, 8),
                  temperature=Option(_POS, 1.0)),
    # joint plans (`agents N`): each agent's ground truth among its candidates, its marginal maximized
    "classification": Schema(),
    "model": Schema(steps=Option(_INT, 3), multistep_weight=Option(Number(minimum=0), 1.0)),
})
OPTIMIZER = Variant({"adam": Schema(lr=Option(_POS, 1e-2)),
                     "sgd": Schema(lr=Option(_POS, 1e-2), momentum=Option(Number(minimum=0), 0.0)),
                     "rmsprop": Schema(lr=Option(_POS, 2e-3))})
SETTINGS = {
    "data": Text(), "loss": LOSS, "optimizer": OPTIMIZER, "epochs": Number(integer=True, minimum=0),
    "batch": _INT, "validation": Number(minimum=0, maximum=0.99), "seed": Number(integer=True, minimum=0),
    "patience": _INT, "dagger": Number(integer=True, minimum=0), "teacher": Text(), "dagger_steps": _INT,
    "stream": ListOf(Text()), "task_free": Symbol(("false", "true")),
}
_RENAMED = {"dagger": "dagger_rounds"}


def train_settings(decl: ast.BracedDecl, const, errors: Collector) -> dict:
    """TrainConfig fields from a `train { }` block; bad settings go to `errors` (located)."""
    fields: dict = {}
    for setting in decl.settings:
        kind = SETTINGS.get(setting.name)
        if kind is None:
            errors.add(setting.span, f"unknown train setting '{setting.name}'",
                       did_you_mean(setting.name, SETTINGS) or "settings: " + ", ".join(SETTINGS))
            continue
        value = setting.value
        if value is None:
            errors.add(setting.span, f"train setting '{setting.name}' needs a value")
            continue
        try:
            parsed = kind.parse(value, const)
        except OptionError as err:
            errors.add(err.span or value.span, f"train setting '{setting.name}' {err.message}", err.hint)
            continue
        fields.update(_fields(setting.name, parsed))
    return fields


def _fields(name: str, value) -> dict:
    if name == "loss":
        options = {k: _plain(v) for k, v in value.args.items() if v is not None}
        return {"loss": value.name, "loss_options": options}
    if name == "optimizer":
        return {"optimizer": value.name, **value.args}
    if name == "task_free":
        return {"task_free": value == "true"}
    return {_RENAMED.get(name, name): value}


def _plain(value):
    """Structured option values as the runtime's dicts: {"name": ..., **args}."""
    return {"name": value.name, **value.args} if isinstance(value, Structured) else value
