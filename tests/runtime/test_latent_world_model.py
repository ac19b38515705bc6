"""runtime.latent_world_model: shapes, KL balancing and free bits, gradients (float64), and
training on a tiny sequence data set reduces held-out prediction error."""
from __future__ import annotations

import math

import torch

from runtime.latent_world_model import LatentWorldModel

torch.set_num_threads(1)


def model(**kwargs) -> LatentWorldModel:
    torch.manual_seed(0)
    return LatentWorldModel(obs=3, actions=1, deter=8, stoch=4, hidden=16, **kwargs).double()


def sequences(batch: int, steps: int, seed: int):
    """A damped pendulum-like system observed as (cos th, sin th, thdot)."""
    g = torch.Generator().manual_seed(seed)
    th, w = (torch.rand(batch, generator=g, dtype=torch.float64) - 0.5) * 6, torch.zeros(batch, dtype=torch.float64)
    u = (torch.rand(batch, steps, 1, generator=g, dtype=torch.float64) - 0.5) * 2
    obs = []
    for t in range(steps + 1):
        obs.append(torch.stack([torch.cos(th), torch.sin(th), w], -1))
        if t < steps:
            w = 0.95 * w + 0.1 * (-torch.sin(th) + u[:, t, 0])
            th = th + 0.1 * w
    return torch.stack(obs, 1), u


def test_shapes_of_filtering_and_imagination():
    wm = model()
    obs, u = sequences(4, 6, 0)
    h, z, q, p = wm.observe(obs, u)
    assert h.shape == (4, 7, 8) and z.shape == (4, 7, 4) and q.mean.shape == p.mean.shape == (4, 7, 4)
    assert wm.imagine(h[:, 2], z[:, 2], u[:, 2:5]).shape == (4, 3, 3)
    loss, metrics = wm.loss(obs, u, reward=torch.zeros(4, 6, dtype=torch.float64),
                            done=torch.zeros(4, 6, dtype=torch.bool))
    assert loss.ndim == 0 and {"mse", "reward_mse", "continue", "kl", "rollout_mse"} <= set(metrics)


def test_kl_balancing_sends_each_term_to_one_side_and_free_bits_cut_gradients():
    from torch.distributions import Normal

    g = torch.Generator().manual_seed(1)
    leaves = [torch.randn(3, 5, 4, generator=g, dtype=torch.float64).requires_grad_() for _ in range(4)]
    q_mean, q_raw, p_mean, p_raw = leaves
    q, p = Normal(q_mean, q_raw.exp()), Normal(p_mean, p_raw.exp())
    dyn, rep = model(free_bits=0.0).kl_terms(q, p)
    size = lambda t: 0.0 if t is None else float(t.abs().sum())        # None: not reached at all
    g_dyn = [size(t) for t in torch.autograd.grad(dyn, leaves, retain_graph=True, allow_unused=True)]
    g_rep = [size(t) for t in torch.autograd.grad(rep, leaves, retain_graph=True, allow_unused=True)]
    assert g_dyn[0] == g_dyn[1] == 0 and g_dyn[2] > 0 and g_dyn[3] > 0
    assert g_rep[2] == g_rep[3] == 0 and g_rep[0] > 0 and g_rep[1] > 0
    torch.testing.assert_close(dyn, rep)                     # the same KL value, two gradient paths
    dyn, rep = model(free_bits=1e6).kl_terms(q, p)
    assert float(dyn.detach()) == float(rep.detach()) == 1e6
    assert all(size(t) == 0 for t in torch.autograd.grad(dyn + rep, leaves, allow_unused=True))


def test_gradcheck_of_imagination_in_the_actions():
    wm = model()
    obs, u = sequences(2, 3, 2)
    with torch.no_grad():
        h, z, _, _ = wm.observe(obs, u, sample=False)
    actions = torch.randn(2, 3, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: wm.imagine(h[:, -1], z[:, -1], a), (actions,))


def test_training_reduces_held_out_prediction_error():
    wm = model()
    train_obs, train_u = sequences(32, 10, 3)
    test_obs, test_u = sequences(16, 10, 4)
    wm.fit_normalization(train_obs)

    def error() -> float:
        with torch.no_grad():
            h, z, _, _ = wm.observe(test_obs[:, :5], test_u[:, :4], sample=False)
            pred = wm.imagine(h[:, -1], z[:, -1], test_u[:, 4:])
        return float((pred - test_obs[:, 5:]).pow(2).mean())

    before = error()
    optimizer = torch.optim.Adam(wm.parameters(), lr=1e-2)
    for _ in range(80):
        loss, _ = wm.loss(train_obs, train_u)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert error() < 0.5 * before
    assert math.isfinite(float(loss.detach()))
