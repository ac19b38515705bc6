"""Extract the LQR/QP data of a polynomial plan as differentiable torch tensors.

With states and controls bound to exact linear forms in z = [x; u] (see `compiler.quadform`),
each cost evaluates to k + c'z + 1/2 z'Cz, the transition (dynamics, integrated if continuous)
to f + F z, and each affine constraint to g + G z (<= 0 or == 0). Without stage values (`t`,
`ref[t]`) costs, dynamics and constraints are the same at every stage: the data is time-invariant
(batch b of 1 or B) and expanded over the horizon by the caller. With them, the stage parts are
evaluated on all stages at once (`compiler.lower.stages.StageValues.flat`): their batch is 1 or
B*T (row b*T + t), reshaped to (B, T, ...) by the caller.

Where each constraint holds in time is `compiler.problem.placement`: rows placed at x_{t+1} are
imposed through x_{t+1} = F z_t + f, i.e. as the stage constraint (G_x F) z_t <= -(g + G_x f).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from compiler import quadform as qf
from compiler.evaluate import Env, evaluate
from compiler.problem import Placement, TrajectoryProblem, box_placement
from planlang.ast import Cmp


@dataclass
class QuadraticData:
    """Time-invariant stage data in the runtime convention (batch B may be 1 and broadcasts)."""

    C: torch.Tensor            # (B, nz, nz)
    c: torch.Tensor            # (B, nz)
    stage_const: torch.Tensor  # (B,)
    CT: torch.Tensor           # (B, n, n)
    cT: torch.Tensor           # (B, n)
    final_const: torch.Tensor  # (B,)
    F: torch.Tensor            # (B, n, nz)
    f: torch.Tensor            # (B, n)
    G: torch.Tensor            # (B, p, nz)   G z <= h
    h: torch.Tensor            # (B, p)
    E: torch.Tensor            # (B, q, nz)   E z == e
    e: torch.Tensor            # (B, q)


def extract(parts: TrajectoryProblem, env: Env, like: torch.Tensor,
            stages: tuple[Env, Env] | None = None) -> QuadraticData:
    """Evaluate every dynamics, cost and constraint of the plan on symbolic states and controls.
    `stages`: the values bound at (x_t, u_t) and at x_{t+1} for all stages at once (flattened), for
    a plan that reads stage values; the final cost always reads `env`."""
    layout = parts.layout
    n, nz = layout.n, layout.n + layout.m
    symbolic = layout.symbolic(like)
    final_env = {**env, **symbolic}
    env, after = (final_env, final_env) if stages is None else ({**stages[0], **symbolic}, {**stages[1], **symbolic})

    k0, L0, H0 = qf.coefficients(sum_costs(parts.stage_costs, env, like), nz)
    kT, LT, HT = qf.coefficients(sum_costs(parts.final_costs, final_env, like), nz)

    next_states = parts.transition(env, like)
    F_rows, f_rows = [], []
    for var in layout.states:
        f_i, L_i = _affine_rows(next_states[var.ref], nz, var.size)
        F_rows.append(L_i)
        f_rows.append(f_i)
    F, f = _cat_batched(F_rows, 1), _cat_batched(f_rows, 1)

    ineq, eq = [], []
    for ir, sense, where in parts.constraints:
        rows = _affine_rows(evaluate(ir, after if where is Placement.NEXT else env, like), nz)
        (eq if sense is Cmp.EQ else ineq).append((rows, where))
    for var in layout.states + layout.controls:
        if var.lower is not None:
            value = symbolic[var.ref] if var.shape else qf.unsqueeze(symbolic[var.ref], 0)
            lo, hi = (qf.pad_rank(evaluate(b, env, like), 1).expand(-1, var.size) for b in (var.lower, var.upper))
            for rows in (_affine_rows(qf.sub(lo, value), nz), _affine_rows(qf.sub(value, hi), nz)):
                ineq.append((rows, box_placement(var)))
    G, h = _stage_rows(ineq, F, f, n, nz, like)
    E, e = _stage_rows(eq, F, f, n, nz, like)
    return QuadraticData(C=2 * H0, c=L0, stage_const=k0, CT=2 * HT[:, :n, :n], cT=LT[:, :n], final_const=kT,
                         F=F, f=f, G=G, h=h, E=E, e=e)


def sum_costs(exprs, env: Env, like: torch.Tensor) -> qf.Value:
    """The sum of cost expressions on values (tensors or jets)."""
    total: qf.Value = torch.zeros(1, dtype=like.dtype, device=like.device)
    for expr in exprs:
        total = qf.add(total, evaluate(expr, env, like))
    return total


def _affine_rows(value: qf.Value, nz: int, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten an affine value of shape S into rows: (g (B, k), G (B, k, nz)) with value = g + G z."""
    g, L, _ = qf.coefficients(value, nz)
    if size is not None:                       # broadcast to the declared size (e.g. scalar dynamics)
        g = g.reshape(g.shape[0], -1).expand(-1, size)
        L = L.reshape(L.shape[0], nz, -1).expand(-1, -1, size)
    return g.reshape(g.shape[0], -1), L.reshape(L.shape[0], nz, -1).transpose(1, 2)


def _cat_batched(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    batch = max(p.shape[0] for p in parts)
    return torch.cat([p.expand((batch,) + p.shape[1:]) for p in parts], dim=dim)


def _stage_rows(groups, F, f, n: int, nz: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack constraint rows g + G z (<= or ==) 0 as G z (<= or ==) h; rows placed at x_{t+1} are
    imposed on the stage through the dynamics: g + G_x (F z + f)."""
    G_parts, h_parts = [], []
    for (g, G), where in groups:
        if where is Placement.NEXT:
            Gx = G[..., :n]
            g = g + (Gx @ f.unsqueeze(-1)).squeeze(-1)
            G = Gx @ F
        G_parts.append(G)
        h_parts.append(-g)
    if not G_parts:
        empty = torch.zeros(1, 0, dtype=like.dtype, device=like.device)
        return empty.unsqueeze(-1).expand(1, 0, nz), empty
    return _cat_batched(G_parts, 1), _cat_batched(h_parts, 1)
