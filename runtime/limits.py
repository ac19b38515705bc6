"""Control limits shared by the trajectory solvers (iLQR, descent, MPPI/CEM)."""
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
