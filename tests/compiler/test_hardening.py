"""Hardening (issue 6): every plan gets a located error or a solution with statuses, never a crash;
non-finite constants are errors; literal values keep float64 precision; the module's Python API
checks shapes, batch sizes and names."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import planlang
from planlang import PlanError
from runtime.status import Status
from fuzz_plans import fuzz

ROOT = Path(__file__).resolve().parents[2]
DI = (ROOT / "examples" / "double_integrator.plan").read_text()
F64 = torch.float64


def _di(old: str, new: str) -> str:
    assert old in DI
    return DI.replace(old, new)


def _line_of(text: str, fragment: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


# ------------------------------------------------ 1, 2: range checks, located errors

CRASHERS = [   # (old, new, what the message says): each crashed before, somewhere past the parser
    ("horizon 30", "horizon 1e308", "exceeds the limit"),
    ("horizon 30", "horizon 99999999999999999999", "exceeds the limit"),
    ("horizon 30", "horizon 1e309", "out of range"),
    ("horizon 30", "horizon 2147483648", "exceeds the limit"),
    ("+ r * sum(u^2)", "+ r * sum(u^2) + x[1e309]", "out of range"),
    ("r * sum(u^2)", "r * sum(u^1e309)", "out of range"),
    ("+ r * sum(u^2)", "+ r * sum(u^2) + sum(eye(1e308))", "limit"),
    ("+ r * sum(u^2)", "+ r * sum(u^2) + sum(zeros(99999999999))", "limit"),
    ("learn q[2] = [1, 1] positive", "learn q[99999999999999999999] = 1 positive", "exceeds the limit"),
    ("+ r * sum(u^2)", "+ r * sum(u^2) + sum(r * ones(9000000, 1) * ones(1, 9000000))", "more elements than"),
    ("learn q[2] = [1, 1] positive", "learn q[2] = [exp(1000), 1] positive", "not a finite number"),
    ("cost final = ", "cost final = 1/0 + ", "not a finite number"),
    ("cost final = ", "cost final = log(0) + ", "not a finite number"),
    ("const dt = 0.1", "const dt = 0/0", "not a finite number"),
    ("solve lqr", "solve qp(iters=1e309)", "must be an integer"),
    ("solve lqr", "solve qp(iters=1e300)", "must be an integer"),
]


@pytest.mark.parametrize("old,new,message", CRASHERS, ids=[c[1] for c in CRASHERS])
def test_out_of_range_numbers_are_located_errors(old, new, message):
    text = _di(old, new)
    with pytest.raises(PlanError) as info:
        planlang.compile(planlang.loads(text, "m.plan"))
    assert message in info.value.message
    assert info.value.span.line == _line_of(text, new.split("=")[0].strip() if "=" in new else new)
    assert info.value.render().startswith("m.plan:")


def test_a_qp_whose_stage_data_would_not_fit_in_memory_is_a_located_error():
    text = _di("horizon 30", "horizon 1000000").replace("control u[1]", "control u[20]")
    with pytest.raises(PlanError, match=r"horizon \* \(n \+ m\)\^2") as info:
        planlang.compile(planlang.loads(text))
    assert info.value.span.line == _line_of(text, "horizon 1000000")


def test_huge_finite_weights_are_checked_for_convexity_without_a_linalg_error():
    text = (ROOT / "examples" / "lane_keeping.plan").read_text()
    text = text.replace("input weights[n] = [1.0, 0.1, 2.0, 0.1]", "input weights[n] = [1.0, 0.1, -1e308, 0.1]")
    with pytest.raises(PlanError, match="not convex") as info:
        planlang.compile(planlang.loads(text))
    assert info.value.span.line == _line_of(text, "cost stage")


def test_a_hessian_that_overflows_is_a_located_error_not_a_linalg_error():
    text = _di("learn q[2] = [1, 1] positive", "learn q[2] = [1e308, 1e308] positive")
    text = text.replace("sum(q * (x - goal)^2)", "sum(q * 10 * (x - goal)^2)")
    with pytest.raises(PlanError, match="not finite") as info:
        planlang.compile(planlang.loads(text))
    assert info.value.span.line == _line_of(text, "cost stage")


@pytest.mark.parametrize("solver", ["lqr", "qp"])
def test_a_non_finite_cost_is_never_solved(solver):
    text = _di("learn r = 0.1 positive", "learn r = 0.1 positive\nparam k = 1e200")
    text = text.replace("cost final = ", "cost final = k * k + ")      # params are not folded
    sol = planlang.compile(planlang.loads(text), dtype=F64, solver=solver)()
    assert not torch.isfinite(sol.cost).all()
    assert sol.status.tolist() == [Status.NUMERICAL]


def test_an_exception_inside_a_solve_becomes_a_status(monkeypatch):
    module = planlang.compile(planlang.loads(DI), dtype=F64)

    def broken(*args):
        raise torch.linalg.LinAlgError("the factorization could not be completed")

    monkeypatch.setattr(module, "backend", broken)
    with pytest.warns(RuntimeWarning, match="LinAlgError"):
        sol = module(x=torch.zeros(3, 2, dtype=F64))
    assert sol.status.tolist() == [Status.NUMERICAL] * 3
    assert sol.x.shape == (3, 31, 2) and sol.x.isnan().all() and sol.cost.isnan().all()


def test_fuzzed_example_plans_never_crash_or_hang():
    report = fuzz(500, seed=0)
    assert report.total == 500
    assert not report.failures, "\n\n".join(f"{o.kind}: {o.detail}\n{t}" for t, o in report.failures[:3])
    assert report.counts["error"] > 0 and report.counts["solved"] + report.counts["status"] > 0


# ------------------------------------------------------------- 5: float64 values

PRECISE = """plan precise
const dt = 0.1
horizon 20
state x[2] = [1.3, -0.7]
control u
param A[2, 2] = [[1, dt], [0, 1 - 0.3 * dt]]
param w = 0.37
input goal[2] = [0.11, 0]
dynamics x' = A @ x + [0, dt] * u
cost stage = w * sum((x - goal)^2) + 0.01 * u^2
cost final = 10 * sum((x - goal)^2)
solve lqr
"""


def test_a_float32_module_fed_float64_agrees_with_a_float64_module():
    plan = planlang.loads(PRECISE)
    x0 = torch.tensor([1.3, -0.7], dtype=F64)
    ref = planlang.compile(plan, dtype=F64)(x=x0)
    sol = planlang.compile(plan, dtype=torch.float32)(x=x0)
    assert sol.u.dtype == F64
    torch.testing.assert_close(sol.u, ref.u, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(sol.cost, ref.cost, rtol=1e-12, atol=0)


def test_learnables_live_in_the_compile_dtype_and_agree_once_set_alike():
    plan = planlang.loads(DI)
    m32, m64 = planlang.compile(plan, dtype=torch.float32), planlang.compile(plan, dtype=F64)
    assert m32.dtype == torch.float32 and all(p.dtype == torch.float32 for p in m32.parameters())
    assert m32().u.dtype == torch.float32                      # no float tensor given: the learnables' dtype
    for name in m32.learnables:
        m64.set_learned(name, m32.learned(name).detach().double())
    x0 = torch.tensor([1.0, 0.0], dtype=F64)
    torch.testing.assert_close(m32(x=x0).u, m64(x=x0).u, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------- 6, 7: the Python API

@pytest.fixture(scope="module")
def di():
    return planlang.compile(planlang.loads(DI), dtype=F64)


@pytest.mark.parametrize("shape", [(1, 29, 1), (29, 1), (1, 30, 2), (2, 30, 1)])
def test_a_warm_start_of_the_wrong_shape_is_a_clear_error(di, shape):
    with pytest.raises(ValueError, match=r"warm_start has shape .* expected \(T, m\) = \(30, 1\)"):
        di(warm_start=torch.zeros(shape, dtype=F64), x=torch.zeros(3, 2, dtype=F64))


def test_a_warm_start_of_the_right_shape_is_accepted(di):
    assert di(warm_start=torch.zeros(30, 1, dtype=F64)).u.shape == (1, 30, 1)


@pytest.mark.parametrize("x,u", [((1, 3), (1, 1)), ((1, 2), (1, 2)), ((2, 2), (3, 1)), ((0, 2), (0, 1))])
def test_step_checks_shapes(di, x, u):
    with pytest.raises(ValueError, match="step"):
        di.step(torch.zeros(x, dtype=F64), torch.zeros(u, dtype=F64))


BOUNDED = _di("control u[1]", "control u[1] in [-15, 15]").replace("solve lqr", "solve qp")


def test_step_applies_the_control_bounds():
    module = planlang.compile(planlang.loads(BOUNDED), dtype=F64)
    x = torch.zeros(2, 2, dtype=F64)
    nxt = module.step(x, torch.tensor([[-39.0], [3.0]], dtype=F64))
    torch.testing.assert_close(nxt[:, 1], torch.tensor([-1.5, 0.3], dtype=F64))      # v' = v + dt u
    torch.testing.assert_close(module.step(x[0], torch.tensor([-39.0], dtype=F64)), nxt[:1])


def test_a_bounded_true_system_saturates_the_closed_loop_controls(di):
    system = planlang.compile(planlang.loads(BOUNDED.replace("control u[1] in [-15, 15]", "control u[1] in [-0.5, 0.5]")),
                              dtype=F64)
    free = di.simulate(5, x=torch.tensor([1.0, 0.0], dtype=F64))
    closed = di.simulate(5, system=system, x=torch.tensor([1.0, 0.0], dtype=F64))
    assert free.u.abs().max() > 0.5 and closed.u.abs().max() <= 0.5


def test_batch_size_mismatches_name_the_inputs(di):
    with pytest.raises(ValueError, match=r"'x' 3, 'goal' 2"):
        di(x=torch.zeros(3, 2, dtype=F64), goal=torch.zeros(2, 2, dtype=F64))


def test_an_empty_batch_is_a_clear_error(di):
    with pytest.raises(ValueError, match="empty batch: 'x'"):
        di(x=torch.zeros(0, 2, dtype=F64))


def test_a_bool_tensor_is_rejected(di):
    with pytest.raises(TypeError, match="'x' is a torch.bool tensor"):
        di(x=torch.tensor([True, False]))
    assert di(x=torch.tensor([1, 0])).ok.all()              # integers are numbers


def test_an_unknown_solver_argument_is_named_with_a_suggestion():
    with pytest.raises(ValueError, match=r"compile\(solver='ilq'\): unknown solver; did you mean 'ilqr'\?"):
        planlang.compile(planlang.loads(DI), solver="ilq")


def test_learned_and_set_learned(di):
    with pytest.raises(KeyError, match="no learnable named 'qq'; did you mean 'q'"):
        di.learned("qq")
    module = planlang.compile(planlang.loads(DI), dtype=F64)
    module.set_learned("q", torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(module.learned("q"), torch.tensor([2.0, 0.5], dtype=F64))
    assert isinstance(module.learnables["q"], torch.nn.Parameter)
    with pytest.raises(ValueError, match="positive"):
        module.set_learned("r", -1.0)
    with pytest.raises(ValueError, match="shape"):
        module.set_learned("q", torch.ones(3))


def test_qp_far_from_the_origin_stops_at_max_iters_with_lqrs_answer():
    plan = planlang.loads(DI)
    x0 = torch.tensor([1e30, 0.0], dtype=F64)
    sol = planlang.compile(plan, dtype=F64, solver="qp")(x=x0)
    ref = planlang.compile(plan, dtype=F64)(x=x0)
    assert ref.status.tolist() == [Status.SOLVED] and sol.status.tolist() == [Status.MAX_ITERS]
    torch.testing.assert_close(sol.u, ref.u, rtol=1e-12, atol=0)


def test_warnings_are_not_raised_by_a_normal_solve(di):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert di().ok.all()
