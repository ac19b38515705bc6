"""Graph: one node per declaration, one edge per use, deterministic ids, golden dumps of the examples.

Golden files live in `tests/planlang/golden/<example>.json` (the raw declaration graph as
`planlang.dump.to_dict` writes it, plus every use position); rewrite them with
`PLANLANG_UPDATE_GOLDEN=1 python -m pytest tests/planlang/test_graph.py`.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import planlang
from planlang import ast, dump
from planlang.graph import NAMED_KINDS, NodeKind

GOLDEN = Path(__file__).with_name("golden")

FIXTURES = Path(__file__).with_name("fixtures") / "graph"
GRAPH_FIXTURES = sorted(FIXTURES.glob("*.plan"))
PLAN = (FIXTURES / "all_constructs.plan").read_text()      # every kind of declaration and use


def golden_record(plan: planlang.Plan) -> dict:
    """The dump, with every use position (`L:C`) of each edge."""
    record = dump.to_dict(plan.graph)
    for edge in record["edges"]:
        edge["at"] = [str(s) for s in plan.graph.edges[edge["from"], edge["to"]]["spans"]]
    return record


def test_example_graph_matches_golden(example_path: Path, golden):
    plan = planlang.load(example_path)
    golden.check(GOLDEN / f"{example_path.stem}.json", golden_record(plan))


@pytest.mark.parametrize("path", GRAPH_FIXTURES, ids=[p.stem for p in GRAPH_FIXTURES])
def test_fixture_graph_matches_golden(path: Path, golden):
    golden.check(GOLDEN / f"{path.stem}.json", golden_record(planlang.load(path)))


def test_node_ids_follow_the_scheme():
    graph = planlang.loads(PLAN).graph
    assert list(graph.nodes) == [
        "const:n", "horizon", "state:x", "state:s", "control:u", "param:A", "input:goal", "learn:w",
        "dynamics:x", "dynamics:s", "cost:stage#1", "cost:stage#2", "cost:effort", "cost:final#1",
        "constraint#1", "constraint#2", "constraint#3", "solve", "plan"]
    kinds = {n: d["kind"] for n, d in graph.nodes(data=True)}
    assert kinds["learn:w"] is NodeKind.LEARN and kinds["constraint#3"] is NodeKind.CONSTRAINT
    assert graph.nodes["state:x"]["shape"] == ("n",)          # as declared; the shapes pass resolves it
    assert graph.nodes["dynamics:x"]["defines"] == "x"
    assert graph.nodes["cost:effort"]["name"] == "effort"
    assert graph.nodes["solve"]["solver"] == "qp"
    assert graph.graph["name"] == "g"


def test_ids_are_deterministic(example_path: Path):
    one, two = planlang.load(example_path).graph, planlang.load(example_path).graph
    assert list(one.nodes) == list(two.nodes)
    assert list(one.edges) == list(two.edges)
    assert dump.to_json(one) == dump.to_json(two)
    pattern = re.compile(r"^(plan|horizon|solve|env|train|grid|actions|agents|energy:(agent|pair):(stage|final)#\d+|constraint#\d+|cost:(stage|final)#\d+|cost:\w+|"
                         r"(const|state|control|param|input|learn|let|guess|block|continual|dynamics):\w+)$")
    assert all(pattern.match(n) for n in one.nodes)


# ------------------------------------------ one node per declaration, one edge per use

def _names(obj, skip_option_modes: bool = False) -> list[ast.Name]:
    """Every `Name` (and named `Size`) inside a declaration, found by walking all its fields."""
    if isinstance(obj, ast.Name):
        return [obj]
    if isinstance(obj, ast.Size):
        return [ast.Name(obj.span, obj.value)] if isinstance(obj.value, str) else []
    if isinstance(obj, ast.SolveDecl):      # `backward=unroll` names a mode, not a declaration
        return [n for k in obj.options if not isinstance(k.value, ast.Name) for n in _names(k.value)]
    if isinstance(obj, tuple):
        return [n for item in obj for n in _names(item)]
    if isinstance(obj, ast.ContinualDecl):  # its block is named by a plain string and a span
        return [ast.Name(obj.block_span, obj.block)] + _names(obj.methods)
    if isinstance(obj, ast.Call):           # a block call `f(x, u)` uses block f (the span is the call's)
        return [ast.Name(obj.span, obj.func)] + _names(obj.args) + _names(obj.keywords)
    if dataclasses.is_dataclass(obj):
        return [n for f in dataclasses.fields(obj) if f.name != "span" for n in _names(getattr(obj, f.name))]
    return []


def _check_uses(plan: planlang.Plan) -> None:
    graph = plan.graph
    decls = [d for _, d in graph.nodes(data="decl") if d is not None]
    assert sorted(map(id, decls)) == sorted(map(id, plan.ast.decls))          # one node per declaration
    assert graph.number_of_nodes() == len(plan.ast.decls) + (plan.ast.name is not None)
    declared = {d["name"]: n for n, d in graph.nodes(data=True) if d["kind"] in NAMED_KINDS or d["kind"] is NodeKind.BLOCK}
    lines = plan.source.text.split("\n")
    expected_uses = {}
    for node, data in graph.nodes(data=True):
        for name in _names(data["decl"]):
            if name.id in declared:
                expected_uses.setdefault((declared[name.id], node), []).append(name.span)
    got = {(u, v): d["spans"] for u, v, d in graph.edges(data=True)}
    assert {k: sorted(v, key=str) for k, v in got.items()} == \
        {k: sorted(v, key=str) for k, v in expected_uses.items()}                # one edge per use
    for (u, _), spans in got.items():
        for span in spans:                                                        # each use is the name
            text, name = lines[span.line - 1][span.col - 1: span.end_col - 1], graph.nodes[u]["name"]
            assert text == name or (graph.nodes[u]["kind"] is NodeKind.BLOCK and text.startswith((name + "(", name + ".")))


def test_one_node_per_declaration_and_one_edge_per_use(example_path: Path):
    _check_uses(planlang.load(example_path))


def test_uses_in_every_kind_of_declaration():
    plan = planlang.loads(PLAN)
    _check_uses(plan)
    graph = plan.graph
    assert graph.edges["const:n", "state:x"]["spans"][0].line == 4        # a size names a const
    assert len(graph.edges["state:x", "cost:final#1"]["spans"]) == 2      # two uses, one edge
    assert ("state:x", "dynamics:x") in graph.edges                       # x at t is used ...
    assert ("state:s", "dynamics:s") not in graph.edges                   # ... x' = ... defines, never uses
    assert ("input:goal", "constraint#1") in graph.edges
    assert ("control:u", "constraint#2") in graph.edges and ("control:u", "constraint#3") in graph.edges
    assert not any(d["unresolved"] for _, d in graph.nodes(data=True))   # `pi` is a builtin


def test_unknown_names_are_recorded_not_raised():
    plan = planlang.loads("plan p\nhorizon 3\nstate x = 0\ncontrol u\ndynamics x' = x + v\n"
                          "cost stage = x^2 + u^2\nsolve lqr(iters=2 * k, backward=unroll)\n")
    assert [r.id for r in plan.graph.nodes["dynamics:x"]["unresolved"]] == ["v"]
    assert [r.id for r in plan.graph.nodes["solve"]["unresolved"]] == ["k"]      # `unroll` is a mode
    assert not any(u for n, u in plan.graph.nodes(data="unresolved") if n not in ("dynamics:x", "solve"))


def test_cost_names_are_not_values():
    """A cost's name labels it; `goal` in the expression is still the input `goal`."""
    plan = planlang.loads("plan p\nhorizon 3\nstate x = 0\ncontrol u\ninput goal = 1\ndynamics x' = x + u\n"
                          "cost stage track = (x - goal)^2 + u^2\nsolve lqr\n")
    assert ("input:goal", "cost:track") in plan.graph.edges
    assert plan.graph.nodes["cost:track"]["unresolved"] == []


def test_duplicates_are_all_reported():
    with pytest.raises(planlang.PlanError) as info:
        planlang.loads("plan p\nhorizon 3\nhorizon 4\nstate x = 0\ncontrol x\nconst x = 1\n", "d.plan")
    assert [(d.span.line, d.message) for d in info.value.diagnostics] == [
        (3, "duplicate `horizon` declaration (first declared at 2:1)"),
        (5, "duplicate 'x' (first declared at 4:1)"),
        (6, "duplicate 'x' (first declared at 4:1)")]


def test_plan_without_header_has_no_plan_node():
    graph = planlang.loads("horizon 3\n").graph
    assert list(graph.nodes) == ["horizon"] and graph.graph["name"] is None
