"""End-to-end tests of the `planlang` command line (run, graph, check), through subprocesses.

Every invocation of the module is started up front by the `runs` fixture (see conftest.py: they
run a few at a time), so the module costs a few seconds of wall time rather than ~3 s per call.
Cheap edge cases of argument handling run `planlang.cli.main` in-process instead.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from planlang import cli as planlang_cli

DI = "examples/double_integrator.plan"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# The true system for --system: the double integrator's states and controls, with friction.
FRICTION_PLAN = """\
plan double_integrator_with_friction
const dt = 0.1
horizon 30
state x[2] = [1.0, 0.0]
control u[1]
param A[2, 2] = [[1, dt], [0, 0.8]]
dynamics x' = A @ x + [0, dt] * u
cost stage = sum(x^2) + sum(u^2)
solve lqr
"""

GOOD_LINES = [
    "plan broken",
    "horizon 10",
    "state x[2] = [1, 0]",
    "control u[1]",
    "dynamics x' = x + [0, 0.1] * u",
    "cost stage = sum(x^2) + sum(u^2)",
    "solve lqr",
]


def _broken(line: int, text: str) -> str:
    lines = list(GOOD_LINES)
    lines[line - 1] = text
    return "\n".join(lines) + "\n"


# name -> (plan text, the line (1-based) and column the error must point at, a word of the message)
BROKEN = {
    "syntax": (_broken(6, "cost stage = sum(x^2) + sum(u^2"), 6, 28, "bracket"),
    "unknown_name": (_broken(6, "cost stage = sum(x^2) + sum(v^2)"), 6, 29, "unknown name 'v'"),
    "shape": (_broken(5, "dynamics x' = x + [0, 0.1, 0.2] * u"), 5, 15, "shape"),
}

# An iLQR plan that cannot converge in its single allowed iteration: `run` must exit 1.
UNSOLVED_PLAN = """\
plan one_iteration
horizon 5
state x = 1.0
control u in [-10, 10]
dynamics x' = x + 0.1 * sin(x) + 0.1 * u
cost stage = x^2 + 0.1 * u^2
cost final = 10 * x^2
solve ilqr(iters=1, tol=1e-12)
"""


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("plans")
    out = {"friction": root / "friction.plan", "unsolved": root / "unsolved.plan", "png": root / "di.png"}
    out["friction"].write_text(FRICTION_PLAN)
    out["unsolved"].write_text(UNSOLVED_PLAN)
    for name, (text, *_) in BROKEN.items():
        out[name] = root / f"{name}.plan"
        out[name].write_text(text)
    return out


def _invocations(p: dict[str, Path]) -> dict[str, tuple]:
    return {
        "summary_plot": ("run", DI, "--plot", p["png"]),
        "json": ("run", DI, "--json"),
        "unknown_set": ("run", DI, "--set", "gaol=[1, 0]"),
        "closed": ("run", DI, "--json", "--closed-loop", "5"),
        "closed_system": ("run", DI, "--json", "--closed-loop", "5", "--system", p["friction"]),
        "graph_dot": ("graph", DI, "--format", "dot"),
        "graph_json": ("graph", DI, "--format", "json"),
        "graph_shapes": ("graph", DI, "--after", "shapes"),
        "err_syntax": ("run", p["syntax"]),
        "err_unknown_name": ("run", p["unknown_name"]),
        "check": ("check", DI),
    }


@pytest.fixture(scope="module")
def runs(cli, plans):
    """name -> Result, all started at once."""
    invocations = _invocations(plans)
    cli.prefetch(*sorted(invocations.values(), key=lambda a: a[0] != "check"))   # the slowest first

    class Runs:
        def __getitem__(self, name):
            return cli(*invocations[name])
    return Runs()


def _json(result) -> dict:
    assert result.returncode == 0, result
    return json.loads(result.stdout)


def _no_traceback(result) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result


# ---------------------------------------------------------------------- run

def test_run_prints_a_summary_and_writes_a_png(runs, plans):
    result = runs["summary_plot"]
    assert result.returncode == 0, result
    fields = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert {"plan", "solver", "horizon", "cost", "status", "time", "x:x", "u:u"} <= fields, result
    lines = {line.split()[0]: line.split(None, 1)[1] for line in result.stdout.splitlines() if line.strip()}
    assert lines["plan"] == "double_integrator"
    assert lines["solver"] == "lqr"
    assert lines["status"] == "solved"
    assert float(lines["cost"]) > 0
    assert "n=2 states, m=1 controls, batch 1" in lines["horizon"]
    assert f"plot written to {plans['png']}" in result.stdout
    assert plans["png"].read_bytes()[:8] == PNG_MAGIC


def test_run_json_has_the_solution_with_its_shapes(runs):
    out = _json(runs["json"])
    T = out["horizon"]
    assert T >= 1 and out["plan"] == "double_integrator" and out["solver"] == "lqr"
    assert _shape(out["x"]) == (1, T + 1, 2)
    assert _shape(out["u"]) == (1, T, 1)
    assert len(out["cost"]) == 1 and out["cost"][0] > 0
    assert out["status"] == ["solved"]
    assert out["x"][0][0] == [1.0, 0.0]                      # the plan's initial state
    assert _shape(out["trajectories"]["x"]) == (1, T + 1, 2)
    assert _shape(out["trajectories"]["u"]) == (1, T, 1)


def test_run_set_overrides_an_input(runs, capsys):
    default = _json(runs["json"])
    code, out, _ = _main(capsys, "run", DI, "--json", "--set", "goal=[0.5, 0]")    # in-process
    assert code == 0
    moved = json.loads(out)
    assert moved["status"] == ["solved"]
    assert moved["x"][0][0] == default["x"][0][0]            # same start ...
    assert abs(moved["cost"][0] - default["cost"][0]) > 1e-3   # ... another goal, another cost
    final = moved["x"][0][-1][0]
    assert abs(final - 0.5) < abs(default["x"][0][-1][0] - 0.5)   # ends nearer the new goal


def test_run_set_with_an_unknown_name_is_a_usage_error(runs):
    result = runs["unknown_set"]
    assert result.returncode == 2, result
    assert result.stderr.startswith("planlang: error:"), result
    assert "gaol" in result.stderr and "did you mean 'goal'" in result.stderr, result
    assert result.stdout == ""
    _no_traceback(result)


def test_run_exits_1_when_a_solve_fails(capsys, plans):
    code, out, err = _main(capsys, "run", plans["unsolved"])   # in-process
    assert code == 1, (out, err)
    assert "status    max_iters" in out, out          # the summary still prints


# ---------------------------------------------------------------------- closed loop

def test_run_closed_loop(runs):
    open_loop, closed = _json(runs["json"]), _json(runs["closed"])
    assert _shape(closed["x"]) == (1, 6, 2)
    assert _shape(closed["u"]) == (1, 5, 1)
    assert closed["status"] == ["solved"]
    assert len(closed["cost"]) == 1 and closed["cost"][0] > 0
    assert closed["x"][0][0] == open_loop["x"][0][0]
    # no disturbance: the first applied control and the next state are the open-loop ones
    assert closed["u"][0][0][0] == pytest.approx(open_loop["u"][0][0][0], abs=1e-9)
    assert closed["x"][0][1] == pytest.approx(open_loop["x"][0][1], abs=1e-9)
    assert closed["x"][0][5] != pytest.approx(open_loop["x"][0][5], abs=1e-6)   # re-planned


def test_run_closed_loop_with_another_true_system(runs):
    nominal, other = _json(runs["closed"]), _json(runs["closed_system"])
    assert _shape(other["x"]) == (1, 6, 2) and _shape(other["u"]) == (1, 5, 1)
    assert other["status"] == ["solved"]
    # the same controller from the same state picks the same first control ...
    assert other["u"][0][0] == pytest.approx(nominal["u"][0][0], abs=1e-12)
    # ... but friction (A[1, 1] = 0.8) moves the true state elsewhere: v' = 0.8 v + 0.1 u
    x0, u0 = other["x"][0][0], other["u"][0][0][0]
    assert other["x"][0][1] == pytest.approx([x0[0] + 0.1 * x0[1], 0.8 * x0[1] + 0.1 * u0], abs=1e-12)
    for t in range(2, 6):
        assert other["x"][0][t] != pytest.approx(nominal["x"][0][t], abs=1e-6)
    assert other["cost"][0] != pytest.approx(nominal["cost"][0], abs=1e-6)


# ---------------------------------------------------------------------- graph

def test_graph_text(capsys):
    code, out, _ = _main(capsys, "graph", DI)                   # in-process
    assert code == 0
    assert re.match(r"plan double_integrator: \d+ nodes, \d+ edges", out), out
    for node in ("state:x[2]", "control:u[1]", "input:goal[2]", "dynamics:x", "cost:stage#1", "solve = lqr"):
        assert node in out, node
    assert "uses" in out


def test_graph_dot(runs):
    result = runs["graph_dot"]
    assert result.returncode == 0, result
    out = result.stdout.strip()
    assert out.startswith('digraph "double_integrator" {') and out.endswith("}"), result
    assert '"state:x"' in out and '"dynamics:x"' in out
    assert re.search(r'"state:x" -> "dynamics:x"', out), out


def test_graph_json(runs):
    out = _json(runs["graph_json"])
    assert out["plan"] == "double_integrator"
    ids = {node["id"] for node in out["nodes"]}
    assert {"plan", "horizon", "state:x", "control:u", "input:goal", "dynamics:x", "solve"} <= ids
    edges = {(e["from"], e["to"]) for e in out["edges"]}
    assert ("state:x", "dynamics:x") in edges and ("control:u", "dynamics:x") in edges
    assert all("typed" not in node for node in out["nodes"])      # no pass has run


def test_graph_after_shapes_shows_typed_expressions(runs):
    result = runs["graph_shapes"]
    assert result.returncode == 0, result
    untyped = {node["id"]: node["expr"] for node in _json(runs["graph_json"])["nodes"] if "expr" in node}
    lines = {line.split()[1]: line for line in result.stdout.splitlines()[1:] if re.match(r"\s+\d+:\d+\s", line)}
    dynamics = lines["dynamics:x"]
    assert "matmul" in dynamics and "[2]" in dynamics, dynamics          # ops with their shapes
    assert untyped["dynamics:x"] not in dynamics                         # not the source text
    cost = next(line for key, line in lines.items() if key.startswith("cost:stage"))
    assert cost.rstrip().endswith("[]"), cost                            # a scalar


def test_graph_after_an_unknown_pass_is_a_usage_error(capsys):
    code, out, err = _main(capsys, "graph", DI, "--after", "typecheck")   # in-process
    assert code == 2 and out == ""
    assert err.startswith("planlang: error:") and "typecheck" in err, err
    assert "shapes" in err                                               # the passes are listed


# ---------------------------------------------------------------------- errors

def _assert_rendered(stderr: str, path: Path, kind: str) -> None:
    """`FILE:L:C: error: msg`, the offending line, a caret under column C."""
    _, line, col, words = BROKEN[kind]
    assert "Traceback" not in stderr, stderr
    err = stderr.splitlines()
    assert err[0].startswith(f"{path}:{line}:{col}: error: "), stderr
    assert words in err[0], stderr
    source = path.read_text().splitlines()[line - 1]
    assert err[1].strip() == source.strip(), stderr
    caret = err[2]
    assert re.fullmatch(r"\s*\^~*", caret), stderr
    indent = len(err[1]) - len(err[1].lstrip())
    assert caret.index("^") - indent == col - 1, stderr              # under the reported column


@pytest.mark.parametrize("kind", ["syntax", "unknown_name"])
def test_plan_errors_are_rendered_without_a_traceback(runs, plans, kind):
    result = runs[f"err_{kind}"]
    assert result.returncode == 1, result
    _no_traceback(result)
    assert result.stdout == "", result
    _assert_rendered(result.stderr, plans[kind], kind)


def test_errors_found_by_a_pass_are_rendered(capsys, plans):
    code, out, err = _main(capsys, "graph", plans["shape"], "--after", "shapes")   # in-process
    assert code == 1 and out == ""
    _assert_rendered(err, plans["shape"], "shape")


# ---------------------------------------------------------------------- check

def test_check_prints_a_table_and_passes(runs):
    result = runs["check"]
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("quantity"))
    assert "verdict" in lines[header]
    assert re.fullmatch(r"-+(\s+-+)+", lines[header + 2]), lines[header + 2]   # the rule under the header
    rows = {line.split()[0]: line for line in lines[header + 3:] if line.strip() and line[0] != " "}
    for quantity in ("x", "u", "cost", "dL/dx_0", "dL/dgoal"):
        assert quantity in rows and rows[quantity].split()[-1] == "ok", result
    assert "check passed" in result.stdout


# ---------------------------------------------------------------------- in-process edge cases

def _main(capsys, *argv):
    code = planlang_cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_set_with_a_bad_value_is_a_usage_error(capsys):
    code, out, err = _main(capsys, "run", DI, "--set", "goal=[1, oops]")
    assert code == 2 and out == ""
    assert err.startswith("planlang: error: --set goal:"), err


def test_set_without_equals_is_a_usage_error(capsys):
    code, _, err = _main(capsys, "run", DI, "--set", "goal")
    assert code == 2 and "NAME=VALUE" in err


def test_system_needs_closed_loop(capsys, plans):
    code, _, err = _main(capsys, "run", DI, "--system", plans["friction"])
    assert code == 2 and "--closed-loop" in err


def test_closed_loop_summary(capsys):
    import planlang
    horizon = planlang.compile(planlang.load(DI)).horizon
    code, out, _ = _main(capsys, "run", DI, "--closed-loop", horizon)    # as many steps as the horizon
    assert code == 0
    assert "batch 1" in out and "status    solved" in out
    assert "(warm solve)" not in out                  # a closed loop is not one warm solve


def test_closed_loop_zero_is_a_usage_error(capsys):
    code, out, err = _main(capsys, "run", DI, "--closed-loop", "0")      # not a silent open-loop run
    assert code == 2 and out == "" and "steps" in err, (out, err)


def test_json_with_a_plot_stays_json(capsys, tmp_path):
    png = tmp_path / "out.png"
    code, out, err = _main(capsys, "run", DI, "--json", "--plot", png)
    assert code == 0
    assert json.loads(out)["status"] == ["solved"]
    assert "plot written to" in err and png.read_bytes()[:8] == PNG_MAGIC


def test_closed_loop_with_a_mismatched_system_is_an_error(capsys, tmp_path):
    three = tmp_path / "three.plan"
    three.write_text(FRICTION_PLAN.replace("state x[2] = [1.0, 0.0]", "state x[3] = [1.0, 0.0, 0.0]")
                     .replace("param A[2, 2] = [[1, dt], [0, 0.8]]", "param A[3, 3] = eye(3)")
                     .replace("[0, dt] * u", "[0, dt, 0] * u"))
    code, _, err = _main(capsys, "run", DI, "--closed-loop", "2", "--system", three)
    assert code == 2 and "n=3" in err, err


def test_a_broken_system_plan_is_rendered(capsys, plans):
    code, _, err = _main(capsys, "run", DI, "--closed-loop", "2", "--system", plans["syntax"])
    assert code == 1 and err.startswith(f"{plans['syntax']}:6:"), err


def _shape(nested) -> tuple[int, ...]:
    shape = []
    while isinstance(nested, list):
        shape.append(len(nested))
        nested = nested[0] if nested else None
    return tuple(shape)
