"""`let` definitions, `guess` lines, the atan2/wrap/mod builtins and `env` blocks."""
from __future__ import annotations

import math

import pytest
import torch

import planlang
from compiler.functions import FUNCTIONS
from compiler import quadform as qf
from planlang.errors import PlanError

ARM_INLINE = """plan arm
const dt = 0.05
horizon 12
state q[2] = [0.3, 0.2]
state dq[2] = [0, 0]
control tau[2] in [-8, 8]
input target[2] = [1.2, 0.9]
dynamics q' = q + dt * dq
dynamics dq' = dq + dt * [tau[0] / (2 + cos(q[1])), tau[1] / (1 + 0.5 * cos(q[1]))]
cost stage = 0.01 * sum(tau^2) + sum(([cos(q[0]) + cos(q[0] + q[1]), sin(q[0]) + sin(q[0] + q[1])] - target)^2)
cost final = 100 * sum(([cos(q[0]) + cos(q[0] + q[1]), sin(q[0]) + sin(q[0] + q[1])] - target)^2)
solve ilqr(iters=200, tol=1e-10)
"""

ARM_LET = """plan arm
const dt = 0.05
horizon 12
state q[2] = [0.3, 0.2]
state dq[2] = [0, 0]
control tau[2] in [-8, 8]
input target[2] = [1.2, 0.9]
let c = cos(q[1])
let tip = [cos(q[0]) + cos(q[0] + q[1]), sin(q[0]) + sin(q[0] + q[1])]
let err = sum((tip - target)^2)
dynamics q' = q + dt * dq
dynamics dq' = dq + dt * [tau[0] / (2 + c), tau[1] / (1 + 0.5 * c)]
cost stage = 0.01 * sum(tau^2) + err
cost final = 100 * err
solve ilqr(iters=200, tol=1e-10)
"""


def compiled(text: str, **kwargs):
    return planlang.compile(planlang.loads(text, "p.plan"), dtype=torch.float64, **kwargs)


def test_let_is_the_same_plan_as_writing_it_inline():
    inline, local = compiled(ARM_INLINE)(), compiled(ARM_LET)()
    assert local.status_names() == ["solved"]
    torch.testing.assert_close(local.u, inline.u, rtol=0, atol=1e-10)


def test_lets_are_graph_nodes_with_edges():
    graph = planlang.loads(ARM_LET).graph
    assert {"let:c", "let:tip", "let:err"} <= set(graph.nodes)
    assert graph.has_edge("let:tip", "let:err") and graph.has_edge("let:err", "cost:final#1")
    assert graph.has_edge("state:q", "let:c")


def test_a_let_cycle_and_a_control_in_the_final_cost_are_errors():
    cyclic = ARM_LET.replace("let c = cos(q[1])", "let c = cos(q[1]) + d\nlet d = c")
    with pytest.raises(PlanError, match="declarations form a cycle"):
        compiled(cyclic)
    through_let = ARM_LET.replace("let err = sum((tip - target)^2)", "let err = sum((tip - target)^2) + tau[0]")
    with pytest.raises(PlanError) as info:
        compiled(through_let)
    d = info.value.diagnostics[0]
    assert "cost final sees states only" in d.message and d.span.line == 14


def test_guess_sets_the_initial_controls():
    module = compiled(ARM_LET + "guess tau = [0.5, -0.25]\n", options={"iters": 1})
    env, x0, like = module.bind({})
    u0 = module.backend.initial_controls(env, 1, like, None)
    assert u0.shape == (1, 12, 2)
    torch.testing.assert_close(u0[0], torch.tensor([[0.5, -0.25]] * 12, dtype=torch.float64))
    per_stage = compiled(ARM_LET + "input start[12, 2] = zeros(12, 2)\nguess tau = start\n", options={"iters": 1})
    ramp = torch.linspace(0, 1, 24, dtype=torch.float64).reshape(12, 2)
    env, _, like = per_stage.bind({"start": ramp})
    torch.testing.assert_close(per_stage.backend.initial_controls(env, 1, like, None)[0], ramp)


def test_guess_errors_are_located():
    with pytest.raises(PlanError) as info:
        compiled(ARM_LET + "guess target = [1, 1]\n")
    assert info.value.diagnostics[0].span.line == 16 and "neither" in info.value.diagnostics[0].message
    with pytest.raises(PlanError) as info:       # a state guess sets multiple-shooting nodes
        compiled(ARM_LET + "guess q = [1, 1]\n")
    assert "add shooting=multiple" in info.value.diagnostics[0].message
    with pytest.raises(PlanError) as info:
        compiled(ARM_LET + "guess tau = [1, 2, 3]\n")
    assert "guess has shape [3]" in info.value.diagnostics[0].message


