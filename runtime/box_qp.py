"""Batched box-constrained QP by projected Newton ("boxQP" of Tassa, Mansard & Todorov 2014,
"Control-limited differential dynamic programming", Algorithm 3).

    minimize_x  1/2 x' H x + q' x    s.t.  lo <= x <= hi

    H: (B, m, m) symmetric (positive definite on the free subspace)
    q: (B, m);  lo, hi: broadcastable to (B, m), entries may be -inf / +inf.

Each iteration splits the coordinates by the projected-gradient test at the current point
(g = H x + q):  clamped = (x = lo and g > 0) or (x = hi and g < 0),  free = the rest.
The Newton step on the free coordinates, d_f = -H_ff^{-1} g_f (d_c = 0), is followed by a
projected Armijo line search over the steps s = decay^j, j = 0..J-1, evaluated all at once:
    x(s) = clamp(x + s d, lo, hi),  accept the largest s with
    f(x) - f(x(s)) >= armijo * g'(x - x(s)) > 0.
An element stops (SOLVED) when ||g_f||_inf <= tol * max(1, ||q||_inf), or when the previous step
was an unprojected full Newton step and the clamped set did not change (then x is the exact
minimizer of its face and satisfies the KKT conditions up to round-off). It starts from the
clamped unconstrained minimizer clamp(-H^{-1} q), and returns it at once where it is strictly
inside the box. Small problems skip the iteration: m == 1 (a single control, common in
control-limited DDP) is answered in closed form, and m <= ENUMERATE_UP_TO by enumerating the
3^m faces of the box (each coordinate at lo, at hi or free) in one batched solve: where H is
positive definite, the minimizer is the minimizer of the face containing it in its relative
interior, so it is the feasible face minimizer of least objective (a dozen tensor ops instead
of an iteration of many small ones, which dominates the backward pass of iLQR on CPU).

The result carries the inverse of the free block, H_ff^{-1} embedded with zeros on the clamped
rows and columns, from which control-limited DDP forms its feedback gains
K = -H_ff^{-1} Q_ux (zero rows for clamped controls) with one batched product.
"""
from dataclasses import dataclass
from functools import lru_cache
from itertools import product
from typing import NamedTuple

import torch

from runtime.status import Status

ENUMERATE_UP_TO = 3     # largest m solved by enumerating its 3^m faces


@dataclass(frozen=True)
class BoxQPOptions:
    """Iteration limits and tolerances of the projected-Newton box QP."""

    max_iters: int = 50
    tol: float = 1e-12            # on ||g_free||_inf relative to max(1, ||q||_inf)
    armijo: float = 0.1           # sufficient-decrease fraction of the line search
    step_decay: float = 0.5       # backtracking factor
    line_search_steps: int = 30   # candidate steps 1, decay, ..., decay^(J-1)


class BoxQPResult(NamedTuple):
    x: torch.Tensor           # (B, m) minimizer
    free: torch.Tensor        # (B, m) bool, coordinates not clamped at the solution
    free_inverse: torch.Tensor  # (B, m, m) H_ff^{-1} on free rows/columns, 0 elsewhere
    status: torch.Tensor      # (B,) int64 Status
    iterations: torch.Tensor  # (B,) int64 Newton iterations used


