"""Second-order forms in the stage decision vector z: the values of the polynomial lowering.

A `QuadForm` is a tensor-valued expression whose every element is a polynomial of degree <= 2 in
z (size nz):  value[b, *S] = c[b, *S] + sum_i L[b, i, *S] z_i + sum_ij H[b, i, j, *S] z_i z_j,
with H symmetric in (i, j). Products drop terms of degree > 2, so a QuadForm is the second-order
Taylor jet of an expression around z = 0 (bind z = z_bar + dz to expand around z_bar), and it is
EXACT for expressions of degree <= 2 (what `solve lqr` / `solve qp` plans are classified to be).
Smooth builtins extend jets by the chain rule (`apply_elementwise`).

Coefficients are torch tensors, so data extracted from them (A, B, Q, R, ...) stays
differentiable in every param, input and learnable. Plain tensors (b, *S) are the degree-0
values; every function here accepts both and returns a plain tensor when no z is left.
The z axes sit right after the batch axis so that ops on the value axes S act on trailing dims.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch


@dataclass(frozen=True)
class QuadForm:
    c: torch.Tensor                   # (B, *S)
    L: torch.Tensor | None            # (B, nz, *S)
    H: torch.Tensor | None = None     # (B, nz, nz, *S)

    @property
    def rank(self) -> int:
        return self.c.dim() - 1

    @property
    def degree(self) -> int:
        return 2 if self.H is not None else (1 if self.L is not None else 0)

    @staticmethod
    def variable(offset: int, size: int, nz: int, like: torch.Tensor, scalar: bool = False) -> "QuadForm":
        """z[offset:offset+size] as a value of shape (size,) (or () when `scalar`)."""
        L = torch.zeros(1, nz, size, dtype=like.dtype, device=like.device)
        L[0, offset:offset + size] = torch.eye(size, dtype=like.dtype, device=like.device)
        c = torch.zeros(1, size, dtype=like.dtype, device=like.device)
        return QuadForm(c[:, 0], L[..., 0]) if scalar else QuadForm(c, L)


Value = Union[torch.Tensor, QuadForm]


def degree(v: Value) -> int:
    return v.degree if isinstance(v, QuadForm) else 0


def _simplify(c, L, H) -> Value:
    """A plain tensor when no z is left, else a QuadForm whose L and H span c's value shape.

    Broadcasting can leave a coefficient with fewer value elements than c (a scalar state plus a
    vector constant); expanding it keeps reductions (`sum`) and flattening into rows exact.
    """
    if L is None and H is None:
        return c
    shape = c.shape[1:]
    if L is not None and L.shape[2:] != shape:
        L = L.expand(L.shape[:2] + shape)
    if H is not None and H.shape[3:] != shape:
        H = H.expand(H.shape[:3] + shape)
    return QuadForm(c, L, H)


def map_value_axes(v: Value, fn: Callable[[torch.Tensor], torch.Tensor]) -> Value:
    """Apply an op on the value axes S (trailing dims) to every coefficient."""
    if not isinstance(v, QuadForm):
        return fn(v)
    return QuadForm(fn(v.c), None if v.L is None else fn(v.L), None if v.H is None else fn(v.H))


def rank(v: Value) -> int:
    return v.rank if isinstance(v, QuadForm) else v.dim() - 1


def pad_rank(v: Value, r: int) -> Value:
    """Insert leading singleton value axes so that `v` has value rank `r` (NumPy alignment)."""
    missing = r - rank(v)
    if missing <= 0:
        return v
    def pad(t: torch.Tensor) -> torch.Tensor:
        prefix = t.dim() - rank(v)
        return t.reshape(t.shape[:prefix] + (1,) * missing + t.shape[prefix:])
    return map_value_axes(v, pad)


def _align(a: Value, b: Value) -> tuple[Value, Value]:
    r = max(rank(a), rank(b))
    return pad_rank(a, r), pad_rank(b, r)


def _parts(v: Value):
    return (v.c, v.L, v.H) if isinstance(v, QuadForm) else (v, None, None)


def _lift(t: torch.Tensor, k: int) -> torch.Tensor:
    """A (B, *S) tensor broadcastable against a coefficient with k z-axes."""
    return t.reshape(t.shape[:1] + (1,) * k + t.shape[1:])


def _add_opt(x, y):
    return y if x is None else (x if y is None else x + y)


def add(a: Value, b: Value) -> Value:
    a, b = _align(a, b)
    (ac, aL, aH), (bc, bL, bH) = _parts(a), _parts(b)
    return _simplify(ac + bc, _add_opt(aL, bL), _add_opt(aH, bH))


def neg(a: Value) -> Value:
    return map_value_axes(a, torch.neg)


def sub(a: Value, b: Value) -> Value:
    return add(a, neg(b))


def mul(a: Value, b: Value) -> Value:
    """Elementwise product, truncated after the second-order terms."""
    a, b = _align(a, b)
    (ac, aL, aH), (bc, bL, bH) = _parts(a), _parts(b)
    L = _add_opt(None if aL is None else aL * _lift(bc, 1), None if bL is None else bL * _lift(ac, 1))
    H = _add_opt(None if aH is None else aH * _lift(bc, 2), None if bH is None else bH * _lift(ac, 2))
    if aL is not None and bL is not None:
        outer = aL.unsqueeze(2) * bL.unsqueeze(1)
        H = _add_opt(H, 0.5 * (outer + outer.transpose(1, 2)))
    return _simplify(ac * bc, L, H)


def sum_axes(v: Value, axes: tuple[int, ...]) -> Value:
    """Sum over value axes (given as non-negative indices into S)."""
    r = rank(v)
    dims = tuple(a - r for a in axes)
    return map_value_axes(v, lambda t: t.sum(dim=dims) if dims else t)


def unsqueeze(v: Value, axis: int) -> Value:
    """Insert a value axis at position `axis` of S."""
    r = rank(v)
    return map_value_axes(v, lambda t: t.unsqueeze(t.dim() - r + axis))


def index(v: Value, idx: tuple) -> Value:
    """Index the leading value axes with ints and slices."""
    r = rank(v)
    full = (Ellipsis,) + tuple(idx) + (slice(None),) * (r - len(idx))
    return map_value_axes(v, lambda t: t[full])


def matmul(a: Value, b: Value) -> Value:
    """NumPy `@` for vectors and matrices, written as a broadcast product and a sum."""
    ra, rb = rank(a), rank(b)
    if ra == 1 and rb == 1:
        return sum_axes(mul(a, b), (0,))
    if ra == 2 and rb == 1:                      # (n,k) @ (k,) -> (n,)
        return sum_axes(mul(a, unsqueeze(b, 0)), (1,))
    if ra == 1 and rb == 2:                      # (k,) @ (k,m) -> (m,)
        return sum_axes(mul(unsqueeze(a, 1), b), (0,))
    return sum_axes(mul(unsqueeze(a, 2), unsqueeze(b, 0)), (1,))   # (n,k,1)*(1,k,m) -> (n,m)


def stack(items: list[Value]) -> Value:
    """Stack values of equal shape along a new leading value axis (an array literal)."""
    r = max(rank(v) for v in items)
    items = [pad_rank(v, r) for v in items]
    if all(degree(v) == 0 for v in items):
        batch = max(v.shape[0] for v in items)
        return torch.stack([v.expand((batch,) + v.shape[1:]) for v in items], dim=1)
    nz = next(v.L.shape[1] for v in items if isinstance(v, QuadForm) and v.L is not None)
    parts = [_dense_parts(v, nz) for v in items]
    batch = max(p[0].shape[0] for p in parts)
    stacked = []
    for k in range(3):
        group = [p[k] for p in parts]
        if all(g is None for g in group):
            stacked.append(None)
            continue
        ref = next(g for g in group if g is not None)
        group = [torch.zeros_like(ref[:1]) if g is None else g for g in group]
        extra = ref.dim() - 1 - r
        group = [g.expand((batch,) + g.shape[1:]) for g in group]
        stacked.append(torch.stack(group, dim=1 + extra))
    return _simplify(*stacked)


def _dense_parts(v: Value, nz: int):
    c, L, H = _parts(v)
    if L is None:
        L = torch.zeros((c.shape[0], nz) + c.shape[1:], dtype=c.dtype, device=c.device)
    return c, L, H


def apply_elementwise(v: Value, f: torch.Tensor, df: torch.Tensor, d2f: torch.Tensor) -> Value:
    """Chain rule on a jet: g(c + dv) = g(c) + g'(c) dv + 1/2 g''(c) dv^2 (second order).

    f, df, d2f are g, g', g'' evaluated elementwise at v's constant part c (B, *S).
    """
    if not isinstance(v, QuadForm):
        return f
    L = None if v.L is None else v.L * _lift(df, 1)
    H = None if v.H is None else v.H * _lift(df, 2)
    if v.L is not None:
        H = _add_opt(H, 0.5 * _lift(d2f, 2) * v.L.unsqueeze(2) * v.L.unsqueeze(1))
    return _simplify(f, L, H)


def diag(v: Value) -> Value:
    return map_value_axes(v, torch.diag_embed)


def coefficients(v: Value, nz: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c, L, H) with zero-filled missing parts: c (B,*S), L (B,nz,*S), H (B,nz,nz,*S)."""
    c, L, H = _parts(v)
    if L is None:
        L = torch.zeros((c.shape[0], nz) + c.shape[1:], dtype=c.dtype, device=c.device)
    if H is None:
        H = torch.zeros((c.shape[0], nz, nz) + c.shape[1:], dtype=c.dtype, device=c.device)
    return c, L, H
