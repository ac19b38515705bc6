"""The cost-learning losses (runtime.losses) through a compiled LQR plan, in float64.

Every loss's gradient with respect to the plan's learnables is checked against central finite
differences: imitation through the LQR's implicit backward; max-margin with the loss-augmented
plan re-solved at every perturbed point (Danskin: the gradient ignores the minimizer's motion);
the energy-based NLL for fixed negatives. Max-margin then recovers a teacher's weights up to scale.
"""
from __future__ import annotations

import pytest
import torch

import planlang
from planlang.training import PlanPlanner, generate_demos, train
from runtime.losses import NLL, Imitation, Langevin, MaxMargin, Perturbation, make_loss
from runtime.training import TrainConfig

# Every cost term learnable, so that J is linear in (q, r) and optimal plans are scale-invariant.
HOMOGENEOUS = """\
plan homogeneous
const dt = 0.1
horizon 10
state x[2] = [1.0, 0.0]
control u[1]
learn q[2] = [1, 1] positive
learn r = 1 positive
dynamics x' = [[1, dt], [0, 1]] @ x + [0, dt] * u
cost stage = sum(q * x^2) + r * sum(u^2)
cost final = sum(q * x^2)
solve lqr
"""
TRUE = {"q": [4.0, 0.5], "r": 0.2}


def _set(module, values: dict) -> None:
    with torch.no_grad():
        for name, value in values.items():
            module.learnables[name].copy_(torch.log(torch.expm1(torch.tensor(value, dtype=torch.float64))))


@pytest.fixture(scope="module")
def setting():
    plan = planlang.loads(HOMOGENEOUS)
    teacher = planlang.compile(plan, dtype=torch.float64)
    _set(teacher, TRUE)
    demos = generate_demos(teacher, 8, noise=0.0, seed=0)
    return plan, demos


def _learner(plan):
    module = planlang.compile(plan, dtype=torch.float64)
    _set(module, {"q": [2.0, 1.5], "r": 0.6})
    return module


def _check_gradient(module, loss_of, h: float = 1e-6, rtol: float = 1e-4, atol: float = 1e-7) -> None:
    """autograd gradient of loss_of() vs central differences in every raw learnable element."""
    module.zero_grad()
    loss_of().backward()
    for name, param in module.learnables.items():
        analytic = param.grad.clone()
        numeric = torch.zeros_like(param)
        flat = param.data.view(-1)
        for i in range(flat.numel()):
            saved = flat[i].item()
            with torch.no_grad():
                flat[i] = saved + h
                up = loss_of().item()
                flat[i] = saved - h
                down = loss_of().item()
                flat[i] = saved
            numeric.view(-1)[i] = (up - down) / (2 * h)
        torch.testing.assert_close(analytic, numeric, rtol=rtol, atol=atol, msg=f"gradient of {name}")


def test_imitation_gradient_matches_finite_differences(setting):
    plan, demos = setting
    module = _learner(plan)
    planner = PlanPlanner(module)
    _check_gradient(module, lambda: Imitation(control_weight=0.5)(planner, demos)[0])


def test_max_margin_gradient_with_the_augmented_plan_resolved(setting):
    plan, demos = setting
    module = _learner(plan)
    planner = PlanPlanner(module)
    loss = MaxMargin(margin=0.5, samples=0)
    assert loss(planner, demos)[0].item() > 0        # the wrong weights violate the margin
    _check_gradient(module, lambda: loss(planner, demos)[0], h=1e-5, rtol=1e-4, atol=1e-6)


def test_max_margin_gradient_for_fixed_candidates(setting):
    plan, demos = setting
    module = _learner(plan)
    planner = PlanPlanner(module)
    loss = MaxMargin(margin=0.5, samples=4, sample_noise=0.2)
    torch.manual_seed(0)
    x_c, u_c = loss.candidates(planner, demos)
    assert x_c.shape == (8, 5, 11, 2) and u_c.shape == (8, 5, 10, 1)
    _check_gradient(module, lambda: loss.loss_given(planner, demos, x_c, u_c)[0])


