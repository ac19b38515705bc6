"""Control limits and argument checks shared by the trajectory solvers (iLQR, descent, MPPI/CEM)."""
from typing import Optional

import torch
from torch import Tensor


def control_limits(lower, upper, u: Tensor) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """lower, upper (broadcastable to u (B, T, m); None: unbounded on that side) expanded to
    (B, T, m) in u's dtype and device, +-inf where absent; (None, None) when both are None."""
    if lower is None and upper is None:
        return None, None
    lo = -torch.inf if lower is None else lower
    hi = torch.inf if upper is None else upper
    lo, hi = (torch.as_tensor(b, dtype=u.dtype, device=u.device) for b in (lo, hi))
    try:
        return lo.expand_as(u), hi.expand_as(u)
    except RuntimeError as err:
        raise ValueError(f"control limits must broadcast to u {tuple(u.shape)}, got lower "
                         f"{tuple(lo.shape)} and upper {tuple(hi.shape)}") from err


def check_start_and_controls(x0: Tensor, u: Tensor, solver: str, name: str = "u") -> None:
    """ValueError unless x0 is (B, n) and the controls `name` (B, T, m) with T >= 1, both of one
    floating dtype; `solver` and `name` are the caller's, for the message."""
    if x0.dim() != 2 or u.dim() != 3 or u.shape[0] != x0.shape[0]:
        raise ValueError(f"{solver} expects x0 (B, n) and {name} (B, T, m), got {tuple(x0.shape)} and "
                         f"{tuple(u.shape)}")
    if u.shape[1] < 1:
        raise ValueError(f"{solver}: the horizon T must be >= 1")
    if x0.dtype != u.dtype or not x0.is_floating_point():
        raise ValueError(f"x0 and {name} must share a floating dtype, got {x0.dtype} and {u.dtype}")
