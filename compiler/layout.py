"""Where each state and control sits in the stage vector z = [x; u] (declaration order)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from compiler import quadform as qf
from compiler.context import PlanInfo, VarInfo
from compiler.ir import VarRef
from planlang.ast import VarKind


@dataclass(frozen=True)
class Layout:
    states: tuple[VarInfo, ...]
    controls: tuple[VarInfo, ...]

    @staticmethod
    def of(info: PlanInfo) -> "Layout":
        return Layout(tuple(info.of_kind(VarKind.STATE)), tuple(info.of_kind(VarKind.CONTROL)))

    @property
    def n(self) -> int:
        return sum(v.size for v in self.states)

    @property
    def m(self) -> int:
        return sum(v.size for v in self.controls)

    def offsets(self) -> dict[VarRef, slice]:
        """Slices of z (states first, then controls)."""
        return dict(self._slices)

    @cached_property
    def _slices(self) -> tuple[tuple[VarRef, slice], ...]:
        out, start = [], 0
        for var in self.states + self.controls:
            out.append((var.ref, slice(start, start + var.size)))
            start += var.size
        return tuple(out)

    @cached_property
    def _scalars(self) -> frozenset[VarRef]:
        return frozenset(v.ref for v in self.states + self.controls if v.shape == ())

    def symbolic(self, like: torch.Tensor) -> dict[VarRef, qf.QuadForm]:
        """Every state and control as an exact linear form in z."""
        nz = self.n + self.m
        return {ref: qf.QuadForm.variable(s.start, s.stop - s.start, nz, like, scalar=ref in self._scalars)
                for ref, s in self._slices}

    def jets(self, x: torch.Tensor, u: torch.Tensor | None) -> dict[VarRef, qf.QuadForm]:
        """States (and controls) as second-order jets around the numeric point (x, u): value + dz."""
        base = self.numeric(x, u)
        symbolic = self.symbolic(x)
        return {ref: qf.add(symbolic[ref], value) for ref, value in base.items()}

    def numeric(self, x: torch.Tensor, u: torch.Tensor | None) -> dict[VarRef, torch.Tensor]:
        """Split stacked x (B, n) and u (B, m) into named values (B, *shape)."""
        z = x if u is None else torch.cat([x, u], dim=-1)
        out = {}
        for ref, s in self._slices:
            if s.start >= z.shape[-1]:
                continue
            out[ref] = z[..., s.start] if ref in self._scalars else z[..., s]
        return out
