"""`Solution`: what a compiled plan returns, batch-first, with a status per batch element."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from planlang.errors import SolveError
from runtime.status import Status, status_names


@dataclass
class Solution:
    """x (B, T+1, n), u (B, T, m), cost (B,), status (B,) int64 (`runtime.status.Status`).

    `iterations` and `residual` (B,) are filled by iterative solvers; `layout` maps each state and
    control name to its slice of x or u, so `sol["p"]` is the trajectory of state `p`.
    """

    x: torch.Tensor
    u: torch.Tensor
    cost: torch.Tensor
    status: torch.Tensor
    solver: str
    iterations: torch.Tensor | None = None
    residual: torch.Tensor | None = None
    violation: torch.Tensor | None = None       # (B,) max constraint violation (iLQR with constraints)
    layout: dict[str, tuple[str, slice, tuple[int, ...]]] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> torch.Tensor:
        """(B,) bool: which batch elements solved."""
        return self.status == Status.SOLVED

    def __getitem__(self, name: str) -> torch.Tensor:
        """The trajectory of one declared state (B, T+1, *shape) or control (B, T, *shape)."""
        if name not in self.layout:
            raise KeyError(f"no state or control named '{name}' (have: {', '.join(self.layout)})")
        which, part, shape = self.layout[name]
        value = (self.x if which == "x" else self.u)[..., part]
        return value.reshape(value.shape[:2] + shape)

    def status_names(self) -> list[str]:
        return status_names(self.status)

    def raise_for_status(self) -> "Solution":
        """Raise `SolveError` naming every batch element that did not solve; else return self."""
        bad = (~self.ok).nonzero().flatten().tolist()
        if bad:
            names = self.status_names()
            detail = ", ".join(f"element {i}: {names[i]}" for i in bad[:10])
            more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
            raise SolveError(f"{self.solver}: {len(bad)} of {len(names)} batch elements did not solve: {detail}{more}")
        return self
