"""Fixed-step integrators for continuous dynamics `dynamics dot(x) = f(x, u) by rk4(dt)`.

Each maps the state derivative f (a function of the named state values, on `Value`s: tensors or
jets) to the discrete transition x' = phi(x, u) over one step dt. Composing on jets gives exact
first and second derivatives of phi; for an affine f, phi is affine and LQR/QP take it.
"""
from __future__ import annotations

from typing import Callable

import torch

from compiler import quadform as qf

States = dict          # VarRef -> Value
Derivative = Callable[[States], States]


def _axpy(x: States, a: float, k: States) -> States:
    """x + a k, per state (plain tensors of equal rank take the direct path)."""
    out = {}
    for ref, xv in x.items():
        kv = k[ref]
        if isinstance(xv, torch.Tensor) and isinstance(kv, torch.Tensor) and xv.dim() == kv.dim():
            out[ref] = xv + a * kv
        else:
            out[ref] = qf.add(xv, qf.mul(kv, _scalar(xv, a)))
    return out


def _scalar(like, a: float):
    c = like.c if isinstance(like, qf.QuadForm) else like
    return c.new_tensor(a).reshape((1,) * c.dim())


def euler(f: Derivative, x: States, dt: float) -> States:
    """x' = x + dt f(x)."""
    return _axpy(x, dt, f(x))


def rk4(f: Derivative, x: States, dt: float) -> States:
    """Classical 4th-order Runge-Kutta: x' = x + dt/6 (k1 + 2 k2 + 2 k3 + k4)."""
    k1 = f(x)
    k2 = f(_axpy(x, dt / 2, k1))
    k3 = f(_axpy(x, dt / 2, k2))
    k4 = f(_axpy(x, dt, k3))
    out = x
    for weight, k in ((dt / 6, k1), (dt / 3, k2), (dt / 3, k3), (dt / 6, k4)):
        out = _axpy(out, weight, k)
    return out


INTEGRATORS: dict[str, Callable[[Derivative, States, float], States]] = {"euler": euler, "rk4": rk4}
