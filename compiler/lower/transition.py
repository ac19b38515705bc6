"""The plan's one-step transition x_{t+1} = phi(x_t, u_t), on values (tensors or jets).

Discrete dynamics evaluate `x' = e` directly; continuous ones integrate `dot(x) = e` with the
plan's integrator (all states share one integrator and step). `system_rows` turns the result
into the stacked (B, n) next state in layout order.
"""
from __future__ import annotations

import networkx as nx
import torch

from compiler import quadform as qf
from compiler.codegen import NumericFunction
from compiler.evaluate import Env, evaluate
from compiler.ir import VarRef
from compiler.layout import Layout
from compiler.integrators import INTEGRATORS
from planlang.graph import NodeKind


class Transition:
    def __init__(self, graph: nx.DiGraph, layout: Layout):
        by_state = {d["defines"]: d for _, d in graph.nodes(data=True) if d["kind"] is NodeKind.DYNAMICS}
        self.layout = layout
        self.exprs = {var.ref: by_state[var.ref.name]["ir"] for var in layout.states}
        self.numeric = {ref: NumericFunction(expr, f"dynamics_{ref.name}") for ref, expr in self.exprs.items()}
        # the shapes pass checked that all states share one integrator, (name, dt), or none (discrete)
        self.integrator = by_state[layout.states[0].ref.name].get("integrator")

    def __call__(self, env: Env, like) -> dict[VarRef, qf.Value]:
        """Next value of every state, given `env` binding params, states and controls.

        Plain tensors take the generated numeric code; jets take the generic evaluator.
        """
        symbolic = any(isinstance(v, qf.QuadForm) for v in env.values())

        def derivative(states):
            scope = {**env, **states}
            if symbolic:
                return {ref: evaluate(expr, scope, like) for ref, expr in self.exprs.items()}
            return {ref: fn(scope, like) for ref, fn in self.numeric.items()}

        if self.integrator is None:
            return derivative({})
        name, dt = self.integrator

        current = {ref: env[ref] for ref in self.exprs}
        return INTEGRATORS[name](derivative, current, dt)

    def stacked(self, env: Env, like):
        """x' as (B, n) for numeric values (states in layout order, each flattened)."""
        nxt = self(env, like)
        rows = []
        for var in self.layout.states:
            value = qf.pad_rank(nxt[var.ref], 1)
            rows.append(value.expand(value.shape[0], var.size) if value.shape[-1] != var.size else value)
        batch = max(r.shape[0] for r in rows)
        return torch.cat([r.expand(batch, -1) for r in rows], dim=1)
