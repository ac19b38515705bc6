"""Neural blocks in plans: shapes, errors, parameters, gradients through iLQR, opt-in imports."""
from __future__ import annotations

import pytest
import torch

import planlang
from planlang.errors import PlanError

RESIDUAL = """plan residual
const dt = 0.1
horizon 8
state x[2] = [1.0, 0.0]
control u[1] in [-2, 2]
block wm = mlp(in=3, out=2, hidden=[8], act=tanh)
dynamics x' = [x[0] + dt * x[1], x[1] + dt * u[0]] + 0.05 * wm(x, u)
cost stage = sum(x^2) + 0.1 * sum(u^2)
cost final = 10 * sum(x^2)
solve ilqr(iters=100, tol=1e-10)
"""


def compiled(text: str = RESIDUAL, **kwargs):
    torch.manual_seed(0)
    return planlang.compile(planlang.loads(text, "residual.plan"), dtype=torch.float64, **kwargs)


def error_of(text: str, **kwargs) -> PlanError:
    with pytest.raises(PlanError) as info:
        compiled(text, **kwargs)
    return info.value


def test_block_weights_are_parameters_and_round_trip():
    module = compiled()
    names = [n for n, _ in module.named_parameters()]
    assert "blocks.wm.net.0.weight" in names and "blocks.wm.net.2.bias" in names
    other = compiled()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1)
    assert not torch.allclose(other().u, module().u)
    other.load_state_dict(module.state_dict())
    torch.testing.assert_close(other().u, module().u, rtol=0, atol=1e-12)


def test_ilqr_gradient_through_a_block_matches_finite_differences():
    module = compiled()
    weight = module.blocks["wm"].net[2].weight
    sol = module()
    assert sol.status_names() == ["solved"]
    direction = torch.randn_like(weight)
    analytic = (torch.autograd.grad(sol.u.sum(), weight)[0] * direction).sum()
    h = 1e-6
    with torch.no_grad():
        weight.add_(h * direction)
        plus = module().u.sum()
        weight.sub_(2 * h * direction)
        minus = module().u.sum()
        weight.add_(h * direction)
    numeric = (plus - minus) / (2 * h)
    assert abs(float(analytic - numeric)) <= 1e-6 * (1 + abs(float(numeric)))


def test_block_shape_mismatch_is_located():
    err = error_of(RESIDUAL.replace("wm(x, u)", "wm(x)"))
    d = err.diagnostics[0]
    assert (d.span.line, d.span.col) == (7, 61)
    assert "declared with in=3" in d.message


@pytest.mark.parametrize("change, line, col, message", [
    ("mlp(in=3", 6, 12, "unknown block kind 'mlpp'"),
    ("hidden=[8]", 6, 36, "option 'hidden' must be a list"),
    ("act=tanh", 6, 45, "option 'act' must be one of"),
])
def test_bad_block_declarations_are_located(change, line, col, message):
    broken = {"mlp(in=3": "mlpp(in=3", "hidden=[8]": "hidden=8", "act=tanh": "act=tan"}[change]
    err = error_of(RESIDUAL.replace(change, broken))
    d = err.diagnostics[0]
    assert (d.span.line, d.span.col) == (line, col) and message in d.message


def test_lqr_rejects_blocks_on_decisions_and_suggests_ilqr():
    text = RESIDUAL.replace("solve ilqr(iters=100, tol=1e-10)", "solve lqr").replace(" in [-2, 2]", "")
    err = error_of(text)
    assert len(err.diagnostics) == 1
    d = err.diagnostics[0]
    assert (d.span.line, d.span.col) == (7, 61)
    assert "block 'wm' is a neural network" in d.message and "`solve ilqr` would take this plan" in d.hint


def test_lqr_takes_a_block_of_inputs_only():
    text = """plan tracked
horizon 5
state x[2] = [1, 0]
control u[2]
input goal[2] = [0.5, -0.5]
block offset = linear(in=2, out=2)
dynamics x' = x + u
cost stage = sum((x - offset(goal))^2) + sum(u^2)
solve lqr
"""
    module = compiled(text)
    sol = module()
    assert sol.status_names() == ["solved"]
    sol.cost.sum().backward()
    assert module.blocks["offset"].weight.grad.abs().sum() > 0


def test_conv_block_types_maps():
    text = """plan maps
horizon 3
state x = 0
control u
input occupancy[5, 6]
block reward = conv(in=1, out=1, hidden=[4], kernel=3)
dynamics x' = x + u
cost stage = x^2 + u^2 + 0.01 * sum(reward(occupancy))
solve ilqr
"""
    module = compiled(text)
    graph = module.graph
    assert graph.nodes["cost:stage#1"]["ir"].args[1].args[1].args[0].shape == (5, 6)
    assert module(occupancy=torch.rand(2, 5, 6, dtype=torch.float64)).cost.shape == (2,)


IMPORTED = RESIDUAL.replace("mlp(in=3, out=2, hidden=[8], act=tanh)",
                            'python("tests.compiler.user_blocks:Scaled", in=3, out=2, scale=0.5)')


def test_imported_blocks_need_an_explicit_opt_in():
    err = error_of(IMPORTED)
    d = err.diagnostics[0]
    assert d.span.line == 6 and "imports and runs Python code" in d.message and "allow_imports=True" in d.hint
    module = compiled(IMPORTED, allow_imports=True)
    assert module.blocks["wm"].scale == 0.5
    assert module().status_names() == ["solved"]


def test_a_bad_import_path_is_a_located_error():
    err = error_of(IMPORTED.replace("user_blocks:Scaled", "user_blocks:Missing"), allow_imports=True)
    assert err.diagnostics[0].span.line == 6 and "cannot import" in err.diagnostics[0].message
