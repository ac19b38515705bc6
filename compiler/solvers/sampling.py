"""`solve mppi(...)` and `solve cem(...)`: sampling planners (runtime.sampling) on any costs.

They need no derivatives and take non-smooth costs (abs, relu, min, max, clip), neural blocks
and control bounds. `seed` fixes the noise: the same plan gives the same solve every call
(common random numbers, which the gradient estimators assume; see runtime.sampling).
"""
from __future__ import annotations

import torch

from compiler.lower.backends import _Lowered
from compiler.lower.sampled import SampledCallables
from compiler.options import Number, NumberOrList, Option, Schema, Symbol
from compiler.solution import Solution
from compiler.solvers.base import ConstraintSupport, Solver
from runtime.sampling import CEMOptions, MPPIOptions, SamplingPlanner, SamplingProblem

_SAMPLES = Option(Number(integer=True, minimum=1), 256, "sampled control sequences per batch element (K)")
_SEED = Option(Number(integer=True, minimum=0), 0, "seed of the noise (the same seed gives the same plan)")
_FUSE = Option(Symbol(("off", "on")), "off",
               "on: compile the iterations with torch.compile when no gradient is needed (first solve pays it)")


class SamplingBackend(_Lowered):
    """Binds the plan's callables over (B, K) samples and runs one sampling planner.

    One prepared planner (`runtime.sampling.SamplingPlanner`) per batch size, dtype, device and
    limits, kept across calls and rebound to each call's values: with `fuse=on`, torch.compile
    caches its kernels on the planner's problem, so it must be reused. The noise is drawn once
    per planner from `seed` (the same draws a generator re-seeded before every solve gives).
    Limits that need a gradient get a fresh planner per call. Its statuses are final: the
    planner marks an element with a non-finite x, u or cost NUMERICAL."""

    statuses_final = True

    def __init__(self, graph, info, layout, options):
        super().__init__(graph, info, layout)
        self.options = options(info.options)     # runtime MPPIOptions / CEMOptions
        self._planners: dict[tuple, tuple[SampledCallables, SamplingPlanner]] = {}

    def __call__(self, env, x0: torch.Tensor, like: torch.Tensor, warm=None) -> Solution:
        return self._bound(env, x0.shape[0], like)(x0, warm)

    def prepare(self, env, batch: int, like: torch.Tensor):
        """(x0 (B, n), warm (B, T, m) or None) -> Solution, with `env` bound for repeated solves."""
        lower, upper = self.control_bounds(env, like)
        if lower is not None and (lower.requires_grad or upper.requires_grad):
            return lambda x0, warm: self(env, x0, like, warm)     # the limits enter each solve's graph
        return self._bound(env, batch, like)

    def _bound(self, env, batch: int, like: torch.Tensor):
        """A clocked plan (time-indexed data) rolls out (x, clock) from stage 0 (`_Lowered.with_clock`)."""
        env = self.stage_values.with_tables(env, like)
        calls, planner = self._planner(env, like, batch)

        def solve(x0: torch.Tensor, warm: torch.Tensor | None) -> Solution:
            if calls.env is not env:
                calls.rebind(env, like)
            sol = planner(self.with_clock(x0), self.initial_controls(env, batch, like, warm))
            return Solution(self.without_clock(sol.x), sol.u, sol.cost, sol.status, self.info.solver,
                            iterations=sol.iterations)
        return solve

    def _planner(self, env, like: torch.Tensor, batch: int) -> tuple[SampledCallables, SamplingPlanner]:
        lower, upper = self.control_bounds(env, like)
        per_call = lower is not None and (lower.requires_grad or upper.requires_grad)
        limits = None if lower is None else tuple(torch.cat([lower, upper]).flatten().tolist())
        key = (batch, like.dtype, like.device, limits)
        if per_call or key not in self._planners:
            calls = SampledCallables(self, batch, self.options.samples, self.horizon)
            problem = SamplingProblem(calls.dynamics, calls.stage_cost, calls.final_cost, lower, upper,
                                      vectorized_cost=True, fuse=self.info.options["fuse"] == "on")
            generator = torch.Generator(device=like.device).manual_seed(int(self.info.options["seed"]))
            plans = like.new_zeros(batch, self.horizon, self.layout.m)
            entry = calls, SamplingPlanner(problem, self.options, plans, generator, fixed_noise=True)
            if per_call:
                return entry
            self._planners[key] = entry
        return self._planners[key]


class MPPI(Solver):
    name = "mppi"
    doc = "model predictive path integral control: softmin-weighted mean of sampled control sequences"
    options = Schema(samples=_SAMPLES,
                     temperature=Option(Number(minimum=1e-12), 1.0, "lambda of the softmin weights"),
                     noise=Option(NumberOrList(minimum=1e-12), 0.5, "std of the control noise (scalar or per control)"),
                     iters=Option(Number(integer=True, minimum=1), 1, "iterations per solve"),
                     control_cost=Option(Number(minimum=0), 1.0, "weight of the information-theoretic control cost"),
                     seed=_SEED, fuse=_FUSE)
    smooth = False
    exact = False
    constraints = ConstraintSupport.CONTROL_BOX

    def backend(self, graph, info, layout):
        return SamplingBackend(graph, info, layout, lambda o: MPPIOptions(
            samples=o["samples"], temperature=o["temperature"], noise=o["noise"], iters=o["iters"],
            control_cost=o["control_cost"]))


class CEM(Solver):
    name = "cem"
    doc = "cross-entropy method: refit a Gaussian to the elite samples"
    options = Schema(samples=_SAMPLES,
                     elites=Option(Number(integer=True, minimum=1), 32, "samples kept per iteration"),
                     iters=Option(Number(integer=True, minimum=1), 5, "iterations per solve"),
                     noise=Option(NumberOrList(minimum=1e-12), 0.5, "initial std (scalar or per control)"),
                     momentum=Option(Number(minimum=0, maximum=0.999), 0.0, "smoothing of mean and std updates"),
                     min_std=Option(Number(minimum=0), 0.0, "floor of the std"),
                     temperature=Option(Number(minimum=1e-12), 1.0, "lambda of the final soft elite mean"),
                     seed=_SEED, fuse=_FUSE)
    smooth = False
    exact = False
    constraints = ConstraintSupport.CONTROL_BOX

    def validate(self, options, info):
        if options["elites"] > options["samples"]:
            return [f"solve cem needs elites <= samples, got {options['elites']} > {options['samples']}"]
        return []

    def backend(self, graph, info, layout):
        return SamplingBackend(graph, info, layout, lambda o: CEMOptions(
            samples=o["samples"], elites=o["elites"], iters=o["iters"], noise=o["noise"], momentum=o["momentum"],
            min_std=o["min_std"], temperature=o["temperature"]))
