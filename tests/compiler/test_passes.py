"""The pass pipeline: verified after every pass, idempotent, stoppable, and golden on the examples.

Golden files `tests/compiler/golden/<example>.json` hold the checked graph (`planlang.dump` after
all passes: typed IR, degree, smoothness) and what the passes put in `plan_info`; rewrite them with
`PLANLANG_UPDATE_GOLDEN=1 python -m pytest tests/compiler/test_passes.py`.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import planlang
from compiler.context import PlanInfo
from compiler.ir import Expr
from compiler.layout import Layout
from compiler.passes import annotate
from compiler.pipeline import PASS_NAMES, PASSES, run_passes
from compiler.verify import VerificationError, verify
from compiler.options import Structured
from planlang import dump
from planlang.graph import NodeKind

GOLDEN = Path(__file__).with_name("golden")
TESTS = Path(__file__).resolve().parents[1]
# every example, and the front end's all-constructs fixture (a qp plan with constraints and boxes)
PLANS = sorted((TESTS.parent / "examples").glob("*.plan")) + \
    sorted((TESTS / "planlang" / "fixtures" / "graph").glob("*.plan"))
over_plans = pytest.mark.parametrize("plan_path", PLANS, ids=[p.stem for p in PLANS])
EXPR_KINDS = (NodeKind.DYNAMICS, NodeKind.COST, NodeKind.CONSTRAINT)

PLAN = """plan p
const dt = 0.1
horizon 5
state x[2] = [1, 0]
control u in [-1, 1]
input goal[2] = [0, 0]
learn q = 1 positive
dynamics x' = [[1, dt], [0, 1]] @ x + [0, dt] * u
constraint x[1] <= 2
cost stage = q * sum((x - goal)^2) + u^2
cost final = sum(x^2)
solve qp(iters=20)
"""


def _tensor(t):
    return t.tolist() if t is not None else None


def info_record(info: PlanInfo) -> dict:
    layout = Layout.of(info)
    return {
        "horizon": info.horizon,
        "solver": info.solver,
        "options": {k: str(v) if isinstance(v, Structured) else v for k, v in info.options.items()},
        "consts": {name: _tensor(v) for name, v in info.consts.items()},
        "variables": {name: {"kind": v.ref.kind.value, "shape": list(v.shape),
                             "default": None if v.default is None else _tensor(v.default.attr),
                             "bounds": None if v.lower is None else [_tensor(v.lower.attr), _tensor(v.upper.attr)],
                             **{m: True for m in ("positive", "psd") if getattr(v, m)}}
                      for name, v in info.variables.items()},
        "layout": {str(ref): [s.start, s.stop] for ref, s in layout.offsets().items()},
    }


@over_plans
def test_checked_graph_matches_golden(plan_path: Path, golden):
    graph = run_passes(planlang.load(plan_path).graph, check=True)
    record = {"graph": dump.to_dict(graph), "plan_info": info_record(graph.graph["plan_info"])}
    golden.check(GOLDEN / f"{plan_path.stem}.json", record)


# ---------------------------------------------------------- the pipeline

@over_plans
def test_verifies_after_every_pass(plan_path: Path):
    plan = planlang.load(plan_path)
    for name in PASS_NAMES:
        graph = run_passes(plan.graph, until=name, check=True)
        verify(graph, name)


@over_plans
def test_each_pass_is_idempotent(plan_path: Path):
    """torch.fx style: after the pipeline, running any pass again changes nothing."""
    plan = planlang.load(plan_path)
    for name, run in PASSES:
        graph = run_passes(plan.graph)
        before = dump.to_json(graph)
        result = run(graph)
        assert result.modified is False, name
        assert dump.to_json(result.graph) == before, name


@over_plans
def test_the_pipeline_is_idempotent(plan_path: Path):
    plan = planlang.load(plan_path)
    once = run_passes(plan.graph)
    twice = run_passes(once, check=True)
    assert dump.to_json(twice) == dump.to_json(once)
    assert info_record(twice.graph["plan_info"]) == info_record(once.graph["plan_info"])


def test_first_runs_report_what_they_change():
    graph = planlang.loads(PLAN).graph.copy()
    modified = {}
    for name, run in PASSES:
        result = run(graph)
        modified[name], graph = result.modified, result.graph
    assert modified == {"resolve": False, "shapes": True, "classify": True, "eligibility": True, "lower": True}


def test_run_passes_copies_the_graph():
    plan = planlang.loads(PLAN)
    before = dump.to_json(plan.graph)
    run_passes(plan.graph, check=True)
    assert dump.to_json(plan.graph) == before
    assert "plan_info" not in plan.graph.graph
    assert not any("ir" in d for _, d in plan.graph.nodes(data=True))


def test_until_stops_after_the_named_pass():
    graph = planlang.loads(PLAN).graph
    after = {name: run_passes(graph, until=name, check=True) for name in PASS_NAMES}
    exprs = lambda g: [d for _, d in g.nodes(data=True) if d["kind"] in EXPR_KINDS]     # noqa: E731
    assert "plan_info" not in after["resolve"].graph and not any("ir" in d for d in exprs(after["resolve"]))
    assert all(isinstance(d["ir"], Expr) and "degree" not in d for d in exprs(after["shapes"]))
    assert all("degree" in d and "smooth" in d for d in exprs(after["classify"]))
    assert after["classify"].graph["plan_info"].solver == ""
    info = after["eligibility"].graph["plan_info"]
    assert (info.solver, info.options["iters"]) == ("qp", 20)
    assert "lowered" not in after["eligibility"].graph
    assert "def stage_costs(x, u" in after["lower"].graph["lowered"].as_text()
    with pytest.raises(ValueError, match="unknown pass 'codegen'"):
        run_passes(graph, until="codegen")


def test_eligibility_fills_option_defaults():
    text = PLAN.replace("solve qp(iters=20)", "solve ilqr(tol=1e-3)").replace("constraint x[1] <= 2\n", "")
    plan = planlang.loads(text)
    info = run_passes(plan.graph, check=True).graph["plan_info"]
    assert info.solver == "ilqr"
    assert info.options["tol"] == 1e-3 and isinstance(info.options["iters"], int)
    assert info.options["backward"] == "implicit"


def test_annotate_reports_changes():
    graph = planlang.loads(PLAN).graph.copy()
    assert annotate(graph, "solve", "note", 1) is True
    assert annotate(graph, "solve", "note", 1) is False
    assert annotate(graph, "solve", "note", 2) is True


# ---------------------------------------------------------- the verifier

def _broken(stage: str, breaker):
    graph = run_passes(planlang.loads(PLAN).graph, until=stage)
    breaker(graph)
    return graph


@pytest.mark.parametrize("stage, breaker, message", [
    ("resolve", lambda g: g.nodes["cost:stage#1"].update(kind="cost"), "kind missing"),
    ("resolve", lambda g: g.nodes["cost:stage#1"].pop("span"), "span missing"),
    ("resolve", lambda g: g.nodes["cost:stage#1"].update(unresolved=["x"]), "unresolved"),
    ("resolve", lambda g: g.edges["state:x", "cost:stage#1"].update(spans=[]), "no use spans"),
    ("shapes", lambda g: g.nodes["dynamics:x"].pop("ir"), "typed IR missing"),
    ("shapes", lambda g: g.nodes["cost:final#1"].update(ir=g.nodes["dynamics:x"]["ir"]), "not scalar"),
    ("shapes", lambda g: g.graph.pop("plan_info"), "plan_info missing"),
    ("classify", lambda g: g.nodes["constraint#1"].pop("degree"), "classification missing"),
    ("eligibility", lambda g: setattr(g.graph["plan_info"], "solver", ""), "solver not set"),
])
def test_verifier_catches_broken_invariants(stage, breaker, message):
    graph = _broken(stage, breaker)
    with pytest.raises(VerificationError, match=message):
        verify(graph, stage)
