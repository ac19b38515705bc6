"""Tests of runtime/vin.py and runtime/vin_training.py: shapes and contract, gradients against finite
differences for both backward options, implicit = unroll at large K, and a tiny training run."""
import numpy as np
import pytest
import torch
from torch.func import functional_call

from runtime.gridworld import generate
from runtime.vin import VIN, load_vin
from runtime.vin_training import ExpertTensors, TrainSettings, batch_loss, evaluate_vin, train_vin


@pytest.fixture(scope="module")
def tiny_maps():
    data = generate(8, 3, seed=11)
    return (torch.as_tensor(data.maps, dtype=torch.float64), torch.as_tensor(data.goals.astype(np.int64)),
            torch.as_tensor(data.starts[:, 0].astype(np.int64)))


def small_vin(seed=0, **options) -> VIN:
    """A small float64 VIN with random (nonzero) weights everywhere, w included."""
    torch.manual_seed(seed)
    model = VIN(hidden=3, q_channels=4, **options).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.4 * torch.randn_like(p))
    return model


def scalar_loss(model, params, occupancy, goal, start):
    """A loss that reads both outputs: logits at the start and the value map."""
    out = functional_call(model, params, (occupancy, goal, start))
    return (out.logits.sin().sum() + 0.1 * out.values.cos().sum()).unsqueeze(0)


@pytest.mark.parametrize("options", [
    dict(backward="unroll", k=4),                                                     # the paper's VIN
    dict(backward="unroll", k=4, discount=0.8, temperature=0.5),
    dict(backward="implicit", k=200, discount=0.7, temperature=0.5, tol=1e-13),
], ids=["unroll-hard", "unroll-soft", "implicit-soft"])
def test_gradients_match_finite_differences(tiny_maps, options):
    model = small_vin(**options)
    names = [n for n, _ in model.named_parameters()]
    values = tuple(p.detach().clone().requires_grad_() for p in model.parameters())

    def f(*leaves):
        return scalar_loss(model, dict(zip(names, leaves)), *tiny_maps)

    assert torch.autograd.gradcheck(f, values, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_implicit_agrees_with_unroll_at_large_k(tiny_maps):
    grads = {}
    for backward in ("unroll", "implicit"):
        model = small_vin(backward=backward, k=150, discount=0.8, temperature=0.3, tol=1e-12)
        loss = scalar_loss(model, dict(model.named_parameters()), *tiny_maps)
        grads[backward] = torch.autograd.grad(loss.sum(), list(model.parameters()))
    for g_unroll, g_implicit in zip(grads["unroll"], grads["implicit"]):
        assert g_unroll.abs().max() > 1e-3
        torch.testing.assert_close(g_implicit, g_unroll, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("actions", [4, 8])
def test_contract_shapes_and_rollout(tiny_maps, actions):
    occupancy, goal, start = tiny_maps
    model = small_vin(actions=actions, k=3)
    sol = model.plan(occupancy, goal, start, max_steps=20)
    B, H, W = occupancy.shape
    assert sol.values.shape == (B, H, W) and sol.logits.shape == (B, actions)
    assert sol.path.shape[0] == B and sol.path.shape[1] <= 21 and sol.path.shape[2] == 2
    assert torch.equal(sol.path[:, 0], start) and sol.reached.dtype == torch.bool
    out = model(occupancy, goal, start)
    torch.testing.assert_close(model.action_logits(out.q)[torch.arange(B), :, start[:, 0], start[:, 1]], out.logits)


def test_state_dict_layout_config_and_errors():
    model = VIN()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {"h.weight": (150, 2, 3, 3), "h.bias": (150,), "r.weight": (1, 150, 1, 1),
                      "q.weight": (10, 1, 3, 3), "w": (10, 1, 3, 3), "fc.weight": (8, 10)}
    rebuilt = load_vin(model.state_dict(), model.config())
    assert rebuilt.config() == model.config()
    with pytest.raises(ValueError, match="discount < 1"):
        VIN(backward="implicit")
    with pytest.raises(ValueError, match="backward"):
        VIN(backward="cg")


def test_tiny_training_reduces_the_loss():
    torch.manual_seed(0)
    data = generate(8, 24, seed=5)
    tensors = ExpertTensors.from_data(data)
    model = VIN(hidden=16, k=6)
    maps = np.arange(24)
    before = float(batch_loss(model, tensors, maps)[0].detach())
    history = train_vin(model, tensors, TrainSettings(epochs=4, lr=0.005, maps_per_batch=6))
    after = float(batch_loss(model, tensors, maps)[0].detach())
    assert len(history) == 4 and after < 0.8 * before
    result = evaluate_vin(model, data)
    assert result["rollouts"] == 24 * 7 and 0.0 <= result["success_rate"] <= 1.0
    assert result["action_accuracy"] > 0.3
    assert result["action_accuracy"] <= result["optimal_action_rate"] <= 1.0
