"""The one error type of planlang and its rendering.

Every error carries a span and renders as::

    file.plan:3:18: error: unknown name 'gaol'
        cost final = sum((x - gaol)^2)
                              ^~~~
    hint: did you mean 'goal'?
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable, Sequence

from planlang.source import WHOLE_FILE, Source, Span


@dataclass(frozen=True)
class Diagnostic:
    """One located message: what is wrong, where, and how to fix it."""

    span: Span
    message: str
    hint: str = ""

    def render(self, source: Source) -> str:
        if self.span == WHOLE_FILE:
            return f"{source.filename}: error: {self.message}" + (f"\n    hint: {self.hint}" if self.hint else "")
        head = f"{source.filename}:{self.span.line}:{self.span.col}: error: {self.message}"
        text = source.line(self.span.line)
        if not text:
            return head + (f"\n    hint: {self.hint}" if self.hint else "")
        width = (self.span.end_col - self.span.col) if self.span.end_line == self.span.line else 1
        caret = " " * (self.span.col - 1) + "^" + "~" * max(0, min(width, len(text) - self.span.col + 1) - 1)
        lines = [head, "    " + text.rstrip(), "    " + caret]
        if self.hint:
            lines.append(f"    hint: {self.hint}")
        return "\n".join(lines)


class PlanError(Exception):
    """A user-facing error in a `.plan` file: one or more diagnostics, sorted by position."""

    def __init__(self, diagnostics: Sequence[Diagnostic] | Diagnostic, source: Source | None = None):
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics = tuple(sorted(diagnostics, key=lambda d: (d.span.line, d.span.col)))
        self.source = source
        super().__init__(self.render())

    @property
    def span(self) -> Span:
        return self.diagnostics[0].span

    @property
    def message(self) -> str:
        return self.diagnostics[0].message

    def with_source(self, source: Source) -> "PlanError":
        return self if self.source is not None else PlanError(self.diagnostics, source)

    def render(self) -> str:
        source = self.source or Source("", "<plan>")
        return "\n".join(d.render(source) for d in self.diagnostics)

    __str__ = render


class SolveError(RuntimeError):
    """Raised by `Solution.raise_for_status()` when batch elements did not solve."""


class Collector:
    """Collects diagnostics within a pass so that the user sees several at once."""

    def __init__(self) -> None:
        self.diagnostics: list[Diagnostic] = []

    def add(self, span: Span, message: str, hint: str = "") -> None:
        self.diagnostics.append(Diagnostic(span, message, hint))

    def extend(self, err: PlanError) -> None:
        self.diagnostics.extend(err.diagnostics)

    def raise_if_any(self) -> None:
        if self.diagnostics:
            raise PlanError(self.diagnostics)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A 'did you mean ...?' hint, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""
