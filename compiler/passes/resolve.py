"""Pass 1, resolve: every name is declared, no cycles, every state has one dynamics, time rules hold.

Time rules: `cost final` sees states only; defaults, bounds, sizes and the horizon see only
compile-time constants (numbers and `const` names) -- bounds and costs may use params and inputs.
"""
from __future__ import annotations

import networkx as nx

from compiler.functions import FUNCTIONS
from compiler.passes import PassResult
from planlang import ast
from planlang.errors import Collector, did_you_mean
from planlang.declarations import declaration_of
from planlang.graph import BUILTIN_NAMES, NAMED_KINDS, NodeKind
from planlang.source import WHOLE_FILE

NAME = "resolve"
_ORIGIN = WHOLE_FILE              # a missing declaration has no line to point at


def run(graph: nx.DiGraph) -> PassResult:
    errors = Collector()
    declared = {d["name"]: n for n, d in graph.nodes(data=True) if d["kind"] in NAMED_KINDS}
    blocks = {d["name"] for _, d in graph.nodes(data=True) if d["kind"] is NodeKind.BLOCK}
    kinds = {name: graph.nodes[node]["kind"] for name, node in declared.items()}

    for node, data in graph.nodes(data=True):
        for ref in data.get("unresolved", []):
            if ref.id in FUNCTIONS or ref.id in blocks:
                errors.add(ref.span, f"'{ref.id}' is a function, not a value", f"call it: {ref.id}(...)")
            else:
                errors.add(ref.span, f"unknown name '{ref.id}'",
                           did_you_mean(ref.id, list(declared) + sorted(BUILTIN_NAMES)) or
                           "declare it (const, param, input, learn, state or control)")
        for call in _calls(data["decl"]):
            if call.func not in FUNCTIONS and call.func not in blocks:
                errors.add(call.span, f"unknown function '{call.func}'",
                           did_you_mean(call.func, list(FUNCTIONS) + sorted(blocks))
                           or "builtins: " + ", ".join(sorted(FUNCTIONS)) + " (or declare a `block`)")
        _check_time_rules(data, kinds, errors)

    _check_structure(graph, declared, errors)
    errors.raise_if_any()
    _check_cycles(graph)
    return PassResult(graph, False)


def _calls(decl) -> list[ast.Call]:
    exprs = _expressions(decl)
    return [e for x in exprs for e in ast.walk(x) if isinstance(e, ast.Call)]


def _expressions(decl) -> list:
    return [] if decl is None else declaration_of(decl).values(decl)


_DECISION = {NodeKind.STATE, NodeKind.CONTROL}


def _a(kind: NodeKind) -> str:
    """The kind of a declaration with its article: 'a param', 'an input', 'a learnable'."""
    return {NodeKind.INPUT: "an input", NodeKind.LEARN: "a learnable"}.get(kind, f"a {kind.value}")


def _check_time_rules(data, kinds, errors: Collector) -> None:
    decl = data["decl"]
    if isinstance(decl, ast.CostDecl) and decl.when is ast.When.FINAL:
        for ref in ast.names_in(decl.expr):
            if kinds.get(ref.id) is NodeKind.CONTROL:
                errors.add(ref.span, f"cost final sees states only, but uses control '{ref.id}'",
                           "move this term to a `cost stage` line")
    compile_time = []
    if isinstance(decl, ast.VarDecl):
        compile_time = [decl.init] if decl.init is not None else []
        compile_time += [ast.Name(s.span, s.value) for s in decl.shape if isinstance(s.value, str)]
        for ref in ast.names_in(decl.bounds[0]) + ast.names_in(decl.bounds[1]) if decl.bounds else []:
            if kinds.get(ref.id) in _DECISION:
                errors.add(ref.span, f"bounds cannot depend on the decision variable '{ref.id}'",
                           "write it as a `constraint` line")
    elif isinstance(decl, (ast.ConstDecl, ast.HorizonDecl)):
        compile_time = [decl.value]
    for expr in compile_time:
        for ref in ast.names_in(expr):
            kind = kinds.get(ref.id)
            if kind is not None and kind is not NodeKind.CONST:
                errors.add(ref.span, f"'{ref.id}' is {_a(kind)}, but this must be a compile-time constant",
                           "use numbers and `const` names here")


