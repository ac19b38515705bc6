"""`PlanModule`: a compiled plan as a `torch.nn.Module`.

Learnables are `nn.Parameter`s in an unconstrained parametrization: `positive` values are
softplus(raw) + tiny > 0 and `psd` matrices are L L' with L = tril(raw), so any optimizer step keeps
them valid. They live in the compile dtype (`module.dtype`; `module.to(torch.float64)` moves them).
Params' and other declarations' defaults are float64 buffers, the plan's literal values at full
precision. `module(**values)` binds states' initial values, inputs and params by name (a leading
batch dimension is allowed) and returns a `Solution`; the floating-point tensors passed in decide
the dtype of the solve (default: the learnables' dtype), and every value is cast to it when bound.

A solve never raises on a plan's numbers: an exception inside the solver (e.g. a failed
factorisation or an allocation) makes every element `numerical` (with a `RuntimeWarning`), and an
element reported `solved` with a non-finite x, u or cost becomes `numerical`.
"""
from __future__ import annotations

import warnings

import networkx as nx
import torch
from torch import nn

from compiler.context import PlanInfo, VarInfo
from compiler.continual_block import build_block, build_plugins
from compiler.defaults import default_value
from compiler.ir import VarRef
from compiler.layout import Layout
from compiler.solution import Solution
from planlang.ast import VarKind
from planlang.errors import did_you_mean
from runtime.status import Status

_BINDABLE = (VarKind.STATE, VarKind.INPUT, VarKind.PARAM)


def inverse_softplus(v: torch.Tensor) -> torch.Tensor:
    """softplus^{-1}(v) = v + log(1 - exp(-v)) for v > 0."""
    return v + torch.log(-torch.expm1(-v))


