"""`env "Pendulum-v1" { ... }`: the gymnasium environment a plan drives, and how its observation
becomes the plan's state.

    env "Pendulum-v1" {
      observe obs[3]                                # the observation, a vector named obs
      state = [atan2(obs[1], obs[0]), obs[2]]       # the plan's state (all states, concatenated)
      steps 200                                     # the episode length (default 200)
    }

`state` may use `obs`, consts, params and inputs; without it the observation is the state.
An optional `update = ...` is the state of every later observation of an episode: it may also
use the plan's states and controls, which there mean the previous state and the control just
applied (a filter, e.g. a latent world model's `update = m.filter(s, u, obs)`).
The plan's controls (concatenated) are the action. Lowered to an `EnvSpec` whose `observe`
maps a batch of observations (B, k) to states (B, n), and `advance` later ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from compiler.codegen import NumericFunction
from compiler.context import PlanInfo, VarInfo
from compiler.ir import Expr, VarRef
from planlang import ast
from planlang.errors import Collector, did_you_mean
from planlang.source import Span

SETTINGS = ("observe", "state", "update", "steps")


@dataclass(frozen=True, eq=False)
class EnvSpec:
    id: str
    observation: VarRef
    size: int
    state: Expr | None         # typed state expression of the observation (None: the observation itself)
    steps: int
    span: Span
    update: Expr | None = None  # typed state of a later observation from the previous state and control

    def __post_init__(self):
        object.__setattr__(self, "_observe", None if self.state is None else NumericFunction(self.state, "observe"))
        object.__setattr__(self, "_update", None if self.update is None else NumericFunction(self.update, "update"))

    def observe(self, env: dict, obs: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """States (B, n) from observations (B, k) (env binds params and inputs)."""
        if self._observe is None:
            return obs
        value = self._observe({**env, self.observation: obs}, like)
        return value.reshape(value.shape[0], -1)

    def advance(self, env: dict, decisions: dict, obs: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """States (B, n) of later observations obs (B, k) from `decisions`, the previous states and
        the controls applied by name (`Layout.numeric(x, u)`); `observe` when there is no `update`."""
        if self._update is None:
            return self.observe(env, obs, like)
        value = self._update({**env, **decisions, self.observation: obs}, like)
        return value.reshape(value.shape[0], -1)


def env_spec(decl: ast.BracedDecl, info: PlanInfo, typer_for, errors: Collector) -> EnvSpec | None:
    """Check an `env` block; `typer_for(info)` types expressions in a scope."""
    if decl.label is None:
        errors.add(decl.span, "an env block names its environment", 'e.g. `env "Pendulum-v1" { ... }`')
        return None
    settings = {}
    for s in decl.settings:
        if s.name not in SETTINGS:
            errors.add(s.span, f"unknown env setting '{s.name}'", did_you_mean(s.name, SETTINGS) or
                       "settings: " + ", ".join(SETTINGS))
        elif s.name in settings:
            errors.add(s.span, f"env setting '{s.name}' given twice")
        else:
            settings[s.name] = s
    observe = settings.get("observe")
    if observe is None:
        errors.add(decl.span, "an env block declares its observation", "e.g. `observe obs[3]`")
        return None
    name, size = _observation(observe, errors)
    if name is None:
        return None
    if name in info.variables or name in info.consts or name in info.lets:
        errors.add(observe.value.span, f"'{name}' is already declared in the plan", "name the observation otherwise")
        return None
    ref = VarRef(ast.VarKind.INPUT, name)
    scope = PlanInfo(horizon=info.horizon, consts=info.consts, blocks=info.blocks,
                     variables={**{k: v for k, v in info.variables.items() if not v.ref.is_decision},
                                name: VarInfo(ref, "env", (size,))})
    n = sum(v.size for v in info.variables.values() if v.ref.kind is ast.VarKind.STATE)
    state = None
    if "state" in settings:
        state = _state_expr(settings["state"], scope, typer_for, n, "the state from the observation", errors)
        if state is None:
            return None
    elif size != n:
        errors.add(observe.span, f"the observation has {size} entries and the plan's states {n}",
                   "map it: `state = [...]` of the observation")
        return None
    update = None
    if "update" in settings:          # sees the previous states and the controls applied, too
        decisions = {k: v for k, v in info.variables.items() if v.ref.is_decision}
        update = _state_expr(settings["update"], PlanInfo(horizon=info.horizon, consts=info.consts, blocks=info.blocks,
                                                          variables={**scope.variables, **decisions}),
                             typer_for, n, "the updated state", errors)
        if update is None:
            return None
    steps = 200
    if "steps" in settings:
        value = settings["steps"].value
        number = value.value if isinstance(value, ast.Number) else None
        if number is None or number != int(number) or number < 1:
            errors.add(value.span if value else settings["steps"].span, "steps must be a positive integer")
            return None
        steps = int(number)
    return EnvSpec(decl.label.value, ref, size, state, steps, decl.span, update)


def _state_expr(setting: ast.Setting, scope: PlanInfo, typer_for, n: int, what: str, errors: Collector) -> Expr | None:
    """The typed expression of `setting`, a vector of the plan's n state entries (None after an error)."""
    from compiler.passes.shapes import Located
    try:
        typed = typer_for(scope).expr(setting.value)
    except Located as err:
        errors.add(err.span, err.message, err.hint)
        return None
    if typed.shape not in ((n,), () if n == 1 else (n,)):
        errors.add(setting.value.span, f"{what} has shape {list(typed.shape)}, but the plan's states have {n} entries")
        return None
    return typed


def _observation(setting: ast.Setting, errors: Collector) -> tuple[str | None, int]:
    value = setting.value
    if isinstance(value, ast.Index) and isinstance(value.base, ast.Name) and len(value.indices) == 1 \
            and isinstance(value.indices[0], ast.Number) and value.indices[0].is_int and value.indices[0].value >= 1:
        return value.base.id, int(value.indices[0].value)
    errors.add(value.span if value else setting.span, "expected the observation's name and size, e.g. `observe obs[3]`")
    return None, 0

