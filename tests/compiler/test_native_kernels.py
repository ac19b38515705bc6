"""The native (C) iLQR kernels against the torch kernels: one algorithm, two implementations.

Every check compares the same solve or the same derivatives on both: equal iterates after a fixed
number of iterations (each step's arithmetic is the same up to rounding), equal stage models on
a plan that uses every builtin the C generator covers, equal gradients through the implicit
backward step, and the fallbacks (no compiler, plans the kernels do not cover).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import planlang
import runtime.native as native
from compiler.lower.native import native_plan
from runtime.ilqr import ILQROptions
from runtime.ilqr_derivatives import TrajectoryFunctions
from runtime.native import NativeKernels, NativeUnavailable, native_library
from runtime.status import Status

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(native.compiler() is None, reason="no C compiler")

# every builtin with a C rule (the non-smooth ones of data: solve ilqr refuses them of states and
# controls), three limited controls (the box QP enumerates 27 faces)
EVERY_BUILTIN = """
plan builtins
const dt = 0.1
horizon 6
state p[2] = [0.3, -0.2]
state v[2] = [0.1, 0.4]
control a[3] in [-1, 1]
param k = 0.7
param M[2, 2] = [[2.0, 0.3], [0.3, 1.0]]
input goal[2] = [1.0, 0.5]
let s = sin(p[0]) * cos(p[1]) + tan(0.3 * p[0]) + tanh(v[0]) + sigmoid(v[1]) + softplus(p[1])
dynamics dot(p) = v + 0.1 * [atan2(p[1], 1 + p[0]^2), mod(k + 5, 2.0) * p[0]] by rk4(dt)
dynamics dot(v) = M @ [a[0] - k * v[0], a[1] + 0.2 * a[2]] + 0.1 * [s, exp(-p[0]^2) + log(2 + p[1]^2)] by rk4(dt)
cost stage = (quad(v, M) + dot(a, a) + sum(abs(goal - 3)) * p[0] + norm(p - goal) + sqrt(1 + v[0]^2)
    + max(k, 0.5) * p[0] + min(goal) * v[0] + sum(clip(goal, 0, 0.7)) * v[1] + relu(k - 0.5) * p[1]
    + wrap(7 * k) * p[1] + max(goal, k) @ v
    + sum(diag(v) @ cat(p[0], v[1])) + (1 + p[0]^2)^1.5)
cost final = 10 * sum((p - goal)^2) + sum(v^2)
solve ilqr(iters=40)
"""


def _module(source: str, kernels: str, **options):
    return planlang.compile(planlang.loads(source), dtype=torch.float64,
                            options={"kernels": kernels, **options})


def _example(name: str) -> str:
    return (ROOT / "examples" / f"{name}.plan").read_text()


@pytest.mark.parametrize("name", ["two_link_arm", "planar_quadrotor", "cartpole", "pendulum",
                                  "car_obstacle", "robot_obstacle", "unicycle_obstacle"])
def test_iterates_equal_torch_kernels(name):
    """After 4 iterations (not converged), both kernels hold the same iterate and statistics."""
    with torch.no_grad():
        solutions = [_module(_example(name), k, iters=4)() for k in ("torch", "native")]
    a, b = solutions
    assert torch.equal(a.status, b.status) and torch.equal(a.iterations, b.iterations)
    assert (a.u - b.u).abs().max() <= 1e-9 * max(1.0, float(a.u.abs().max()))
    assert (a.x - b.x).abs().max() <= 1e-9 * max(1.0, float(a.x.abs().max()))
    assert torch.allclose(a.cost, b.cost, rtol=1e-12)
    assert torch.allclose(a.residual, b.residual, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("iters", [3, 300])
def test_newton_model(iters):
    """model=newton: the dynamics curvature weighted by the costates, from second-order duals of
    the integrator step, gives the torch path's iterates and solution."""
    with torch.no_grad():
        a, b = (_module(_example("two_link_arm"), k, iters=iters, model="newton")() for k in ("torch", "native"))
    assert torch.equal(a.iterations, b.iterations) and torch.equal(a.status, b.status)
    torch.testing.assert_close(b.u, a.u, rtol=1e-8, atol=1e-9)
    if iters == 300:
        assert bool((b.status == Status.SOLVED).all())


