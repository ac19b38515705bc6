"""Source text and positions: every AST node and graph node carries a `Span`."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A region of a source file; lines and columns count from 1, `end_col` is exclusive."""

    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.line}:{self.col}"

    def to(self, other: "Span") -> "Span":
        """The smallest span covering `self` and `other`."""
        start = min((self.line, self.col), (other.line, other.col))
        end = max((self.end_line, self.end_col), (other.end_line, other.end_col))
        return Span(start[0], start[1], end[0], end[1])


@dataclass(frozen=True)
class Source:
    """A `.plan` text and the file name it came from (`<string>` for `loads`)."""

    text: str
    filename: str = "<string>"

    def line(self, number: int) -> str:
        lines = self.text.splitlines()
        return lines[number - 1] if 0 < number <= len(lines) else ""


WHOLE_FILE = Span(0, 0, 0, 0)
"""The span of a message about the file as a whole (a missing `horizon` line): no line, no caret."""
