"""Default values of declared tensors (compile-time constants, float64, no batch dim)."""
from __future__ import annotations

import torch

from compiler.context import VarInfo
from planlang.ast import VarKind


def default_value(var: VarInfo) -> torch.Tensor | None:
    """The declared default; learnables without one start at 1 (`positive`), I (`psd`) or 0.

    Returns None for inputs and states without a default: the caller must pass them.
    """
    if var.default is not None:
        return var.default.attr.broadcast_to(var.shape).clone()
    if var.ref.kind is VarKind.LEARN:
        if var.psd:
            return torch.eye(var.shape[0], dtype=torch.float64)
        return (torch.ones if var.positive else torch.zeros)(var.shape, dtype=torch.float64)
    return None
