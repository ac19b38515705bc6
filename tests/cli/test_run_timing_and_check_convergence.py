"""`planlang run` times one solve unless `--warm`, warns about intra-op threads on small plans, and
`planlang check` judges the solve `run` makes: an unconverged solve fails as "did not converge"."""
from __future__ import annotations

import pytest
import torch

import planlang
from compiler.lower.module import PlanModule
from planlang import cli as planlang_cli
from planlang.checks import Verdict

DI = "examples/double_integrator.plan"

# iLQR needs several iterations on this plan; with iters=1 it stops at max_iters, as `run` does.
SLOW = """plan slow
horizon 10
state x = 1.0
control u in [-10, 10]
dynamics x' = x + 0.5 * sin(x) + 0.1 * u
cost stage = x^2 + 0.1 * u^2
cost final = 10 * x^2
solve ilqr(iters=ITERS)
"""


@pytest.fixture
def solves(monkeypatch):
    """Counts the module's solves."""
    count = {"n": 0}
    forward = PlanModule.forward

    def counted(self, *args, **kwargs):
        count["n"] += 1
        return forward(self, *args, **kwargs)
    monkeypatch.setattr(PlanModule, "forward", counted)
    return count


@pytest.mark.parametrize("warm, calls, note", [(False, 1, "(one solve; --warm times a second)"),
                                               (True, 2, "(warm solve)")])
def test_run_times_one_solve_unless_warm(capsys, solves, warm, calls, note):
    code = planlang_cli.main(["run", DI] + (["--warm"] if warm else []))
    out = capsys.readouterr().out
    assert code == 0 and solves["n"] == calls and note in out


def test_many_threads_on_a_small_plan_are_reported_on_stderr(capsys):
    before = torch.get_num_threads()
    try:
        planlang_cli.main(["--threads", "2", "run", DI])
        warned = capsys.readouterr().err
        planlang_cli.main(["run", DI])
        quiet = capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
    assert "warning: torch uses 2 intra-op threads for a small plan (T=30, n=2, m=1)" in warned
    assert "warning" not in quiet


def test_check_of_an_unconverged_solve_says_so_and_fails(tmp_path, capsys):
    path = tmp_path / "slow.plan"
    path.write_text(SLOW.replace("ITERS", "1"))
    report = planlang.check(planlang.load(path))
    assert not report.ok and report.unconverged.startswith("status max_iters, 1 iterations")
    assert {row.verdict for row in report.rows if row.kind == "gradient"} == {Verdict.UNCHECKED}
    assert planlang_cli.main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "check FAILED: the solve did not converge (status max_iters" in out and "ok (kink)" not in out


def test_check_solves_with_the_plans_own_options():
    """The stopping rule of `run`: the same plan with enough iterations converges and passes."""
    report = planlang.check(planlang.loads(SLOW.replace("ITERS", "50"), "slow.plan"))
    assert report.ok and not report.unconverged, report.render()
    module = planlang.compile(planlang.loads(SLOW.replace("ITERS", "50")), dtype=torch.float64)
    assert module().status_names() == ["solved"]


def test_a_gradient_off_by_the_solves_own_inaccuracy_is_reported_as_such():
    from planlang.checks.gradients import CheckedTensor, CheckOptions, Side, _FiniteDifferences, _gradient_rows
    from planlang.ast import VarKind
    import numpy as np

    tensor = CheckedTensor("x", VarKind.STATE, np.ones(1), np.eye(1), np.ones(1))
    side = Side(np.zeros((2, 1)), np.zeros((1, 1)), 0.0, True, "solved", {"x": np.array([1.0 + 3e-5])})
    fd = _FiniteDifferences({"x": np.array([1.0])}, {"x": np.array([1.0])}, {"x": np.array([1.0])})
    loose = _gradient_rows([tensor], side, fd, None, CheckOptions(), solve_error=1e-6)[0]
    exact = _gradient_rows([tensor], side, fd, None, CheckOptions(), solve_error=0.0)[0]
    assert loose.verdict is Verdict.SOLVE_TOL and "1.0e-06" in loose.note
    assert exact.verdict is Verdict.FAIL
