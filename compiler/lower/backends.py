"""Solver backends: a registry keyed by solver name, each turning bound tensors into a `Solution`.

A backend receives the checked graph once (at compile time) and, per call, the bound values of
params, inputs and learnables (`env`, batch-first, B or 1) and the initial state x0 (B, n).
"""
from __future__ import annotations

from typing import Callable, Protocol

import networkx as nx
import torch

from compiler.context import PlanInfo
from compiler.evaluate import Env
from compiler.layout import Layout
from compiler.lower.quadratic import QuadraticData, extract
from compiler.solution import Solution
from runtime.lqr import lqr


class Backend(Protocol):
    def __call__(self, env: Env, x0: torch.Tensor, like: torch.Tensor) -> Solution: ...


def _expand_stages(data: QuadraticData, batch: int, horizon: int) -> dict[str, torch.Tensor]:
    """Time-invariant data expanded (as views) to the runtime's (B, T, ...) convention."""
    def over_t(t):
        return t.expand((batch,) + t.shape[1:]).unsqueeze(1).expand((batch, horizon) + t.shape[1:])

    def batched(t):
        return t.expand((batch,) + t.shape[1:])

    return dict(C=over_t(data.C), c=over_t(data.c), F=over_t(data.F), f=over_t(data.f),
                CT=batched(data.CT), cT=batched(data.cT))


def _constant_cost(data: QuadraticData, horizon: int) -> torch.Tensor:
    return horizon * data.stage_const + data.final_const


class LQRBackend:
    """`solve lqr`: extract (C, c, F, f, CT, cT) exactly and run the differentiable Riccati solver."""

    def __init__(self, graph: nx.DiGraph, info: PlanInfo, layout: Layout):
        self.graph, self.info, self.layout = graph, info, layout

    def __call__(self, env: Env, x0: torch.Tensor, like: torch.Tensor) -> Solution:
        data = extract(self.graph, self.layout, env, like)
        batch, horizon = x0.shape[0], self.info.horizon
        sol = lqr(x0, **_expand_stages(data, batch, horizon))
        cost = sol.cost + _constant_cost(data, horizon)
        return Solution(sol.x, sol.u, cost, sol.status, "lqr")


BACKENDS: dict[str, Callable[[nx.DiGraph, PlanInfo, Layout], Backend]] = {
    "lqr": LQRBackend,
}
