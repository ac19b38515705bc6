"""Grid plans (`grid H x W`): `solve value_iteration(...)` (exact, for known cell costs) and
`solve vin(...)` (a value iteration network, Tamar et al. 2016, learned end to end).

Both return `runtime.grid.GridSolution`: values (B, H, W), logits (B, A) at the start cell, the
greedy path (B, L, 2) from start (at most `max_steps` moves, default H * W) and reached (B,).
The plan reads `input occupancy[H, W]` (1 = obstacle), `input goal[2]` and `input start[2]`
((row, col) cells; float values are rounded). Costs of a grid plan are maps of the cells: the
cost of entering each cell (their sum; 1 everywhere without a cost line).
"""
from __future__ import annotations

import torch
from torch import nn

from compiler.evaluate import evaluate
from compiler.ir import VarRef
from compiler.options import Number, Option, Schema, Symbol
from compiler.solvers.base import ConstraintSupport, Solver
from planlang.ast import VarKind
from planlang.graph import NodeKind
from runtime.grid import solve_value_iteration
from runtime.vin import VIN

_MAX_STEPS = Option(Number(integer=True, minimum=1), None, "greedy rollout length (default H * W)")
OCCUPANCY, GOAL, START = (VarRef(VarKind.INPUT, name) for name in ("occupancy", "goal", "start"))


class GridBackend:
    """Binds the map inputs and runs a grid planner; `network` is its learnable module (or None)."""

    network: nn.Module | None = None

    def __init__(self, graph, info):
        self.info = info
        self.costs = [d["ir"] for _, d in sorted(graph.nodes(data=True)) if d["kind"] is NodeKind.COST]

    def maps(self, env, like: torch.Tensor):
        occupancy = env[OCCUPANCY]
        cells = [torch.round(env[ref]).long() for ref in (GOAL, START)]
        batch = max(occupancy.shape[0], cells[0].shape[0], cells[1].shape[0])
        return (occupancy.expand(batch, -1, -1),) + tuple(c.expand(batch, -1) for c in cells)

    def cost_map(self, env, like: torch.Tensor, batch: int) -> torch.Tensor:
        H, W = self.info.grid.shape
        total = like.new_ones(batch, H, W) if not self.costs else like.new_zeros(batch, H, W)
        for expr in self.costs:
            value = evaluate(expr, env, like)
            total = total + value.reshape(value.shape[0], *([1, 1] if value.dim() == 1 else [H, W]))
        return total

    def as_text(self) -> str:
        options = ", ".join(f"{k}={v}" for k, v in self.info.options.items())
        H, W = self.info.grid.shape
        return f"{type(self).__name__}: solve {self.info.solver}({options}) on a {H} x {W} grid, " \
               f"{self.info.grid.actions} actions"


class ValueIterationBackend(GridBackend):
    def __call__(self, env, like: torch.Tensor):
        occupancy, goal, start = self.maps(env, like)
        o = self.info.options
        return solve_value_iteration(self.cost_map(env, like, occupancy.shape[0]), occupancy, goal, start,
                                     iters=o["iters"], discount=o["discount"], actions=self.info.grid.actions,
                                     max_steps=o["max_steps"])


class VINBackend(GridBackend):
    def __init__(self, graph, info):
        super().__init__(graph, info)
        o = info.options
        self.network = VIN(actions=info.grid.actions, k=o["k"], hidden=o["hidden"], q_channels=o["q_channels"],
                           backward=o["backward"], discount=o["discount"], temperature=o["temperature"])

    def __call__(self, env, like: torch.Tensor):
        occupancy, goal, start = self.maps(env, like)
        return self.network.plan(occupancy, goal, start, self.info.options["max_steps"])


class GridSolver(Solver):
    family = "grid"
    constraints = ConstraintSupport.NONE
    smooth = False

    def accepts(self, graph, info):
        return []


class ValueIteration(GridSolver):
    name = "value_iteration"
    doc = "exact value iteration on the grid for known cell costs (agrees with Dijkstra)"
    options = Schema(iters=Option(Number(integer=True, minimum=1), None, "sweeps (default: until converged)"),
                     discount=Option(Number(minimum=1e-6, maximum=1.0), 1.0, "discount gamma"),
                     max_steps=_MAX_STEPS)

    def backend(self, graph, info, layout):
        return ValueIterationBackend(graph, info)


class ValueIterationNetwork(GridSolver):
    """VIN learns its reward map from (occupancy, goal): a plan's cost lines would be ignored,
    so they are refused (`solve value_iteration` plans with known costs)."""

    name = "vin"
    doc = "value iteration network: conv reward, K value-iteration steps as conv + max, attention, logits"
    options = Schema(k=Option(Number(integer=True, minimum=1), 10, "value-iteration steps K"),
                     actions=Option(Number(integer=True, minimum=4, maximum=8), None, "must match `actions`"),
                     hidden=Option(Number(integer=True, minimum=1), 150, "channels of the reward conv"),
                     q_channels=Option(Number(integer=True, minimum=1), 10, "channels of the q conv"),
                     backward=Option(Symbol(("unroll", "implicit")), "unroll",
                                     "unroll (the paper's) or implicit (fixed point; needs discount < 1)"),
                     discount=Option(Number(minimum=1e-6, maximum=1.0), 1.0, "discount gamma"),
                     temperature=Option(Number(minimum=0), 0.0, "0: max over channels; > 0: soft max"),
                     max_steps=_MAX_STEPS)

    def validate(self, options, info):
        problems = []
        if options["backward"] == "implicit" and options["discount"] >= 1:
            problems.append("solve vin(backward=implicit) needs discount < 1 (a contraction with a unique fixed point)")
        if options["actions"] is not None and options["actions"] != info.grid.actions:
            problems.append(f"solve vin(actions={options['actions']}) but the plan has actions {info.grid.actions}")
        return problems

    def accepts(self, graph, info):
        return [(d["span"], "solve vin learns its reward from the map and the goal; it cannot take cost lines",
                 "remove the cost, or plan with the known costs: `solve value_iteration`")
                for _, d in graph.nodes(data=True) if d["kind"] is NodeKind.COST]

    def backend(self, graph, info, layout):
        return VINBackend(graph, info)
