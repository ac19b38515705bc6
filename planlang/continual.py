"""Continual learning of a compiled plan's block on a stream of tasks (`train { stream [...] }`).

    plan = planlang.load("examples/pendulum_regimes.plan")
    module = planlang.compile(plan)
    result = planlang.continual.train_stream(module, plan_train_config(plan), plan=plan)
    print(result.table())                    # R, ACC, BWT, FWT (runtime.continual_metrics)

Each task is one file (or dict) of transitions of the plan's dynamics in the format of
`runtime.transitions` (x, u, x_next, input_NAME columns for conditioning inputs such as a
pendulum's mass); the learner is the block named by the plan's `continual` line (or the plan's only block, trained by
naive fine-tuning), fitted to predict the next state, `module.step(x, u, **inputs)`, with the
squared error as loss. The block's methods (`module.continual[BLOCK]`, `runtime.continual`)
run inside the shared `runtime.training.Trainer` through `ContinualCallback`. Each task's data
is split into training and held-out test transitions (`config.validation`, seeded); after each
task the error on every task's held-out transitions is a row of R (lower is better). A
`world_model` block without fitted normalization takes it from the first task's transitions.

A checkpoint (`config.checkpoint`) is written after every task: the module's state_dict (with
the methods' state: Fisher, anchors, buffers, old model), the rows of R so far and the random
init's errors, so `resume=` continues the stream at the next task.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from compiler.blocks import WorldModelBlock
from planlang.ast import VarKind
from planlang.plan import Plan
from planlang.training import checkpoint_extra, read_checkpoint
from planlang.world_models import check_against_plan, model_windows, the_world_model
from runtime.continual import Plugins, Task, TaskData, evaluate, mean_squared_error, squared_error, train_experience
from runtime.continual_metrics import ContinualResult
from runtime.training import Callback, ProgressBar, TrainConfig, split
from runtime.transitions import INPUT_PREFIX, TransitionsError, check_transitions, load_transitions

STREAM_FORMAT = "planlang-stream/1"


class StepPredictor(nn.Module):
    """The plan's one-step dynamics as a model of packed transitions, with only `block` trained.

    forward(z): z (B, n + m + k) stacks the state x (B, n), the control u (B, m) and the plan's
    inputs and params named in `inputs` (flattened, in that order) -> module.step(x, u, **inputs)
    (B, n). The block is this module's only child, so its parameters are the ones the Trainer
    and the continual methods see; the plan module itself is held without being registered.
    """

    def __init__(self, module, block: str, inputs: Sequence[str]):
        super().__init__()
        self.block = module.blocks[block]
        self._plan = (module,)
        variables = module.inputs()
        self.inputs = tuple((name, variables[name].shape) for name in inputs)

    @property
    def plan(self):
        return self._plan[0]

    def forward(self, z: Tensor) -> Tensor:
        n, m = self.plan.layout.n, self.plan.layout.m
        values, start = {}, n + m
        for name, shape in self.inputs:
            size = math.prod(shape)
            values[name] = z[:, start:start + size].reshape((z.shape[0],) + tuple(shape))
            start += size
        return self.plan.step(z[:, :n], z[:, n:n + m], **values)


def learner_block(module) -> str:
    """The block a stream trains: the one with a `continual` line, else the plan's only block."""
    if len(module.continual) > 1:
        raise ValueError(f"plan '{module.plan_name}' has `continual` lines on {len(module.continual)} blocks; "
                         "a stream trains one block")
    if len(module.continual) == 1:
        return next(iter(module.continual))
    if len(module.blocks) != 1:
        raise ValueError(f"plan '{module.plan_name}' has {len(module.blocks)} blocks and no `continual` line: "
                         "say which block the stream trains with `continual NAME by ...`")
    return next(iter(module.blocks))


def load_task(source, module, dtype: torch.dtype) -> dict[str, Tensor]:
    """One task's transitions (`runtime.transitions` format: x (N, n), u (N, m), x_next (N, n),
    input_NAME (N, *shape)) from a `.npz` path or a dict of arrays, checked against the plan."""
    if isinstance(source, Mapping):
        data, where = check_transitions(dict(source), "transitions", dtype), "transitions"
    else:
        data, where = load_transitions(source, dtype), str(source)
    check_against_plan(module, data, where)
    return data


def transitions_task(data: dict[str, Tensor], module, inputs: Sequence[str], fraction: float, seed: int,
                     name: str) -> Task:
    """A `Task` of packed transitions z = [x, u, inputs] -> y = x_next, split into train and test."""
    rows = data["x"].shape[0]
    parts = [data["x"], data["u"]]
    for key in inputs:
        value = data.get(INPUT_PREFIX + key)
        if value is None:
            value = module.default(key).to(data["x"].dtype).expand((rows,) + tuple(module.inputs()[key].shape))
        parts.append(value.reshape(rows, -1))
    packed = {"z": torch.cat(parts, dim=1), "y": data["x_next"]}
    train, test = split(packed, fraction, seed)
    if test is None:
        raise TransitionsError(f"{name}: a stream needs held-out transitions: set `validation` > 0")
    return Task(TaskData(train["z"], train["y"], squared_error), TaskData(test["z"], test["y"], squared_error), name)