def _masked_free_block(H: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """H_ff embedded in an (B, m, m) matrix with the identity on clamped coordinates."""
    pair = free.unsqueeze(-1) & free.unsqueeze(-2)
    eye = torch.eye(H.shape[-1], dtype=torch.bool, device=H.device)
    return torch.where(pair, H, eye.to(H.dtype))


def _objective(H: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1/2 x'Hx + q'x for x (B, ..., m), H (B, m, m) and q (B, m) broadcast over the middle."""
    Hx = torch.einsum("bij,b...j->b...i", H, x)
    q = q.view(q.shape[0], *([1] * (x.dim() - 2)), q.shape[-1])
    return ((0.5 * Hx + q) * x).sum(-1)


def box_qp(H: torch.Tensor, q: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
           options: BoxQPOptions = BoxQPOptions()) -> BoxQPResult:
    """Solve the batch of box QPs above. Never raises for a bad element: an element whose free
    block is not positive definite gets NOT_CONVEX, non-finite data NUMERICAL, and its x is the
    last iterate. Differentiable by plain autograd (the iteration is unrolled)."""
    if H.dim() != 3 or H.shape[-1] != H.shape[-2] or q.shape != H.shape[:2]:
        raise ValueError(f"box_qp expects H (B, m, m) and q (B, m); got {tuple(H.shape)} "
                         f"and {tuple(q.shape)}")
    if lo.shape != q.shape or hi.shape != q.shape:
        lo, hi = torch.broadcast_tensors(lo.to(q), hi.to(q), q)[:2]
    B, m = q.shape
    if m == 1:
        return _box_qp_scalar(H, q, lo, hi)
    if m <= ENUMERATE_UP_TO:
        return _box_qp_faces(H, q, lo, hi)
    eye = torch.eye(m, dtype=q.dtype, device=q.device)
    status = torch.full((B,), int(Status.MAX_ITERS), dtype=torch.int64, device=q.device)
    iterations = torch.zeros(B, dtype=torch.int64, device=q.device)

    chol, info = torch.linalg.cholesky_ex(H)
    pd = info == 0
    newton = -torch.cholesky_solve(q.unsqueeze(-1), torch.where(pd[:, None, None], chol, eye))
    newton = newton.squeeze(-1)
    if bool((pd & ((lo < newton) & (newton < hi)).all(-1)).all()):
        # Every unconstrained minimizer is strictly inside its box: it is the answer, all free.
        return BoxQPResult(newton, torch.ones_like(q, dtype=torch.bool), torch.cholesky_inverse(chol),
                           torch.where(torch.isfinite(newton).all(-1), int(Status.SOLVED),
                                       int(Status.NUMERICAL)),
                           torch.zeros(B, dtype=torch.int64, device=q.device))
    x = torch.where(pd[:, None], newton, 0.0).clamp(lo, hi)

    finite = torch.isfinite(H).flatten(1).all(1) & torch.isfinite(q).all(1)
    status = torch.where(finite, status, int(Status.NUMERICAL))
    active = finite.clone()
    scale = q.abs().amax(-1).clamp_min(1.0)
    steps = options.step_decay ** torch.arange(options.line_search_steps, dtype=q.dtype,
                                               device=q.device)
    prev_clamped = torch.zeros_like(q, dtype=torch.bool)
    exact_step = torch.zeros_like(active)      # previous step was a full, unprojected Newton step
    free = torch.ones_like(prev_clamped)
    chol_free = eye.expand_as(H)

    for it in range(options.max_iters + 1):
        g = torch.einsum("bij,bj->bi", H, x) + q
        clamped = ((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0))
        chol_now, info = torch.linalg.cholesky_ex(_masked_free_block(H, ~clamped))
        chol_now = torch.where((info == 0)[:, None, None], chol_now, eye)
        # Every element still iterating records the free set and factor at its iterate.
        free = torch.where(active[:, None], ~clamped, free)
        chol_free = torch.where(active[:, None, None], chol_now, chol_free)

        g_free = torch.where(clamped, 0.0, g)
        kkt = (g_free.abs().amax(-1) <= options.tol * scale) | (
            exact_step & (clamped == prev_clamped).all(-1))
        not_convex = active & (info != 0)
        solved = active & ~not_convex & kkt
        status = torch.where(solved, int(Status.SOLVED), status)
        status = torch.where(not_convex, int(Status.NOT_CONVEX), status)
        active = active & ~(solved | not_convex)
        if it == options.max_iters or not bool(active.any()):
            break

        # Newton direction on the free coordinates (zero on clamped ones).
        d = -torch.cholesky_solve(g_free.unsqueeze(-1), chol_now).squeeze(-1)
        # Projected Armijo search over all candidate steps at once: (B, J, m).
        cand = (x.unsqueeze(1) + steps[None, :, None] * d.unsqueeze(1)).clamp(
            lo.unsqueeze(1), hi.unsqueeze(1))
        decrease = _objective(H, q, x.unsqueeze(1)) - _objective(H, q, cand)
        predicted = (g.unsqueeze(1) * (x.unsqueeze(1) - cand)).sum(-1)
        accept = (decrease >= options.armijo * predicted) & (predicted > 0)
        first = accept.to(torch.int8).argmax(-1)
        x_new = cand.gather(1, first[:, None, None].expand(B, 1, m)).squeeze(1)
        # An element without an acceptable step is stuck: it keeps its iterate (MAX_ITERS).
        active = active & accept.any(-1)
        x = torch.where(active[:, None], x_new, x)
        iterations = iterations + active.to(torch.int64)
        exact_step = active & (first == 0) & (((lo < x) & (x < hi)) | (d == 0)).all(-1)
        prev_clamped = clamped

    pair = free.unsqueeze(-1) & free.unsqueeze(-2)
    free_inverse = torch.where(pair, torch.cholesky_inverse(chol_free), 0.0)
    return BoxQPResult(x, free, free_inverse, status, iterations)


def _box_qp_scalar(H: torch.Tensor, q: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
                   ) -> BoxQPResult:
    """m == 1: x = clamp(-q / h, lo, hi), free where strictly inside the bounds."""
    h = H[:, :, 0]                                                     # (B, 1)
    convex = h > 0
    x = torch.where(convex, -q / h, 0.0).clamp(lo, hi)
    free = (lo < x) & (x < hi)
    free_inverse = torch.where(free & convex, 1.0 / h, 0.0).unsqueeze(-1)
    status = torch.where(convex, int(Status.SOLVED), int(Status.NOT_CONVEX))
    status = torch.where(torch.isfinite(h + q), status, int(Status.NUMERICAL)).squeeze(-1)
    return BoxQPResult(x, free, free_inverse, status, torch.zeros_like(status))


def _box_qp_faces(H: torch.Tensor, q: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
                  ) -> BoxQPResult:
    """Small m: the least-objective feasible minimizer over the 3^m faces of the box.

    Face p in {-1, 0, 1}^m fixes x_i = lo_i (p_i = -1) or hi_i (p_i = 1) and leaves the rest
    free: x_f = -H_ff^{-1} (q_f + H_fc x_c). Faces at an infinite bound, with a free block that
    is not positive definite, or whose minimizer leaves the box are discarded. NOT_CONVEX where
    H itself (the all-free face) is not positive definite (the face argument needs it);
    NUMERICAL on NaN/Inf data. Written for few tensor ops: it runs once per stage of the iLQR
    backward pass, where per-op overhead is the cost on CPU."""
    B, m = q.shape
    at_lo, at_hi, free, pair, middle = _face_patterns(m, q.device)
    eye = torch.eye(m, dtype=q.dtype, device=q.device)
    value = torch.where(at_lo, lo[:, None], torch.where(at_hi, hi[:, None], 0.0))       # (B, F, m)
    finite = torch.isfinite(value)
    value = torch.where(finite, value, 0.0)
    rhs = torch.where(free, -(q[:, None] + value @ H), 0.0)                  # H symmetric
    chol, info = torch.linalg.cholesky_ex(torch.where(pair, H[:, None], eye))          # (B, F, m, m)
    factored = info == 0
    chol = torch.where(factored[..., None, None], chol, eye)
    x = torch.where(free, torch.cholesky_solve(rhs[..., None], chol).squeeze(-1), value)
    feasible = factored & (finite & (lo[:, None] <= x) & (x <= hi[:, None])).all(-1)
    objective = ((0.5 * (x @ H) + q[:, None]) * x).sum(-1)                              # (B, F)
    best = torch.where(feasible, objective, torch.inf).argmin(-1)                       # (B,)
    rows = torch.arange(B, device=q.device)
    free_best = free[best]
    free_inverse = torch.where(pair[best], torch.cholesky_inverse(chol[rows, best]), 0.0)
    status = torch.where(factored[:, middle], int(Status.SOLVED), int(Status.NOT_CONVEX))
    status = torch.where(torch.isfinite(H.sum((1, 2)) + q.sum(1)), status, int(Status.NUMERICAL))
    return BoxQPResult(x[rows, best], free_best, free_inverse, status, torch.zeros_like(status))


@lru_cache(maxsize=None)
def _face_patterns(m: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The 3^m faces of an m-box, each coordinate at lo, at hi or free: the masks at_lo, at_hi,
    free (3^m, m), the free pairs (3^m, m, m), and the index of the all-free face."""
    pattern = torch.tensor(list(product((-1, 0, 1), repeat=m)), device=device)
    free = pattern == 0
    return pattern < 0, pattern > 0, free, free[:, :, None] & free[:, None, :], (3 ** m - 1) // 2
