"""The extension syntax: strings, attributes, blocks, let/guess, braced settings, continual."""
from __future__ import annotations

import pytest

import planlang
from planlang import ast, dump
from planlang.errors import PlanError

SKETCH = '''plan sketch
horizon 10
state x[2] = [1, 0]
control u[1]
let v = x[1] * 2
guess u = [0.5]
block wm = mlp(in=3, out=2, hidden=[64, 64], act=tanh)
dynamics x' = x + wm(cat(x, u))
cost stage = sum(x^2) + abs(v)
continual wm by ewc(lambda=100) + replay(capacity=1000)
env "Pendulum-v1" {
  observe obs[3]

  state = [atan2(obs[1], obs[0]), obs[2]]
}
train {
  data "demos.npz"
  loss max_margin(margin=1)
  optimizer adam(lr=1e-2)
  epochs 200
}
solve descent(iters=100, lr=0.1, backward=implicit(cg, iters=20))
'''


def test_the_sketch_parses_into_declarations():
    plan = planlang.loads(SKETCH)
    kinds = [type(d).__name__ for d in plan.ast.decls]
    assert kinds.count("BracedDecl") == 2 and "ContinualDecl" in kinds and "BlockDecl" in kinds
    train = next(d for d in plan.ast.decls if isinstance(d, ast.BracedDecl) and d.keyword == "train")
    assert [s.name for s in train.settings] == ["data", "loss", "optimizer", "epochs"]
    assert train.settings[0].value == ast.String(train.settings[0].value.span, "demos.npz")
    continual = next(d for d in plan.ast.decls if isinstance(d, ast.ContinualDecl))
    assert [m.func for m in continual.methods] == ["ewc", "replay"]


def test_the_sketch_builds_a_graph_with_symbols_left_to_schemas():
    graph = planlang.loads(SKETCH).graph
    assert all(not d["unresolved"] for _, d in graph.nodes(data=True))     # cg, tanh, obs: symbols or local
    assert graph.has_edge("block:wm", "dynamics:x") and graph.has_edge("block:wm", "continual:wm")
    assert graph.has_edge("let:v", "cost:stage#1")
    text = dump.to_text(graph)
    assert 'env = "Pendulum-v1" {observe obs[3]; state [atan2(obs[1], obs[0]), obs[2]]}' in text


def test_attributes_and_strings_print_back():
    plan = planlang.loads("plan p\nhorizon 1\nstate x = 0\ncontrol u\ndynamics x' = x + u\n"
                          "cost stage = x^2 + u^2 + 0 * other.x\nsolve lqr\n")
    expr = plan.graph.nodes["cost:stage#1"]["expr"]
    assert ast.to_text(expr).endswith("(0 * other.x)")


@pytest.mark.parametrize("text, line, col, message", [
    ('plan p\ntrain {\n  data "x.npz\n}\n', 3, 8, "unclosed string"),
    ("plan p\ntrain {\n  data 'x.npz'\n}\n", 3, 8, "unexpected quote"),
    ("plan p\nblok wm = mlp(in=1, out=1)\n", 2, 1, "unknown keyword 'blok'"),
])
def test_syntax_errors_of_the_extensions(text, line, col, message):
    with pytest.raises(PlanError) as info:
        planlang.loads(text)
    d = info.value.diagnostics[0]
    assert (d.span.line, d.span.col) == (line, col) and message in d.message
