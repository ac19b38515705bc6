"""Task streams for continual learning: lists of `Task` (train and test `TaskData`).

    permuted_gaussian   synthetic: a 10-class Gaussian mixture, each task a fixed random
                        permutation of the input features (domain-incremental, no download)
    permuted_digits     scikit-learn's bundled 8x8 digits (1797 images, no download), each
                        task a fixed pixel permutation (task 0: the identity)
    split_digits        the digits in 5 tasks of 2 classes each (class-incremental, 10-way)
    pendulum_regimes    world-model regression: gymnasium Pendulum-v1 transitions under 5
                        (mass, length) regimes, learned one after another
    cartpole_regimes    world-model regression: gymnasium CartPole-v1's equations with a
                        continuous force and viscous cart friction, under 5 (pole mass, pole
                        half-length, friction) regimes

scikit-learn is the optional extra `planlang[continual]`; the digits streams raise an
ImportError naming it when it is absent.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from runtime.continual import Task, TaskData, cross_entropy, squared_error

PENDULUM_REGIMES: Tuple[Tuple[float, float], ...] = (
    (1.0, 1.0), (1.5, 0.8), (0.7, 1.3), (2.0, 1.2), (1.2, 0.6))
"""(mass, length) of the five pendulum regimes, in training order."""

PENDULUM_G, PENDULUM_DT, PENDULUM_MAX_SPEED, PENDULUM_MAX_TORQUE = 10.0, 0.05, 8.0, 2.0


def _classification_task(x: Tensor, y: Tensor, n_train: int, name: str) -> Task:
    return Task(TaskData(x[:n_train], y[:n_train], cross_entropy),
                TaskData(x[n_train:], y[n_train:], cross_entropy), name)


def permuted_gaussian(n_tasks: int = 5, n_classes: int = 10, dim: int = 20,
                      n_train: int = 1000, n_test: int = 500, noise: float = 0.7,
                      seed: int = 0, dtype: torch.dtype = torch.float32) -> List[Task]:
    """A Gaussian mixture x = mu_c + noise * eps (mu_c ~ N(0, I_dim)), y = c, with task t's
    inputs permuted by a fixed random permutation (task 0: the identity)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n_classes, dim, generator=g, dtype=torch.float64)
    n = n_train + n_test
    y = torch.randint(n_classes, (n,), generator=g)
    x = (means[y] + noise * torch.randn(n, dim, generator=g, dtype=torch.float64)).to(dtype)
    tasks = []
    for t in range(n_tasks):
        perm = torch.arange(dim) if t == 0 else torch.randperm(dim, generator=g)
        tasks.append(_classification_task(x[:, perm], y, n_train, f"perm {t}"))
    return tasks


