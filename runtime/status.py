"""Per-batch-element solver status codes shared by every solver."""
from enum import IntEnum

import torch


class Status(IntEnum):
    """Outcome of one batch element's solve (stored in an int64 tensor)."""

    SOLVED = 0
    MAX_ITERS = 1      # stopped at the iteration limit before the tolerance
    INFEASIBLE = 2     # constraints admit no point (primal infeasibility certificate)
    NOT_CONVEX = 3     # a stage Hessian (e.g. Q_uu in the Riccati recursion) is not positive definite
    NUMERICAL = 4      # NaN/Inf appeared in the data or the iterates
    CONSTRAINT_VIOLATION = 5   # converged, but a nonlinear constraint stays violated beyond tolerance


def status_names(status: torch.Tensor) -> list[str]:
    """Human-readable names of a (B,) status tensor."""
    return [Status(int(s)).name.lower() for s in status.reshape(-1).tolist()]
