"""Continual learning of a compiled plan's block on a stream of tasks (`train { stream [...] }`).

    plan = planlang.load("examples/pendulum_regimes.plan")
    module = planlang.compile(plan)
    result = planlang.continual.train_stream(module, plan_train_config(plan), plan=plan)
    print(result.table())                    # R, ACC, BWT, FWT (runtime.continual_metrics)

Each task is one data file of transitions of the plan's dynamics (see `load_transitions`); the
learner is the block named by the plan's `continual` line (or the plan's only block, trained by
naive fine-tuning), fitted to predict the next state, `module.step(x, u, **inputs)`, with the
squared error as loss. The block's methods (`module.continual[BLOCK]`, `runtime.continual`)
run inside the shared `runtime.training.Trainer` through `ContinualCallback`. Each task's data
is split into training and held-out test transitions (`config.validation`, seeded); after each
task the error on every task's held-out transitions is a row of R (lower is better).

A checkpoint (`config.checkpoint`) is written after every task: the module's state_dict (with
the methods' state: Fisher, anchors, buffers, old model), the rows of R so far and the random
init's errors, so `resume=` continues the stream at the next task.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from planlang.ast import VarKind
from planlang.plan import Plan
from planlang.training import checkpoint_extra, read_checkpoint
from runtime.continual import Plugins, Task, TaskData, evaluate, mean_squared_error, squared_error, train_experience
from runtime.continual_metrics import ContinualResult
from runtime.training import Callback, ProgressBar, TrainConfig, split

STREAM_FORMAT = "planlang-stream/1"


class TransitionError(ValueError):
    """A stream's data file that is missing, malformed or does not fit the plan."""


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
            size = int(np.prod(shape, dtype=np.int64))
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


def load_transitions(path: str | Path | Mapping, module, dtype: torch.dtype) -> dict[str, Tensor]:
    """One task's transitions from a `.npz` file (or a dict of arrays in the same layout), as {"x": (N, n), "u": (N, m), "x_next": (N, n),
    NAME: (N, *shape) for every input or param of the plan the file gives}.

    Two layouts are read: transitions (`x` (N, n), `u` (N, m), `x_next` (N, n)) and
    demonstrations (`x` (N, T+1, n), `u` (N, T, m), flattened to N T transitions). An input or
    param is stored under its name or `input_NAME`, one value per row (per demonstration for
    demonstrations); one not given takes its default.
    """
    if isinstance(path, Mapping):
        return check_transitions({k: torch.as_tensor(v) for k, v in path.items()}, module, dtype, "transitions")
    path = Path(path)
    if not path.is_file():
        raise TransitionError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            raw = {key: torch.as_tensor(archive[key]) for key in archive.files}
    except (ValueError, OSError) as err:
        raise TransitionError(f"{path}: not a .npz file ({err})") from None
    return check_transitions(raw, module, dtype, str(path))


def check_transitions(raw: Mapping[str, Tensor], module, dtype: torch.dtype, path: str) -> dict[str, Tensor]:
    """`load_transitions`'s checks and flattening on arrays already in memory (`path` names them)."""
    n, m = module.layout.n, module.layout.m
    for key in ("x", "u"):
        if key not in raw:
            raise TransitionError(f"{path}: no '{key}' array (a transitions file has x (N, {n}), u (N, {m}), "
                                  f"x_next (N, {n}))")
    x, u = raw["x"].to(dtype), raw["u"].to(dtype)
    per_row = {}
    if x.dim() == 3:
        if u.dim() != 3 or u.shape[0] != x.shape[0] or x.shape[1] != u.shape[1] + 1:
            raise TransitionError(f"{path}: demonstrations need x (N, T+1, n) and u (N, T, m); "
                                  f"got {tuple(x.shape)} and {tuple(u.shape)}")
        steps = u.shape[1]
        data = {"x": x[:, :-1].reshape(-1, x.shape[2]), "u": u.reshape(-1, u.shape[2]),
                "x_next": x[:, 1:].reshape(-1, x.shape[2])}
        repeat = steps
    else:
        if "x_next" not in raw:
            raise TransitionError(f"{path}: no 'x_next' array")
        data = {"x": x, "u": u, "x_next": raw["x_next"].to(dtype)}
        repeat = 1
    rows = data["x"].shape[0]
    if data["x"].dim() != 2 or data["x"].shape[1] != n or data["x_next"].shape != data["x"].shape:
        raise TransitionError(f"{path}: x and x_next must be (N, {n}) for plan '{module.plan_name}'; "
                              f"got {tuple(data['x'].shape)} and {tuple(data['x_next'].shape)}")
    if data["u"].shape != (rows, m):
        raise TransitionError(f"{path}: u must be (N, {m}) for plan '{module.plan_name}'; got {tuple(data['u'].shape)}")
    for name, var in module.inputs().items():
        if var.ref.kind is VarKind.STATE:
            continue
        key = name if name in raw else f"input_{name}" if f"input_{name}" in raw else None
        if key is None:
            continue
        value = raw[key].to(dtype)
        if tuple(value.shape[1:]) != var.shape or value.shape[0] * repeat != rows:
            raise TransitionError(f"{path}: '{key}' has shape {tuple(value.shape)}; expected "
                                  f"({rows // repeat}, {', '.join(map(str, var.shape))})".replace(", )", ")"))
        per_row[name] = value.repeat_interleave(repeat, dim=0)
    return {**data, **per_row}


def transitions_task(data: dict[str, Tensor], module, inputs: Sequence[str], fraction: float, seed: int,
                     name: str) -> Task:
    """A `Task` of packed transitions z = [x, u, inputs] -> y = x_next, split into train and test."""
    rows = data["x"].shape[0]
    parts = [data["x"], data["u"]]
    for key in inputs:
        value = data.get(key)
        if value is None:
            value = module.default(key).to(data["x"].dtype).expand((rows,) + tuple(module.inputs()[key].shape))
        parts.append(value.reshape(rows, -1))
    packed = {"z": torch.cat(parts, dim=1), "y": data["x_next"]}
    train, test = split(packed, fraction, seed)
    if test is None:
        raise TransitionError(f"{name}: a stream needs held-out transitions: set `validation` > 0")
    return Task(TaskData(train["z"], train["y"], squared_error), TaskData(test["z"], test["y"], squared_error), name)


def stream_tasks(module, files: Sequence[str | Path], config: TrainConfig) -> tuple[list[Task], tuple[str, ...]]:
    """The stream's tasks (one per file) and the inputs the predictor stacks after (x, u)."""
    like = next(iter(module.parameters()))
    loaded = [load_transitions(f, module, like.dtype) for f in files]
    inputs = tuple(name for name, var in module.inputs().items() if var.ref.kind is not VarKind.STATE
                   and any(name in d for d in loaded))
    for name in inputs:
        if module.default(name) is None and not all(name in d for d in loaded):
            missing = next(str(f) for f, d in zip(files, loaded) if name not in d)
            raise TransitionError(f"{missing}: no '{name}' array, and '{name}' has no default in the plan")
    tasks = [transitions_task({k: v.to(like.device) for k, v in d.items()}, module, inputs, config.validation,
                              config.seed + i, _task_name(f, i)) for i, (f, d) in enumerate(zip(files, loaded))]
    return tasks, inputs


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
    tasks, inputs = stream_tasks(module, files, config)
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
