"""Compiled plans as torch modules: shapes, batching, dtypes, input errors, learnables, gradients.

An independent reference re-runs the plan as written (the typed dynamics and costs, evaluated
numerically step by step) to check that the compiled solution is a feasible trajectory, that its
reported cost is the plan's cost, and that it is optimal (the gradient of the plan's cost with
respect to the controls vanishes).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.autograd import gradcheck

import planlang
from compiler.evaluate import evaluate
from planlang.ast import When
from planlang.graph import NodeKind

ROOT = Path(__file__).resolve().parents[2]
LQR_EXAMPLES = ["double_integrator", "point_mass_2d", "thermostat", "lane_keeping"]


def compiled(name: str, dtype=torch.float32):
    return planlang.compile(planlang.load(ROOT / "examples" / f"{name}.plan"), dtype=dtype)


@pytest.fixture(scope="module")
def modules64():
    return {name: compiled(name, torch.float64) for name in LQR_EXAMPLES}


# ----------------------------------------------------------- reference

def _exprs(module, kind, when=None):
    return [d for _, d in module.graph.nodes(data=True)
            if d["kind"] is kind and (when is None or d["when"] is when)]


def rollout(module, x0: torch.Tensor, u: torch.Tensor, env) -> torch.Tensor:
    """States x_0..x_T of the plan's own (discrete) dynamics under controls u (B, T, m)."""
    layout, like = module.layout, x0
    offsets = layout.offsets()
    dynamics = {d["defines"]: d["ir"] for d in _exprs(module, NodeKind.DYNAMICS)}
    xs = [x0]
    for t in range(u.shape[1]):
        values = {**env, **layout.numeric(xs[-1], u[:, t])}
        parts = []
        for var in layout.states:
            nxt = evaluate(dynamics[var.ref.name], values, like)
            size = offsets[var.ref].stop - offsets[var.ref].start
            parts.append(nxt.reshape(nxt.shape[0], -1).expand(x0.shape[0], size))
        xs.append(torch.cat(parts, dim=1))
    return torch.stack(xs, dim=1)


def plan_cost(module, x: torch.Tensor, u: torch.Tensor, env) -> torch.Tensor:
    """sum_t stage(x_t, u_t) + final(x_T), from the typed cost expressions: (B,)."""
    layout, like = module.layout, x
    total = torch.zeros(x.shape[0], dtype=x.dtype)
    for t in range(u.shape[1]):
        values = {**env, **layout.numeric(x[:, t], u[:, t])}
        for d in _exprs(module, NodeKind.COST, When.STAGE):
            total = total + evaluate(d["ir"], values, like)
    values = {**env, **layout.numeric(x[:, -1], None)}
    for d in _exprs(module, NodeKind.COST, When.FINAL):
        total = total + evaluate(d["ir"], values, like)
    return total


@pytest.mark.parametrize("name", LQR_EXAMPLES)
def test_solution_is_the_plans_optimal_trajectory(name, modules64):
    module = modules64[name]
    sol = module()
    assert bool(sol.ok.all())
    env, x0, _ = module.bind({})
    torch.testing.assert_close(sol.x[:, 0], x0)
    torch.testing.assert_close(rollout(module, x0, sol.u, env), sol.x, rtol=1e-9, atol=1e-9)   # feasible
    torch.testing.assert_close(plan_cost(module, sol.x, sol.u, env), sol.cost, rtol=1e-9, atol=1e-9)

    u = sol.u.detach().clone().requires_grad_(True)                         # optimal: dJ/du = 0
    cost = plan_cost(module, rollout(module, x0, u, env), u, env)
    (grad,) = torch.autograd.grad(cost.sum(), u)
    assert float(grad.abs().max()) < 1e-7 * (1 + float(cost.detach().abs().max()))
    worse = plan_cost(module, rollout(module, x0, u.detach() + 1e-3, env), u.detach() + 1e-3, env)
    assert bool((worse > cost.detach()).all())


# ----------------------------------------------------------- shapes and batching

