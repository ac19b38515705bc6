"""Typed option schemas: solver options, block settings, `train { }` and `env { }` settings.

An option value in a plan is an expression: a number (or a `const` name or constant arithmetic),
a symbol (`unroll`), a string (`"demos.npz"`), a list (`hidden=[64, 64]`) or a structured value
(`implicit(cg, iters=20)`, `truncated(5)`). Each option states its type; `Schema.parse` turns
the expressions of a declaration into Python values and reports every bad one with its span.
The same types check values given from Python (`compile(options=...)`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from planlang import ast
from planlang.errors import Collector, did_you_mean
from planlang.source import Span

ConstLookup = Callable[[ast.Expr], "float | None"]     # a constant expression's value, or None


class OptionError(Exception):
    """A bad option value: where, what, and a hint."""

    def __init__(self, span: Span | None, message: str, hint: str = ""):
        super().__init__(message)
        self.span, self.message, self.hint = span, message, hint


class OptionType:
    """Parses an option expression (with a span for errors) or a Python value."""

    describe = "a value"

    def parse(self, expr: ast.Expr, const: ConstLookup):
        raise NotImplementedError

    def coerce(self, value):
        """A value given from Python; raises OptionError(None, ...) when it does not fit."""
        raise NotImplementedError


MAX_INT_OPTION = 10**6            # iteration counts, sizes: beyond this a solve is a hang, not a plan


@dataclass(frozen=True)
class Number(OptionType):
    """A finite number; integers are at most MAX_INT_OPTION unless `maximum` says otherwise."""

    integer: bool = False
    minimum: float | None = None
    maximum: float | None = None

    @property
    def upper(self) -> float | None:
        return MAX_INT_OPTION if self.integer and self.maximum is None else self.maximum

    @property
    def describe(self) -> str:
        what = "an integer" if self.integer else "a number"
        if self.minimum is not None and self.upper is not None:
            return f"{what} >= {self.minimum:g} and <= {self.upper:.6g}"
        if self.upper is not None:
            return f"{what} <= {self.upper:.6g}"
        return what + (f" >= {self.minimum:g}" if self.minimum is not None else "")

    def parse(self, expr, const):
        value = const(expr)
        if value is None:
            raise OptionError(expr.span, f"must be {self.describe}")
        return self._checked(value, expr.span)

    def coerce(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(None, f"must be {self.describe}, got {value!r}")
        return self._checked(float(value), None)

    def _checked(self, value: float, span):
        bad = not math.isfinite(value) or (self.integer and value != int(value)) \
            or (self.minimum is not None and value < self.minimum) or (self.upper is not None and value > self.upper)
        if bad:
            raise OptionError(span, f"must be {self.describe}, got {value:g}")
        return int(value) if self.integer else float(value)


@dataclass(frozen=True)
class Symbol(OptionType):
    choices: tuple[str, ...]

    @property
    def describe(self) -> str:
        return "one of: " + ", ".join(self.choices)

    def parse(self, expr, const):
        if isinstance(expr, ast.Name) and expr.id in self.choices:
            return expr.id
        name = expr.id if isinstance(expr, ast.Name) else None
        hint = did_you_mean(name, self.choices) if name else ""
        raise OptionError(expr.span, f"must be {self.describe}", hint)

    def coerce(self, value):
        if value not in self.choices:
            raise OptionError(None, f"must be {self.describe}, got {value!r}")
        return value


@dataclass(frozen=True)
class Text(OptionType):
    describe = "a string"

    def parse(self, expr, const):
        if not isinstance(expr, ast.String):
            raise OptionError(expr.span, "must be a string in double quotes")
        return expr.value

    def coerce(self, value):
        if not isinstance(value, str):
            raise OptionError(None, f"must be a string, got {value!r}")
        return value


@dataclass(frozen=True)
class ListOf(OptionType):
    item: OptionType

    @property
    def describe(self) -> str:
        return f"a list of {self.item.describe.removeprefix('a ').removeprefix('an ')}s"

    def parse(self, expr, const):
        if not isinstance(expr, ast.Array):
            raise OptionError(expr.span, f"must be {self.describe}, e.g. [64, 64]")
        return tuple(self.item.parse(i, const) for i in expr.items)

    def coerce(self, value):
        if not isinstance(value, (list, tuple)):
            raise OptionError(None, f"must be {self.describe}, got {value!r}")
        return tuple(self.item.coerce(v) for v in value)


@dataclass(frozen=True)
class NumberOrList(OptionType):
    """A number, or a list of numbers (e.g. a noise level per control)."""

    minimum: float | None = None

    @property
    def describe(self) -> str:
        return "a number or a list of numbers" + (f" >= {self.minimum:g}" if self.minimum is not None else "")

    def parse(self, expr, const):
        number = Number(minimum=self.minimum)
        return ListOf(number).parse(expr, const) if isinstance(expr, ast.Array) else number.parse(expr, const)

    def coerce(self, value):
        number = Number(minimum=self.minimum)
        return ListOf(number).coerce(value) if isinstance(value, (list, tuple)) else number.coerce(value)


@dataclass(frozen=True)
class Structured:
    """A value like `implicit(cg, iters=20)`: its name and its arguments by name."""

    name: str
    args: dict = field(default_factory=dict)

    def __str__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.args.items())
        return f"{self.name}({inner})" if inner else self.name


@dataclass(frozen=True)
class Variant(OptionType):
    """One of several named forms, each a bare name or a call with typed arguments:
    `Variant({"unroll": Schema(), "truncated": Schema(k=...), ...})`. Positional arguments fill
    the schema's options in order."""

    forms: dict

    @property
    def describe(self) -> str:
        return "one of: " + ", ".join(f"{n}(...)" if s.options else n for n, s in self.forms.items())

    def parse(self, expr, const):
        name = expr.id if isinstance(expr, ast.Name) else expr.func if isinstance(expr, ast.Call) else None
        schema = self.forms.get(name)
        if schema is None:
            raise OptionError(expr.span, f"must be {self.describe}", did_you_mean(name, self.forms) if name else "")
        if isinstance(expr, ast.Name):
            return Structured(name, schema.defaults())
        return Structured(name, schema.parse_call(expr, const))

    def parse_default(self, name: str) -> Structured:
        """The form `name` with its default arguments (an option's default value)."""
        return Structured(name, self.forms[name].defaults())

    def coerce(self, value):
        if isinstance(value, Structured) and value.name in self.forms:
            return Structured(value.name, self.forms[value.name].coerce_all(value.args))
        if isinstance(value, str) and value in self.forms:
            return Structured(value, self.forms[value].defaults())
        raise OptionError(None, f"must be {self.describe}, got {value!r}")


