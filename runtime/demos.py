"""Demonstrations on disk: the `.npz` format, loading with clear errors, saving.

A demonstrations file is a NumPy `.npz` archive (`numpy.savez`) with N demonstrations of a plan
with n states, m controls and horizon T:

    x0          (N, n)        initial states (the plan's states concatenated in declaration order)
    x           (N, T+1, n)   state trajectories, x[:, 0] == x0
    u           (N, T, m)     control trajectories
    input_NAME  (N, *shape)   optional: a per-demo value of the plan's input or param NAME

Any other key is an error (so a typo such as `input_gaol` is caught), as are NaN/Inf values,
non-numeric arrays and shapes that disagree with each other. Whether n, m, T and the inputs match
a given plan is checked by `planlang.training.check_demos`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from runtime.npz import read_npz

REQUIRED = ("x0", "x", "u")
INPUT_PREFIX = "input_"


class DemoError(ValueError):
    """A demonstrations file or dict that does not follow the format (the message says why)."""


def load_demos(path: str | Path, dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    """Read and check a demonstrations file; tensors in `dtype`. Raises `DemoError`."""
    path = Path(path)
    arrays = read_npz(path, "demonstrations", DemoError)
    return check_structure({k: _tensor(path, k, v, dtype) for k, v in arrays.items()}, str(path))


def save_demos(path: str | Path, demos: Mapping[str, Tensor]) -> None:
    """Write demonstrations (checked first) as an uncompressed `.npz`."""
    check_structure(dict(demos), str(path))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **{k: v.detach().cpu().numpy() for k, v in demos.items()})


def _tensor(path: Path, name: str, array: np.ndarray, dtype: torch.dtype) -> Tensor:
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise DemoError(f"{path}: '{name}' has dtype {array.dtype}; expected numbers")
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


def check_structure(demos: dict[str, Tensor], where: str = "demonstrations") -> dict[str, Tensor]:
    """Keys, ranks, agreement of N, n, T, finiteness; returns `demos` unchanged."""
    missing = [k for k in REQUIRED if k not in demos]
    if missing:
        raise DemoError(f"{where}: missing {', '.join(repr(k) for k in missing)} (has: {', '.join(sorted(demos)) or 'nothing'}); "
                        f"a demonstrations file holds x0 (N, n), x (N, T+1, n), u (N, T, m) and optional input_NAME (N, ...)")
    unknown = [k for k in demos if k not in REQUIRED and not k.startswith(INPUT_PREFIX)]
    if unknown:
        raise DemoError(f"{where}: unexpected key(s) {', '.join(repr(k) for k in unknown)}; "
                        f"allowed: x0, x, u and input_NAME for a plan input or param NAME")
    x0, x, u = demos["x0"], demos["x"], demos["u"]
    for name, t, rank, shape in (("x0", x0, 2, "(N, n)"), ("x", x, 3, "(N, T+1, n)"), ("u", u, 3, "(N, T, m)")):
        if t.dim() != rank:
            raise DemoError(f"{where}: '{name}' has shape {tuple(t.shape)}; expected {shape}")
    N, n = x0.shape
    if N == 0:
        raise DemoError(f"{where}: no demonstrations (N = 0)")
    if x.shape[0] != N or u.shape[0] != N or any(v.shape[:1] != (N,) for v in demos.values()):
        counts = {k: (tuple(v.shape)[0] if v.dim() else None) for k, v in demos.items()}
        raise DemoError(f"{where}: arrays disagree on the number of demonstrations N: {counts}")
    if x.shape[2] != n:
        raise DemoError(f"{where}: 'x' has {x.shape[2]} states per step but 'x0' has {n}")
    if u.shape[1] + 1 != x.shape[1]:
        raise DemoError(f"{where}: 'x' has {x.shape[1]} steps and 'u' {u.shape[1]}; expected T+1 and T")
    for name, t in demos.items():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            rows = bad.reshape(N, -1).any(1).nonzero().flatten().tolist()
            raise DemoError(f"{where}: '{name}' has NaN or Inf values (demonstration(s) {rows[:10]}"
                            f"{' ...' if len(rows) > 10 else ''})")
    if not torch.allclose(x[:, 0], x0, atol=1e-6, rtol=1e-6):
        raise DemoError(f"{where}: x[:, 0] differs from x0 (largest gap {(x[:, 0] - x0).abs().max().item():.3g})")
    return demos