def stream_tasks(module, sources: Sequence, config: TrainConfig
                 ) -> tuple[list[Task], tuple[str, ...], list[dict[str, Tensor]]]:
    """The stream's tasks (one per source), the inputs the predictor stacks after (x, u) (those
    some task gives a column for; the others keep their defaults) and the checked transitions."""
    like = next(iter(module.parameters()))
    loaded = [{k: v.to(like.device) for k, v in load_task(source, module, like.dtype).items()} for source in sources]
    inputs = tuple(name for name, var in module.inputs().items() if var.ref.kind is not VarKind.STATE
                   and any(INPUT_PREFIX + name in d for d in loaded))
    for name in inputs:
        if module.default(name) is None and not all(INPUT_PREFIX + name in d for d in loaded):
            missing = next(_task_name(s, i) for i, (s, d) in enumerate(zip(sources, loaded)) if INPUT_PREFIX + name not in d)
            raise TransitionsError(f"{missing}: no 'input_{name}' column, and '{name}' has no default in the plan")
    tasks = [transitions_task(d, module, inputs, config.validation, config.seed + i, _task_name(s, i))
             for i, (s, d) in enumerate(zip(sources, loaded))]
    return tasks, inputs, loaded


def fit_block_normalization(module, block: str, data: dict[str, Tensor]) -> None:
    """A world-model block without fitted normalization takes it from the first task's
    transitions (the stream's learner sees only the data of the task it is on)."""
    callee = module.info.blocks[block]
    if not isinstance(callee.kind, WorldModelBlock) or bool(module.blocks[block].fitted):
        return
    call = the_world_model(module)
    windows = model_windows(module, call, data, 1)
    module.blocks[block].fit_normalization(windows["state"][:, 0], windows["others"][:, 0], windows["state"][:, 1])


def _task_name(source, index: int) -> str:
    return f"task {index}" if isinstance(source, Mapping) else Path(source).stem


def train_stream(module, config: TrainConfig, *, plan: Plan | str | None = None, files: Optional[Sequence] = None,
                 resume: str | Path | None = None, stop: Optional[int] = None,
                 callbacks: Sequence[Callback] = ()) -> Optional[ContinualResult]:
    """Train `module`'s learner block through the stream's tasks in order (`files`: paths or dicts
    of arrays, e.g. from a generator; default `config.stream`), evaluating on every task's held-out transitions after each; returns R
    (mean squared next-state error, lower is better) with the random init's errors as baseline.
    `config.task_free` hides the task boundaries from the methods. Checkpoints after every task
    when `config.checkpoint` is set (needs `plan`); `resume` continues a checkpointed stream;
    `stop` ends after that many tasks have been trained: R is not complete then, so the call
    returns None and the stream's progress is in the checkpoint (stop needs `config.checkpoint`)."""
    files = list(config.stream if files is None else files)
    if not files:
        raise ValueError("a stream needs at least one data file (`stream [\"a.npz\", ...]` in the train block)")
    if (config.checkpoint or resume) and plan is None:
        raise ValueError("writing or resuming a stream checkpoint needs plan=")
    if stop is not None and not config.checkpoint:
        raise ValueError("stopping a stream early (stop=) needs a checkpoint to resume from")
    block = learner_block(module)
    plugins = module.continual[block] if block in module.continual else Plugins()
    tasks, inputs, transitions = stream_tasks(module, files, config)
    fit_block_normalization(module, block, transitions[0])
    model = StepPredictor(module, block, inputs)
    rows: list[Tensor] = []
    baseline = evaluate(model, tasks, plugins, mean_squared_error)
    if resume is not None:
        state = read_checkpoint(resume, plan)
        saved = state.get("stream")
        if not isinstance(saved, dict) or saved.get("format") != STREAM_FORMAT:
            raise ValueError(f"{resume}: not a stream checkpoint")
        if any(len(r) != len(tasks) for r in saved["R"]):
            raise ValueError(f"{resume}: a checkpoint of a stream of {len(saved['R'][0])} tasks; this stream has {len(tasks)}")
        module.load_state_dict(state["state_dict"])
        rows = [torch.tensor(r, dtype=torch.float64) for r in saved["R"]]
        baseline = torch.tensor(saved["baseline"], dtype=torch.float64)
    names = tuple(t.name for t in tasks)
    shown = [ProgressBar()] if config.progress else []
    for i in range(len(rows), len(tasks) if stop is None else min(stop, len(tasks))):
        train_experience(model, replace(tasks[i].train, task=i), plugins, _stream_config(config),
                         config.task_free, [*shown, *callbacks])
        rows.append(evaluate(model, tasks, plugins, mean_squared_error))
        if config.checkpoint:
            _save(module, plan, config.checkpoint, rows, baseline)
    if len(rows) < len(tasks):
        return None
    return ContinualResult(torch.stack(rows), baseline, "mean squared error", False, names)


def _stream_config(config: TrainConfig) -> TrainConfig:
    """The per-task Trainer settings: the stream's own checkpoint, log and plot replace the Trainer's."""
    return replace(config, checkpoint=None, log=None, plot=None, patience=None, validation=0.0)


def _save(module, plan, path: str | Path, rows: list[Tensor], baseline: Tensor) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({**checkpoint_extra(plan), "state_dict": module.state_dict(),
                "stream": {"format": STREAM_FORMAT, "R": [r.tolist() for r in rows],
                           "baseline": baseline.tolist()}}, tmp)
    tmp.replace(path)
