"""Joint plans: `agents N`, `energy agent|pair`, `solve joint(...)`: shapes, located errors,
proposals that reach the nominal's end state, BP = exact on two agents, gradients of the marginals
and of the joint energy against finite differences, the classification loss, and the shipped
`examples/intersection_4.plan` contract on held-out scenes."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import planlang
from planlang.errors import PlanError
from planlang.training_joint import classification_loss
from runtime.interactions import corridor_swap, intersection
from runtime.joint import joint_energy
from runtime.joint_energies import min_distance

ROOT = Path(__file__).resolve().parents[2]

SMALL = """plan small
agents 2
const dt = 0.5
horizon 6
state x[4]
control u[2]
input goal[2]
learn w_u = 0.7 positive
learn w_near = 1.3 positive
dynamics x' = [x[0] + dt * x[2] + 0.5 * dt^2 * u[0], x[1] + dt * x[3] + 0.5 * dt^2 * u[1],
               x[2] + dt * u[0], x[3] + dt * u[1]]
cost stage = dt * sum(u^2)
cost final = 100 * sum((x[0:2] - goal)^2) + 100 * sum(x[2:4]^2)
energy agent = w_u * dt * sum(u^2)
energy agent final = 0.1 * sum(x[2:4]^2)
energy pair = w_near * softplus(2 - sum((x[0:2] - other.x[0:2])^2))
energy pair final = 5 * softplus(1 - sum((x[0:2] - other.x[0:2])^2))
solve SOLVE
"""


def small(solve: str = "joint(proposals=lattice(levels=3, spread=1), inference=exact)", **kw):
    return planlang.compile(planlang.loads(SMALL.replace("SOLVE", solve)), dtype=torch.float64, **kw)


def head_on(B: int = 3, seed: int = 0):
    """B scenes of two agents driving at each other along x, goals at the other's start."""
    g = torch.Generator().manual_seed(seed)
    start = torch.stack([-2 - torch.rand(B, generator=g, dtype=torch.float64),
                         0.2 * torch.rand(B, generator=g, dtype=torch.float64)], -1)
    x0 = torch.stack([torch.cat([start, torch.zeros(B, 2, dtype=torch.float64)], -1),
                      torch.cat([-start, torch.zeros(B, 2, dtype=torch.float64)], -1)], 1)
    return x0, -x0[..., :2]


def errors_of(text: str) -> str:
    with pytest.raises(PlanError) as err:
        planlang.compile(planlang.loads(text))
    return str(err.value)


# ------------------------------------------------------------------ shapes

