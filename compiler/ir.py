"""Typed expression IR: what the shape pass builds from AST expressions.

An `Expr` is a tiny fx-like node `(op, args, shape, span, attr)`: `shape` is static (a tuple of
ints, `()` for scalars) and `attr` holds what the op needs (a constant's value, the variable a
`VAR` refers to, an index tuple, a builtin `Function`).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto
from typing import Any, Iterator

from planlang.ast import VarKind
from planlang.source import Span

Shape = tuple[int, ...]


class Op(Enum):
    CONST = auto()      # attr: torch.Tensor (float64, no batch dim)
    VAR = auto()        # attr: VarRef
    ADD = auto()
    SUB = auto()
    MUL = auto()
    DIV = auto()
    POW = auto()        # args: (base, exponent); exponent is a CONST when the plan is polynomial
    MATMUL = auto()
    NEG = auto()
    INDEX = auto()      # attr: tuple of int | slice (one per leading axis)
    STACK = auto()      # an array literal: args are the items, stacked on a new first axis
    CALL = auto()       # attr: compiler.functions.Function


class Stage(Enum):
    """The kind of the values a stage expression reads at its stage t: `VarRef(STAGE, "t")` is the
    stage index itself, `VarRef(STAGE, name)` row t of the time-indexed input or param `name`
    (written `name[t]`; its leading dimension is the horizon T, or T+1). Lowering binds them per
    stage (`compiler.lower.stages`)."""

    STAGE = "stage"


STAGE = Stage.STAGE
STAGE_INDEX = "t"


@dataclass(frozen=True)
class VarRef:
    """A declared tensor; decision variables (states, controls) are read at the current stage."""

    kind: VarKind | Stage
    name: str

    def __post_init__(self):
        object.__setattr__(self, "_hash", hash((self.kind.value, self.name)))   # env lookups are hot

    def __hash__(self) -> int:
        return self._hash

    @property
    def is_decision(self) -> bool:
        return self.kind in (VarKind.STATE, VarKind.CONTROL)

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.name}"


@dataclass(frozen=True, eq=False)
class Expr:
    op: Op
    args: tuple["Expr", ...]
    shape: Shape
    span: Span
    attr: Any = None

    def walk(self) -> Iterator["Expr"]:
        """This node and its sub-expressions, children first (post-order)."""
        for arg in self.args:
            yield from arg.walk()
        yield self

    def variables(self) -> set[VarRef]:
        return {e.attr for e in self.walk() if e.op is Op.VAR}

    def first_stage_value(self) -> "Expr | None":
        """The first sub-expression that reads a value of the stage (`t`, `time`, `ref[t]`)."""
        return next((e for e in self.walk() if e.op is Op.VAR and e.attr.kind is STAGE), None)

    def as_text(self) -> str:
        """A compact s-expression with shapes, for `planlang graph --after shapes`."""
        if self.op is Op.CONST:
            value = self.attr
            body = f"{value.item():g}" if value.numel() == 1 else f"tensor{list(value.shape)}"
            return body
        if self.op is Op.VAR:
            if self.attr.kind is STAGE:
                return "t" if self.attr.name == STAGE_INDEX else f"{self.attr.name}[t]"
            return str(self.attr.name)
        head = self.attr.name if self.op is Op.CALL else self.op.name.lower()
        if self.op is Op.INDEX:
            head = "index" + _index_text(self.attr)
        return f"({head} {' '.join(a.as_text() for a in self.args)}){list(self.shape)}"


def _index_text(index: tuple) -> str:
    parts = [f"{s.start}:{s.stop}" if isinstance(s, slice) else str(s) for s in index]
    return "[" + ",".join(parts) + "]"
