"""AST -> graph IR: a `networkx.DiGraph` with one node per declaration and an edge per use.

Node ids are deterministic (`state:x`, `dynamics:x`, `cost:stage#1`, `constraint#2`, `solve`, ...)
so that dumps are stable. Node attributes: `kind` (NodeKind), `name`, `span`, `decl` (the AST
declaration), `shape` (as declared), `expr` (the main expression, if any) and `unresolved` (names
that match no declaration; the compiler's resolve pass reports them). An edge `u -> v` means "v
uses u"; its `spans` list every use. Dynamics name the state they define in `defines` (no edge:
x at t+1 is not a use of x at t).
"""
from __future__ import annotations

from enum import Enum

import networkx as nx

from planlang import ast
from planlang.errors import Collector

BUILTIN_NAMES = frozenset({"pi"})


class NodeKind(Enum):
    PLAN = "plan"
    CONST = "const"
    HORIZON = "horizon"
    STATE = "state"
    CONTROL = "control"
    PARAM = "param"
    INPUT = "input"
    LEARN = "learn"
    DYNAMICS = "dynamics"
    COST = "cost"
    CONSTRAINT = "constraint"
    SOLVE = "solve"


_VAR_NODE_KIND = {k: NodeKind(k.value) for k in ast.VarKind}
NAMED_KINDS = frozenset({NodeKind.CONST, *_VAR_NODE_KIND.values()})


def build_graph(plan: ast.PlanAST) -> nx.DiGraph:
    """Build the declaration graph; raises `PlanError` listing every duplicate declaration."""
    graph = nx.DiGraph(name=plan.name, doc=plan.doc)
    errors = Collector()
    names: dict[str, str] = {}          # declared name -> node id
    counters: dict[str, int] = {}

    def add(node_id: str, kind: NodeKind, decl, name=None, expr=None, **attrs) -> None:
        clash = names.get(name) if name is not None else (node_id if node_id in graph else None)
        if clash is not None:
            first = graph.nodes[clash]["span"]
            what = f"'{name}'" if name else f"`{kind.value}` declaration"
            errors.add(decl.span, f"duplicate {what} (first declared at {first})",
                       "names are unique in a plan; rename or remove one")
            return
        graph.add_node(node_id, kind=kind, name=name, span=decl.span, decl=decl, expr=expr, **attrs)
        if name is not None:
            names[name] = node_id

    def ordinal(prefix: str) -> str:
        counters[prefix] = counters.get(prefix, 0) + 1
        return f"{prefix}#{counters[prefix]}"

    for decl in plan.decls:
        if isinstance(decl, ast.VarDecl):
            kind = _VAR_NODE_KIND[decl.kind]
            add(f"{kind.value}:{decl.name}", kind, decl, decl.name, decl.init, shape=tuple(s.value for s in decl.shape))
        elif isinstance(decl, ast.ConstDecl):
            add(f"const:{decl.name}", NodeKind.CONST, decl, decl.name, decl.value)
        elif isinstance(decl, ast.HorizonDecl):
            add("horizon", NodeKind.HORIZON, decl, None, decl.value)
        elif isinstance(decl, ast.DynamicsDecl):
            add(f"dynamics:{decl.state}", NodeKind.DYNAMICS, decl, None, decl.expr, defines=decl.state)
        elif isinstance(decl, ast.CostDecl):
            node_id = f"cost:{decl.name}" if decl.name else ordinal(f"cost:{decl.when.value}")
            add(node_id, NodeKind.COST, decl, decl.name, decl.expr, when=decl.when)
        elif isinstance(decl, ast.ConstraintDecl):
            add(ordinal("constraint"), NodeKind.CONSTRAINT, decl, None, None)
        elif isinstance(decl, ast.SolveDecl):
            add("solve", NodeKind.SOLVE, decl, None, None, solver=decl.solver)
    errors.raise_if_any()

    values = {name: node for name, node in names.items() if graph.nodes[node]["kind"] in NAMED_KINDS}
    for node_id, data in list(graph.nodes(data=True)):
        unresolved = []
        for ref in _references(data["decl"]):
            target = values.get(ref.id)
            if target is None:
                if ref.id not in BUILTIN_NAMES:
                    unresolved.append(ref)
                continue
            if graph.has_edge(target, node_id):
                graph.edges[target, node_id]["spans"].append(ref.span)
            else:
                graph.add_edge(target, node_id, spans=[ref.span])
        data["unresolved"] = unresolved
    if plan.name:
        graph.add_node("plan", kind=NodeKind.PLAN, name=plan.name, span=plan.span, decl=None, expr=None,
                       unresolved=[])
    return graph


def _references(decl) -> list[ast.Name]:
    """Every name a declaration uses, including `const` names in declared sizes."""
    if decl is None:
        return []
    refs: list[ast.Name] = []
    if isinstance(decl, ast.VarDecl):
        refs += [ast.Name(s.span, s.value) for s in decl.shape if isinstance(s.value, str)]
        refs += ast.names_in(decl.init)
        if decl.bounds:
            refs += ast.names_in(decl.bounds[0]) + ast.names_in(decl.bounds[1])
    elif isinstance(decl, (ast.ConstDecl, ast.HorizonDecl)):
        refs += ast.names_in(decl.value)
    elif isinstance(decl, ast.DynamicsDecl):
        refs += ast.names_in(decl.expr)
        if decl.method is not None:
            refs += [n for a in decl.method.args + tuple(k.value for k in decl.method.keywords)
                     for n in ast.names_in(a)]
    elif isinstance(decl, ast.CostDecl):
        refs += ast.names_in(decl.expr)
    elif isinstance(decl, ast.ConstraintDecl):
        refs += ast.names_in(decl.lhs) + ast.names_in(decl.rhs)
    elif isinstance(decl, ast.SolveDecl):
        refs += [n for k in decl.options for n in ast.names_in(k.value) if _is_value_name(k)]
    return refs


def _is_value_name(option: ast.Keyword) -> bool:
    """Solver options like `backward=unroll` name a mode, not a declaration."""
    return not isinstance(option.value, ast.Name)