_NOT_ON_GRIDS = {NodeKind.HORIZON: "`horizon`", NodeKind.STATE: "states", NodeKind.CONTROL: "controls",
                  NodeKind.DYNAMICS: "`dynamics`", NodeKind.CONSTRAINT: "constraints", NodeKind.GUESS: "guesses",
                  NodeKind.ENV: "an `env` block"}


def _check_grid_structure(graph: nx.DiGraph, errors: Collector) -> None:
    """A grid plan moves by its `actions` on the map's cells: no horizon, states, controls or dynamics."""
    for _, data in graph.nodes(data=True):
        what = _NOT_ON_GRIDS.get(data["kind"])
        if what is not None:
            errors.add(data["span"], f"a grid plan (`grid H x W`) has no {what}",
                       "its state is the cell, its moves the `actions`; costs are maps of the cells")
    if NodeKind.SOLVE not in [d["kind"] for _, d in graph.nodes(data=True)]:
        errors.add(_ORIGIN, "the file has no `solve` line", "add e.g. `solve value_iteration` or `solve vin(k=10)`")


def _check_structure(graph: nx.DiGraph, declared: dict, errors: Collector) -> None:
    if "grid" in graph:
        _check_grid_structure(graph, errors)
        return
    kinds = [d["kind"] for _, d in graph.nodes(data=True)]
    if NodeKind.ACTIONS in kinds:
        errors.add(graph.nodes["actions"]["span"], "`actions` belongs to grid plans", "declare the map: `grid H x W`")
    if NodeKind.HORIZON not in kinds:
        errors.add(_ORIGIN, "the file has no `horizon` line", "add a line such as `horizon 30`")
    if NodeKind.SOLVE not in kinds:
        errors.add(_ORIGIN, "the file has no `solve` line", "add e.g. `solve lqr`, `solve qp` or `solve ilqr(iters=50)`")
    if NodeKind.STATE not in kinds:
        errors.add(_ORIGIN, "the plan declares no state", "add e.g. `state x[2] = [0, 0]`")
    if NodeKind.CONTROL not in kinds:
        errors.add(_ORIGIN, "the plan declares no control", "add e.g. `control u[1]`")
    defined = set()
    for node, data in graph.nodes(data=True):
        if data["kind"] is not NodeKind.DYNAMICS:
            continue
        target = data["defines"]
        decl = data["decl"]
        if graph.nodes.get(f"state:{target}") is None:
            other = declared.get(target)
            what = f"'{target}' is {_a(graph.nodes[other]['kind'])}" if other else f"there is no state '{target}'"
            errors.add(decl.state_span, f"dynamics for '{target}', but {what}",
                       did_you_mean(target, [d["name"] for _, d in graph.nodes(data=True)
                                             if d["kind"] is NodeKind.STATE]) or "dynamics define states")
        defined.add(target)
    for node, data in graph.nodes(data=True):
        if data["kind"] is NodeKind.STATE and data["name"] not in defined:
            errors.add(data["span"], f"state '{data['name']}' has no dynamics",
                       f"add a line `dynamics {data['name']}' = ...`")


def _check_cycles(graph: nx.DiGraph) -> None:
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return
    names = [graph.nodes[u]["name"] or u for u, _ in cycle] + [graph.nodes[cycle[0][0]]["name"] or cycle[0][0]]
    first = graph.edges[cycle[-1]]["spans"][0]
    errors = Collector()
    errors.add(first, "declarations form a cycle: " + " -> ".join(names), "break the cycle: a value cannot depend on itself")
    errors.raise_if_any()
