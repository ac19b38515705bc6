"""Augmented-Lagrangian terms of constrained iLQR (the outer loop lives in `runtime.ilqr`).

Constraints come as batched callables, row-wise like the costs (none of them required):

    inequality(x_t (B, n), u_t (B, m)) -> (B, p)    c(x_t, u_t) <= 0,  t = 0..T-1
    equality(x_t, u_t)                 -> (B, q)    h(x_t, u_t)  = 0
    final_inequality(x_T (B, n))       -> (B, p_T)  c_T(x_T) <= 0
    final_equality(x_T)                -> (B, q_T)  h_T(x_T)  = 0

As ALTRO (Howell, Jackson & Manchester 2019), iLQR minimizes the Powell-Hestenes-Rockafellar
augmented Lagrangian with multipliers lam >= 0 (inequalities), nu (equalities) and one penalty
rho > 0 per batch element,

    L = J + sum_t [ phi(c_t, lam_t) + nu_t'h_t + rho/2 ||h_t||^2 ] + (the same at T),
    phi(c, lam) = ( ||max(0, lam + rho c)||^2 - ||lam||^2 ) / (2 rho),

whose gradient in z is grad J + sum_t c_t,z' max(0, lam_t + rho c_t) + h_t,z'(nu_t + rho h_t).
After each inner solve the first-order updates make that gradient the Lagrangian's:

    lam <- max(0, lam + rho c),   nu <- nu + rho h,   rho <- min(factor rho, rho_max)

(rho grows only where the violation is above tolerance). The violation of an element is
max(max_i c_i, max_j |h_j|) over all stages and the final state, max(0, .) (B,).

Implicit derivative at the converged (x*, u*, lam*, nu*): with the active set
A = {lam* > 0} (strict complementarity), (x*, u*) is a stationary point of

    J + lam_A*'c_A + nu*'h + rho_d/2 ( ||c_A - c_A(z*)||^2 + ||h - h(z*)||^2 )

for ANY rho_d (every penalty term and its gradient vanish at z*), and as rho_d grows its
minimizer's sensitivity tends to that of the KKT system of the active constraints, with an
error O(1/rho_d) (the constraint held at c_A(z*) ~ 0; the multipliers' curvature sum lam hess c
is in the model). `runtime.ilqr` differentiates that problem with its box-LQR implicit step;
rho_d = derivative_penalty (default eps^(-1/2) of the dtype: 6.7e7 in float64, 2.9e3 in float32).
"""
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from runtime.ilqr_derivatives import FinalCost, StageCost, over_time

StageConstraint = Callable[[Tensor, Tensor], Tensor]
FinalConstraint = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class ConstraintOptions:
    """Augmented-Lagrangian schedule and the tolerance on the constraint violation."""

    tol: Optional[float] = None        # on the max violation; None: sqrt(eps) of the dtype
    max_outer: int = 30                # multiplier / penalty updates
    penalty: float = 1.0               # initial rho
    penalty_factor: float = 10.0
    penalty_max: float = 1e8
    derivative_penalty: Optional[float] = None   # rho_d of the implicit derivative


