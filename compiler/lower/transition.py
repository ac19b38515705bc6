"""The plan's one-step transition x_{t+1} = phi(x_t, u_t), on values (tensors or jets).

Discrete dynamics evaluate `x' = e` directly; continuous ones integrate `dot(x) = e` with the
plan's integrator (all states share one integrator and step).
"""
from __future__ import annotations

import networkx as nx

from compiler import quadform as qf
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
        # the shapes pass checked that all states share one integrator, (name, dt), or none (discrete)
        self.integrator = by_state[layout.states[0].ref.name].get("integrator")

    def __call__(self, env: Env, like) -> dict[VarRef, qf.Value]:
        """Next value of every state, given `env` binding params, states and controls, by the
        generic evaluator (jets for the exact extraction; rollouts use the backends' generated
        stacked dynamics, `compiler.lower.backends._Lowered.dynamics`)."""
        def derivative(states):
            scope = {**env, **states}
            return {ref: evaluate(expr, scope, like) for ref, expr in self.exprs.items()}

        if self.integrator is None:
            return derivative({})
        name, dt = self.integrator

        current = {ref: env[ref] for ref in self.exprs}
        return INTEGRATORS[name](derivative, current, dt)