@pytest.mark.parametrize("name", LQR_EXAMPLES)
def test_default_call_shapes(name):
    module = compiled(name)
    T, n, m = module.horizon, module.layout.n, module.layout.m
    sol = module()
    assert sol.x.shape == (1, T + 1, n) and sol.u.shape == (1, T, m) and sol.cost.shape == (1,)
    assert sol.status.shape == (1,) and sol.x.dtype == torch.float32 and bool(sol.ok.all())
    for var in module.layout.states:
        assert sol[var.ref.name].shape == (1, T + 1) + var.shape
    for var in module.layout.controls:
        assert sol[var.ref.name].shape == (1, T) + var.shape


def test_unbatched_and_batched_inputs():
    module = compiled("double_integrator")
    T = module.horizon
    one = module(x=torch.tensor([1.0, 0.0]), goal=torch.tensor([0.5, 0.0]))
    assert one.x.shape == (1, T + 1, 2)
    x0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0], [1.0, 0.0]])
    many = module(x=x0)
    assert many.x.shape == (4, T + 1, 2) and many.u.shape == (4, T, 1) and many.cost.shape == (4,)
    torch.testing.assert_close(many.x[:, 0], x0)
    torch.testing.assert_close(many.x[3], module(x=x0[3]).x[0])          # batch elements are independent
    goals = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.5, 0.0]])
    mixed = module(x=x0[0], goal=goals)                                    # unbatched x0 broadcasts
    assert mixed.x.shape == (4, T + 1, 2)
    torch.testing.assert_close(mixed.x[1], module(goal=goals[1]).x[0])
    with pytest.raises(ValueError, match="batch"):
        module(x=x0, goal=goals[:2])


def test_scalar_state_and_inputs():
    module = compiled("thermostat")
    sol = module(temp=torch.tensor(18.0), setpoint=torch.tensor([20.0, 22.0]))
    assert sol.x.shape == (2, module.horizon + 1, 1) and sol["temp"].shape == (2, module.horizon + 1)
    assert sol.x[0, -1, 0] < sol.x[1, -1, 0]


