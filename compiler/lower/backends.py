"""Solver backends: a registry keyed by solver name, each turning bound tensors into a `Solution`.

A backend receives the checked graph once (at compile time) and, per call, the bound values of
params, inputs and learnables (`env`, batch-first, B or 1), the initial state x0 (B, n) and an
optional warm start for the controls (B, T, m).
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Protocol

import networkx as nx
import torch

from compiler import quadform as qf
from compiler.codegen import StackedFunction
from compiler.context import PlanInfo
from compiler.evaluate import Env, evaluate
from compiler.integrators import INTEGRATORS
from compiler.layout import Layout
from compiler.lower.native import NativePlan, native_plan
from compiler.lower.quadratic import QuadraticData, extract, sum_costs
from compiler.lower.stages import StageValues
from compiler.problem import Placement, TrajectoryProblem
from compiler.solution import Solution
from planlang.ast import Cmp
from planlang.errors import Collector
from runtime.ilqr import ILQRBackward, ILQROptions, ILQRProblem, ILQRShooting, ilqr
from runtime.ilqr_constraints import ConstraintOptions
from runtime.ilqr_derivatives import ExactDerivatives, rowwise_jacobian
from runtime.lqr import lqr
from runtime.native import NativeKernels, NativeUnavailable, native_library
from runtime.qp import QPOptions, qp


class Backend(Protocol):
    def __call__(self, env: Env, x0: torch.Tensor, like: torch.Tensor, warm: torch.Tensor | None) -> Solution: ...

    def prepare(self, env: Env, batch: int, like: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor | None], Solution]:
        """(x0 (B, n), warm) -> Solution with `env` bound, for repeated solves (closed loop)."""


class _Lowered:
    """What every backend shares: the plan's layout, transition and cost expressions."""

    statuses_final = False      # True: its solutions already mark non-finite elements 'numerical'

    def __init__(self, graph: nx.DiGraph, info: PlanInfo, layout: Layout):
        self.info, self.layout, self.horizon = info, layout, info.horizon
        self.parts = TrajectoryProblem.of(graph, layout)
        self.transition = self.parts.transition
        self.stage_costs, self.final_costs = self.parts.stage_costs, self.parts.final_costs
        # Rollouts call the dynamics T times per trial: one generated function of the stacked (x, u)
        # for all states (and one for all stage / final costs) shares sub-expressions and needs no
        # per-call dict of named values.
        n, offsets, slices = layout.n, layout.offsets(), {}
        for var in layout.states + layout.controls:
            s = offsets[var.ref]
            vec, s = ("x", s) if s.start < n else ("u", slice(s.start - n, s.stop - n))
            slices[var.ref] = (vec, s, var.shape == ())
        self._slices = slices
        self._field = StackedFunction(tuple(self.transition.exprs[v.ref] for v in layout.states),
                                      tuple(v.size for v in layout.states), slices, "dynamics")
        self._stage = StackedFunction(tuple(self.stage_costs), (1,) * len(self.stage_costs), slices, "stage_costs") \
            if self.stage_costs else None
        self._final = StackedFunction(tuple(self.final_costs), (1,) * len(self.final_costs), slices, "final_costs") \
            if self.final_costs else None
        # Stage values (`t`, `ref[t]`): the callables carry a clock state after the plan's states
        # (see compiler.lower.stages); `clocked` says whether they do.
        self.stage_values = StageValues(info, [*self.transition.exprs.values(), *self.stage_costs,
                                               *(c[0] for c in self.parts.constraints)])
        self.clocked = bool(self.stage_values)

    def as_text(self) -> str:
        """The lowered plan: solver, options and the generated code of dynamics and costs."""
        options = ", ".join(f"{k}={v}" for k, v in self.info.options.items())
        functions = [f for f in (self._field, self._stage, self._final) if f is not None]
        head = f"{type(self).__name__}: solve {self.info.solver}({options}), horizon {self.horizon}, " \
               f"n={self.layout.n}, m={self.layout.m}, exact jets: {'yes' if self.parts.has_jets else 'no (autodiff)'}"
        if self.stage_values:
            names = ", ".join("t" if r.name == "t" else f"{r.name}[t]" for r in self.stage_values.refs)
            head += f", stage values: {names}"
        return "\n".join([head] + [f.source for f in functions])

    def _bind(self, fn: StackedFunction, env: Env, like: torch.Tensor):
        """fn bound to `env`: (x, u) -> (B, k). A clocked plan's x may carry the clock in its last
        column (B, n+1), whose rows of the stage values are gathered per call; without it, the
        stage is 0."""
        if not self.clocked:
            return fn.bind(env, like)
        env, n, values = self.stage_values.with_tables(env, like), self.layout.n, self.stage_values

        def call(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            clock = x[:, n] if x.shape[1] > n else x.new_zeros(x.shape[0])
            return fn.bind({**env, **values.at_clock(env, clock)}, like)(x[:, :n], u)
        return call

    def with_clock(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """x (B, n) or (B, T, n) with the clock appended for a clocked plan (stage start, or
        start..start+T-1 along the time axis); x itself otherwise."""
        if not self.clocked:
            return x
        if x.dim() == 2:
            return torch.cat((x, x.new_full((x.shape[0], 1), float(start))), 1)
        clock = torch.arange(start, start + x.shape[1], dtype=x.dtype, device=x.device)
        return torch.cat((x, clock.expand(x.shape[0], -1).unsqueeze(-1)), 2)

    def without_clock(self, x: torch.Tensor) -> torch.Tensor:
        """The plan's states of a (possibly) clocked x (..., n or n+1)."""
        return x[..., :self.layout.n]

    def build_kernels(self) -> None:
        """Build ahead of the first solve what it would otherwise build (ilqr's native kernels), so
        that timed solves exclude it; nothing for most backends."""

    def prepare(self, env: Env, batch: int, like: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor | None], Solution]:
        """(x0 (B, n), warm (B, T, m) or None) -> Solution with `env` bound, for repeated solves
        of batch size B (closed-loop control); backends with per-solve set-up to hoist override it."""
        return lambda x0, warm: self(env, x0, like, warm)

    def dynamics(self, env: Env, like: torch.Tensor):
        """(x (B, n), u (B, m)) -> x_{t+1} (B, n) with `env` bound (integrated if continuous); a
        clocked x (B, n+1) advances its clock by one."""
        field, integrator = self._bind(self._field, env, like), self.transition.integrator
        if not self.clocked:
            if integrator is None:
                return field
            integrate, dt = INTEGRATORS[integrator[0]], integrator[1]
            return lambda x, u: integrate(lambda s: {"x": field(s["x"], u)}, {"x": x}, dt)["x"]
        n = self.layout.n
        if integrator is None:
            advance = field
        else:
            integrate, dt = INTEGRATORS[integrator[0]], integrator[1]
            advance = lambda x, u: integrate(lambda s: {"x": field(torch.cat((s["x"], x[:, n:]), 1), u)},
                                             {"x": x[:, :n]}, dt)["x"]
        return lambda x, u: torch.cat((advance(x, u), x[:, n:] + 1), 1) if x.shape[1] > n else advance(x, u)

    def stage_costs_of(self, env: Env, like: torch.Tensor):
        """(x (B, n), u (B, m)) -> the summed stage costs (B,) with `env` bound."""
        if self._stage is None:
            return lambda x, u: x.new_zeros(x.shape[0])
        stage = self._bind(self._stage, env, like)
        return lambda x, u: stage(x, u).sum(1)

    def final_costs_of(self, env: Env, like: torch.Tensor):
        """x (B, n) -> the summed final costs (B,) with `env` bound."""
        if self._final is None:
            return lambda x: x.new_zeros(x.shape[0])
        final, n = self._final.bind(env, like), self.layout.n
        return lambda x: final(x[:, :n], None).sum(1)

    def step(self, env: Env, x: torch.Tensor, u: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """x_{t+1} (B, n) from x (B, n) and u (B, m)."""
        return self.dynamics(env, like)(x, u)

    def stage_cost(self, env: Env, x: torch.Tensor, u: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Sum of the stage costs at (x (B, n), u (B, m)): (B,)."""
        return self.stage_costs_of(env, like)(x, u)

    def final_cost(self, env: Env, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.final_costs_of(env, like)(x)

    def control_bounds(self, env: Env, like) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Control limits as (b, 1, m) tensors (+-inf where a control has none)."""
        controls = self.layout.controls
        if all(v.lower is None for v in controls):
            return None, None
        lows, highs = [], []
        for var in controls:
            for bound, fill, out in ((var.lower, -torch.inf, lows), (var.upper, torch.inf, highs)):
                if bound is None:
                    out.append(like.new_full((1, var.size), fill))
                else:
                    value = qf.pad_rank(evaluate(bound, env, like), 1)
                    out.append(value.expand(value.shape[0], var.size))
        batch = max(t.shape[0] for t in lows + highs)
        cat = lambda parts: torch.cat([p.expand(batch, -1) for p in parts], dim=1).unsqueeze(1)
        return cat(lows), cat(highs)

    def initial_controls(self, env: Env, batch: int, like: torch.Tensor, warm: torch.Tensor | None) -> torch.Tensor:
        """u (B, T, m) to start an iterative solver from: the warm start if given, else the plan's
        `guess` lines (one value for every stage, or one per stage), else zeros."""
        if warm is not None:
            return warm
        u = like.new_zeros(batch, self.horizon, self.layout.m)
        offsets, n = self.layout.offsets(), self.layout.n
        for var in self.layout.controls:
            guess = self.info.guesses.get(var.ref.name)
            if guess is None:
                continue
            per_stage = len(guess.shape) == len(var.shape) + 1 and guess.shape[0] == self.horizon
            value = evaluate(guess, env, like)              # (b, *shape) or (b, T, *shape), broadcastable
            value = value.reshape(value.shape[0], self.horizon if per_stage else 1, -1)
            part = offsets[var.ref]
            u[:, :, part.start - n:part.stop - n] = value.expand(batch, self.horizon, var.size)
        return u

    def initial_nodes(self, env: Env, batch: int, like: torch.Tensor) -> torch.Tensor | None:
        """x (B, T+1, n) from the plan's state `guess` lines (one value for every node, or one per
        node), NaN for the states without one (and the clock of a clocked plan); None without any."""
        states = [var for var in self.layout.states if var.ref.name in self.info.guesses]
        if not states:
            return None
        nodes = self.horizon + 1
        x = like.new_full((batch, nodes, self.layout.n + self.clocked), torch.nan)
        offsets = self.layout.offsets()
        for var in states:
            guess = self.info.guesses[var.ref.name]
            per_node = len(guess.shape) == len(var.shape) + 1 and guess.shape[0] == nodes
            value = evaluate(guess, env, like)
            value = value.reshape(value.shape[0], nodes if per_node else 1, -1)
            x[:, :, offsets[var.ref]] = value.expand(batch, nodes, var.size)
        return x


# ---------------------------------------------------------------- LQR and QP

def _over_stages(t: torch.Tensor, batch: int, horizon: int) -> torch.Tensor:
    """Stage data as (B, T, ...): time-invariant (b, ...) data expanded, time-varying data
    (B*T, ...) (rows b*T + t, `compiler.lower.stages`) reshaped."""
    if t.shape[0] == batch * horizon > 1:
        return t.reshape((batch, horizon) + t.shape[1:])
    t = t.expand((batch,) + t.shape[1:])
    return t.unsqueeze(1).expand((batch, horizon) + t.shape[1:])


def _lqr_data(data: QuadraticData, batch: int, horizon: int) -> dict[str, torch.Tensor]:
    return dict(C=_over_stages(data.C, batch, horizon), c=_over_stages(data.c, batch, horizon),
                F=_over_stages(data.F, batch, horizon), f=_over_stages(data.f, batch, horizon),
                CT=data.CT.expand((batch,) + data.CT.shape[1:]), cT=data.cT.expand((batch,) + data.cT.shape[1:]))


def _constant_cost(data: QuadraticData, batch: int, horizon: int) -> torch.Tensor:
    return _over_stages(data.stage_const, batch, horizon).sum(1) + data.final_const


class _QuadraticLowered(_Lowered):
    def _extract(self, env: Env, like: torch.Tensor, batch: int) -> QuadraticData:
        """The plan's LQR/QP data; stage values are bound for all stages at once (time-varying data)."""
        if not self.stage_values:
            return extract(self.parts, env, like)
        now = self.stage_values.flat(env, like, batch)
        after = any(where is Placement.NEXT and ir.first_stage_value() is not None
                    for ir, _, where in self.parts.constraints)
        return extract(self.parts, env, like, (now, self.stage_values.flat(env, like, batch, 1) if after else now))


class LQRBackend(_QuadraticLowered):
    """`solve lqr`: extract (C, c, F, f, CT, cT) exactly and run the differentiable Riccati solver."""

    def __call__(self, env: Env, x0: torch.Tensor, like: torch.Tensor, warm=None) -> Solution:
        batch = x0.shape[0]
        data = self._extract(env, like, batch)
        sol = lqr(x0, **_lqr_data(data, batch, self.horizon))
        return Solution(sol.x, sol.u, sol.cost + _constant_cost(data, batch, self.horizon), sol.status, "lqr")


class QPBackend(_QuadraticLowered):
    """`solve qp`: the same data plus stage constraints G z <= h, E z = e, by the structured IPM."""

    def __call__(self, env: Env, x0: torch.Tensor, like: torch.Tensor, warm=None) -> Solution:
        batch, horizon = x0.shape[0], self.horizon
        data = self._extract(env, like, batch)
        has_eq = data.E.shape[1] > 0
        options = QPOptions(tol=self.info.options.get("tol"), max_iters=self.info.options["iters"])
        sol = qp(x0, **_lqr_data(data, batch, horizon),
                 G=_over_stages(data.G, batch, horizon), h=_over_stages(data.h, batch, horizon),
                 E=_over_stages(data.E, batch, horizon) if has_eq else None,
                 e=_over_stages(data.e, batch, horizon) if has_eq else None, options=options)
        r = sol.residuals
        residual = torch.maximum(torch.maximum(r.primal, r.dual), r.complementarity)
        return Solution(sol.x, sol.u, sol.cost + _constant_cost(data, batch, horizon), sol.status, "qp",
                        iterations=sol.iterations, residual=residual)


# ---------------------------------------------------------------------- iLQR

class ILQRBackend(_Lowered):
    """`solve ilqr(...)`: callables evaluated from the typed IR; exact stage derivatives from jets.

    The tolerance on the fixed-point residual is floored at 100 eps of the working dtype
    (1.2e-5 in float32): below that, rounding keeps the residual from ever reaching it.
    """

    def __init__(self, graph: nx.DiGraph, info: PlanInfo, layout: Layout):
        super().__init__(graph, info, layout)
        self.native, self.native_why = self._native_plan()
        if self.native is None and info.options["kernels"] == "native":
            errors = Collector()
            errors.add(graph.nodes["solve"]["decl"].span, f"kernels=native cannot take this plan: {self.native_why}",
                       "remove kernels=native (auto runs it on torch)")
            errors.raise_if_any()
        self._constraints = {sense: [(StackedFunction((ir,), (math.prod(ir.shape),), self._slices, f"constraint_{i}"),
                                      where) for i, (ir, s, where) in enumerate(self.parts.constraints) if s is sense]
                             for sense in (Cmp.LE, Cmp.EQ)}

    def __call__(self, env: Env, x0: torch.Tensor, like: torch.Tensor, warm=None) -> Solution:
        batch = x0.shape[0]
        opts = self.info.options
        options = ILQROptions(max_iters=opts["iters"], tol=max(opts["tol"], 100 * torch.finfo(like.dtype).eps),
                              cost_tol=opts["cost_tol"], backward=ILQRBackward[str(opts["backward"]).upper()],
                              newton=opts["model"] == "newton", shooting=ILQRShooting(opts["shooting"]),
                              constraints=ConstraintOptions(tol=opts["constraint_tol"]))

        env = self.stage_values.with_tables(env, like)
        problem = self.problem(env, batch, like)
        x_guess = self.initial_nodes(env, batch, like)
        sol = ilqr(problem, self.with_clock(x0), self.initial_controls(env, batch, like, warm), options, x_guess)
        return Solution(self.without_clock(sol.x), sol.u, sol.cost, sol.status, "ilqr", iterations=sol.iterations,
                        residual=sol.residual, violation=sol.violation)

    def problem(self, env: Env, batch: int, like: torch.Tensor) -> ILQRProblem:
        """The plan as a `runtime.ilqr.ILQRProblem` with `env` bound, for a batch of `batch` (a
        clocked plan's callables take x with the clock, `with_clock`): callables, control limits,
        exact cost derivatives, constraints and the native kernels where they apply."""
        lower, upper = self.control_bounds(env, like)
        env = self.stage_values.with_tables(env, like)
        exact = self._exact(env, like) if self.parts.has_jets else ExactDerivatives()
        dynamics, stage_cost, final_cost = self.dynamics(env, like), self.stage_costs_of(env, like), \
            self.final_costs_of(env, like)
        inequality, equality = (self._constraint(sense, dynamics, env, like) for sense in (Cmp.LE, Cmp.EQ))
        return ILQRProblem(dynamics, stage_cost, final_cost, lower, upper, exact, inequality=inequality,
                           equality=equality, native=self._native_setup(env, batch, like))

    def as_text(self) -> str:
        kernels = "native (C)" if self.native is not None else f"torch ({self.native_why})"
        head, _, rest = super().as_text().partition("\n")
        return f"{head}, kernels: {kernels}\n{rest}"

    def _native_plan(self) -> tuple[NativePlan | None, str]:
        """The plan's generated C model for the native kernels, or None and why not."""
        opts = self.info.options
        if opts["kernels"] == "torch":
            return None, "kernels=torch"
        if opts["shooting"] == "multiple":
            return None, "multiple shooting (shooting=multiple) runs on torch"
        return native_plan(self.parts, self.stage_values)

    def build_kernels(self):
        """The native library (compiled on first use, then cached), or None where the kernels run
        on torch. Without a C compiler, kernels=auto warns once and runs on torch from then on."""
        if self.native is None:
            return None
        try:
            return native_library(self.native.source)
        except NativeUnavailable as why:
            if self.info.options["kernels"] == "native":
                raise
            warnings.warn(f"planlang: iLQR runs on the torch kernels (slower on CPU): {why}", stacklevel=3)
            self.native, self.native_why = None, str(why).splitlines()[0]
            return None

    def _native_setup(self, env: Env, batch: int, like: torch.Tensor):
        """(x0, lo, hi, options, stage_data) -> `runtime.native.NativeKernels` for this call, or None
        where the kernels run on torch. Without a C compiler, kernels=auto warns once and runs on
        torch."""
        library = self.build_kernels()
        if library is None:
            return None
        params, horizon, m = self.native.pack(env, batch), self.horizon, self.layout.m
        return lambda x0, lo, hi, options, stage_data: NativeKernels(library, x0, params, lo, hi, horizon, m,
                                                                     options, stage_data)

    def _constraint(self, sense: Cmp, dynamics, env: Env, like: torch.Tensor):
        """The plan's `constraint` lines of one sense as one callable (x (B, n), u (B, m)) -> (B, p),
        <= 0 or == 0: rows placed at (x_t, u_t) read x and u; rows placed at x_{t+1} (states only)
        read the next state, f(x_t, u_t), so that they hold at x_1..x_T."""
        parts = [(self._bind(fn, env, like), where) for fn, where in self._constraints[sense]]
        if not parts:
            return None

        def rows(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            nxt = dynamics(x, u) if any(where is Placement.NEXT for _, where in parts) else None
            return torch.cat([fn(x, u) if where is Placement.STAGE else fn(nxt, u) for fn, where in parts], dim=1)
        return rows

    def _exact(self, env: Env, like) -> ExactDerivatives:
        """Cost gradients and Hessians of all stages at once, from jets (the dynamics' are autodiff).
        A clocked plan's derivatives get a zero row and column for the clock (after the states)."""
        layout, nz, n = self.layout, self.layout.n + self.layout.m, self.layout.n
        clock = self._insert_clock if self.clocked else lambda L, H: (L, H)

        def flat_env(batch: int, steps: int) -> Env:
            if self.clocked:
                return self.stage_values.flat(env, like, batch)
            return {ref: v.repeat_interleave(steps, dim=0)
                    if isinstance(v, torch.Tensor) and v.shape[0] == batch and batch > 1 else v
                    for ref, v in env.items()}

        def stage_jets(x, u):
            B, T = x.shape[:2]
            x = x[..., :n]
            return {**flat_env(B, T), **layout.jets(x.reshape(B * T, -1), u.reshape(B * T, -1))}, (B, T)

        def stage_cost_derivatives(x, u):
            jets, (B, T) = stage_jets(x, u)
            _, L, H = self._cost_jet(self.stage_costs, jets, like, nz, B * T)
            L, H = clock(L, 2 * H)
            return L.reshape(B, T, -1), H.reshape(B, T, L.shape[-1], L.shape[-1])

        def final_cost_derivatives(xT):
            B = xT.shape[0]
            jets = {**env, **layout.jets(xT[:, :n], None)}
            _, L, H = self._cost_jet(self.final_costs, jets, like, nz, B)
            return clock(L[:, :n], 2 * H[:, :n, :n])

        def dynamics_jacobian(x, u):
            B, T = x.shape[:2]
            step = self.dynamics(flat_env(B, T), like)
            rows = torch.cat((x, u), -1).reshape(B * T, -1)
            _, F = rowwise_jacobian(lambda z: step(z[:, :n], z[:, n:]), rows)
            return F.reshape(B, T, n, nz)

        # The dynamics' Jacobian and curvature come from autodiff of the generated step: 2-3x
        # faster than composing jets through the integrator. Without a clock, the Jacobian
        # takes all stages as rows of one batch (half the time of vmapping over the stages).
        return ExactDerivatives(None if self.clocked else dynamics_jacobian, stage_cost_derivatives,
                                final_cost_derivatives, None)

    def _insert_clock(self, L: torch.Tensor, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient (R, N) and Hessian (R, N, N) with a zero entry for the clock inserted at n."""
        n = self.layout.n
        L = torch.cat((L[:, :n], L.new_zeros(L.shape[0], 1), L[:, n:]), 1)
        H = torch.cat((H[:, :n], H.new_zeros(H.shape[0], 1, H.shape[2]), H[:, n:]), 1)
        H = torch.cat((H[:, :, :n], H.new_zeros(H.shape[0], H.shape[1], 1), H[:, :, n:]), 2)
        return L, H

    @staticmethod
    def _cost_jet(exprs, jets, like, nz: int, rows: int):
        c, L, H = qf.coefficients(sum_costs(exprs, jets, like), nz)
        return c.expand(rows), L.expand(rows, -1), H.expand(rows, -1, -1)