@dataclass(frozen=True)
class Option:
    type: OptionType
    default: object = None
    doc: str = ""


class Schema:
    """Named options with types and defaults; parses keyword (and positional) arguments."""

    def __init__(self, **options: Option):
        self.options = options

    def defaults(self) -> dict:
        return {name: opt.default for name, opt in self.options.items()}

    def parse_call(self, call: ast.Call, const: ConstLookup) -> dict:
        """Arguments of `name(a, b, key=value)`; raises OptionError on the first bad one."""
        collector = Collector()
        values = self.parse(call.keywords, const, collector, positional=call.args, owner=call.func)
        if collector.diagnostics:
            first = collector.diagnostics[0]
            raise OptionError(first.span, first.message, first.hint)
        return values

    def parse(self, keywords, const: ConstLookup, errors: Collector, positional=(), owner: str = "") -> dict:
        """Values for every option (defaults where not given); errors go to `errors`."""
        values = self.defaults()
        names = list(self.options)
        given = [(names[i] if i < len(names) else None, e, e.span) for i, e in enumerate(positional)]
        given += [(k.name, k.value, k.span) for k in keywords]
        seen = set()
        for name, expr, span in given:
            if name is None:
                errors.add(span, f"too many arguments for {owner}", f"{owner} takes: {', '.join(names) or 'none'}")
                continue
            opt = self.options.get(name)
            if opt is None:
                errors.add(span, f"unknown option '{name}' for {owner}",
                           did_you_mean(name, self.options) or f"options of {owner}: {', '.join(names) or 'none'}")
                continue
            if name in seen:
                errors.add(span, f"option '{name}' given twice")
                continue
            seen.add(name)
            try:
                values[name] = opt.type.parse(expr, const)
            except OptionError as err:
                errors.add(err.span or span, f"option '{name}' {err.message}", err.hint)
        return values

    def coerce_all(self, given: dict, owner: str = "") -> dict:
        """Python values (e.g. `compile(options={"iters": 100})`); raises ValueError."""
        out = {}
        for name, value in given.items():
            opt = self.options.get(name)
            if opt is None:
                hint = did_you_mean(name, self.options)
                raise ValueError(f"{owner} has no option '{name}'" + (f"; {hint}" if hint else "")
                                 + f" (options: {', '.join(self.options) or 'none'})")
            try:
                out[name] = opt.type.coerce(value)
            except OptionError as err:
                raise ValueError(f"option '{name}' of {owner} {err.message}") from None
        return out

    def describe(self) -> list[tuple[str, str, object, str]]:
        """(name, type, default, doc) rows for docs and `--help`."""
        return [(n, o.type.describe, o.default, o.doc) for n, o in self.options.items()]
