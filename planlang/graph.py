"""AST -> graph IR: a `networkx.DiGraph` with one node per declaration and an edge per use.

Node ids are deterministic (`state:x`, `dynamics:x`, `cost:stage#1`, `constraint#2`, `solve`, ...)
so that dumps are stable. Node attributes: `kind` (NodeKind), `name`, `span`, `decl` (the AST
declaration), `shape` (as declared), `expr` (the main expression, if any) and `unresolved` (names
that match no declaration; the compiler's resolve pass reports them). An edge `u -> v` means "v
uses u"; its `spans` list every use. Dynamics name the state they define in `defines` (no edge:
x at t+1 is not a use of x at t).
"""
from __future__ import annotations

import networkx as nx

from planlang import ast
from planlang.declarations import VALUE_KINDS, NodeKind, declaration_of
from planlang.errors import Collector

# `T` the horizon, `t` the stage index and `time` = t dt (stage expressions), `other` the other
# agent in `energy pair`; a declaration of the same name takes precedence.
BUILTIN_NAMES = frozenset({"pi", "T", "t", "time", "other"})
NAMED_KINDS = VALUE_KINDS


def build_graph(plan: ast.PlanAST) -> nx.DiGraph:
    """Build the declaration graph; raises `PlanError` listing every duplicate declaration."""
    graph = nx.DiGraph(name=plan.name, doc=plan.doc)
    errors = Collector()
    names: dict[str, str] = {}          # declared name -> node id
    counters: dict[str, int] = {}

    def ordinal(prefix: str) -> str:
        counters[prefix] = counters.get(prefix, 0) + 1
        return f"{prefix}#{counters[prefix]}"

    for decl in plan.decls:
        kind = declaration_of(decl)
        node_id, name = kind.node_id(decl, ordinal), kind.name(decl)
        clash = names.get(name) if name is not None else (node_id if node_id in graph else None)
        if clash is not None:
            first = graph.nodes[clash]["span"]
            what = f"'{name}'" if name else f"`{kind.kind.value}` declaration"
            errors.add(decl.span, f"duplicate {what} (first declared at {first})",
                       "names are unique in a plan; rename or remove one")
            continue
        graph.add_node(node_id, kind=kind.kind, name=name, span=decl.span, decl=decl, expr=kind.expr(decl),
                       **kind.attrs(decl))
        if name is not None:
            names[name] = node_id
    errors.raise_if_any()

    values = {name: node for name, node in names.items() if graph.nodes[node]["kind"] in NAMED_KINDS}
    blocks = {name: node for name, node in names.items() if graph.nodes[node]["kind"] is NodeKind.BLOCK}
    for node_id, data in list(graph.nodes(data=True)):
        unresolved = []
        for ref, required in _references(data["decl"], blocks):
            target = values.get(ref.id) or blocks.get(ref.id)
            if target is None:
                if required and ref.id not in BUILTIN_NAMES:
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


def _references(decl, blocks: dict[str, str]) -> list[tuple[ast.Name, bool]]:
    """(name, must resolve) for every name a declaration uses: its values, the sizes it declares,
    the blocks it calls, and the names in its options (which may instead be symbols such as `cg`)."""
    kind = declaration_of(decl)
    refs = [(n, True) for n in kind.compile_time_names(decl) if n not in ast.names_in(kind.expr(decl))]
    for expr in kind.values(decl):
        refs += [(n, True) for n in ast.names_in(expr)]
        refs += [(ast.Name(c.span, c.func), False) for c in ast.walk(expr)
                 if isinstance(c, ast.Call) and c.func in blocks]
    refs += [(name, required and not kind.local_names) for expr in kind.options(decl)
             for name, required in _option_names(expr)]
    if isinstance(decl, ast.ContinualDecl):
        refs.append((ast.Name(decl.block_span, decl.block), True))
    return refs


def _option_names(expr) -> list[tuple[ast.Name, bool]]:
    """Names in an option value: a bare name (or one inside a structured value such as
    `implicit(cg, iters=20)` or `[a, b]`) may be a symbol; names inside arithmetic must resolve."""
    if isinstance(expr, ast.Name):
        return [(expr, False)]
    if isinstance(expr, ast.Call):          # its callee too: a block called in a setting (`state = m.encode(obs)`)
        return [(ast.Name(expr.span, expr.func), False)] + \
            [r for a in list(expr.args) + [k.value for k in expr.keywords] for r in _option_names(a)]
    if isinstance(expr, ast.Array):
        return [r for item in expr.items for r in _option_names(item)]
    return [(n, True) for n in ast.names_in(expr)]