def test_stage_models_equal_autodiff():
    """F, g, C, g_T, C_T from the generated dual-number code equal torch autodiff of the generated
    torch code, at random points, for every builtin (rk4 Jacobian, cost Hessians)."""
    module = _module(EVERY_BUILTIN, "native")
    backend = module.backend
    assert backend.native is not None, backend.native_why
    env, x0, like = module.bind({"goal": torch.tensor([[1.0, 0.5], [0.2, -0.3]], dtype=torch.float64)})
    B, T, n, m = 2, backend.horizon, backend.layout.n, backend.layout.m
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, T + 1, n, generator=gen, dtype=torch.float64) * 0.7
    u = torch.rand(B, T, m, generator=gen, dtype=torch.float64) * 1.8 - 0.9
    fns = TrajectoryFunctions(backend.dynamics(env, like), backend.stage_costs_of(env, like),
                              backend.final_costs_of(env, like))
    expected, expected_final = fns.stage(x[:, :-1], u), fns.final(x[:, -1])
    lo, hi = backend.control_bounds(env, like)
    kernels = NativeKernels(native_library(backend.native.source), x0, backend.native.pack(env, B),
                            lo, hi, T, m, ILQROptions())
    model, final, finite = kernels.model(x, u)
    assert bool(finite.all())
    for got, want in zip((*model, *final), (*expected, *expected_final)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    x_roll, u_roll, J = kernels.rollout(u)
    torch.testing.assert_close(J, fns.total_cost(x_roll, u_roll), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="native kernels for n=4, m=3"):       # no memory is misread
        NativeKernels(native_library(backend.native.source), x0[:, :3], backend.native.pack(env, B),
                      lo, hi, T, m, ILQROptions())


def test_every_builtin_plan_solves_alike():
    a, b = (_module(EVERY_BUILTIN, k)() for k in ("torch", "native"))
    assert bool((a.status == Status.SOLVED).all()) and torch.equal(a.status, b.status)
    torch.testing.assert_close(b.u, a.u, rtol=1e-7, atol=1e-8)


STAGE_VALUES = """plan swing
const dt = 0.05
horizon 12
state th = 0.3
state om = 0
control u in [-4, 4]
input ref[T+1] = zeros(T+1)
dynamics th' = th + dt * om
dynamics om' = om + dt * (u - 9.8 * sin(th) + 0.1 * ref[t] + 0.01 * time)
cost stage = (th - ref[t])^2 + 0.1 * om^2 + 0.01 * u^2
cost final = 10 * (th - ref[T])^2
solve ilqr(iters=5)
"""


def test_stage_values_read_their_rows():
    """ref[t], t and time come from their tables at the clock's row, per batch element."""
    ref = 0.5 * torch.sin(torch.arange(13, dtype=torch.float64) * 0.3)
    refs = torch.stack([ref, -ref, 2 * ref])
    with torch.no_grad():
        a, b = (_module(STAGE_VALUES, k)(ref=refs) for k in ("torch", "native"))
    assert "kernels: native (C)" in _module(STAGE_VALUES, "auto").backend.as_text()
    assert torch.equal(a.iterations, b.iterations) and len(set(b.cost.tolist())) == 3
    torch.testing.assert_close(b.u, a.u, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b.x, a.x, rtol=1e-10, atol=1e-12)


CONSTRAINED = """plan mixed
const dt = 0.1
horizon 15
state p[2] = [0, 0]
state v[2] = [0, 0]
control a[2] in [-2, 2]
input goal[2] = [1, 0.5]
dynamics p' = p + dt * v
dynamics v' = v + dt * a
constraint v[0] <= 0.45
constraint a[0] - a[1] == 0.2 * sin(p[0])
constraint a[0] <= 1.5 + p[1]
constraint norm(p - [0.5, 0.12]) >= 0.2
cost stage = 0.1 * sum(a^2) + sum((p - goal)^2)
cost final = 10 * sum((p - goal)^2) + sum(v^2)
solve ilqr(iters=100)
"""


def test_constraint_rows_in_source_order_and_placement():
    """Inequality and equality rows at (x_t, u_t) and at x_{t+1}, interleaved: the augmented
    Lagrangian's inner solves take the same iterates on both kernels, and the full solve the
    same active constraints and gradients."""
    goals = torch.tensor([[1.0, 0.5], [0.8, -0.2]], dtype=torch.float64)
    with torch.no_grad():
        a, b = (_module(CONSTRAINED, k, iters=4)(goal=goals) for k in ("torch", "native"))
    assert torch.equal(a.iterations, b.iterations) and torch.equal(a.status, b.status)
    torch.testing.assert_close(b.u, a.u, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(b.violation, a.violation, rtol=1e-7, atol=1e-10)
    grads = {}
    for kernels in ("torch", "native"):
        g = goals.clone().requires_grad_()
        sol = _module(CONSTRAINED, kernels)(goal=g)
        assert bool((sol.status == Status.SOLVED).all()) and float(sol.violation.detach().max()) <= 1e-6
        assert float(sol["v"][..., 0].detach().max()) == pytest.approx(0.45, abs=1e-6)     # active
        grads[kernels] = torch.autograd.grad(sol.u.square().sum(), g)[0]
    torch.testing.assert_close(grads["native"], grads["torch"], rtol=1e-5, atol=1e-7)


CHAIN = """plan chain
horizon 30
state p[4] = [0.1, -0.2, 0.3, 0.0]
state v[4] = 0.1
control tau[4] in [-1, 1]
dynamics p' = p + 0.05 * v
dynamics v' = v + 0.05 * (-9.81 * sin(p) - 0.1 * v + 4 * tau)
cost stage = 0.1 * sum(1 + cos(p)) + 0.01 * sum(tau^2)
cost final = 100 * sum(1 + cos(p)) + sum(v^2)
solve ilqr(iters=60)
"""


@pytest.mark.parametrize("iters", [3, 60])
def test_four_limited_controls_by_projected_newton(iters):
    """m = 4 limited controls: the box QPs of the backward pass by projected Newton, with the
    torch path's iterates (3 iterations) and solution (converged, controls at their limits)."""
    with torch.no_grad():
        a, b = (_module(CHAIN, k, iters=iters)() for k in ("torch", "native"))
    assert torch.equal(a.iterations, b.iterations) and torch.equal(a.status, b.status)
    torch.testing.assert_close(b.u, a.u, rtol=1e-8, atol=1e-9)
    if iters == 60:
        assert bool((b.status == Status.SOLVED).all()) and float(b.u.abs().max()) == 1.0


def test_batch_of_parameters():
    """Per-element inputs (targets) and params reach each element's row of p."""
    targets = torch.tensor([[-0.6, 1.2], [0.5, 1.5], [1.2, -0.4]], dtype=torch.float64)
    damping = torch.tensor([0.1, 0.3, 0.05], dtype=torch.float64)
    a, b = (_module(_example("two_link_arm"), k)(target=targets, damping=damping) for k in ("torch", "native"))
    assert bool((b.status == Status.SOLVED).all())
    torch.testing.assert_close(b.u, a.u, rtol=1e-6, atol=1e-7)
    assert torch.equal(a.iterations, b.iterations)


def test_gradients_through_native_forward():
    """The implicit backward step runs in torch at the native solution: the same gradients as
    the torch kernels, and they pass gradcheck."""
    source = _example("two_link_arm").replace("horizon 60", "horizon 15")
    modules = {k: _module(source, k, tol=1e-11, cost_tol=0.0) for k in ("torch", "native")}
    start = {"damping": torch.tensor(0.1, dtype=torch.float64), "target": torch.tensor([-0.6, 1.2], dtype=torch.float64)}
    grads = {}
    for kernels, module in modules.items():
        values = {name: v.clone().requires_grad_() for name, v in start.items()}
        sol = module(**values)
        assert bool((sol.status == Status.SOLVED).all())
        grads[kernels] = torch.autograd.grad(sol.cost.sum() + sol.u.square().sum(), list(values.values()))
    for g_torch, g_native in zip(grads["torch"], grads["native"]):
        torch.testing.assert_close(g_native, g_torch, rtol=1e-6, atol=1e-8)
    module = modules["native"]
    assert torch.autograd.gradcheck(lambda d, t: module(damping=d, target=t).u,
                                    tuple(v.clone().requires_grad_() for v in start.values()),
                                    eps=1e-6, atol=1e-5, rtol=1e-4)


def test_float32_solves_in_float32():
    module = planlang.compile(planlang.loads(_example("two_link_arm")), options={"kernels": "native"})
    sol = module(target=torch.tensor([-0.6, 1.2]))
    reference = _module(_example("two_link_arm"), "native")()
    assert sol.u.dtype == torch.float32 and bool((sol.status == Status.SOLVED).all())
    torch.testing.assert_close(sol.u.double(), reference.u, rtol=1e-3, atol=1e-3)


def test_no_compiler_falls_back_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "compiler", lambda: None)
    monkeypatch.setenv("PLANLANG_CACHE", str(tmp_path))
    source = _example("two_link_arm").replace("const b = 0.5", "const b = 0.51")    # not compiled before
    module = _module(source, "auto", iters=3)
    with pytest.warns(UserWarning, match="torch kernels"):
        fallback = module()
    assert module.backend.native is None and "no C compiler" in module.backend.native_why
    torch.testing.assert_close(fallback.u, _module(source, "torch", iters=3)().u)
    with pytest.raises(NativeUnavailable, match="no C compiler"):
        _module(source.replace("const b = 0.51", "const b = 0.52"), "native", iters=3)()


def test_kernels_native_refuses_with_location():
    source = _example("two_link_arm").replace("solve ilqr(iters=300, tol=1e-6)",
                                              "solve ilqr(shooting=multiple, kernels=native)")
    with pytest.raises(planlang.PlanError) as err:
        planlang.compile(planlang.loads(source, "arm.plan"))
    text = str(err.value)
    assert "kernels=native cannot take this plan" in text and "multiple shooting" in text
    assert "arm.plan:31:1" in text


def test_auto_names_its_kernels_in_the_lowered_text():
    assert "kernels: native (C)" in _module(_example("two_link_arm"), "auto").backend.as_text()
    neural = _module(_example("robot_obstacle_residual"), "auto").backend
    assert neural.native is None and "kernels: torch (a call of block 'f'" in neural.as_text()


def test_large_plans_stay_on_torch():
    """Dense second-order duals of more than 24 directions would not fit the C stack."""
    source = """plan big
horizon 5
state x[40] = 0.1
control u[2] in [-1, 1]
dynamics x' = x + 0.1 * cat(u, zeros(38))
cost stage = sum(x^2) + sum(u^2)
cost final = sum(x^2)
solve ilqr
"""
    backend = _module(source, "auto").backend
    assert backend.native is None and "at most 24" in backend.native_why
    assert bool((_module(source, "auto")().status == Status.SOLVED).all())


def test_numerical_failure_is_reported():
    """A NaN in the rollout (log of a negative number) ends the element as 'numerical' on both."""
    source = EVERY_BUILTIN.replace("log(2 + p[1]^2)", "log(p[1] - 5)")
    a, b = (_module(source, k)() for k in ("torch", "native"))
    assert bool((b.status == Status.NUMERICAL).all()) and torch.equal(a.status, b.status)
