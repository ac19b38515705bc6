"""Training a joint plan (`agents N`, `solve joint`) on interaction data with the classification loss.

Data: an interactions `.npz` (`planlang data interactions`, format in `runtime.interactions`):
x0 (M, N, n) binds the plan's states (declaration order), goals (M, N, 2) its `input goal`, and the
ground truth u (M, N, T, m) is rolled out from x0 through the plan's dynamics and put among each
agent's candidates at a random index. The loss is the ground truth's marginal negative
log-likelihood, -sum_i log p(s_i = gt_i), averaged over scenes; its metric `gt_first` is the
fraction of scenes whose joint plan is exactly the ground truth. Gradients reach every learnable in the energies (unrolled inference); the
candidates are constants.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from runtime.demos import DemoError
from runtime.interactions import load

GOAL_INPUT = "goal"


def load_interactions(module, data: str | Path | Mapping[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """The batch dict {x0, goal, u} of an interactions file (or dict with x0, goals, u), checked
    against the plan: agents N, states n, controls m, horizon T, and an `input goal[2]`."""
    if isinstance(data, (str, Path)):
        loaded = load(data)
        raw, where = {"x0": loaded.x0, "goals": loaded.goals, "u": loaded.u}, str(data)
    else:
        raw, where = dict(data), "interactions"
    for key in ("x0", "goals", "u"):
        if key not in raw:
            raise DemoError(f"{where}: missing '{key}' (an interactions file has x0, goals, x, u)")
    x0, goals, u = (torch.as_tensor(raw[k], dtype=dtype) for k in ("x0", "goals", "u"))
    N, n, m, T = module.info.agents.count, module.layout.n, module.layout.m, module.horizon
    if x0.dim() != 3 or tuple(x0.shape[1:]) != (N, n):
        raise DemoError(f"{where}: x0 has shape {tuple(x0.shape)}; plan '{module.plan_name}' has {N} agents "
                        f"of {n} states: (M, {N}, {n})")
    if tuple(u.shape) != (x0.shape[0], N, T, m):
        raise DemoError(f"{where}: u has shape {tuple(u.shape)}; plan '{module.plan_name}' needs "
                        f"(M, N, T, m) = ({x0.shape[0]}, {N}, {T}, {m}) (generate with --horizon {T})")
    goal = module.info.variables.get(GOAL_INPUT)
    if goal is None or goal.ref.kind.value != "input" or goal.shape != (goals.shape[-1],):
        raise DemoError(f"{where}: the goals bind `input {GOAL_INPUT}[{goals.shape[-1]}]`, which plan "
                        f"'{module.plan_name}' does not declare")
    return {"x0": x0, GOAL_INPUT: goals, "u": u}


def scene_values(module, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`module(**values)` of a batch: x0 (B, N, n) split into the states, and the goals."""
    values, start = {GOAL_INPUT: batch[GOAL_INPUT]}, 0
    x0 = batch["x0"]
    for var in module.layout.states:
        values[var.ref.name] = x0[:, :, start:start + var.size].reshape(x0.shape[:2] + var.shape)
        start += var.size
    return values


def classification_loss(module, batch: Mapping[str, Tensor]):
    """(mean over scenes of -sum_i log p(s_i = gt_i), {"gt_first": fraction planned exactly as the
    ground truth}) with the ground truth inserted among the candidates (module docstring)."""
    sol = module.backend.solve(module, scene_values(module, batch), reference_u=batch["u"])
    nll = -sol.log_marginals.gather(2, sol.gt_index[..., None]).squeeze(2).sum(1)
    first = (sol.plan == sol.gt_index).all(1).to(nll.dtype)
    return nll.mean(), {"gt_first": first.mean().detach()}
