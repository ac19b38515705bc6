"""runtime.world_model, runtime.transitions and the `ModelLoss`: shapes, normalization, angle
handling, trajectory sampling, gradients (float64 gradcheck) and clear errors for bad files."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from runtime.losses import ModelLoss
from runtime.transitions import TransitionsError, load_transitions, save_transitions, windows
from runtime.world_model import WorldModel, member_assignment, trajectory_sampling, wrap_angle

torch.set_num_threads(1)


def model(**kwargs) -> WorldModel:
    torch.manual_seed(0)
    options = dict(state=2, others=2, hidden=(8, 8), members=3, probabilistic=True, angles=(0,))
    options.update(kwargs)
    return WorldModel(**options).double()


def test_shapes_of_members_mean_and_per_member_states():
    wm = model()
    s, c = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    nexts = wm.members_next(s, c)
    assert nexts.shape == (3, 5, 2)
    torch.testing.assert_close(wm(s, c), nexts.mean(0))
    mean, logvar = wm.normalized(s, c)
    assert mean.shape == logvar.shape == (3, 5, 2)
    assert bool((logvar <= wm.max_logvar + 1e-12).all() and (logvar >= wm.min_logvar - 1e-12).all())
    own = wm.members_next(nexts, c)                        # member k from its own state
    for k in range(3):
        torch.testing.assert_close(own[k], wm.members_next(nexts[k], c)[k])


def test_trajectory_sampling_rows_follow_their_member():
    wm = model()
    s, c = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    index = torch.tensor([0, 1, 2, 2, 1, 0])
    with wm.sampling(index):
        picked = wm(s, c)
    nexts = wm.members_next(s, c)
    torch.testing.assert_close(picked, nexts[index, torch.arange(6)])
    torch.testing.assert_close(wm(s, c), nexts.mean(0))    # back to the mean model outside
    with pytest.raises(ValueError, match="member_index"):
        with wm.sampling(torch.tensor([3])):
            pass


def test_member_assignment_is_balanced_and_seeded():
    index = member_assignment(10, 3, seed=4)
    assert index.shape == (10,) and sorted(torch.bincount(index, minlength=3).tolist()) == [3, 3, 4]
    torch.testing.assert_close(index, member_assignment(10, 3, seed=4))
    assert not torch.equal(index, member_assignment(10, 3, seed=5))


def test_trajectory_sampling_tiles_the_assignment_over_the_batch():
    wm, single = model(), model(members=1, probabilistic=False)
    B, K = 2, 4
    s, c = torch.randn(B * K, 2, dtype=torch.float64), torch.randn(B * K, 2, dtype=torch.float64)
    with trajectory_sampling([wm, single], B, K, seed=1):
        picked, plain = wm(s, c), single(s, c)
    index = member_assignment(K, 3, seed=1).repeat(B)             # row b*K + k -> member of sample k
    torch.testing.assert_close(picked, wm.members_next(s, c)[index, torch.arange(B * K)])
    torch.testing.assert_close(plain, single(s, c))              # a single model is left alone
    assert wm.member_index is None


def test_gradcheck_of_the_mean_model_in_state_and_conditioning():
    wm = model()
    s = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: wm(a, b), (s, c))
    s_next = s.detach() + 0.1
    assert torch.autograd.gradcheck(lambda a, b: wm.member_losses(a, b, s_next)[0], (s, c))


def test_normalization_is_fitted_with_constant_columns_left_at_unit_scale():
    wm = model(angles=())
    s = torch.randn(200, 2, dtype=torch.float64) * torch.tensor([3.0, 0.5], dtype=torch.float64) + 1.0
    c = torch.cat([torch.randn(200, 1, dtype=torch.float64), torch.full((200, 1), 2.0, dtype=torch.float64)], 1)
    s_next = s + 0.1 * torch.randn_like(s)
    wm.fit_normalization(s, c, s_next)
    assert bool(wm.fitted)
    torch.testing.assert_close(wm.in_mean[:2], s.mean(0))
    torch.testing.assert_close(wm.in_std[:2], s.std(0, unbiased=False))
    assert float(wm.in_std[3]) == 1.0 and float(wm.in_mean[3]) == 2.0
    torch.testing.assert_close(wm.out_std, (s_next - s).std(0, unbiased=False))
    assert "in_mean" in wm.state_dict() and "fitted" in wm.state_dict()


def test_angle_entries_are_sin_cos_features_and_wrapped_targets():
    wm = model()
    s = torch.tensor([[math.pi - 0.05, 1.0]], dtype=torch.float64)
    s_next = torch.tensor([[-math.pi + 0.05, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(wm.target(s, s_next), torch.tensor([[0.1, 0.0]], dtype=torch.float64))
    shifted = s.clone()
    shifted[0, 0] -= 2 * math.pi
    torch.testing.assert_close(wm.members_next(s, torch.zeros(1, 2, dtype=torch.float64))[..., 1],
                               wm.members_next(shifted, torch.zeros(1, 2, dtype=torch.float64))[..., 1])
    assert float(wrap_angle(torch.tensor(3 * math.pi / 2))) == pytest.approx(-math.pi / 2)


def _linear_system(N: int, generator: torch.Generator):
    s = torch.randn(N, 3, 2, dtype=torch.float64, generator=generator)          # k = 2 windows
    c = torch.randn(N, 2, 2, dtype=torch.float64, generator=generator)
    A = torch.tensor([[0.9, 0.2], [-0.1, 0.8]], dtype=torch.float64)
    for t in range(2):
        s[:, t + 1] = s[:, t] @ A.T + 0.3 * c[:, t]
    return {"state": s, "others": c}


@pytest.mark.parametrize("probabilistic", [False, True])
def test_model_loss_training_reduces_held_out_error(probabilistic):
    generator = torch.Generator().manual_seed(1)
    train, held = _linear_system(128, generator), _linear_system(64, generator)
    wm = model(angles=(), probabilistic=probabilistic, members=2 if probabilistic else 1, hidden=(16,))
    wm.fit_normalization(train["state"][:, 0], train["others"][:, 0], train["state"][:, 1])
    loss = ModelLoss(multistep_weight=1.0)
    before = loss(wm, held)[1]
    optimizer = torch.optim.Adam(wm.parameters(), lr=1e-2)
    for _ in range(100):
        value, _ = loss(wm, train)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    after = loss(wm, held)[1]
    assert float(after["mse"]) < 0.1 * float(before["mse"])
    assert float(after["rollout_mse"]) < 0.1 * float(before["rollout_mse"])
    assert ("nll" in after) == probabilistic


def test_bootstrap_weights_select_members_examples():
    wm = model(angles=(), members=2)
    data = _linear_system(8, torch.Generator().manual_seed(2))
    only_first = torch.zeros(8, 2, dtype=torch.float64)
    only_first[:4, 0] = 1.0
    only_first[4:, 1] = 1.0
    base, _ = ModelLoss()(wm, {**data, "bootstrap": only_first})
    grads = torch.autograd.grad(base, wm.head.weight)[0]
    assert grads.abs().sum() > 0
    changed = {k: v.clone() for k, v in data.items()}
    changed["state"][4:] += 5.0                                      # only member 1's examples change
    moved, _ = ModelLoss()(wm, {**changed, "bootstrap": only_first})
    first = torch.autograd.grad(moved, wm.head.weight)[0]
    torch.testing.assert_close(first[0], grads[0])
    assert not torch.allclose(first[1], grads[1])


# ------------------------------------------------------------------------ transitions

def _transitions(N: int = 10) -> dict:
    x = np.arange(2 * (N + 1), dtype=float).reshape(N + 1, 2)
    return {"x": x[:-1], "u": np.ones((N, 1)), "x_next": x[1:], "episode": np.repeat([0, 1], [6, N - 6])}


def test_transitions_round_trip_and_windows_stop_at_episode_ends(tmp_path):
    path = tmp_path / "t.npz"
    save_transitions(path, _transitions())
    data = load_transitions(path)
    assert data["x"].dtype == torch.float64 and data["episode"].dtype == torch.int64
    index = windows(data, 3)
    assert index.tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [6, 7, 8], [7, 8, 9]]
    data["done"] = torch.zeros(10, dtype=torch.bool)
    data["done"][1] = True
    assert windows(data, 2)[:, 0].tolist() == [0, 2, 3, 4, 6, 7, 8]


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("x_next"), "missing 'x_next'"),
    (lambda d: d.update(u=np.ones((3, 1))), "'u' has 3 rows, 'x' has 10"),
    (lambda d: d.update(x_next=np.ones((10, 3))), "x_next has 3 columns, x has 2"),
    (lambda d: d.update(x=np.full((10, 2), np.nan)), "'x' has non-finite values"),
    (lambda d: d.update(x=np.array(["a"] * 10)), "expected numbers"),
    (lambda d: d.update(episode=np.zeros(10) + 0.5), "'episode' must hold integers"),
    (lambda d: d.update(speed=np.zeros(10)), "unknown entries \\['speed'\\]"),
    (lambda d: d.update(u=np.ones(10)), "'u' has shape \\(10,\\); expected \\(N, size\\)"),
])
def test_bad_transition_files_are_rejected_clearly(tmp_path, change, message):
    data = _transitions()
    change(data)
    path = tmp_path / "bad.npz"
    np.savez(path, **data)
    with pytest.raises(TransitionsError, match=message):
        load_transitions(path)


def test_missing_or_damaged_files_are_rejected(tmp_path):
    with pytest.raises(TransitionsError, match="no such transitions file"):
        load_transitions(tmp_path / "absent.npz")
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(b"not an archive")
    with pytest.raises(TransitionsError, match="not a readable .npz archive"):
        load_transitions(damaged)
