"""Learning a compiled plan from demonstrations: the planner adapter, data checks against the plan,
teacher demonstrations, checkpoints, and `planlang.train`.

    plan = planlang.load("examples/double_integrator.plan")
    module = planlang.compile(plan, dtype=torch.float64)
    history = planlang.train(module, "demos.npz", TrainConfig(loss="max_margin", epochs=50), plan=plan)

The losses and the loop live in `runtime.losses` / `runtime.training` and see only the `Planner`
protocol; `PlanPlanner` implements it over a `PlanModule`.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor

from planlang.ast import VarKind
from planlang.errors import PlanError, SolveError
from planlang.plan import Plan
from runtime.demos import INPUT_PREFIX, DemoError, check_structure, load_demos
from runtime.gridworld import GridworldData
from runtime.losses import TrajectoryCost, as_model_loss, make_loss
from runtime.training import (Callback, TrainConfig, Trainer, batch_size, default_callbacks, fit_dagger,
                              split)
from runtime.vin_training import imitation_loss, map_batches

CHECKPOINT_FORMAT = "planlang-checkpoint/1"
DEFAULT_HALF_RANGE = 1.0       # random initial states: uniform in [default - 1, default + 1]


class CheckpointError(ValueError):
    """A checkpoint that is unreadable, malformed, or written for a different plan."""


# ------------------------------------------------------------------ planner adapter

class PlanPlanner:
    """`runtime.losses.Planner` over a compiled plan. A batch's `x0` (B, n) binds the plan's
    states (declaration order), `input_NAME` binds input or param NAME."""

    def __init__(self, module, augmented_iters: int = 100):
        self.module, self.augmented_iters = module, augmented_iters

    def inputs(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k[len(INPUT_PREFIX):]: v for k, v in batch.items() if k.startswith(INPUT_PREFIX)}

    def values(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Keyword arguments of `module(...)`: the initial states split by name, and the inputs."""
        x0, out, start = batch["x0"], self.inputs(batch), 0
        for var in self.module.layout.states:
            out[var.ref.name] = x0[:, start:start + var.size].reshape((x0.shape[0],) + var.shape)
            start += var.size
        return out

    def solve(self, batch):
        sol = self.module(**self.values(batch))
        return sol.x, sol.u, sol.cost

    def rollout(self, u: Tensor, batch) -> Tensor:
        like = torch.zeros((), dtype=u.dtype, device=u.device)
        env, _, like = self.module.bind(self.inputs(batch), initial_states=False, like=like)
        x, xs = batch["x0"].to(u.dtype), [batch["x0"].to(u.dtype)]
        for t in range(u.shape[1]):
            x = self.module.backend.step(env, x, u[:, t], like)
            xs.append(x)
        return torch.stack(xs, dim=1)

    def trajectory_cost(self, x: Tensor, u: Tensor, batch) -> Tensor:
        return self.module.trajectory_cost(x, u, **self.inputs(batch))

    def control_box(self, batch, like: Tensor) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """The plan's control bounds as (b, 1, m) tensors, or (None, None) without any."""
        env, _, like = self.module.bind(self.inputs(batch), initial_states=False, like=like)
        return self.module.backend.control_bounds(env, like)

    def solve_augmented(self, batch, extra_cost: TrajectoryCost):
        """argmin_u J(rollout(u)) + extra_cost(x, u) by L-BFGS (strong Wolfe) on the controls,
        started at the plan's own solution; controls clamped to the plan's boxes. Returns constants."""
        with torch.no_grad():
            _, u_plan, _ = self.solve(batch)
        lower, upper = self.control_box(batch, torch.zeros((), dtype=u_plan.dtype, device=u_plan.device))
        clamp = (lambda v: v) if lower is None else (lambda v: torch.maximum(torch.minimum(v, upper), lower))
        u = u_plan.detach().clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS([u], lr=1.0, max_iter=self.augmented_iters, history_size=20,
                                      tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

        def closure():
            with torch.enable_grad():
                uc = clamp(u)
                x = self.rollout(uc, batch)
                objective = (self.trajectory_cost(x, uc, batch) + extra_cost(x, uc)).sum()
                u.grad, = torch.autograd.grad(objective, u)
            return objective.detach()

        optimizer.step(closure)
        with torch.no_grad():
            uc = clamp(u)
            return self.rollout(uc, batch), uc.detach()


# ------------------------------------------------------------------------------ data

def check_demos(module, demos: dict[str, Tensor], where: str = "demonstrations") -> dict[str, Tensor]:
    """The format's checks (`runtime.demos.check_structure`) plus agreement with the plan:
    n, m, T and every `input_NAME` (an input or param of the plan, of shape (N, *shape))."""
    check_structure(demos, where)
    n, m, T = module.layout.n, module.layout.m, module.horizon
    x, u = demos["x"], demos["u"]
    if x.shape[2] != n:
        raise DemoError(f"{where}: {x.shape[2]} states per step; plan '{module.plan_name}' has n = {n} "
                        f"({', '.join(f'{v.ref.name}{list(v.shape)}' for v in module.layout.states)})")
    if u.shape[2] != m:
        raise DemoError(f"{where}: {u.shape[2]} controls per step; plan '{module.plan_name}' has m = {m}")
    if u.shape[1] != T:
        raise DemoError(f"{where}: horizon {u.shape[1]} (u has shape {tuple(u.shape)}); plan '{module.plan_name}' has horizon {T}")
    bindable = {name: var for name, var in module.inputs().items() if var.ref.kind is not VarKind.STATE}
    for key, value in demos.items():
        if not key.startswith(INPUT_PREFIX):
            continue
        name = key[len(INPUT_PREFIX):]
        if name not in bindable:
            raise DemoError(f"{where}: '{key}' names no input or param of plan '{module.plan_name}' "
                            f"(inputs and params: {', '.join(bindable) or 'none'})")
        if tuple(value.shape[1:]) != bindable[name].shape:
            raise DemoError(f"{where}: '{key}' has shape {tuple(value.shape)}; expected (N, {', '.join(map(str, bindable[name].shape))})"
                            .replace("(N, )", "(N,)"))
    return demos


def parse_range(text: str) -> tuple[str, tuple[float, float]]:
    """`name=lo:hi` -> (name, (lo, hi))."""
    name, sep, bounds = text.partition("=")
    lo, colon, hi = bounds.partition(":")
    try:
        low, high = float(lo), float(hi)
    except ValueError:
        low = high = None
    if not sep or not colon or not name.strip() or low is None or not low <= high:
        raise ValueError(f"--range expects NAME=LO:HI with LO <= HI, got '{text}'")
    return name.strip(), (low, high)


def generate_demos(teacher, n: int, noise: float = 0.0, seed: int = 0,
                   ranges: Optional[Mapping[str, tuple[float, float]]] = None) -> dict[str, Tensor]:
    """N demonstrations of `teacher` (a compiled plan) from random initial states.

    Initial states: every element of every state uniform in [default - 1, default + 1], or in
    [lo, hi] for a state named in `ranges`. An input or param named in `ranges` is drawn uniformly
    per demonstration too (stored as `input_NAME`). The teacher's plan is solved once per
    demonstration (open loop); the executed controls are its controls plus Gaussian noise of std
    `noise` (clamped to the control boxes), and the states are rolled out through the teacher's
    dynamics under the executed controls. Raises SolveError when the teacher fails to solve.
    """
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    ranges = dict(ranges or {})
    generator = torch.Generator().manual_seed(seed)
    like = next(iter(teacher.buffers()), torch.zeros((), dtype=torch.float64))
    dtype = like.dtype if like.is_floating_point() else torch.float64
    accepted = teacher.inputs()
    unknown = [name for name in ranges if name not in accepted]
    if unknown:
        raise ValueError(f"--range {unknown[0]}: plan '{teacher.plan_name}' has no state, input or param of that name "
                         f"(has: {', '.join(accepted)})")

    def draw(name: str, shape, default) -> Tensor:
        if name in ranges:
            lo, hi = ranges[name]
            return lo + (hi - lo) * torch.rand((n,) + tuple(shape), generator=generator, dtype=dtype)
        if default is None:
            raise ValueError(f"state '{name}' has no default value; give its range with --range {name}=LO:HI")
        base = default.to(dtype)
        return base + DEFAULT_HALF_RANGE * (2 * torch.rand((n,) + tuple(shape), generator=generator, dtype=dtype) - 1)

    demos: dict[str, Tensor] = {}
    demos["x0"] = torch.cat([draw(v.ref.name, v.shape, teacher.default(v.ref.name)).reshape(n, -1)
                             for v in teacher.layout.states], dim=1)
    for name, var in accepted.items():
        if var.ref.kind is not VarKind.STATE and name in ranges:
            demos[INPUT_PREFIX + name] = draw(name, var.shape, None)
    planner = PlanPlanner(teacher)
    with torch.no_grad():
        sol = teacher(**planner.values(demos))
        bad = (~sol.ok).nonzero().flatten().tolist()
        if bad:
            raise SolveError(f"teacher '{teacher.plan_name}' did not solve {len(bad)} of {n} demonstrations "
                             f"({', '.join(sol.status_names()[i] for i in bad[:5])}); narrow the --range of the initial states")
        u = sol.u + noise * torch.randn(sol.u.shape, generator=generator, dtype=dtype)
        lower, upper = planner.control_box(demos, torch.zeros((), dtype=dtype))
        if lower is not None:
            u = torch.maximum(torch.minimum(u, upper), lower)
        demos["x"], demos["u"] = planner.rollout(u, demos), u
    return check_demos(teacher, demos, f"teacher '{teacher.plan_name}'")


def dagger_collector(teacher, steps: int) -> Callable:
    """`collect(model, data)` for DAgger: run the learned plan in closed loop (receding horizon,
    `steps` steps) from the data's initial states, and label every state it visits after the
    first with the teacher's plan from that state (open loop, no noise)."""
    def collect(model, data: dict[str, Tensor]) -> dict[str, Tensor]:
        learner, N = PlanPlanner(model), batch_size(data)
        visited = model.simulate(steps, **learner.values(data)).x[:, 1:]                   # (N, steps, n)
        labels = {"x0": visited.reshape(N * steps, -1)}
        labels.update({k: v.repeat_interleave(steps, dim=0) for k, v in data.items() if k.startswith(INPUT_PREFIX)})
        sol = teacher(**PlanPlanner(teacher).values(labels))
        keep = sol.ok
        labels.update(x=sol.x, u=sol.u)
        return {k: v[keep].detach() for k, v in labels.items()}
    return collect


# ------------------------------------------------------------------------ grid plans

GRID_TRAIN_DEFAULTS = {"optimizer": "rmsprop", "lr": 2e-3, "batch": 12, "epochs": 30, "validation": 0.0}
"""`planlang train` defaults of a grid plan, those of the VIN paper's PyTorch port: RMSprop (eps
1e-6) at lr 0.002 (the port's 16x16 and 28x28 rate; examples/vin_8x8.plan sets its 0.005), 12 maps
per step, 30 epochs, every map trained on. A train block's settings override them."""


def load_gridworld(path: str | Path) -> GridworldData:
    """A `planlang data gridworld` file (`runtime.gridworld`); unreadable files raise DemoError."""
    path = Path(path)
    if not path.is_file():
        raise DemoError(f"{path}: no such grid-world data file")
    try:
        return GridworldData.load(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
        reason = str(err).removeprefix(f"{path}: ")
        raise DemoError(f"{path}: not a grid-world data set from `planlang data gridworld` ({reason})") from None


def grid_examples(module, data: GridworldData, where: str) -> dict[str, Tensor]:
    """`runtime.vin_training.map_batches` of `data` (one example per map) after checking it fits the
    grid plan: map size H x W, and expert actions among the plan's `actions`."""
    H, W = module.info.grid.shape
    if tuple(data.maps.shape[1:]) != (H, W):
        raise DemoError(f"{where}: maps of {data.maps.shape[1]} x {data.maps.shape[2]}; plan '{module.plan_name}' "
                        f"is a {H} x {W} grid")
    actions = module.info.grid.actions
    if int(data.expert_actions.max(initial=-1)) >= actions:
        raise DemoError(f"{where}: the expert moves in 8 directions; plan '{module.plan_name}' has actions {actions}")
    witness = next(iter(module.parameters()))
    return map_batches(data, dtype=witness.dtype, device=witness.device)


def _grid_loss(config: TrainConfig):
    """The `(model, batch)` loss of a grid plan: imitation of the expert's actions by its network."""
    if config.loss != "imitation":
        raise ValueError(f"a grid plan learns by imitation (cross-entropy on the expert's actions); "
                         f"loss {config.loss} is for trajectory plans")
    return lambda model, batch: imitation_loss(model.planner, batch)


# ------------------------------------------------------------------------ checkpoints

def plan_hash(plan_text: str) -> str:
    """sha256 of the plan's text: a checkpoint loads only into the plan it was trained for."""
    return hashlib.sha256(plan_text.encode()).hexdigest()


def _text_of(plan: Plan | str) -> str:
    return plan.source.text if isinstance(plan, Plan) else plan


def checkpoint_extra(plan: Plan | str) -> dict:
    """What a checkpoint adds to the trainer's state: the format, the plan's text and hash."""
    text = _text_of(plan)
    return {"format": CHECKPOINT_FORMAT, "plan_text": text, "plan_hash": plan_hash(text)}


def save_weights(module, path: str | Path, plan: Plan | str, **extra) -> None:
    """Write `module`'s state_dict as a checkpoint of `plan` (format, plan text and hash), which
    `planlang.compile(plan, weights=path)` and `planlang run --weights` load; `extra` is stored too
    (e.g. how the weights were trained)."""
    torch.save({**checkpoint_extra(plan), **extra, "state_dict": module.state_dict()}, path)


def read_checkpoint(path: str | Path, plan: Plan | str) -> dict:
    """Load a checkpoint without unpickling arbitrary objects (weights_only) and check its plan."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:    # torch raises UnpicklingError, RuntimeError, EOFError... by file damage
        raise CheckpointError(f"{path}: not a planlang checkpoint ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "state_dict" not in state:
        raise CheckpointError(f"{path}: not a planlang checkpoint (no '{CHECKPOINT_FORMAT}' state)")
    text = _text_of(plan)
    if state["plan_hash"] != plan_hash(text):
        saved = _plan_name(state["plan_text"])
        raise CheckpointError(f"{path} was trained for a different plan ('{saved}', sha256 {state['plan_hash'][:12]}); "
                              f"this plan ('{_plan_name(text)}') has sha256 {plan_hash(text)[:12]}. "
                              f"Retrain, or load it with the plan text stored in the checkpoint")
    return state


def _plan_name(text: str) -> str:
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "plan":
            return words[1]
    return "?"


def load_weights(module, path: str | Path, plan: Plan | str):
    """Load a checkpoint's weights into `module` (compiled from `plan`); refuses another plan's.
    Returns the module."""
    state = read_checkpoint(path, plan)
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit plan '{module.plan_name}': {err}") from None
    return module


# ---------------------------------------------------------------------------- train

def plan_train_config(plan: Plan) -> TrainConfig:
    """The plan's `train { ... }` block as a `TrainConfig` (checked with located errors by the
    compiler's shapes pass, `compiler.train_block`); defaults without one (a grid plan's:
    `GRID_TRAIN_DEFAULTS`). `data` and `teacher` are relative to the plan file."""
    from compiler.pipeline import run_passes

    try:
        info = run_passes(plan.graph, until="shapes").graph["plan_info"]
    except PlanError as err:
        raise err.with_source(plan.source) from None
    fields = dict(info.train)
    if info.grid is not None:
        fields = {**GRID_TRAIN_DEFAULTS, **fields}
    base = Path(plan.source.filename).parent
    for key in ("data", "teacher"):
        if fields.get(key) is not None:
            fields[key] = str(base / fields[key])
    if fields.get("stream"):
        fields["stream"] = tuple(str(base / f) for f in fields["stream"])
    return TrainConfig(**fields)



def train(module, data: str | Path | Mapping[str, Tensor] | GridworldData, config: Optional[TrainConfig] = None, *,
          plan: Plan | str | None = None, teacher=None, resume: str | Path | None = None,
          init: str | Path | None = None, callbacks: Optional[Sequence[Callback]] = None) -> list[dict]:
    """Train `module`'s learnables on demonstrations; returns the per-epoch history.

    data: a demonstrations `.npz` path or a dict in the same format (see `runtime.demos`), cast to
    the module's dtype and device; for a grid plan (`solve vin`), a `planlang data gridworld` file
    or `GridworldData` (one example per map, loss: cross-entropy on the expert's actions); with
    `config.loss == "model"` a transitions file or dict (see `runtime.transitions`) fitting the
    plan's world-model block (`planlang.world_models`). plan:
    the plan (or its text) the module was compiled from; needed to write, resume or init from a
    checkpoint. teacher: a compiled teacher plan, needed for DAgger (`config.dagger_rounds > 0`).
    resume: a checkpoint to continue from (weights, optimizer, epoch, RNG). init: a checkpoint of
    this plan whose weights only start the run (fresh optimizer, epoch 0: a new stage of a
    learning-rate schedule). callbacks: replaces `runtime.training.default_callbacks(config)`.
    Under torch.distributed the run is data-parallel. A VIN's initial weights are drawn when the
    plan is compiled: seed torch before `planlang.compile` for a reproducible run.
    """
    config = config or TrainConfig()
    witness = next(iter(module.parameters()), None)
    if witness is None:
        raise ValueError(f"plan '{module.plan_name}' has no learnables: nothing to train")
    if (config.checkpoint or resume or init) and plan is None:
        raise ValueError("writing, resuming or initializing from a checkpoint needs plan= "
                         "(the plan's text is stored with the weights)")
    if resume and init:
        raise ValueError("give resume (continue a run) or init (start from its weights), not both")
    state = read_checkpoint(resume, plan) if resume else None
    if init:
        load_weights(module, init, plan)
    if module.info.family == "joint" or config.loss == "classification":
        return _train_joint(module, data, config, plan, state, callbacks)
    if config.loss == "model":
        from planlang.world_models import fit_world_model
        return fit_world_model(module, data, config, callbacks=callbacks, state=state,
                               checkpoint_extra=checkpoint_extra(plan) if plan is not None else None)
    if module.info.family == "grid":
        if config.dagger_rounds:
            raise ValueError("DAgger is for trajectory plans; a grid plan's expert labels every state already")
        loss = _grid_loss(config)
        if isinstance(data, GridworldData):
            demos = grid_examples(module, data, "grid-world data")
        else:
            demos = grid_examples(module, load_gridworld(data), str(data))
    else:
        loss = as_model_loss(make_loss(config.loss, config.loss_options), PlanPlanner)
        demos = _trajectory_examples(module, data, witness)
    if config.dagger_rounds and teacher is None:
        raise ValueError("DAgger (dagger_rounds > 0) needs a teacher plan")
    if config.dagger_rounds and resume:
        raise ValueError("resuming a DAgger run is not supported (the aggregated data is not checkpointed)")
    return _fit(module, loss, demos, config, plan, state, callbacks, teacher)


def _fit(module, loss, examples: dict[str, Tensor], config: TrainConfig, plan, state, callbacks,
         teacher=None) -> list[dict]:
    """The shared Trainer on `examples` split into training and validation (DAgger rounds with
    `teacher` when the config asks for them); `state` resumes a checkpointed run."""
    if callbacks is None:
        callbacks = default_callbacks(config, checkpoint_extra(plan) if plan is not None else None)
    trainer = Trainer(module, loss, config, callbacks)
    if state is not None:
        trainer.load_state_dict(state)
    train_set, validation = split(examples, config.validation, config.seed)
    if config.dagger_rounds:
        history, _ = fit_dagger(trainer, train_set, dagger_collector(teacher, config.dagger_steps),
                                config.dagger_rounds, validation)
        return history
    return trainer.fit(train_set, validation)


def _train_joint(module, data, config: TrainConfig, plan, state, callbacks) -> list[dict]:
    """A joint plan (`agents N`) on interaction data with the classification loss
    (`planlang.training_joint`)."""
    from planlang.training_joint import classification_loss, load_interactions

    if module.info.family != "joint" or config.loss != "classification":
        raise ValueError(f"the classification loss trains joint plans (`agents N`, `solve joint`) and joint plans "
                         f"train with it; plan '{module.plan_name}' is a {module.info.family} plan with "
                         f"loss '{config.loss}'")
    if config.dagger_rounds:
        raise ValueError("DAgger does not apply to joint plans")
    witness = next(iter(module.parameters()))
    batch = {k: v.to(witness.device) for k, v in load_interactions(module, data, witness.dtype).items()}
    return _fit(module, classification_loss, batch, config, plan, state, callbacks)


def _trajectory_examples(module, data, witness: Tensor) -> dict[str, Tensor]:
    """Demonstrations (a path or a dict) in the module's dtype and device, checked against the plan."""
    if isinstance(data, (str, Path)):
        demos, where = load_demos(data, dtype=witness.dtype), str(data)
    elif isinstance(data, GridworldData):
        raise DemoError(f"grid-world data are for grid plans; plan '{module.plan_name}' plans trajectories")
    else:
        demos, where = {k: torch.as_tensor(v, dtype=witness.dtype) for k, v in data.items()}, "demonstrations"
    return {k: v.to(witness.device) for k, v in check_demos(module, demos, where).items()}
