"""Small batched linear-algebra helpers shared by the LQR, box-LQR, QP and Riccati code.
All act on the last one or two dimensions and broadcast over the leading (batch, time) ones."""
from typing import Optional

import torch
from torch import Tensor


def outer(a: Tensor, b: Tensor) -> Tensor:
    """a b' over the last dimension."""
    return a[..., :, None] * b[..., None, :]


def outer2(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
    """a b' + c d' over the last dimension (one allocation: these are the big tensors)."""
    return outer(a, b).addcmul_(c[..., :, None], d[..., None, :])


def sym_outer(a: Tensor, b: Tensor) -> Tensor:
    """1/2 (a b' + b a') over the last dimension."""
    half_a = 0.5 * a
    return outer2(half_a, b, b, half_a)


def sym(M: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """1/2 (M + M') over the last two dimensions (into `out` when given)."""
    if out is None:
        return 0.5 * (M + M.mT)
    return torch.add(M, M.mT, out=out).mul_(0.5)