def _digits(seed: int, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("the digits streams need scikit-learn: pip install "
                          "'planlang[continual]' (or scikit-learn)") from error
    data = load_digits()
    x = torch.tensor(data.data, dtype=dtype) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    return x[order], y[order]


def permuted_digits(n_tasks: int = 5, test_fraction: float = 0.3, seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> List[Task]:
    """scikit-learn's digits (N, 64) in [0, 1], 10 classes; task t permutes the 64 pixels by a
    fixed random permutation (task 0: the identity). Same train/test split in every task."""
    x, y = _digits(seed, dtype)
    n_train = round(x.shape[0] * (1 - test_fraction))
    g = torch.Generator().manual_seed(seed + 1)
    tasks = []
    for t in range(n_tasks):
        perm = torch.arange(x.shape[1]) if t == 0 else torch.randperm(x.shape[1], generator=g)
        tasks.append(_classification_task(x[:, perm], y, n_train, f"perm {t}"))
    return tasks


def split_digits(classes_per_task: int = 2, test_fraction: float = 0.3, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> List[Task]:
    """scikit-learn's digits split into tasks of `classes_per_task` consecutive classes
    (0-1, 2-3, ...), labels kept global (class-incremental: one 10-way output)."""
    x, y = _digits(seed, dtype)
    n_train = round(x.shape[0] * (1 - test_fraction))
    tasks = []
    for first in range(0, 10, classes_per_task):
        members = (y >= first) & (y < first + classes_per_task)
        train = members.clone()
        train[n_train:] = False
        test = members.clone()
        test[:n_train] = False
        name = f"{first}-{first + classes_per_task - 1}"
        tasks.append(Task(TaskData(x[train], y[train], cross_entropy),
                          TaskData(x[test], y[test], cross_entropy), name))
    return tasks


def pendulum_step(th: Tensor, thdot: Tensor, u: Tensor, m: Tensor, l: Tensor
                  ) -> Tuple[Tensor, Tensor]:
    """gymnasium Pendulum-v1 dynamics, batched (all (B,)); th = 0 is upright.

        u' = clip(u, -2, 2)
        thdot' = clip(thdot + (3 g / (2 l) sin th + 3 / (m l^2) u') dt, -8, 8)
        th' = th + thdot' dt          (g = 10, dt = 0.05)
    """
    u = u.clamp(-PENDULUM_MAX_TORQUE, PENDULUM_MAX_TORQUE)
    accel = 3 * PENDULUM_G / (2 * l) * torch.sin(th) + 3.0 / (m * l.pow(2)) * u
    new_thdot = (thdot + accel * PENDULUM_DT).clamp(-PENDULUM_MAX_SPEED, PENDULUM_MAX_SPEED)
    return th + new_thdot * PENDULUM_DT, new_thdot


def pendulum_transitions(n: int, mass: float, length: float, generator: torch.Generator,
                         dtype: torch.dtype = torch.float32) -> TaskData:
    """n transitions x = (th, thdot, u, m, l) (n, 5) -> y = next (th, thdot) (n, 2), with th,
    thdot and u uniform over [-pi, pi] x [-8, 8] x [-2, 2]."""
    th = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * math.pi
    thdot = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * PENDULUM_MAX_SPEED
    u = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * PENDULUM_MAX_TORQUE
    m = torch.full((n,), mass, dtype=torch.float64)
    l = torch.full((n,), length, dtype=torch.float64)
    next_th, next_thdot = pendulum_step(th, thdot, u, m, l)
    x = torch.stack([th, thdot, u, m, l], dim=1).to(dtype)
    y = torch.stack([next_th, next_thdot], dim=1).to(dtype)
    return TaskData(x, y, squared_error)


def pendulum_regimes(n_train: int = 2000, n_test: int = 500,
                     regimes: Sequence[Tuple[float, float]] = PENDULUM_REGIMES, seed: int = 0,
                     dtype: torch.dtype = torch.float32) -> List[Task]:
    """One regression task per (mass, length) regime, in order; each sees only its own data."""
    g = torch.Generator().manual_seed(seed)
    return [Task(pendulum_transitions(n_train, m, l, g, dtype),
                 pendulum_transitions(n_test, m, l, g, dtype), f"m={m}, l={l}")
            for m, l in regimes]


CARTPOLE_REGIMES: Tuple[Tuple[float, float, float], ...] = (
    (0.1, 0.5, 0.0), (0.3, 0.8, 0.5), (0.05, 0.3, 1.0), (0.5, 1.0, 0.2), (0.2, 0.4, 2.0))
"""(pole mass, pole half-length, cart friction) of the five cart-pole regimes, in training order;
the first is gymnasium's CartPole-v1 (no friction)."""

CARTPOLE_G, CARTPOLE_CART_MASS, CARTPOLE_DT, CARTPOLE_MAX_FORCE = 9.8, 1.0, 0.02, 10.0
CARTPOLE_RANGES = (2.4, 3.0, 1.0, 4.0)
"""Half-widths of the uniform sampling box of (x, xdot, th, thdot) in `cartpole_transitions`."""


def cartpole_step(s: Tensor, force: Tensor, mp: Tensor, l: Tensor, b: Tensor) -> Tensor:
    """gymnasium CartPole-v1's equations with a continuous force and viscous cart friction, batched:
    s (B, 4) = (x, xdot, th, thdot) (th = 0 upright), force, mp (pole mass), l (half the pole's
    length), b (cart friction, N s/m) all (B,) -> next s (B, 4). With F = clip(force, -10, 10) - b xdot
    the net horizontal force on the cart (M = 1 + mp; g = 9.8, dt = 0.02, explicit Euler):

        a      = (F + mp l thdot^2 sin th) / M
        thddot = (g sin th - cos th a) / (l (4/3 - mp cos^2 th / M))
        xddot  = a - mp l thddot cos th / M
        (x, xdot, th, thdot)' = (x, xdot, th, thdot) + dt (xdot, xddot, thdot, thddot)

    b = 0 is gymnasium's step with `force_mag` = force."""
    x, xdot, th, thdot = s.unbind(-1)
    total = CARTPOLE_CART_MASS + mp
    sin, cos = torch.sin(th), torch.cos(th)
    net = force.clamp(-CARTPOLE_MAX_FORCE, CARTPOLE_MAX_FORCE) - b * xdot
    a = (net + mp * l * thdot.pow(2) * sin) / total
    thddot = (CARTPOLE_G * sin - cos * a) / (l * (4.0 / 3.0 - mp * cos.pow(2) / total))
    xddot = a - mp * l * thddot * cos / total
    return torch.stack([x + CARTPOLE_DT * xdot, xdot + CARTPOLE_DT * xddot,
                        th + CARTPOLE_DT * thdot, thdot + CARTPOLE_DT * thddot], dim=-1)


def cartpole_transitions(n: int, regime: Tuple[float, float, float], generator: torch.Generator,
                         dtype: torch.dtype = torch.float32) -> TaskData:
    """n transitions x = (x, xdot, th, thdot, force, mp, l, b) (n, 8) -> y = next state (n, 4), with
    (x, xdot, th, thdot) uniform over the box +-`CARTPOLE_RANGES` and force over [-10, 10]."""
    half = torch.tensor([*CARTPOLE_RANGES, CARTPOLE_MAX_FORCE], dtype=torch.float64)
    z = (torch.rand(n, 5, generator=generator, dtype=torch.float64) * 2 - 1) * half
    params = torch.tensor(regime, dtype=torch.float64).expand(n, 3)
    y = cartpole_step(z[:, :4], z[:, 4], *params.unbind(1))
    return TaskData(torch.cat([z, params], 1).to(dtype), y.to(dtype), squared_error)
