"""Frozen AST of a `.plan` file. Every node carries its `span` as first field."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Union

from planlang.source import Span


class BinOp(Enum):
    ADD = "+"
    SUB = "-"
    MUL = "*"
    DIV = "/"
    MATMUL = "@"
    POW = "^"


class UnOp(Enum):
    NEG = "-"
    POS = "+"


class VarKind(Enum):
    """Kinds of declared tensors; `STATE`/`CONTROL` are decision variables of the plan."""

    STATE = "state"
    CONTROL = "control"
    PARAM = "param"
    INPUT = "input"
    LEARN = "learn"


class When(Enum):
    STAGE = "stage"
    FINAL = "final"


class Cmp(Enum):
    LE = "<="
    GE = ">="
    EQ = "=="


# ---------------------------------------------------------------- expressions

@dataclass(frozen=True)
class Number:
    span: Span
    value: float
    is_int: bool = False


@dataclass(frozen=True)
class Name:
    span: Span
    id: str


@dataclass(frozen=True)
class Unary:
    span: Span
    op: UnOp
    operand: "Expr"


@dataclass(frozen=True)
class Binary:
    span: Span
    op: BinOp
    left: "Expr"
    right: "Expr"


@dataclass(frozen=True)
class String:
    """A string literal (file names, environment ids, import paths); `value` without quotes."""

    span: Span
    value: str


@dataclass(frozen=True)
class Attribute:
    """`base.name`, e.g. `other.x` in a pairwise energy."""

    span: Span
    base: "Expr"
    name: str


@dataclass(frozen=True)
class Keyword:
    span: Span
    name: str
    value: "Expr"


@dataclass(frozen=True)
class Call:
    """`func(args)`, or with `method` the method call `func.method(args)` (e.g. `dyn.reward(x, u)`
    on a block `dyn`)."""

    span: Span
    func: str
    args: tuple["Expr", ...]
    keywords: tuple[Keyword, ...] = ()
    method: str | None = None


@dataclass(frozen=True)
class Array:
    span: Span
    items: tuple["Expr", ...]


@dataclass(frozen=True)
class Slice:
    span: Span
    start: "Expr | None"
    stop: "Expr | None"


@dataclass(frozen=True)
class Index:
    span: Span
    base: "Expr"
    indices: tuple["Expr | Slice", ...]


Expr = Union[Number, String, Name, Unary, Binary, Call, Array, Index, Attribute]


def walk(expr: "Expr | Slice | Keyword"):
    """Yield `expr` and all its sub-expressions, depth first, in source order."""
    yield expr
    children: tuple = ()
    if isinstance(expr, Unary):
        children = (expr.operand,)
    elif isinstance(expr, Binary):
        children = (expr.left, expr.right)
    elif isinstance(expr, Call):
        children = expr.args + expr.keywords
    elif isinstance(expr, Array):
        children = expr.items
    elif isinstance(expr, Index):
        children = (expr.base,) + expr.indices
    elif isinstance(expr, Slice):
        children = tuple(e for e in (expr.start, expr.stop) if e is not None)
    elif isinstance(expr, Keyword):
        children = (expr.value,)
    elif isinstance(expr, Attribute):
        children = (expr.base,)
    for child in children:
        yield from walk(child)


def names_in(expr: "Expr | None") -> list[Name]:
    """All `Name` references in an expression (function names of calls are not names)."""
    return [] if expr is None else [e for e in walk(expr) if isinstance(e, Name)]


def to_text(expr: "Expr | Slice") -> str:
    """Print an expression back as `.plan` source (fully parenthesized where needed)."""
    if isinstance(expr, Number):
        return repr(int(expr.value)) if expr.is_int else repr(expr.value)
    if isinstance(expr, Name):
        return expr.id
    if isinstance(expr, String):
        return f'"{expr.value}"'
    if isinstance(expr, Attribute):
        return f"{_atom_text(expr.base)}.{expr.name}"
    if isinstance(expr, Unary):
        return f"{expr.op.value}{_atom_text(expr.operand)}"
    if isinstance(expr, Binary):
        return f"{_atom_text(expr.left)} {expr.op.value} {_atom_text(expr.right)}"
    if isinstance(expr, Call):
        args = [to_text(a) for a in expr.args] + [f"{k.name}={to_text(k.value)}" for k in expr.keywords]
        callee = expr.func if expr.method is None else f"{expr.func}.{expr.method}"
        return f"{callee}({', '.join(args)})"
    if isinstance(expr, Array):
        return "[" + ", ".join(to_text(i) for i in expr.items) + "]"
    if isinstance(expr, Index):
        return f"{_atom_text(expr.base)}[" + ", ".join(to_text(i) for i in expr.indices) + "]"
    if isinstance(expr, Slice):
        return f"{to_text(expr.start) if expr.start else ''}:{to_text(expr.stop) if expr.stop else ''}"
    raise TypeError(f"not an expression: {expr!r}")


def _atom_text(expr: "Expr") -> str:
    text = to_text(expr)
    return f"({text})" if isinstance(expr, (Binary, Unary)) else text


# --------------------------------------------------------------- declarations

@dataclass(frozen=True)
class Size:
    """One dimension of a declared shape: an integer, or a name (a `const`, or `T` for the
    horizon) plus an integer offset (`T+1`)."""

    span: Span
    value: int | str
    offset: int = 0

    @property
    def text(self) -> str:
        return str(self.value) + (f"+{self.offset}" if self.offset else "")


@dataclass(frozen=True)
class VarDecl:
    span: Span
    kind: VarKind
    name: str
    shape: tuple[Size, ...]
    init: "Expr | None" = None
    bounds: "tuple[Expr, Expr] | None" = None
    positive: bool = False
    psd: bool = False


@dataclass(frozen=True)
class ConstDecl:
    span: Span
    name: str
    value: Expr


@dataclass(frozen=True)
class HorizonDecl:
    span: Span
    value: Expr


@dataclass(frozen=True)
class DynamicsDecl:
    """`x' = expr` (discrete) or `dot(x) = expr by rk4(dt)` (continuous, integrated by `method`)."""

    span: Span
    state: str
    state_span: Span
    expr: Expr
    method: "Call | None" = None


@dataclass(frozen=True)
class CostDecl:
    span: Span
    when: When
    name: "str | None"
    expr: Expr


@dataclass(frozen=True)
class ConstraintDecl:
    """`lhs cmp rhs`, held at every stage; a box `e in [lo, hi]` becomes two of these."""

    span: Span
    lhs: Expr
    cmp: Cmp
    rhs: Expr


@dataclass(frozen=True)
class SolveDecl:
    span: Span
    solver: str
    options: tuple[Keyword, ...]
    positional: tuple[Expr, ...] = ()


@dataclass(frozen=True)
class LetDecl:
    """`let name = expr`: a local definition, evaluated at the current stage where it is used."""

    span: Span
    name: str
    expr: Expr


@dataclass(frozen=True)
class GuessDecl:
    """`guess u = expr`: the initial controls of iterative solvers (constant or per stage)."""

    span: Span
    target: str
    target_span: Span
    expr: Expr


@dataclass(frozen=True)
class BlockDecl:
    """`block name = kind(option=value, ...)`: a learnable neural block, callable in expressions."""

    span: Span
    name: str
    spec: Call


@dataclass(frozen=True)
class Setting:
    """One line `name value` or `name = value` inside a `{ ... }` block."""

    span: Span
    name: str
    value: "Expr | None"


@dataclass(frozen=True)
class BracedDecl:
    """`keyword ["label"] { setting* }`, e.g. `train { ... }` or `env "Pendulum-v1" { ... }`."""

    span: Span
    keyword: str
    label: "String | None"
    settings: tuple[Setting, ...]


@dataclass(frozen=True)
class ContinualDecl:
    """`continual block by method(...) + method(...)`."""

    span: Span
    block: str
    block_span: Span
    methods: tuple[Call, ...]


@dataclass(frozen=True)
class GridDecl:
    """`grid H x W`: a plan over the cells of an H x W map (the grid family)."""

    span: Span
    height: Size
    width: Size


@dataclass(frozen=True)
class ActionsDecl:
    """`actions 4 | 8`: the moves of a grid plan."""

    span: Span
    count: Size


@dataclass(frozen=True)
class AgentsDecl:
    """`agents N`: N agents share the plan's states, controls, dynamics and costs (the joint family)."""

    span: Span
    count: Size


@dataclass(frozen=True)
class EnergyDecl:
    """`energy agent|pair [stage|final] = expr`: a unary or pairwise term of a joint plan's energy."""

    span: Span
    role: str
    role_span: Span
    when: When
    expr: Expr


Decl = Union[VarDecl, ConstDecl, HorizonDecl, DynamicsDecl, CostDecl, ConstraintDecl, SolveDecl,
             LetDecl, GuessDecl, BlockDecl, BracedDecl, ContinualDecl, GridDecl, ActionsDecl, AgentsDecl,
             EnergyDecl]


@dataclass(frozen=True)
class PlanAST:
    span: Span
    name: "str | None"
    doc: "str | None"
    decls: tuple[Decl, ...]
