"""Value Iteration Networks (Tamar et al., 2016), batched and differentiable end to end.

Inputs: occupancy O (B, H, W) (1 = obstacle), goal and start (B, 2) int64 (row, col). The network
(parameter names as in the widely used PyTorch port, so its state_dicts load unchanged):

    x   = [O, 10 * onehot(goal)]                          (B, 2, H, W)  the paper's goal "reward prior"
    r   = r(h(x))      h: conv 3x3, 2 -> hidden (bias); r: conv 1x1, hidden -> 1 (no bias; no
                        nonlinearity in between, as in the paper's code)
    q_r = conv3x3(r, q.weight)                            (B, C, H, W)  C = q_channels (paper: 10)
    T(v) = M_c [ q_r,c + gamma conv3x3(v, w~)_c ]         (B, 1, H, W)  one value-iteration step
    v_K = T^K(0),   q = q_r + gamma conv3x3(v_K, w~)
    logits(s) = fc(q[:, :, s])                            (B, A)  attention at the agent's cell s

M_c is the max over channels (temperature tau = 0, the paper) or the soft maximum
tau * logsumexp_c(. / tau). With discount gamma = 1 (the paper) w~ = w; with gamma < 1 each output
channel of the transition kernel is scaled into the unit l1 ball, w~_c = w_c / max(1, ||w_c||_1).
Then |T(v) - T(v')|_inf <= gamma |v - v'|_inf (M_c is 1-Lipschitz in the sup norm and the
convolution has l1 row norms <= 1), so T is a gamma-contraction with a unique fixed point v*.

Backward options:

* `unroll` (the paper's): autograd through the K steps; memory O(K).
* `implicit`: needs gamma < 1. The forward iterates v <- T(v) without a graph (at most K times,
  stopping once |T(v) - v|_inf <= tol), takes v ~ v* and differentiates the fixed-point equation
  v* = T(v*, theta) (implicit function theorem, theta = (q_r, w~)):

      dv*/dtheta = (I - J)^{-1} dT/dtheta,     J = dT/dv at v*,

  so for an incoming gradient g = dl/dv*:  u = (I - J^T)^{-1} g = sum_j (J^T)^j g (Neumann series,
  one VJP of T per term; |J^T|_1 <= gamma), then dl/dtheta = (dT/dtheta)^T u. The series stops
  once a term is <= tol relative to u, and at the latest after n terms with gamma^n / (1 - gamma)
  <= tol (a bound on the relative error of u). Memory is that of one step of T, independent of K.

The implicit backward is `runtime.implicit.implicit_fixed_point` (the Neumann series there).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runtime.grid import GridSolution, check_actions, check_maps, greedy_path, one_hot_cells
from runtime.implicit import Backward, implicit_fixed_point

BACKWARDS = ("unroll", "implicit")
GOAL_PRIOR = 10.0   # the paper's goal channel value


class VINOutput(NamedTuple):
    values: Tensor   # (B, H, W) v_K
    logits: Tensor   # (B, A)    action logits at the start cell
    q: Tensor        # (B, C, H, W) the last q map (feed `VIN.action_logits` for every cell's logits)


class VIN(nn.Module):
    """The VIN of the module docstring. forward(occupancy, goal, start) -> VINOutput.

    actions: 4 or 8 (`runtime.grid.MOVES` order); k: value-iteration steps (paper: 10 / 20 / 36 for
    8x8 / 16x16 / 28x28); hidden: channels of h (150); q_channels: C (10); backward: "unroll" or
    "implicit"; discount gamma in (0, 1]; temperature tau >= 0 (0: hard max); tol: implicit mode's
    forward residual and Neumann truncation.
    """

    def __init__(self, actions: int = 8, k: int = 10, hidden: int = 150, q_channels: int = 10,
                 backward: str = "unroll", discount: float = 1.0, temperature: float = 0.0,
                 tol: float = 1e-6):
        super().__init__()
        check_actions(actions)
        if backward not in BACKWARDS:
            raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}")
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"discount must lie in (0, 1], got {discount}")
        if backward == "implicit" and discount >= 1.0:
            raise ValueError("backward='implicit' needs discount < 1 (a contraction, so the value-iteration "
                             "fixed point exists and is unique)")
        if k < 1 or temperature < 0 or tol <= 0:
            raise ValueError(f"need k >= 1, temperature >= 0, tol > 0; got {k}, {temperature}, {tol}")
        self.actions, self.k, self.hidden, self.q_channels = actions, k, hidden, q_channels
        self.backward, self.discount, self.temperature, self.tol = backward, discount, temperature, tol
        self.h = nn.Conv2d(2, hidden, 3, padding=1, bias=True)
        self.r = nn.Conv2d(hidden, 1, 1, bias=False)
        self.q = nn.Conv2d(1, q_channels, 3, padding=1, bias=False)
        self.w = nn.Parameter(torch.zeros(q_channels, 1, 3, 3))
        self.fc = nn.Linear(q_channels, actions, bias=False)

    def config(self) -> dict:
        """JSON-able constructor arguments: `VIN(**model.config())` rebuilds the architecture."""
        return dict(actions=self.actions, k=self.k, hidden=self.hidden, q_channels=self.q_channels,
                    backward=self.backward, discount=self.discount, temperature=self.temperature,
                    tol=self.tol)

    def transition_kernel(self) -> Tensor:
        """w~ (C, 1, 3, 3): w itself for gamma = 1, else each channel scaled into the unit l1 ball."""
        if self.discount >= 1.0:
            return self.w
        return self.w / self.w.abs().sum((1, 2, 3), keepdim=True).clamp(min=1.0)

    def bellman(self, v: Tensor, q_r: Tensor, kernel: Tensor) -> Tensor:
        """T(v) (B, 1, H, W) for v (B, 1, H, W), q_r (B, C, H, W), kernel (C, 1, 3, 3)."""
        q = q_r + self.discount * F.conv2d(v, kernel, padding=1)
        if self.temperature == 0.0:
            return q.amax(1, keepdim=True)
        return self.temperature * torch.logsumexp(q / self.temperature, 1, keepdim=True)

    def reward(self, occupancy: Tensor, goal: Tensor) -> Tensor:
        """r (B, 1, H, W) from the 2-channel map."""
        H, W = occupancy.shape[-2:]
        x = torch.stack([occupancy, GOAL_PRIOR * one_hot_cells(goal, H, W, occupancy.dtype)], 1)
        return self.r(self.h(x))

    def value_iteration(self, q_r: Tensor, kernel: Tensor) -> Tensor:
        """v_K (B, 1, H, W): K steps of T from 0 (unroll), or the fixed point with the implicit backward."""
        v = q_r.new_zeros(q_r.shape[0], 1, *q_r.shape[2:])
        if self.backward == "unroll":
            for _ in range(self.k):
                v = self.bellman(v, q_r, kernel)
            return v
        with torch.no_grad():
            for _ in range(self.k):
                v_next = self.bellman(v, q_r, kernel)
                converged = (v_next - v).abs().max() <= self.tol
                v = v_next
                if converged:
                    break
        terms = math.ceil(math.log(self.tol * (1.0 - self.discount)) / math.log(self.discount))
        return implicit_fixed_point(v, lambda z: self.bellman(z, q_r, kernel),
                                    Backward.implicit("neumann", iters=max(terms, 1), tol=self.tol))

    def q_map(self, occupancy: Tensor, goal: Tensor) -> tuple[Tensor, Tensor]:
        """values v_K (B, H, W) and the final q (B, C, H, W) for maps (B, H, W) and goals (B, 2).

        The maps are cast to the weights' dtype (a float32 model takes float64 or 0/1 integer maps).
        """
        check_maps(occupancy, goal)
        r = self.reward(occupancy.to(self.w.dtype), goal)
        q_r = F.conv2d(r, self.q.weight, padding=1)
        kernel = self.transition_kernel()
        v = self.value_iteration(q_r, kernel)
        return v[:, 0], q_r + self.discount * F.conv2d(v, kernel, padding=1)

    def logits_at(self, q: Tensor, map_index: Tensor, cells: Tensor) -> Tensor:
        """Attention and the linear head: fc(q[map_index, :, row, col]) (N, A) for cells (N, 2)."""
        return self.fc(q[map_index, :, cells[:, 0], cells[:, 1]])

    def action_logits(self, q: Tensor) -> Tensor:
        """The logits at every cell, (B, C, H, W) -> (B, A, H, W)."""
        return torch.einsum("bchw,ac->bahw", q, self.fc.weight)

    def forward(self, occupancy: Tensor, goal: Tensor, start: Tensor) -> VINOutput:
        check_maps(occupancy, start)
        values, q = self.q_map(occupancy, goal)
        return VINOutput(values, self.logits_at(q, torch.arange(len(start), device=start.device), start), q)

    def plan(self, occupancy: Tensor, goal: Tensor, start: Tensor,
             max_steps: Union[int, Tensor, None] = None) -> GridSolution:
        """The module contract: values (B, H, W), logits (B, A) at start, and the greedy rollout of
        argmax_a logits(s) from start (`runtime.grid.greedy_path`; default max_steps H * W)."""
        values, logits, q = self(occupancy, goal, start)
        path, reached = greedy_path(self.action_logits(q.detach()), occupancy, start, goal, max_steps)
        return GridSolution(values, logits, path, reached)


def load_vin(state_dict: dict, config: Optional[dict] = None) -> VIN:
    """A VIN built from `config` (as returned by `VIN.config`, default: the paper's) with the weights."""
    model = VIN(**(config or {}))
    model.load_state_dict(state_dict)
    return model
