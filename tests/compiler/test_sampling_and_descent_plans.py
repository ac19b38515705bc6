"""Plans solved by mppi, cem and descent: options, reproducibility, and gradients through the
compiled plan against central finite differences (float64, common random numbers)."""
from __future__ import annotations

import pytest
import torch

import planlang
from planlang.errors import PlanError

PLAN = """plan cart
const dt = 0.1
horizon 10
state x[2] = [1.0, 0.0]
control u[1] in [-1.5, 1.5]
param w = 1.0
input goal = 0.0
dynamics x' = [x[0] + dt * x[1], x[1] + dt * u[0]]
cost stage = w * (x[0] - goal)^2 + 0.1 * x[1]^2 + 0.01 * sum(u^2)
cost final = 10 * ((x[0] - goal)^2 + x[1]^2)
solve SOLVER
"""


def compiled(solver: str, **kwargs):
    return planlang.compile(planlang.loads(PLAN.replace("SOLVER", solver)), dtype=torch.float64, **kwargs)


def central_difference(f, value: torch.Tensor, h: float = 1e-6) -> float:
    return float((f(value + h) - f(value - h)) / (2 * h))


@pytest.mark.parametrize("solver", ["mppi(samples=64, iters=3, noise=0.5, temperature=0.5)",
                                    "cem(samples=64, elites=8, iters=3, noise=0.5)"])
def test_sampling_plans_are_reproducible_and_improve_on_doing_nothing(solver):
    module = compiled(solver)
    one, two = module(), module()
    assert one.status_names() == ["solved"]
    torch.testing.assert_close(one.u, two.u, rtol=0, atol=0)
    reseeded = compiled(solver, options={"seed": 7})()
    assert not torch.equal(reseeded.u, one.u)
    assert float(one.cost) < float(_cost_of_zero_controls(module))
    assert (one.u.abs() <= 1.5 + 1e-12).all()


def _cost_of_zero_controls(module) -> torch.Tensor:
    """J(u = 0) from the plan's own lowered dynamics and costs."""
    env, x0, like = module.bind({})
    x, total = x0, like.new_zeros(1)
    u = like.new_zeros(1, 1)
    for _ in range(module.horizon):
        total = total + module.backend.stage_cost(env, x, u, like)
        x = module.backend.step(env, x, u, like)
    return total + module.backend.final_cost(env, x, like)


@pytest.mark.parametrize("solver", ["mppi(samples=32, iters=2, noise=0.5)",
                                    "cem(samples=32, elites=8, iters=2, noise=0.5)"])
