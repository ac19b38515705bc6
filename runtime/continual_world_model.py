"""A deterministic world model whose network is given: the architecture methods of continual
learning (`vcl`: Bayesian linear layers, `progressive`: a column per task) on a world model.

`NetworkWorldModel(state, others, network, ...)` is a one-member, deterministic
`runtime.world_model.WorldModel` (features, normalization, residual target, angle wrapping and
`fit_normalization` unchanged) whose map from normalized features to the normalized target is
`network` instead of the world model's own layers:

    z = (φ(s, c) - μ_in) / σ_in            (1, B, F)     F = n + len(angles) + r
    μ = network(z)                          (1, B, n)
    s' = s + μ_out + σ_out ⊙ μ   (residual)  or  μ_out + σ_out ⊙ μ

`network` must map (..., F) -> (..., n) over any leading dimensions, as `bayes_mlp` and
`ProgressiveMLP` (runtime.continual) do. An ensemble (M independent members with learned
variances) is not built this way: each member would need its own Bayesian network or columns.
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from runtime.world_model import WorldModel


def feature_size(state: int, others: int, angles: Sequence[int]) -> int:
    """F, the width of a world model's features φ(s, c): n + (number of angle entries) + r."""
    return state + len(set(angles)) + others


class NetworkWorldModel(WorldModel):
    """See the module docstring. state: n; others: r; network: (..., F) -> (..., n)."""

    def __init__(self, state: int, others: int, network: nn.Module, residual: bool = True,
                 act: str = "silu", angles: Sequence[int] = ()):
        super().__init__(state, others, hidden=(), members=1, probabilistic=False, residual=residual, act=act,
                         angles=angles)
        del self.head                       # the world model's own linear map: `network` replaces it
        self.network = network

    def _heads(self, h: Tensor, with_logvar: bool = True) -> tuple[Tensor, Optional[Tensor]]:
        """The network on normalized features h (1, B, F): the normalized mean (1, B, n), no variance."""
        return self.network(h), None
