"""`PlanModule`: a compiled plan as a `torch.nn.Module`.

Learnables are `nn.Parameter`s in an unconstrained parametrization: `positive` values are
softplus(raw) + tiny > 0 and `psd` matrices are L L' with L = tril(raw), so any optimizer step keeps
them valid. Params and defaults are buffers. `module(**values)` binds states' initial values,
inputs and params by name (a leading batch dimension is allowed), and returns a `Solution`.
"""
from __future__ import annotations


import networkx as nx
import torch
from torch import nn

from compiler.context import PlanInfo, VarInfo
from compiler.defaults import default_value
from compiler.ir import VarRef
from compiler.layout import Layout
from compiler.lower.backends import BACKENDS
from compiler.solution import Solution
from planlang.ast import VarKind
from planlang.errors import did_you_mean

_BINDABLE = (VarKind.STATE, VarKind.INPUT, VarKind.PARAM)


def inverse_softplus(v: torch.Tensor) -> torch.Tensor:
    """softplus^{-1}(v) = v + log(1 - exp(-v)) for v > 0."""
    return v + torch.log(-torch.expm1(-v))


class PlanModule(nn.Module):
    def __init__(self, graph: nx.DiGraph, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.graph = graph
        self.info: PlanInfo = graph.graph["plan_info"]
        self.layout = Layout.of(self.info)
        self.plan_name = graph.graph.get("name") or "plan"
        self.learnables = nn.ParameterDict()
        self._defaults: dict[str, str] = {}
        for var in self.info.variables.values():
            value = default_value(var)
            if var.ref.kind is VarKind.LEARN:
                self.learnables[var.ref.name] = nn.Parameter(self._raw(var, value).to(dtype))
            elif value is not None and var.ref.kind is not VarKind.CONTROL:
                buffer = f"default_{var.ref.kind.value}_{var.ref.name}"
                self.register_buffer(buffer, value.to(dtype))
                self._defaults[var.ref.name] = buffer
        self.backend = BACKENDS[self.info.solver](graph, self.info, self.layout)

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
        """The constrained value of learnable `name` (softplus / L L' applied)."""
        var = self.info.variables[name]
        raw = self.learnables[name]
        if var.positive:        # + tiny: softplus underflows to 0 for very negative raw values
            return nn.functional.softplus(raw) + torch.finfo(raw.dtype).tiny
        if var.psd:
            L = torch.tril(raw)
            return L @ L.transpose(-1, -2)
        return raw

    def learned_values(self) -> dict[str, torch.Tensor]:
        return {name: self.learned(name) for name in self.learnables}

    def inputs(self) -> dict[str, VarInfo]:
        """What `forward` accepts: initial states, inputs and params, by name."""
        return {name: v for name, v in self.info.variables.items() if v.ref.kind in _BINDABLE}

    def default(self, name: str) -> torch.Tensor | None:
        buffer = self._defaults.get(name)
        return None if buffer is None else getattr(self, buffer)

    # ------------------------------------------------------------------ binding
    def bind(self, values: dict, initial_states: bool = True, like: torch.Tensor | None = None
             ) -> tuple[dict[VarRef, torch.Tensor], torch.Tensor | None, torch.Tensor]:
        """(env, x0, like): every non-decision value batch-first, x0 (B, n), and a dtype/device witness.

        `initial_states=False` skips the states (x0 is then None): stepping the dynamics needs
        no initial state. `like` imposes a dtype and device (default: the tensors passed in).
        """
        accepted = self.inputs()
        for name in values:
            if name not in accepted:
                hint = did_you_mean(name, accepted)
                raise TypeError(f"{self.plan_name}: unexpected input '{name}'" + (f"; {hint}" if hint else "")
                                + f" (accepted: {', '.join(accepted)})")
        like = self._witness(values) if like is None else like
        env: dict[VarRef, torch.Tensor] = {}
        states = []
        for name, var in self.info.variables.items():
            if var.ref.kind is VarKind.CONTROL or (var.ref.kind is VarKind.STATE and not initial_states):
                continue
            if var.ref.kind is VarKind.LEARN:
                value = self.learned(name).to(dtype=like.dtype, device=like.device).unsqueeze(0)
            else:
                value = self._batched(var, values.get(name), like)
            if var.ref.kind is VarKind.STATE:
                states.append(value.reshape(value.shape[0], -1))
            else:
                env[var.ref] = value
        batch = {v.shape[0] for v in list(env.values()) + states} - {1}
        if len(batch) > 1:
            raise ValueError(f"{self.plan_name}: inconsistent batch sizes {sorted(batch)}")
        size = batch.pop() if batch else 1
        x0 = torch.cat([s.expand(size, -1) for s in states], dim=1) if states else None
        return env, x0, like

    def _witness(self, values: dict) -> torch.Tensor:
        for value in values.values():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                return torch.zeros((), dtype=value.dtype, device=value.device)
        ref = next(iter(self.parameters()), None)
        ref = next(iter(self.buffers()), None) if ref is None else ref
        return torch.zeros((), dtype=ref.dtype if ref is not None else torch.float32,
                           device=ref.device if ref is not None else "cpu")

    def _batched(self, var: VarInfo, value, like: torch.Tensor) -> torch.Tensor:
        name = var.ref.name
        if value is None:
            value = self.default(name)
            if value is None:
                raise TypeError(f"{self.plan_name}: {var.ref.kind.value} '{name}' has no default; pass {name}=...")
        value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
        shape = var.shape
        if tuple(value.shape) == shape:
            return value.unsqueeze(0)
        if value.dim() == len(shape) + 1 and tuple(value.shape[1:]) == shape:
            return value
        want = f"({', '.join(map(str, shape))})" if shape else "a scalar"
        raise ValueError(f"{self.plan_name}: '{name}' has shape {tuple(value.shape)}; expected {want} "
                         f"or (B, {', '.join(map(str, shape))})".replace("(B, )", "(B,)"))

    # ------------------------------------------------------------------ solving
    def forward(self, warm_start: torch.Tensor | None = None, **values) -> Solution:
        """Solve from the bound values; `warm_start` (B, T, m) seeds iterative solvers' controls."""
        env, x0, like = self.bind(values)
        if warm_start is not None:
            warm_start = warm_start.to(dtype=like.dtype, device=like.device).expand(x0.shape[0], -1, -1)
        sol = self.backend(env, x0, like, warm_start)
        sol.layout = self._solution_layout()
        return sol

    def step(self, x: torch.Tensor, u: torch.Tensor, **values) -> torch.Tensor:
        """One step of the plan's dynamics: x (B, n), u (B, m) -> x' (B, n) (values bind params/inputs)."""
        like = torch.zeros((), dtype=x.dtype, device=x.device) if x.is_floating_point() else None
        env, _, like = self.bind(values, initial_states=False, like=like)
        return self.backend.step(env, x.to(like.dtype), u.to(like.dtype), like)

    def trajectory_cost(self, x: torch.Tensor, u: torch.Tensor, **values) -> torch.Tensor:
        """J(x, u) (B,) of a given trajectory x (B, T+1, n), u (B, T, m): the stage costs summed
        over t < T plus the final cost at x_T; differentiable in x, u, the values and learnables."""
        env, _, like = self.bind(values, initial_states=False, like=torch.zeros((), dtype=x.dtype, device=x.device))
        B, T = u.shape[:2]
        rows = {ref: v.repeat_interleave(T, dim=0) if v.shape[0] == B > 1 else v for ref, v in env.items()}
        stages = self.backend.stage_cost(rows, x[:, :-1].reshape(B * T, -1), u.reshape(B * T, -1), like)
        return stages.reshape(B, T).sum(1) + self.backend.final_cost(env, x[:, -1], like)

    def simulate(self, steps: int, system: "PlanModule | None" = None, **values) -> Solution:
        """Closed-loop receding-horizon MPC for `steps` steps.

        At each step the plan is solved from the current state (iterative solvers warm-started
        with the previous controls shifted by one stage), its first control is applied, and the
        true system advances: the plan's own dynamics, or `system`, another compiled plan with
        the same states and controls (e.g. other masses). Returns a `Solution` of the executed
        trajectory: x (B, steps+1, n), u (B, steps, m), the realized cost (stage costs along the
        way plus the final cost), status (B,) the worst status over all solves, `step_status`
        (B, steps) and iterations summed over the solves.
        """
        if steps < 1:
            raise ValueError("simulate needs steps >= 1")
        if system is not None and (system.layout.n, system.layout.m) != (self.layout.n, self.layout.m):
            raise ValueError(f"system '{system.plan_name}' has n={system.layout.n}, m={system.layout.m}; "
                             f"the plan has n={self.layout.n}, m={self.layout.m}")
        env, x, like = self.bind(values)
        true_env = env if system is None else system.bind({}, initial_states=False, like=like)[0]
        true_backend = self.backend if system is None else system.backend
        xs, us, statuses, iterations, warm = [x], [], [], 0, None
        cost = like.new_zeros(x.shape[0])
        for _ in range(steps):
            sol = self.backend(env, x, like, warm)
            u = sol.u[:, 0]
            cost = cost + self.backend.stage_cost(env, x, u, like)
            x = true_backend.step(true_env, x, u, like)
            warm = torch.cat([sol.u[:, 1:], sol.u[:, -1:]], dim=1).detach()
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

    def _solution_layout(self) -> dict:
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