def test_sampling_gradients_match_finite_differences_with_common_random_numbers(solver):
    module = compiled(solver)

    def loss(w: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return module(w=w, x=x0).u.sum()

    w = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    x0 = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    gw, gx = torch.autograd.grad(loss(w, x0), (w, x0))
    with torch.no_grad():
        assert gw == pytest.approx(central_difference(lambda v: loss(v, x0), w.detach()), rel=1e-5, abs=1e-8)
        e0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
        fd = central_difference(lambda s: loss(w, x0.detach() + (s - 1.0) * e0), torch.tensor(1.0, dtype=torch.float64))
        assert float(gx[0]) == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_descent_matches_ilqr_and_its_implicit_gradient_matches_unrolling_and_fd():
    exact = compiled("ilqr(iters=200, tol=1e-12)")()
    module = compiled("descent(iters=400, method=lbfgs, tol=1e-10, backward=implicit(cg, iters=60))")
    w = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    sol = module(w=w)
    assert sol.status_names() == ["solved"]
    torch.testing.assert_close(sol.u, exact.u, rtol=1e-6, atol=1e-7)
    g_implicit = torch.autograd.grad(sol.u.sum(), w)[0]
    unrolled = compiled("descent(iters=400, method=lbfgs, tol=1e-10, backward=unroll)")
    g_unroll = torch.autograd.grad(unrolled(w=w).u.sum(), w)[0]
    with torch.no_grad():
        fd = central_difference(lambda v: module(w=v).u.sum(), w.detach(), h=1e-5)
    assert float(g_implicit) == pytest.approx(fd, rel=1e-5)
    assert float(g_implicit) == pytest.approx(float(g_unroll), rel=1e-6)


def test_descent_backward_options_parse():
    module = compiled("descent(iters=5, backward=truncated(3))")
    assert module.info.options["backward"].name == "truncated"
    assert module.info.options["backward"].args == {"k": 3}


@pytest.mark.parametrize("solver, col, message", [
    ("mppi(samples=0)", 20, "option 'samples' must be an integer >= 1"),
    ("descent(backward=implicit(cgg))", 33, "option 'solver' must be one of: cg, neumann"),
    ("descent(backward=unrol)", 24, "option 'backward' must be one of"),
    ("cem(samples=8, elites=16)", 1, "solve cem needs elites <= samples"),
])
def test_bad_solver_options_are_located(solver, col, message):
    with pytest.raises(PlanError) as info:
        compiled(solver)
    d = info.value.diagnostics[0]
    assert (d.span.line, d.span.col) == (11, col), d
    assert message in d.message


def test_non_smooth_costs_go_to_sampling_planners():
    text = PLAN.replace("0.01 * sum(u^2)", "0.01 * sum(abs(u))").replace("SOLVER", "ilqr")
    with pytest.raises(PlanError) as info:
        planlang.compile(planlang.loads(text))
    d = info.value.diagnostics[0]
    assert "abs() of a state or control is not smooth" in d.message and "`solve mppi` would take" in d.hint
    module = planlang.compile(planlang.loads(text), solver="mppi", dtype=torch.float64)
    assert module().status_names() == ["solved"]


def test_closed_loop_mppi_warm_starts():
    module = compiled("mppi(samples=64, iters=2, noise=0.5)")
    run = module.simulate(5)
    assert run.x.shape == (1, 6, 2) and run.step_status.shape == (1, 5)
    assert float(run.x[0, -1, 0].abs()) < 1.0


@pytest.mark.parametrize("solver", ["mppi(samples=32, iters=2, noise=0.5)",
                                    "cem(samples=32, elites=8, iters=2, noise=0.5)", "ilqr"])
def test_controller_repeats_the_module_solves_warm_started_with_the_shifted_plan(solver):
    module = compiled(solver)
    control = module.controller(w=0.5)
    x = torch.tensor([[1.0, 0.0], [0.5, 0.2]], dtype=torch.float64)
    warm = None
    for _ in range(3):
        got = control(x)
        want = module(x=x, w=0.5, warm_start=warm)
        torch.testing.assert_close(got.u, want.u, rtol=0, atol=1e-12)
        torch.testing.assert_close(got.cost, want.cost, rtol=0, atol=1e-12)
        assert got.status_names() == want.status_names() == ["solved", "solved"]
        assert torch.equal(got["u"], got.u)                  # the module's layout is attached
        warm = torch.cat((want.u[:, 1:], want.u[:, -1:]), dim=1)
        x = module.step(x, got.u[:, 0])


def test_controller_keeps_the_failed_element_rule():
    control = compiled("mppi(samples=16, noise=0.5)").controller()
    x = torch.tensor([[1.0, 0.0], [torch.nan, 0.0], [0.5, 0.0]], dtype=torch.float64)
    for _ in range(2):
        assert control(x).status_names() == ["solved", "numerical", "solved"]
    assert control(x[:1]).status_names() == ["solved"]        # another batch size: prepared anew


@pytest.mark.slow
def test_fused_controller_matches_the_eager_one():
    eager = compiled("mppi(samples=32, iters=2, noise=0.5)").controller()
    fused = compiled("mppi(samples=32, iters=2, noise=0.5, fuse=on)").controller()
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        for _ in range(3):
            want, got = eager(x), fused(x)
            torch.testing.assert_close(got.u, want.u)
            assert got.status_names() == want.status_names() == ["solved"]
