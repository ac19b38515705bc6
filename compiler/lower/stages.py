"""Values of the stage: the stage index t and the rows of time-indexed data, bound per stage.

Stage expressions (dynamics, `cost stage`, constraints) may read `VarRef(STAGE, "t")`, the stage
index, and `VarRef(STAGE, name)`, row t of the time-indexed input, param or learnable `name`
(declared `[T, ...]` or `[T+1, ...]`, written `name[t]`). The bound value of `name` is the whole
table (b, T or T+1, ...); lowering reads its rows in one of two ways:

- **flattened** (`StageValues.flat`): every stage of every batch element at once, as rows
  b*T + t of every value (B-batched values repeated T times). The LQR/QP data extraction, the
  exact jets of iLQR and `trajectory_cost` evaluate all stages in one call this way, and get
  time-varying data (B, T, ...) back;
- **by a clock** (`StageValues.at_clock`): rollouts call the dynamics and costs one stage at a
  time with x (B, n) only, so the callable solvers (ilqr, descent, mppi, cem) see a
  time-invariant problem with one more state, the clock tau (tau_0 = 0, tau' = tau + 1, stacked
  after the plan's states), and each call gathers row tau of every table. The clock is exact in
  floating point (integers), has zero derivatives everywhere and is dropped from the solution.

A row placed at x_{t+1} (a constraint on states only) reads row t+1: `shift=1` when flattened;
the clock of x_{t+1} is already t+1.
"""
from __future__ import annotations

import torch

from compiler.context import PlanInfo
from compiler.evaluate import Env
from compiler.ir import STAGE, STAGE_INDEX, Op, VarRef


def _is_stage(ref) -> bool:
    """A stage value's key (env keys are VarRefs and blocks' `compiler.blocks.BlockRef`s)."""
    return isinstance(ref, VarRef) and ref.kind is STAGE


class StageValues:
    """The stage values a plan's expressions read, and how to bind them."""

    def __init__(self, info: PlanInfo, exprs):
        self.info, self.horizon = info, info.horizon
        found = {e.attr for expr in exprs for e in expr.walk() if e.op is Op.VAR and e.attr.kind is STAGE}
        self.refs: tuple[VarRef, ...] = tuple(sorted(found, key=str))

    def __bool__(self) -> bool:
        return bool(self.refs)

    def rows(self, ref: VarRef) -> int:
        """The number of rows of a stage value's table: T+1 for t, the declared T or T+1 else."""
        return self.horizon + 1 if ref.name == STAGE_INDEX else self.info.variables[ref.name].shape[0]

    def table(self, ref: VarRef, env: Env, like: torch.Tensor) -> torch.Tensor:
        """The whole table of a stage value: (b, rows, *row shape); t is (1, T+1)."""
        if ref.name == STAGE_INDEX:
            return torch.arange(self.horizon + 1, dtype=like.dtype, device=like.device).unsqueeze(0)
        return env[self.info.variables[ref.name].ref]

    def flat(self, env: Env, like: torch.Tensor, batch: int, shift: int = 0) -> Env:
        """`env` over all T stages of a batch of `batch`: rows b*T + t (b*T + t + shift for the stage
        values), B-batched values repeated T times, the other values (batch 1) as they are. Data
        with fewer than T + shift rows is left out (the shapes pass only lets rows placed at x_{t+1}
        read data with T+1 rows)."""
        T = self.horizon
        out = {ref: v.repeat_interleave(T, dim=0) if torch.is_tensor(v) and v.shape[0] == batch > 1 else v
               for ref, v in env.items() if not _is_stage(ref)}
        for ref in self.refs:
            rows = self.table(ref, env, like)[:, shift:shift + T]
            if rows.shape[1] < T:          # too short for rows placed at x_{t+1}, which never read it
                continue
            out[ref] = rows.expand((batch,) + rows.shape[1:]).reshape((batch * T,) + rows.shape[2:])
        return out

    def with_tables(self, env: Env, like: torch.Tensor) -> Env:
        """`env` with the tables of the stage values bound under their STAGE refs (for `at_clock`)."""
        if not self.refs or self.refs[0] in env:
            return env
        return {**env, **{ref: self.table(ref, env, like) for ref in self.refs}}

    def at_clock(self, env: Env, clock: torch.Tensor) -> dict[VarRef, torch.Tensor]:
        """Row clock[r] of every table in `env` (from `with_tables`) for each row r: (R, ...) values.
        A table has batch 1 or R (the rows of the call)."""
        out = {}
        for ref in self.refs:
            table = env[ref]
            index = clock.round().long().clamp(0, table.shape[1] - 1)
            if table.shape[0] == 1:
                out[ref] = table[0][index]
            else:
                out[ref] = table[torch.arange(table.shape[0], device=table.device), index]
        return out