@dataclass(frozen=True)
class Constraints:
    """The four optional constraint callables (see the module docstring for shapes)."""

    inequality: Optional[StageConstraint] = None
    equality: Optional[StageConstraint] = None
    final_inequality: Optional[FinalConstraint] = None
    final_equality: Optional[FinalConstraint] = None

    @property
    def any(self) -> bool:
        return any(c is not None for c in (self.inequality, self.equality, self.final_inequality,
                                           self.final_equality))

    def stage_values(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """(c (B, T, p), h (B, T, q)) at every stage of x (B, T, n), u (B, T, m)."""
        return (_stages(self.inequality, x, u), _stages(self.equality, x, u))

    def final_values(self, xT: Tensor) -> tuple[Tensor, Tensor]:
        """(c_T (B, p_T), h_T (B, q_T))."""
        return (_final(self.final_inequality, xT), _final(self.final_equality, xT))

    def violation(self, x: Tensor, u: Tensor) -> Tensor:
        """(B,) max(0, max c, max |h|) over every stage and the final state of x (B, T+1, n)."""
        c, h = self.stage_values(x[:, :-1], u)
        cT, hT = self.final_values(x[:, -1])
        parts = [c.flatten(1), h.abs().flatten(1), cT, hT.abs()]
        return torch.cat(parts, 1).clamp_min(0.0).amax(1) if sum(p.shape[1] for p in parts) else \
            x.new_zeros(x.shape[0])


class Multipliers(NamedTuple):
    lam: Tensor     # (B, T, p)  inequality multipliers >= 0
    nu: Tensor      # (B, T, q)  equality multipliers
    lam_T: Tensor   # (B, p_T)
    nu_T: Tensor    # (B, q_T)
    rho: Tensor     # (B,)       penalty


def initial_multipliers(constraints: Constraints, x: Tensor, u: Tensor, penalty: float) -> Multipliers:
    """Zero multipliers sized by one evaluation of the constraints at (x (B, T+1, n), u)."""
    c, h = constraints.stage_values(x[:, :-1], u)
    cT, hT = constraints.final_values(x[:, -1])
    return Multipliers(torch.zeros_like(c), torch.zeros_like(h), torch.zeros_like(cT),
                       torch.zeros_like(hT), torch.full_like(x[:, 0, 0], penalty))


def update(constraints: Constraints, mult: Multipliers, x: Tensor, u: Tensor, change: Tensor,
           violation: Tensor, tol: float, options: ConstraintOptions) -> Multipliers:
    """First-order multiplier update and penalty growth (module docstring) on the elements
    where `change` (B,) holds; the penalty grows only where violation (B,) > tol."""
    c, h = constraints.stage_values(x[:, :-1], u)
    cT, hT = constraints.final_values(x[:, -1])
    rho = mult.rho
    new = (torch.clamp_min(mult.lam + rho[:, None, None] * c, 0.0),
           mult.nu + rho[:, None, None] * h,
           torch.clamp_min(mult.lam_T + rho[:, None] * cT, 0.0),
           mult.nu_T + rho[:, None] * hT)
    grow = change & (violation > tol)
    rho = torch.where(grow, (rho * options.penalty_factor).clamp_max(options.penalty_max), rho)
    kept = tuple(torch.where(change.view(-1, *[1] * (n.dim() - 1)), n, o)
                 for n, o in zip(new, mult[:4]))
    return Multipliers(*kept, rho)


def augmented_costs(stage_cost: StageCost, final_cost: FinalCost, constraints: Constraints,
                    mult: Multipliers) -> tuple[Callable, FinalCost, Tensor]:
    """(stage_cost(x, u, w), final_cost(x), w (B, T, p+q+1)): the augmented Lagrangian's costs,
    the per-stage multipliers and penalty w = [lam, nu, rho] passed as stage data."""
    p, q = mult.lam.shape[-1], mult.nu.shape[-1]
    T = mult.lam.shape[1]
    w = torch.cat((mult.lam, mult.nu, mult.rho[:, None, None].expand(-1, T, 1)), -1)

    def stage(x: Tensor, u: Tensor, wt: Tensor) -> Tensor:
        rho = wt[:, -1]
        return stage_cost(x, u) + _penalties(constraints.inequality, constraints.equality, (x, u),
                                             wt[:, :p], wt[:, p:p + q], rho)

    def final(x: Tensor) -> Tensor:
        return final_cost(x) + _penalties(constraints.final_inequality, constraints.final_equality,
                                          (x,), mult.lam_T, mult.nu_T, mult.rho)

    return stage, final, w


def derivative_costs(stage_cost: StageCost, final_cost: FinalCost, constraints: Constraints,
                     mult: Multipliers, x: Tensor, u: Tensor, rho_d: float
                     ) -> tuple[Callable, FinalCost, Tensor]:
    """The costs whose stationary point (x*, u*) = (x, u) is differentiated (module docstring):
    (stage_cost(x, u, w), final_cost(x), w (B, T, 2p+2q))."""
    with torch.no_grad():
        c, h = constraints.stage_values(x[:, :-1], u)
        cT, hT = constraints.final_values(x[:, -1])
    active, active_T = (mult.lam > 0).to(c.dtype), (mult.lam_T > 0).to(c.dtype)
    p, q = c.shape[-1], h.shape[-1]
    w = torch.cat((mult.lam * active, c * active, active, mult.nu, h), -1)

    def stage(xt: Tensor, ut: Tensor, wt: Tensor) -> Tensor:
        lam, c0, act = wt[:, :p], wt[:, p:2 * p], wt[:, 2 * p:3 * p]
        nu, h0 = wt[:, 3 * p:3 * p + q], wt[:, 3 * p + q:]
        return stage_cost(xt, ut) + _fixed_penalties(constraints.inequality, constraints.equality,
                                                     (xt, ut), lam, c0, act, nu, h0, rho_d)

    def final(xT: Tensor) -> Tensor:
        return final_cost(xT) + _fixed_penalties(constraints.final_inequality,
                                                 constraints.final_equality, (xT,),
                                                 mult.lam_T * active_T, cT * active_T, active_T,
                                                 mult.nu_T, hT, rho_d)

    return stage, final, w


def _penalties(ineq, eq, args, lam, nu, rho) -> Tensor:
    """phi(c, lam) + nu'h + rho/2 ||h||^2 per row (B,)."""
    total = torch.zeros_like(rho)
    if ineq is not None:
        shifted = torch.clamp_min(lam + rho[:, None] * ineq(*args), 0.0)
        total = total + ((shifted * shifted - lam * lam).sum(-1)) / (2 * rho)
    if eq is not None:
        h = eq(*args)
        total = total + (nu * h).sum(-1) + 0.5 * rho * (h * h).sum(-1)
    return total


def _fixed_penalties(ineq, eq, args, lam, c0, active, nu, h0, rho_d: float) -> Tensor:
    """lam_A'c_A + nu'h + rho_d/2 (||c_A - c_A(z*)||^2 + ||h - h(z*)||^2) per row (B,)."""
    total = torch.zeros_like(args[0][:, 0])
    if ineq is not None:
        c = ineq(*args) * active
        total = total + (lam * c).sum(-1) + 0.5 * rho_d * ((c - c0) ** 2).sum(-1)
    if eq is not None:
        h = eq(*args)
        total = total + (nu * h).sum(-1) + 0.5 * rho_d * ((h - h0) ** 2).sum(-1)
    return total


def _stages(fn: Optional[StageConstraint], x: Tensor, u: Tensor) -> Tensor:
    if fn is None:
        return x.new_zeros(x.shape[0], x.shape[1], 0)
    return over_time(fn, x, u)


def _final(fn: Optional[FinalConstraint], xT: Tensor) -> Tensor:
    return xT.new_zeros(xT.shape[0], 0) if fn is None else fn(xT)