class PlanModule(nn.Module):
    def __init__(self, graph: nx.DiGraph, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.dtype = dtype                 # of the learnables, and of a solve given no float tensors
        self.graph = graph
        self.info: PlanInfo = graph.graph["plan_info"]
        self.layout = Layout.of(self.info)
        self.plan_name = graph.graph.get("name") or "plan"
        self.learnables = nn.ParameterDict()
        self.blocks = nn.ModuleDict({name: build_block(callee, self.info.continual.get(name, ())).to(dtype)
                                     for name, callee in self.info.blocks.items()})
        self.continual = nn.ModuleDict({name: build_plugins(methods) for name, methods in self.info.continual.items()})
        self._defaults: dict[str, str] = {}
        for var in self.info.variables.values():
            value = default_value(var)
            if var.ref.kind is VarKind.LEARN:
                self.learnables[var.ref.name] = nn.Parameter(self._raw(var, value).to(dtype))
            elif value is not None and var.ref.kind is not VarKind.CONTROL:
                buffer = f"default_{var.ref.kind.value}_{var.ref.name}"
                self.register_buffer(buffer, value.to(torch.float64))
                self._defaults[var.ref.name] = buffer
        self.backend = graph.graph["lowered"]
        self.planner = getattr(self.backend, "network", None)      # a grid planner's learnable network
        self._layout_map: dict | None = None

    @property
    def horizon(self) -> int:
        return self.info.horizon

    @property
    def solver(self) -> str:
        return self.info.solver

    @staticmethod
    def _raw(var: VarInfo, value: torch.Tensor) -> torch.Tensor:
        if var.positive:
            return inverse_softplus(value)
        if var.psd:
            return torch.linalg.cholesky(0.5 * (value + value.T))
        return value

    def learned(self, name: str) -> torch.Tensor:
        """The constrained value of learnable `name` (softplus / L L' applied), in the learnables' dtype."""
        var = self._learnable(name)
        raw = self.learnables[name]
        if var.positive:        # + tiny: softplus underflows to 0 for very negative raw values
            return nn.functional.softplus(raw) + torch.finfo(raw.dtype).tiny
        if var.psd:
            L = torch.tril(raw)
            return L @ L.transpose(-1, -2)
        return raw

    def learned_values(self) -> dict[str, torch.Tensor]:
        return {name: self.learned(name) for name in self.learnables}

    def set_learned(self, name: str, value) -> None:
        """Set learnable `name` to the constrained `value` (shape as declared; > 0 for `positive`,
        symmetric positive definite for `psd`); the raw parameter keeps its dtype and device."""
        var = self._learnable(name)
        raw = self.learnables[name]
        value = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
        if tuple(value.shape) != var.shape:
            raise ValueError(f"{self.plan_name}: learnable '{name}' has shape {var.shape}, got {tuple(value.shape)}")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{self.plan_name}: learnable '{name}' must be finite")
        if var.positive and not bool((value > 0).all()):
            raise ValueError(f"{self.plan_name}: learnable '{name}' is `positive`; got a value <= 0")
        if var.psd and not bool((torch.linalg.eigvalsh(0.5 * (value + value.T)) > 0).all()):
            raise ValueError(f"{self.plan_name}: learnable '{name}' is `psd`; got a matrix that is not positive definite")
        with torch.no_grad():
            raw.copy_(self._raw(var, value).to(dtype=raw.dtype, device=raw.device))

    def _learnable(self, name: str) -> VarInfo:
        if name not in self.learnables:
            hint = did_you_mean(name, self.learnables)
            raise KeyError(f"{self.plan_name}: no learnable named '{name}'" + (f"; {hint}" if hint else "")
                           + f" (learnables: {', '.join(self.learnables) or 'none'})")
        return self.info.variables[name]

    def inputs(self) -> dict[str, VarInfo]:
        """What `forward` accepts: initial states, inputs and params, by name."""
        return {name: v for name, v in self.info.variables.items() if v.ref.kind in _BINDABLE}

    def default(self, name: str) -> torch.Tensor | None:
        buffer = self._defaults.get(name)
        return None if buffer is None else getattr(self, buffer)

    # ------------------------------------------------------------------ binding
    def reject_unknown(self, values: dict) -> None:
        """TypeError naming the first of `values` that is not an input, param or state of the plan."""
        accepted = self.inputs()
        for name in values:
            if name not in accepted:
                hint = did_you_mean(name, accepted)
                raise TypeError(f"{self.plan_name}: unexpected input '{name}'" + (f"; {hint}" if hint else "")
                                + f" (accepted: {', '.join(accepted)})")

    def bind(self, values: dict, initial_states: bool = True, like: torch.Tensor | None = None
             ) -> tuple[dict[VarRef, torch.Tensor], torch.Tensor | None, torch.Tensor]:
        """(env, x0, like): every non-decision value batch-first, x0 (B, n), and a dtype/device witness.

        `initial_states=False` skips the states (x0 is then None): stepping the dynamics needs
        no initial state. `like` imposes a dtype and device (default: the tensors passed in).
        """
        self.reject_unknown(values)
        like = self._witness(values) if like is None else like
        env: dict[VarRef, torch.Tensor] = {}
        states = []
        batches: dict[str, int] = {}
        for name, var in self.info.variables.items():
            if var.ref.kind is VarKind.CONTROL or (var.ref.kind is VarKind.STATE and not initial_states):
                continue
            if var.ref.kind is VarKind.LEARN:
                value = self.learned(name).to(dtype=like.dtype, device=like.device).unsqueeze(0)
            else:
                value = self._batched(var, values.get(name), like)
                batches[name] = value.shape[0]
            if var.ref.kind is VarKind.STATE:
                states.append(value.reshape(value.shape[0], -1))
            else:
                env[var.ref] = value
        size = self._batch_size(batches)
        x0 = torch.cat([s.expand(size, -1) for s in states], dim=1) if states else None
        for name, callee in self.info.blocks.items():
            env[callee.ref] = self.blocks[name]
        return env, x0, like

    def _batch_size(self, batches: dict[str, int]) -> int:
        """The common batch size B of the bound values (each B or 1), naming the ones that disagree."""
        sizes = {b for b in batches.values() if b != 1}
        if len(sizes) > 1:
            detail = ", ".join(f"'{name}' {b}" for name, b in batches.items() if b != 1)
            raise ValueError(f"{self.plan_name}: inconsistent batch sizes: {detail} "
                             "(each value has batch size B or 1, or no batch dimension)")
        return sizes.pop() if sizes else 1

    def _witness(self, values: dict) -> torch.Tensor:
        for value in values.values():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                return torch.zeros((), dtype=value.dtype, device=value.device)
        learnable = next(iter(self.parameters()), None)
        ref = next(iter(self.buffers()), None) if learnable is None else learnable
        return torch.zeros((), dtype=self.dtype if learnable is None else learnable.dtype,
                           device=ref.device if ref is not None else "cpu")

    def _batched(self, var: VarInfo, value, like: torch.Tensor) -> torch.Tensor:
        name = var.ref.name
        if value is None:
            value = self.default(name)
            if value is None:
                raise TypeError(f"{self.plan_name}: {var.ref.kind.value} '{name}' has no default; pass {name}=...")
        value = torch.as_tensor(value)
        if value.dtype is torch.bool or value.is_complex():
            raise TypeError(f"{self.plan_name}: '{name}' is a {value.dtype} tensor; pass real numbers")
        value = value.to(dtype=like.dtype, device=like.device)
        shape = var.shape
        if tuple(value.shape) == shape:
            return value.unsqueeze(0)
        if value.dim() == len(shape) + 1 and tuple(value.shape[1:]) == shape:
            if value.shape[0] == 0:
                raise ValueError(f"{self.plan_name}: empty batch: '{name}' has batch size 0")
            return value
        want = f"({', '.join(map(str, shape))})" if shape else "a scalar"
        rows = ""
        if var.per_stage:
            which = "T" if shape[0] == self.horizon else "T+1"
            rows = f": time-indexed, its leading dimension is {which} = {shape[0]} (horizon T = {self.horizon})"
        raise ValueError(f"{self.plan_name}: '{name}' has shape {tuple(value.shape)}; expected {want} "
                         f"or (B, {', '.join(map(str, shape))})".replace("(B, )", "(B,)") + rows)

    # ------------------------------------------------------------------ solving
    def forward(self, warm_start: torch.Tensor | None = None, **values) -> Solution:
        """Solve from the bound values; `warm_start` (T, m) or (B, T, m) seeds iterative solvers' controls.
        Grid plans return `runtime.grid.GridSolution` (values, logits, path, reached); joint plans
        (`agents N`) bind states and inputs with an agent axis and return
        `compiler.lower.joint.JointSolution`."""
        if self.info.family == "grid":
            env, _, like = self.bind(values, initial_states=False)
            return self.backend(env, like)
        if self.info.family == "joint":       # agent axis in states and inputs: compiler.lower.joint
            return self.backend.solve(self, values)
        env, x0, like = self.bind(values)
        if warm_start is not None:
            warm_start = self._warm_start(warm_start, x0.shape[0], like)
        return self._solve(env, x0, like, warm_start)

    def solve_with(self, values: dict, learned: dict[str, torch.Tensor] | None = None,
                   warm_start: torch.Tensor | None = None) -> Solution:
        """Solve with `values` bound by name (as `forward`) and learnables given by their constrained
        VALUE (B or 1 leading) instead of the module's parameters: for gradient checks that perturb
        a learnable's value directly. `warm_start` as in `forward`."""
        self._require_trajectory("solve_with")
        env, x0, like = self.bind(values)
        for name, value in (learned or {}).items():
            env[self._learnable(name).ref] = value.to(like)
        warm = None if warm_start is None else self._warm_start(warm_start, x0.shape[0], like)
        return self._solve(env, x0, like, warm)

    def _solve(self, env, x0: torch.Tensor, like: torch.Tensor, warm: torch.Tensor | None) -> Solution:
        """The backend's solve, with failures as statuses (module docstring)."""
        return self._guarded(lambda: self.backend(env, x0, like, warm), x0.shape[0], like)

    def _guarded(self, solve, batch: int, like: torch.Tensor) -> Solution:
        """solve() -> Solution, with an exception as status 'numerical' for all `batch` elements and
        non-finite solved elements as 'numerical' (module docstring)."""
        try:
            sol = solve()
        except (RuntimeError, ArithmeticError) as err:
            warnings.warn(f"{self.plan_name}: solve {self.solver} failed ({type(err).__name__}: {err}); "
                          "every batch element gets status 'numerical'", RuntimeWarning, stacklevel=4)
            T, n, m = self.horizon, self.layout.n, self.layout.m
            failed = torch.full((batch,), int(Status.NUMERICAL), dtype=torch.int64, device=like.device)
            sol = Solution(like.new_full((batch, T + 1, n), torch.nan), like.new_full((batch, T, m), torch.nan),
                           like.new_full((batch,), torch.nan), failed, self.solver)
        else:
            if not getattr(self.backend, "statuses_final", False):
                finite = torch.isfinite(sol.cost) & torch.isfinite(sol.x).flatten(1).all(1) & \
                    torch.isfinite(sol.u).flatten(1).all(1)
                sol.status = torch.where((sol.status == Status.SOLVED) & ~finite, int(Status.NUMERICAL), sol.status)
        sol.layout = self._solution_layout()
        return sol

    def _require_trajectory(self, what: str) -> None:
        """Raise a clear error when `what` (a trajectory-family method) is called on a grid or joint plan."""
        family = self.info.family
        if family == "grid":
            raise ValueError(f"{self.plan_name}: {what} is for trajectory plans; a grid plan has no states or "
                             "controls to step: call the module (occupancy=, goal=, start=)")
        if family == "joint":
            raise ValueError(f"{self.plan_name}: {what} is for single-agent trajectory plans; a joint plan "
                             "(`agents N`) is solved by calling the module (x=(B, N, n), inputs with an agent axis)")

    def controller(self, **values) -> "Controller":
        """A receding-horizon controller of this plan with `values` bound once (as `forward` binds
        them; initial states are not bound): `controller(x)` solves from the state x (B, n)
        warm-started with its previous plan shifted by one stage. See `Controller`."""
        self._require_trajectory("controller")
        env, _, like = self.bind(values, initial_states=False)
        return Controller(self, env, like)

    def _warm_start(self, warm: torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
        want = (self.horizon, self.layout.m)
        warm = torch.as_tensor(warm)
        if tuple(warm.shape[-2:]) != want or warm.dim() not in (2, 3) or \
                (warm.dim() == 3 and warm.shape[0] not in (1, batch)):
            raise ValueError(f"{self.plan_name}: warm_start has shape {tuple(warm.shape)}; expected (T, m) = {want} "
                             f"or (B, T, m) = ({batch}, {want[0]}, {want[1]}) (horizon T={self.horizon}, "
                             f"m={self.layout.m} controls)")
        return warm.to(dtype=like.dtype, device=like.device).expand(batch, -1, -1)

    def step(self, x: torch.Tensor, u: torch.Tensor, **values) -> torch.Tensor:
        """One step of the plan's dynamics: x (B, n), u (B, m) -> x' (B, n) (values bind params/inputs).

        (n,) and (m,) are taken as a batch of one. The control is first clipped to the plan's
        control bounds (`control u in [lo, hi]`), as the true system would saturate it.
        """
        self._require_trajectory("step")
        like = torch.zeros((), dtype=x.dtype, device=x.device) if torch.is_tensor(x) and x.is_floating_point() else None
        env, _, like = self.bind(values, initial_states=False, like=like)
        x, u = self._stacked(x, self.layout.n, "x", "states", like), self._stacked(u, self.layout.m, "u", "controls", like)
        if x.shape[0] != u.shape[0] and 1 not in (x.shape[0], u.shape[0]):
            raise ValueError(f"{self.plan_name}: step got batch sizes {x.shape[0]} (x) and {u.shape[0]} (u)")
        batch = max(x.shape[0], u.shape[0])
        return self.backend.step(env, x.expand(batch, -1), self._saturated(env, u.expand(batch, -1), like), like)

    def _stacked(self, value, size: int, what: str, words: str, like: torch.Tensor) -> torch.Tensor:
        value = torch.as_tensor(value)
        if value.dtype is torch.bool or value.is_complex():
            raise TypeError(f"{self.plan_name}: step: {what} is a {value.dtype} tensor; pass real numbers")
        value = value.to(dtype=like.dtype, device=like.device)
        if value.dim() == 1:
            value = value.unsqueeze(0)
        if value.dim() != 2 or value.shape[1] != size or value.shape[0] == 0:
            raise ValueError(f"{self.plan_name}: step: {what} has shape {tuple(value.shape)}; expected (B, {size}) "
                             f"with the plan's {size} {words} stacked")
        return value

    def _saturated(self, env, u: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """u (B, m) clipped to this plan's control bounds (+-inf where a control has none)."""
        lower, upper = self.backend.control_bounds(env, like)
        return u if lower is None else torch.minimum(torch.maximum(u, lower[:, 0]), upper[:, 0])

    def trajectory_cost(self, x: torch.Tensor, u: torch.Tensor, **values) -> torch.Tensor:
        """J(x, u) (B,) of a given trajectory x (B, T+1, n), u (B, T, m): the stage costs summed
        over t < T plus the final cost at x_T; differentiable in x, u, the values and learnables."""
        self._require_trajectory("trajectory_cost")
        env, _, like = self.bind(values, initial_states=False, like=torch.zeros((), dtype=x.dtype, device=x.device))
        B, T = u.shape[:2]
        rows = {ref: v.repeat_interleave(T, dim=0) if torch.is_tensor(v) and v.shape[0] == B > 1 else v
                for ref, v in env.items()}                          # (blocks' modules stay as they are)
        states = self.backend.with_clock(x[:, :-1])                # stage t's data at row t (compiler.lower.stages)
        stages = self.backend.stage_cost(rows, states.reshape(B * T, -1), u.reshape(B * T, -1), like)
        return stages.reshape(B, T).sum(1) + self.backend.final_cost(env, x[:, -1], like)

    def simulate(self, steps: int, system: "PlanModule | None" = None, **values) -> Solution:
        """Closed-loop receding-horizon MPC for `steps` steps.

        At each step the plan is solved from the current state (iterative solvers warm-started
        with the previous controls shifted by one stage), its first control is applied (clipped to
        the true system's control bounds), and the true system advances: the plan's own dynamics,
        or `system`, another compiled plan with the same states and controls (e.g. other masses). Returns a `Solution` of the executed
        trajectory: x (B, steps+1, n), u (B, steps, m), the realized cost (stage costs along the
        way plus the final cost), status (B,) the worst status over all solves, `step_status`
        (B, steps) and iterations summed over the solves.
        """
        self._require_trajectory("simulate")
        if steps < 1:
            raise ValueError("simulate needs steps >= 1")
        if system is not None and (system.layout.n, system.layout.m) != (self.layout.n, self.layout.m):
            raise ValueError(f"system '{system.plan_name}' has n={system.layout.n}, m={system.layout.m}; "
                             f"the plan has n={self.layout.n}, m={self.layout.m}")
        env, x, like = self.bind(values)
        system = self if system is None else system
        true_env = env if system is self else system.bind({}, initial_states=False, like=like)[0]
        control = Controller(self, env, like)
        xs, us, statuses, iterations = [x], [], [], 0
        cost = like.new_zeros(x.shape[0])
        for _ in range(steps):
            sol = control(x)
            u = system._saturated(true_env, sol.u[:, 0], like)
            cost = cost + self.backend.stage_cost(env, x, u, like)
            x = system.backend.step(true_env, x, u, like)
            xs.append(x)
            us.append(u)
            statuses.append(sol.status)
            if sol.iterations is not None:
                iterations = iterations + sol.iterations
        step_status = torch.stack(statuses, dim=1)
        out = Solution(torch.stack(xs, 1), torch.stack(us, 1), cost + self.backend.final_cost(env, x, like),
                       step_status.max(dim=1).values, f"{self.solver} (closed loop)",
                       iterations=iterations if torch.is_tensor(iterations) else None)
        out.layout = self._solution_layout()
        out.step_status = step_status
        return out

    def drive(self, steps: int | None = None, seed: int | None = None, env=None, start=None, **values):
        """Closed-loop MPC on a gymnasium environment; returns `runtime.gym_env.Episode`.

        Each step maps the observation to the plan's state (the `env` block's `state = ...`; after the
        first step its `update = ...` when it has one, from the previous state and control), solves
        from it warm-started with the previous plan shifted by one stage, and applies the first
        control; the episode's return is the sum of the environment's own rewards. `env` is an
        environment object or id (default: the plan's `env` block), `steps` the episode length
        (default: the block's), `start(env) -> obs` optionally sets the initial state after reset.
        """
        from runtime.gym_env import make_env, run_episode

        self._require_trajectory("drive")
        spec = self.info.env
        if spec is None and (env is None or isinstance(env, str)):
            raise ValueError(f"{self.plan_name}: the plan has no `env` block, so it cannot say how an "
                             "observation maps to its state")
        gym = make_env(env or spec.id) if env is None or isinstance(env, str) else env
        control = self.controller(**values)
        last: dict = {}                  # the previous state and the control applied (for `update`)

        def controller(obs: torch.Tensor) -> torch.Tensor:
            obs = obs.to(control.like).reshape(1, -1)
            x = spec.observe(control.env, obs, control.like) if not last else \
                spec.advance(control.env, self.layout.numeric(last["x"], last["u"]), obs, control.like)
            u = control(x).u[:, 0]
            last.update(x=x, u=u)
            return u[0]

        with torch.no_grad():
            return run_episode(gym, controller, steps or spec.steps, seed=seed, start=start,
                               dtype=control.like.dtype)

    def _solution_layout(self) -> dict:
        if self._layout_map is None:
            self._layout_map = self._names_to_slices()
        return dict(self._layout_map)

    def _names_to_slices(self) -> dict:
        out, offsets = {}, self.layout.offsets()
        n = self.layout.n
        for var in self.layout.states + self.layout.controls:
            s = offsets[var.ref]
            which = "x" if var.ref.kind is VarKind.STATE else "u"
            part = s if which == "x" else slice(s.start - n, s.stop - n)
            out[var.ref.name] = (which, part, var.shape)
        return out

    def extra_repr(self) -> str:
        return (f"plan={self.plan_name}, solver={self.solver}, horizon={self.horizon}, "
                f"n={self.layout.n}, m={self.layout.m}")


class Controller:
    """Receding-horizon control with a compiled plan, its values bound once (`PlanModule.controller`).

    `controller(x)` solves the plan from the state x (B, n), warm-started with the previous
    solve's controls shifted by one stage (the last one repeated; none on the first call), and
    returns the `Solution` (apply `sol.u[:, 0]`), with the module's failure rule: an exception
    or a non-finite solved element gives status 'numerical'. The backend's per-solve set-up
    (for mppi/cem: the bound rollout functions, limits, noise and the compiled iterations) is
    made once per batch size and reused, so a call costs the solve itself. The values, the
    learnables included, are those at creation: make a new controller after changing them.
    The warm start is kept detached; `reset()` forgets it.
    """

    def __init__(self, module: PlanModule, env: dict, like: torch.Tensor):
        self.module, self.env, self.like = module, env, like
        self.warm: torch.Tensor | None = None
        self._solve, self._batch = None, None

    def reset(self) -> None:
        self.warm = None

    def _prepared(self, batch: int):
        backend = self.module.backend
        if hasattr(backend, "prepare"):
            return backend.prepare(self.env, batch, self.like)
        return lambda x, warm: backend(self.env, x, self.like, warm)

    def __call__(self, x: torch.Tensor) -> Solution:
        x = x.to(self.like)
        batch = x.shape[0]
        if batch != self._batch:
            self._solve, self._batch = self._prepared(batch), batch
            if self.warm is not None and self.warm.shape[0] != batch:
                self.warm = None
        sol = self.module._guarded(lambda: self._solve(x, self.warm), batch, self.like)
        self.warm = torch.cat((sol.u[:, 1:], sol.u[:, -1:]), dim=1).detach()
        return sol
