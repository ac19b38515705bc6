"""Fixed-step integrators for continuous dynamics `dynamics dot(x) = f(x, u) by rk4(dt)`.

Each maps the state derivative f (a function of the named state values, on `Value`s: tensors or
jets) to the discrete transition x' = phi(x, u) over one step dt. Composing on jets gives exact
first and second derivatives of phi; for an affine f, phi is affine and LQR/QP take it.
"""
from __future__ import annotations

from typing import Callable

from compiler import quadform as qf

States = dict          # VarRef -> Value
Derivative = Callable[[States], States]


def _axpy(x: States, a: float, k: States) -> States:
    return {ref: qf.add(x[ref], qf.mul(k[ref], _scalar(x[ref], a))) for ref in x}


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
