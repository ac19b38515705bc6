"""The transitions format: experience from a system, for fitting world models.

A transitions file is a NumPy `.npz` archive of N transitions (x_i, u_i) -> x'_i:

    x        (N, n)   float   the state before the step (the plan's states, stacked in declaration
                              order; `obs` is accepted as another name for it)
    u        (N, m)   float   the control applied (the plan's controls, stacked)
    x_next   (N, n)   float   the state after the step
    reward   (N,)     float   optional: the reward received
    done     (N,)     bool    optional: the episode ended after this transition
    episode  (N,)     int     optional: the episode each transition belongs to
    input_NAME (N, *shape)    optional: the value of plan input or param NAME during the step
                              (conditioning, e.g. a pendulum's mass `input_m`)

Consecutive rows i, i+1 are one trajectory when they share the episode (if given), row i is not
`done`, and x'_i equals x_{i+1}; `windows` cuts k-step sequences from such runs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from runtime.npz import read_npz

INPUT_PREFIX = "input_"
REQUIRED = ("x", "u", "x_next")
OPTIONAL = ("reward", "done", "episode")


class TransitionsError(ValueError):
    """A transitions file or dict that does not follow the format (module docstring)."""


def load_transitions(path: str | Path, dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    """Read and check a transitions `.npz`; floats as `dtype`, `done` bool, `episode` int64."""
    path = Path(path)
    raw = read_npz(path, "transitions", TransitionsError)
    if "obs" in raw and "x" not in raw:
        raw["x"] = raw.pop("obs")
    return check_transitions(raw, str(path), dtype)


def check_transitions(raw: dict, where: str = "transitions", dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    """The format's checks on a dict of arrays/tensors; returns tensors (see `load_transitions`)."""
    missing = [name for name in REQUIRED if name not in raw]
    if missing:
        raise TransitionsError(f"{where}: missing {', '.join(repr(m) for m in missing)} "
                               f"(a transitions file has x (N, n), u (N, m), x_next (N, n); has: {', '.join(sorted(raw)) or 'nothing'})")
    unknown = [k for k in raw if k not in REQUIRED + OPTIONAL and not k.startswith(INPUT_PREFIX)]
    if unknown:
        raise TransitionsError(f"{where}: unknown entries {unknown} (allowed: {', '.join(REQUIRED + OPTIONAL)}, input_NAME)")
    out: dict[str, Tensor] = {}
    for name, value in raw.items():
        array = np.asarray(value.detach().cpu().numpy() if isinstance(value, Tensor) else value)
        if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise TransitionsError(f"{where}: '{name}' holds {array.dtype} values; expected numbers")
        if array.ndim == 0:
            raise TransitionsError(f"{where}: '{name}' is a scalar; expected one row per transition")
        out[name] = torch.from_numpy(np.ascontiguousarray(array))
    N = out["x"].shape[0]
    for name in REQUIRED:
        if out[name].ndim != 2:
            raise TransitionsError(f"{where}: '{name}' has shape {tuple(out[name].shape)}; expected (N, size)")
    if N == 0:
        raise TransitionsError(f"{where}: no transitions (x has 0 rows)")
    for name, t in out.items():
        if t.shape[0] != N:
            raise TransitionsError(f"{where}: '{name}' has {t.shape[0]} rows, 'x' has {N}")
    if out["x_next"].shape[1] != out["x"].shape[1]:
        raise TransitionsError(f"{where}: x_next has {out['x_next'].shape[1]} columns, x has {out['x'].shape[1]}")
    for name in ("reward", "done", "episode"):
        if name in out and out[name].ndim != 1:
            raise TransitionsError(f"{where}: '{name}' has shape {tuple(out[name].shape)}; expected (N,)")
    if "episode" in out and out["episode"].is_floating_point():
        raise TransitionsError(f"{where}: 'episode' must hold integers, got {out['episode'].dtype}")
    for name, t in out.items():
        if name == "done":
            out[name] = t.bool()
        elif name == "episode":
            out[name] = t.long()
        else:
            out[name] = t.to(dtype)
            if not bool(torch.isfinite(out[name]).all()):
                raise TransitionsError(f"{where}: '{name}' has non-finite values")
    return out


def save_transitions(path: str | Path, data: dict[str, Tensor]) -> None:
    """Write a checked transitions dict as `.npz`."""
    checked = check_transitions(data, str(path))
    np.savez(path, **{k: v.cpu().numpy() for k, v in checked.items()})


def continues(data: dict[str, Tensor], atol: float = 1e-9) -> Tensor:
    """(N-1,) bool: row i+1 continues row i's trajectory (module docstring)."""
    x, x_next = data["x"], data["x_next"]
    link = ((x_next[:-1] - x[1:]).abs() <= atol * (1 + x[1:].abs())).all(-1)
    if "done" in data:
        link = link & ~data["done"][:-1]
    if "episode" in data:
        link = link & (data["episode"][:-1] == data["episode"][1:])
    return link


def windows(data: dict[str, Tensor], k: int) -> Tensor:
    """(W, k) row indices of every run of k consecutive transitions of one trajectory."""
    if k < 1:
        raise ValueError(f"windows need k >= 1, got {k}")
    N = data["x"].shape[0]
    if N < k:
        return torch.zeros((0, k), dtype=torch.long)
    link = continues(data).long()
    # a window starting at i needs links i .. i+k-2 all true
    ok = torch.ones(N - k + 1, dtype=torch.bool)
    for j in range(k - 1):
        ok &= link[j:j + N - k + 1].bool()
    starts = ok.nonzero().flatten()
    return starts.unsqueeze(1) + torch.arange(k).unsqueeze(0)


def concat_transitions(first: dict[str, Tensor], second: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rows of `second` after those of `first` (same entries); episode ids of `second` are shifted
    past `first`'s when they would overlap."""
    if set(first) != set(second):
        raise TransitionsError(f"cannot join transitions with entries {sorted(first)} and {sorted(second)}")
    out = {k: torch.cat([first[k], second[k]]) for k in first}
    if "episode" in first:
        shift = max(0, int(first["episode"].max()) + 1 - int(second["episode"].min()))
        out["episode"] = torch.cat([first["episode"], second["episode"] + shift])
    return out