def test_dtypes_follow_the_inputs():
    module = compiled("double_integrator")
    assert module().x.dtype == torch.float32
    sol = module(x=torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert sol.x.dtype == sol.u.dtype == sol.cost.dtype == torch.float64
    assert compiled("double_integrator", torch.float64)().x.dtype == torch.float64
    torch.testing.assert_close(sol.x.float(), module().x, rtol=1e-4, atol=1e-4)


def test_params_can_be_overridden():
    module = compiled("double_integrator", torch.float64)
    default = module()
    A = torch.tensor([[1.0, 0.1], [0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(module(A=A).x, default.x)
    assert not torch.allclose(module(A=A * 0.9).x, default.x)


# ----------------------------------------------------------- input errors

def test_wrong_input_name_suggests_the_right_one():
    module = compiled("double_integrator")
    with pytest.raises(TypeError, match=r"unexpected input 'gaol'.*did you mean 'goal'\?"):
        module(gaol=torch.zeros(2))
    for name in ("u", "q"):                 # controls are solved for, learnables are parameters
        with pytest.raises(TypeError, match=f"unexpected input '{name}'"):
            module(**{name: torch.zeros(1)})
    assert set(module.inputs()) == {"x", "A", "goal"}


@pytest.mark.parametrize("name, value", [
    ("goal", torch.zeros(3)),
    ("goal", torch.zeros(2, 3)),
    ("x", torch.zeros(4, 2, 1)),
    ("A", torch.zeros(2)),
])
def test_wrong_shape_is_a_value_error(name, value):
    module = compiled("double_integrator")
    with pytest.raises(ValueError, match=f"'{name}' has shape"):
        module(**{name: value})


# ----------------------------------------------------------- learnables

def test_learnables_are_parameters_with_their_declared_values():
    module = compiled("point_mass_2d", torch.float64)
    assert {n for n, _ in module.named_parameters()} == {"learnables.Q", "learnables.rv", "learnables.ra"}
    torch.testing.assert_close(module.learned("Q"), torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(module.learned("rv"), torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(module.learned("ra"), torch.tensor([0.1, 0.1], dtype=torch.float64))


def _huge_steps(module, lr=1e6):
    """Steps that push every weight down (minimizing the cost), far past zero for a raw parameter."""
    opt = torch.optim.SGD(module.parameters(), lr=lr)
    for _ in range(2):
        opt.zero_grad()
        module().cost.sum().backward()
        opt.step()


def test_constrained_learnables_stay_valid_after_a_huge_step():
    module = compiled("point_mass_2d")
    _huge_steps(module)
    Q = module.learned("Q").detach()
    assert bool(torch.isfinite(Q).all())
    torch.testing.assert_close(Q, Q.T)
    assert float(torch.linalg.eigvalsh(Q.double()).min()) >= -1e-6 * float(Q.abs().max())
    for name in ("rv", "ra"):
        value = module.learned(name).detach()
        assert bool(torch.isfinite(value).all()) and bool((value >= 0).all())


def test_positive_learnables_stay_strictly_positive_after_a_huge_step():
    module = compiled("point_mass_2d")
    _huge_steps(module)
    assert all(bool((module.learned(name) > 0).all()) for name in ("rv", "ra"))


def test_cost_gradients_reach_the_learnables():
    module = compiled("point_mass_2d", torch.float64)
    module().cost.sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and float(p.grad.abs().sum()) > 0, name


# ----------------------------------------------------------- gradients

def _outputs(sol):
    return sol.x, sol.u, sol.cost


def test_gradcheck_double_integrator(modules64):
    module = modules64["double_integrator"]
    x0 = torch.tensor([1.0, -0.3], dtype=torch.float64, requires_grad=True)
    goal = torch.tensor([0.2, 0.1], dtype=torch.float64, requires_grad=True)
    A = torch.tensor([[1.0, 0.1], [0.05, 0.95]], dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x, g, A: _outputs(module(x=x, goal=g, A=A)), (x0, goal, A))
    batch = torch.tensor([[1.0, 0.0], [-0.5, 0.2]], dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x, g: _outputs(module(x=x, goal=g)), (batch, goal))


def test_gradcheck_point_mass_2d(modules64):
    module = modules64["point_mass_2d"]
    p = torch.tensor([2.0, -1.0], dtype=torch.float64, requires_grad=True)
    v = torch.tensor([0.1, 0.5], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[0.3, -0.2], [1.0, 0.5]], dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda p, v, t: _outputs(module(p=p, v=v, target=t)), (p, v, target))


@pytest.mark.parametrize("name", ["double_integrator", "point_mass_2d"])
def test_gradcheck_learnables(name, modules64):
    module = modules64[name]
    names = [n for n, _ in module.named_parameters()]
    raw = tuple(p.detach().clone().requires_grad_(True) for _, p in module.named_parameters())

    def solve(*params):
        return _outputs(torch.func.functional_call(module, dict(zip(names, params)), ()))

    assert gradcheck(solve, raw)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_device_of_its_inputs():
    module = compiled("point_mass_2d", torch.float64)
    cpu = module(p=torch.tensor([2.0, -1.0], dtype=torch.float64))
    module = module.to("cuda")
    sol = module(p=torch.tensor([2.0, -1.0], dtype=torch.float64, device="cuda"))
    assert sol.x.device.type == sol.u.device.type == sol.cost.device.type == "cuda"
    torch.testing.assert_close(sol.x.cpu(), cpu.x)
    torch.testing.assert_close(sol.cost.cpu(), cpu.cost)


def test_compile_takes_a_plan_file_path():
    path = ROOT / "examples" / "double_integrator.plan"
    by_path, by_str = planlang.compile(path, dtype=torch.float64), planlang.compile(str(path), dtype=torch.float64)
    loaded = planlang.compile(planlang.load(path), dtype=torch.float64)
    assert torch.equal(by_path().u, loaded().u) and torch.equal(by_str().u, loaded().u)
    with pytest.raises(TypeError, match="a Plan or the path of a .plan file"):
        planlang.compile(3)
    with pytest.raises(FileNotFoundError):
        planlang.compile(ROOT / "examples" / "no_such.plan")