@pytest.mark.parametrize("name", ["atan2", "mod"])
def test_binary_builtins_extend_jets_exactly(name):
    torch.manual_seed(1)
    z0 = torch.randn(1, 3, dtype=torch.float64) + torch.tensor([[0.0, 0.0, 2.0]], dtype=torch.float64)

    def parts(z):
        return z[:, 0] * 2 + z[:, 1] ** 2, z[:, 2] - 0.3 * z[:, 0]

    jet = qf.add(qf.QuadForm.variable(0, 3, 3, z0), z0)
    a = qf.add(qf.mul(qf.index(jet, (0,)), torch.tensor([2.0], dtype=torch.float64)),
               qf.mul(qf.index(jet, (1,)), qf.index(jet, (1,))))
    b = qf.sub(qf.index(jet, (2,)), qf.mul(torch.tensor([0.3], dtype=torch.float64), qf.index(jet, (0,))))
    c, L, H = qf.coefficients(FUNCTIONS[name].evaluate(a, b), 3)
    f = lambda z: FUNCTIONS[name].evaluate(*parts(z)).sum()        # noqa: E731
    torch.testing.assert_close(L, torch.autograd.functional.jacobian(f, z0), rtol=0, atol=1e-12)
    torch.testing.assert_close(2 * H, torch.autograd.functional.hessian(f, z0).reshape(1, 3, 3), rtol=0, atol=1e-12)


def test_wrap_and_mod_values():
    a = torch.tensor([[3.5, -3.5, 7.0, math.pi]], dtype=torch.float64)
    wrapped = FUNCTIONS["wrap"].evaluate(a)
    assert ((wrapped >= -math.pi) & (wrapped < math.pi)).all()
    torch.testing.assert_close(torch.cos(wrapped), torch.cos(a))
    torch.testing.assert_close(FUNCTIONS["mod"].evaluate(torch.tensor([[-1.0, 5.5]]), torch.tensor([[3.0, 2.0]])),
                               torch.tensor([[2.0, 1.5]]))


class LineWorld:
    """A stand-in for a gymnasium Env: a double integrator observed as [2 p, v], reward -p^2."""

    class Space:
        dtype, shape = "float64", (1,)

    action_space = Space()

    def reset(self, seed=None, options=None):
        self.state = [1.0, 0.0]
        return self._obs(), {}

    def _obs(self):
        return [2 * self.state[0], self.state[1]]

    def step(self, action):
        p, v = self.state
        self.state = [p + 0.1 * v, v + 0.1 * float(action[0])]
        return self._obs(), -p * p, False, False, {}


ENV_PLAN = """plan line
const dt = 0.1
horizon 10
state x[2] = [1, 0]
control u[1] in [-1, 1]
dynamics x' = [x[0] + dt * x[1], x[1] + dt * u[0]]
cost stage = x[0]^2 + 0.1 * x[1]^2 + 0.01 * sum(u^2)
env "LineWorld-v0" {
  observe obs[2]
  state = [obs[0] / 2, obs[1]]
  steps 30
}
solve ilqr
"""


def test_env_block_drives_an_environment_in_closed_loop():
    module = compiled(ENV_PLAN)
    assert module.info.env.id == "LineWorld-v0" and module.info.env.steps == 30
    episode = module.drive(env=LineWorld())
    assert episode.actions.shape == (30, 1) and episode.observations.shape == (31, 2)
    assert abs(float(episode.observations[-1, 0])) < 0.2          # driven towards p = 0
    assert (episode.actions.abs() <= 1 + 1e-9).all()


@pytest.mark.parametrize("old, new, message", [
    ("  observe obs[2]\n", "", "an env block declares its observation"),
    ("  state = [obs[0] / 2, obs[1]]\n", "  state = obs[0]\n", "the plan's states have 2 entries"),
    ("  steps 30\n", "  step 30\n", "unknown env setting 'step'"),
    ('env "LineWorld-v0" {', "env {", "an env block names its environment"),
])
def test_env_block_errors(old, new, message):
    with pytest.raises(PlanError, match=message):
        compiled(ENV_PLAN.replace(old, new))