def test_joint_solution_shapes_and_candidates_end_at_the_nominal():
    module = small()
    x0, goal = head_on()
    sol = module(x=x0, goal=goal)
    B, N, T, K = 3, 2, 6, 9                      # a lattice of 3 levels, 1 mode, m = 2: 3^2 candidates
    assert sol.x.shape == (B, N, T + 1, 4) and sol.u.shape == (B, N, T, 2)
    assert sol.marginals.shape == (B, N, K) and sol.plan.shape == (B, N) and sol.energy.shape == (B,)
    assert sol.candidates.x.shape == (B, N, K, T + 1, 4) and sol.candidates.u.shape == (B, N, K, T, 2)
    torch.testing.assert_close(sol.marginals.sum(-1), torch.ones(B, N, dtype=torch.float64))
    assert torch.equal(sol.candidates.x[:, :, :, 0], x0[:, :, None].expand(B, N, K, 4))
    # linear dynamics: every candidate ends where the nominal (the middle of the lattice) ends
    final = sol.candidates.x[:, :, :, -1]
    torch.testing.assert_close(final, final[:, :, K // 2 : K // 2 + 1].expand_as(final), atol=1e-9, rtol=0)
    assert (sol.candidates.x[:, :, :, 1:-1] - sol.candidates.x[:, :, K // 2 : K // 2 + 1, 1:-1]).abs().amax() > 0.3
    # the plan is the chosen candidates; its energy is E of the unary and pairwise energies
    chosen = sol.candidates.x[torch.arange(B)[:, None], torch.arange(N)[None], sol.plan]
    assert torch.equal(sol.x, chosen)
    torch.testing.assert_close(sol.energy, joint_energy(sol.unary, sol.pairwise, sol.plan))


def test_unary_energy_is_costs_plus_agent_energies_on_the_candidates():
    module = small()
    x0, goal = head_on(B=2)
    sol = module(x=x0, goal=goal)
    x, u = sol.candidates.x, sol.candidates.u
    dt, w_u = 0.5, 0.7
    effort = dt * u.square().sum((-1, -2))
    final = 100 * (x[..., -1, :2] - goal[:, :, None]).square().sum(-1) + 100.1 * x[..., -1, 2:].square().sum(-1)
    torch.testing.assert_close(sol.unary, (1 + w_u) * effort + final)
    d2 = (x[:, 0, :, None, :, :2] - x[:, 1, None, :, :, :2]).square().sum(-1)     # (B, K, K, T+1)
    pair = 1.3 * torch.nn.functional.softplus(2 - d2[..., :-1]).sum(-1) + 5 * torch.nn.functional.softplus(1 - d2[..., -1])
    torch.testing.assert_close(sol.pairwise[:, 0, 1], pair)
    torch.testing.assert_close(sol.pairwise[:, 1, 0], pair.mT)


def test_inputs_carry_an_agent_axis_and_bad_shapes_are_refused():
    module = small()
    x0, goal = head_on(B=2)
    single = module(x=x0[0], goal=goal[0])          # (N, n) without a batch axis: a batch of one
    assert single.x.shape == (1, 2, 7, 4)
    with pytest.raises(ValueError, match="'goal' has shape"):
        module(x=x0, goal=goal[:, :, :1])
    with pytest.raises(TypeError, match="unexpected input 'goals'"):
        module(x=x0, goals=goal)


def test_input_and_sampled_proposals():
    x0, goal = head_on(B=2)
    given = small("joint(proposals=input, inference=bp(iters=5))")
    U = 0.1 * torch.randn(2, 2, 4, 6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sol = given(x=x0, goal=goal, candidates=U)
    assert torch.equal(sol.candidates.u, U) and sol.marginals.shape == (2, 2, 4)
    with pytest.raises(TypeError, match="needs the candidates"):
        given(x=x0, goal=goal)
    for sampler in ("cem", "mppi"):
        sol = small(f"joint(samples=6, proposals={sampler}(spread=1, seed=3), inference=mean_field(iters=10))")(
            x=x0, goal=goal)
        assert sol.candidates.x.shape == (2, 2, 6, 7, 4) and torch.isfinite(sol.energy).all()


# ------------------------------------------------------------ located errors

BAD = [
    ("cost stage = sum(u^2) + sum(other.x^2)", "cost stage", "`other.x` reads the other agent of a pairwise energy"),
    ("energy agent = sum(other.u^2)", "energy agent", "`other.u` reads the other agent"),
    ("energy pair = sum(other.w_u^2)", "energy pair = sum", "each agent has its own states, controls and inputs"),
    ("energy couple = sum(u^2)", "energy couple", "an energy is `energy agent = ...`"),
    ("energy pair final = sum(u - other.u)", "energy pair final", "sees states only"),
    ("energy agent = x", "energy agent", "an energy must be a scalar"),
]


@pytest.mark.parametrize("line,where,message", BAD, ids=[b[1].replace(" ", "_") + str(i) for i, b in enumerate(BAD)])
def test_located_errors_in_energies(line, where, message):
    text = SMALL.replace("SOLVE", "joint").replace("solve joint", line + "\nsolve joint")
    error = errors_of(text)
    assert message in error, error
    row = text.splitlines().index(line) + 1
    assert re.search(rf"<string>:{row}:\d+: error", error), error
    assert "^" in error


def test_energy_and_joint_solver_need_agents_and_trajectory_solvers_refuse_them():
    plain = SMALL.replace("agents 2\n", "")
    error = errors_of(plain.replace("SOLVE", "joint"))
    assert "`energy` lines belong to multi-agent plans" in error and ":14:" in error
    no_energy = "\n".join(l for l in plain.splitlines() if not l.startswith("energy")).replace("SOLVE", "joint")
    error = errors_of(no_energy)
    assert "solve joint plans over several agents (`agents N`); this is a trajectory plan" in error
    error = errors_of(SMALL.replace("SOLVE", "ilqr"))
    assert "solve ilqr plans over states, controls and dynamics over a horizon; this is a joint plan" in error
    assert "solvers for it: joint" in error


def test_option_errors_are_located():
    error = errors_of(SMALL.replace("SOLVE", "joint(proposals=lattice(levels=3), samples=5)"))
    assert "samples=5 but proposals=lattice(...) gives levels^(modes m) = 9 candidates" in error
    error = errors_of(SMALL.replace("SOLVE", "joint(samples=2000, proposals=cem, inference=exact)"))
    assert "inference=exact enumerates K^N = 2000^2" in error
    error = errors_of(SMALL.replace("SOLVE", "joint(inference=bp(iters=0))"))
    assert "option 'iters' must be an integer >= 1" in error and "<string>:18:32" in error
    error = errors_of(SMALL.replace("SOLVE", "joint(inference=belief)"))
    assert "must be one of: exact, bp(...), mean_field(...)" in error
    error = errors_of(SMALL.replace("agents 2", "agents 1").replace("SOLVE", "joint"))
    assert "needs at least 2 agents" in error and "<string>:2:8" in error


# --------------------------------------------------------- inference and gradients

def test_bp_equals_exact_on_two_agents_through_the_plan():
    x0, goal = head_on(B=3, seed=2)
    exact = small("joint(proposals=lattice(levels=3, spread=1), inference=exact, refine=0)")(x=x0, goal=goal)
    bp = small("joint(proposals=lattice(levels=3, spread=1), inference=bp(iters=3), refine=0)")(x=x0, goal=goal)
    torch.testing.assert_close(bp.marginals, exact.marginals, atol=1e-10, rtol=0)
    assert torch.equal(bp.plan, exact.plan)


@pytest.mark.parametrize("inference", ["exact", "bp(iters=4, damping=0.2)", "mean_field(iters=8)"])
def test_gradients_of_marginals_and_energy_match_finite_differences(inference):
    module = small(f"joint(proposals=lattice(levels=3, spread=1), inference={inference})")
    x0, goal = head_on(B=2, seed=1)
    probe = torch.linspace(-1, 1, 9, dtype=torch.float64)

    def outputs():
        sol = module(x=x0, goal=goal)
        return (sol.marginals * probe).sum() + 0.01 * sol.energy.sum()

    value = outputs()
    params = list(module.learnables.values())
    grads = torch.autograd.grad(value, params)
    for raw, grad in zip(params, grads):
        h = 1e-6
        with torch.no_grad():
            raw += h
            up = outputs()
            raw -= 2 * h
            down = outputs()
            raw += h
        assert abs(grad.item()) > 1e-6
        torch.testing.assert_close(grad, (up - down) / (2 * h), rtol=1e-5, atol=1e-8)


def test_classification_loss_trains_toward_the_reference():
    module = small("joint(proposals=lattice(levels=3, spread=1), inference=bp(iters=5))")
    x0, goal = head_on(B=4, seed=3)
    reference = module(x=x0, goal=goal).candidates.u[:, :, 0]      # a corner of the lattice as the "truth"
    batch = {"x0": x0, "goal": goal, "u": reference}
    torch.manual_seed(0)
    loss, metrics = classification_loss(module, batch)
    assert loss.item() > 0 and 0 <= metrics["gt_first"].item() <= 1
    optimizer = torch.optim.Adam(module.parameters(), lr=0.2)
    for _ in range(15):
        torch.manual_seed(0)
        loss_now, _ = classification_loss(module, batch)
        optimizer.zero_grad()
        loss_now.backward()
        optimizer.step()
    torch.manual_seed(0)
    assert classification_loss(module, batch)[0].item() < loss.item()


# ------------------------------------------------------------ the shipped examples

def fine_min_distance(x: torch.Tensor, substeps: int = 8) -> torch.Tensor:
    """(B,) smallest distance between two centres, positions linearly interpolated between stages."""
    fraction = torch.linspace(0, 1, substeps + 1, dtype=x.dtype)[:-1, None]
    between = x[:, :, :-1, None, :2] * (1 - fraction) + x[:, :, 1:, None, :2] * fraction
    return min_distance(torch.cat([between.flatten(2, 3), x[:, :, -1:, :2]], dim=2))


GOAL_TOLERANCE = 0.1         # m, final position; the final speed must be below 0.1 m/s


def held_out_crossings(B: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four agents on the four arms, 3-6 m out, on the lane or the centre line, 0-1 m/s towards the
    centre, bound for a random other arm's goal 3-6 m out (a derangement of the arms)."""
    g = torch.Generator().manual_seed(seed)
    scenes = intersection(g, B, 4)
    x0, goals = scenes.x0.clone(), scenes.goals.clone()
    angle = torch.arange(4, dtype=torch.float64) * math.pi / 2
    out = torch.stack([angle.cos(), angle.sin()], -1)
    centre = torch.rand(B, generator=g) < 0.5                           # half the scenes on the centre line
    distance = 3 + 3 * torch.rand(B, 4, generator=g, dtype=torch.float64)
    speed = torch.rand(B, 4, generator=g, dtype=torch.float64)
    x0[centre] = torch.cat([out * distance[..., None], -out * speed[..., None]], -1)[centre]
    goal_arm = torch.stack([torch.roll(torch.arange(4), int(s)) for s in torch.randint(1, 4, (B,), generator=g)])
    goal_distance = 3 + 3 * torch.rand(B, 4, generator=g, dtype=torch.float64)
    goals[centre] = (out[goal_arm] * goal_distance[..., None])[centre]
    return x0, goals


def test_intersection_4_with_shipped_weights_reaches_goals_without_collisions():
    plan = planlang.load(ROOT / "examples" / "intersection_4.plan")
    module = planlang.compile(plan, weights=ROOT / "examples" / "weights" / "intersection_4.pt")
    x0, goals = held_out_crossings(16, seed=2027)
    with torch.no_grad():
        sol = module(x=x0.float(), goal=goals.float())
    assert sol.x.shape == (16, 4, module.horizon + 1, 4)
    final = sol.x[:, :, -1]
    assert (final[..., :2] - goals.float()).norm(dim=-1).max() < GOAL_TOLERANCE
    assert final[..., 2:].norm(dim=-1).max() < 0.1
    assert fine_min_distance(sol.x).min() >= 1.0
    assert min_distance(sol.x).min() >= 1.0


def test_corridor_swap_2_passes_without_collisions_inside_the_walls():
    module = planlang.compile(planlang.load(ROOT / "examples" / "corridor_swap_2.plan"))
    scenes = corridor_swap(torch.Generator().manual_seed(7), 8, 2)
    with torch.no_grad():
        sol = module(x=scenes.x0.float(), goal=scenes.goals.float())
    assert (sol.x[:, :, -1, :2] - scenes.goals.float()).norm(dim=-1).max() < GOAL_TOLERANCE
    assert sol.x[..., 1].abs().max() <= 1.0 + 1e-3
    assert fine_min_distance(sol.x).min() >= 1.0


@pytest.mark.parametrize("call", ["step", "trajectory_cost", "simulate", "controller", "drive", "solve_with"])
def test_trajectory_methods_on_a_joint_plan_say_what_to_call_instead(call):
    module = small()
    x = torch.zeros(1, 4, dtype=torch.float64)
    calls = {"step": lambda: module.step(x, torch.zeros(1, 2)), "simulate": lambda: module.simulate(3),
             "trajectory_cost": lambda: module.trajectory_cost(x[:, None].expand(1, 7, 4), torch.zeros(1, 6, 2)),
             "controller": module.controller, "drive": lambda: module.drive(env="Pendulum-v1"),
             "solve_with": lambda: module.solve_with({})}
    with pytest.raises(ValueError, match=rf"{call} is for single-agent trajectory plans.*calling the module"):
        calls[call]()