def test_augmented_plan_beats_the_plain_plan_on_the_augmented_objective(setting):
    plan, demos = setting
    planner = PlanPlanner(_learner(plan))
    loss = MaxMargin(margin=0.5, samples=0)
    extra = lambda x, u: -loss.task_loss(x, demos["x"])
    with torch.no_grad():
        x, u, _ = planner.solve(demos)
        plain = planner.trajectory_cost(x, u, demos) + extra(x, u)
    x_a, u_a = planner.solve_augmented(demos, extra)
    augmented = planner.trajectory_cost(x_a, u_a, demos) + extra(x_a, u_a)
    assert bool((augmented < plain - 1e-6).all())


def test_bounded_task_loss_is_bounded_and_quadratic_near_the_demo(setting):
    _, demos = setting
    x = demos["x"]
    bounded, quadratic = MaxMargin(margin=2.0, bandwidth=0.5), MaxMargin(margin=2.0)
    far = bounded.task_loss(x + 100.0, x)
    torch.testing.assert_close(far, torch.full_like(far, 2.0 * x.shape[1]))
    near = x + 1e-4
    torch.testing.assert_close(bounded.task_loss(near, x) * 0.5 ** 2, quadratic.task_loss(near, x), rtol=1e-6, atol=0)


def test_nll_gradient_for_fixed_negatives(setting):
    plan, demos = setting
    module = _learner(plan)
    planner = PlanPlanner(module)
    loss = NLL(negatives=Langevin(steps=3, step_size=1e-3, noise=0.05), samples=4, temperature=2.0)
    torch.manual_seed(0)
    x_neg, u_neg = loss.negatives(planner, demos, loss.samples)
    assert x_neg.shape == (8, 4, 11, 2) and not x_neg.requires_grad
    _check_gradient(module, lambda: loss.loss_given(planner, demos, x_neg, u_neg)[0])


def test_langevin_without_noise_descends_the_energy(setting):
    plan, demos = setting
    planner = PlanPlanner(_learner(plan))
    start = Langevin(steps=0, noise=0.0)(planner, demos, 2)
    end = Langevin(steps=10, step_size=1e-3, noise=0.0)(planner, demos, 2)
    energy = lambda xu: planner.trajectory_cost(xu[0].flatten(0, 1), xu[1].flatten(0, 1),
                                                {k: v.repeat_interleave(2, 0) for k, v in demos.items()})
    with torch.no_grad():
        assert bool((energy(end) < energy(start)).all())


def test_trajectory_cost_gradcheck(setting):
    plan, demos = setting
    planner = PlanPlanner(_learner(plan))
    x = demos["x"][:2].clone().requires_grad_(True)
    u = demos["u"][:2].clone().requires_grad_(True)
    batch = {k: v[:2] for k, v in demos.items()}
    assert torch.autograd.gradcheck(lambda x, u: planner.trajectory_cost(x, u, batch), (x, u))


def test_max_margin_recovers_the_weights_up_to_scale(setting):
    plan, demos = setting
    module = _learner(plan)
    config = TrainConfig(loss="max_margin", loss_options={"margin": 1.0, "samples": 0}, epochs=50, batch=8,
                         validation=0, lr=0.2, progress=False)
    history = train(module, demos, config)
    learned = torch.cat([module.learned("q").detach(), module.learned("r").detach().reshape(1)])
    true = torch.tensor(TRUE["q"] + [TRUE["r"]], dtype=torch.float64)
    start = torch.tensor([2.0, 1.5, 0.6], dtype=torch.float64)
    direction = lambda v: v / v.norm()
    error = ((direction(learned) - direction(true)).abs() / direction(true)).max()
    assert history[-1]["train_loss"] < 0.05 * history[0]["train_loss"]
    assert error < 0.1, (learned, true)
    assert error < 0.1 * ((direction(start) - direction(true)).abs() / direction(true)).max()


def test_make_loss_builds_by_name_and_rejects_unknown_options():
    assert make_loss("max_margin", {"margin": 2}).margin == 2
    nll = make_loss("nll", {"negatives": {"name": "langevin", "steps": 3}})
    assert isinstance(nll.negatives, Langevin) and nll.negatives.steps == 3
    assert isinstance(make_loss("nll", {"negatives": "perturbation"}).negatives, Perturbation)
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        make_loss("hinge")
    with pytest.raises(ValueError, match="takes options: margin"):
        make_loss("max_margin", {"margn": 1})
    with pytest.raises(ValueError, match="unknown negatives"):
        make_loss("nll", {"negatives": "mcmc"})
