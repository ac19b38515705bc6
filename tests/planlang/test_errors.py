"""Errors: one negative fixture per error kind, with the exact line and column of each diagnostic.

Each `fixtures/errors/*.plan` states what it expects in its leading comments:

    # stage: loads | compile      (which call raises: planlang.loads or planlang.compile)
    # error L:C: message gist     (one per diagnostic, in the order reported)
    # hint: hint gist             (optional, for the error above)
    # covers: text                (optional: exactly the source text the error's span covers)

The test asserts the number of diagnostics, each position, that the message and hint contain the
gists, and that the rendered text is `file.plan:L:C: error: ...`, the source line and a caret.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import planlang
from planlang import PlanError
from planlang.errors import Collector, Diagnostic, did_you_mean
from planlang.source import WHOLE_FILE, Source, Span

FIXTURES = Path(__file__).with_name("fixtures") / "errors"
ERROR_FILES = sorted(FIXTURES.glob("*.plan"))

# Every error kind the language promises a located message for; each has one fixture.
REQUIRED = {
    "unclosed_bracket", "missing_equals", "unknown_keyword", "unexpected_token", "unknown_name",
    "duplicate_name", "const_cycle", "shape_broadcast", "shape_matmul", "shape_cost_not_scalar",
    "shape_dynamics", "shape_default", "index_out_of_range", "state_without_dynamics",
    "dynamics_for_non_state", "control_in_final_cost", "unknown_solver", "unknown_option",
    "bad_option_value", "lqr_nonlinear_dynamics", "lqr_constraint", "nonconvex_cost",
    "missing_horizon_and_solve", "psd_not_square", "positive_init", "several_errors",
}


@dataclass
class Expected:
    line: int
    col: int
    message: str
    hints: list[str] = field(default_factory=list)
    covers: str | None = None


def expectations(text: str) -> tuple[str, list[Expected]]:
    stage, errors = None, []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if m := re.match(r"# stage: (loads|compile)$", line):
            stage = m.group(1)
        elif m := re.match(r"# error (\d+):(\d+): (.*)$", line):
            errors.append(Expected(int(m.group(1)), int(m.group(2)), m.group(3)))
        elif m := re.match(r"# hint: (.*)$", line):
            errors[-1].hints.append(m.group(1))
        elif m := re.match(r"# covers: (.*)$", line):
            errors[-1].covers = m.group(1)
    assert stage and errors, "a fixture names its stage and at least one error"
    return stage, errors


def raise_error(path: Path, stage: str) -> PlanError:
    text = path.read_text()
    if stage == "loads":
        with pytest.raises(PlanError) as info:
            planlang.loads(text, path.name)
        return info.value
    plan = planlang.loads(text, path.name)          # must load: the passes find this error
    with pytest.raises(PlanError) as info:
        planlang.compile(plan)
    return info.value


def test_every_error_kind_has_a_fixture():
    assert REQUIRED <= {p.stem for p in ERROR_FILES}


@pytest.mark.parametrize("path", ERROR_FILES, ids=[p.stem for p in ERROR_FILES])
def test_error_fixture(path: Path):
    stage, expected = expectations(path.read_text())
    err = raise_error(path, stage)
    got = [(d.span.line, d.span.col, d.message, d.hint) for d in err.diagnostics]
    assert [(g[0], g[1]) for g in got] == [(e.line, e.col) for e in expected], got
    lines = path.read_text().splitlines()
    for d, exp in zip(err.diagnostics, expected):
        assert exp.message in d.message
        for gist in exp.hints:
            assert gist in d.hint
        if exp.covers is not None:
            assert d.span.line == d.span.end_line
            assert lines[d.span.line - 1][d.span.col - 1: d.span.end_col - 1] == exp.covers
    # reported sorted by position
    assert [(d.span.line, d.span.col) for d in err.diagnostics] == \
        sorted((d.span.line, d.span.col) for d in err.diagnostics)
    assert err.source is not None and err.source.filename == path.name
    check_rendering(err, path.read_text().splitlines())


def check_rendering(err: PlanError, lines: list[str]) -> None:
    """`file.plan:L:C: error: msg`, then the source line and a caret under the column, then the hint."""
    rendered = err.render()
    assert str(err) == rendered
    chunks = rendered.split("\n")
    i = 0
    for d in err.diagnostics:
        if d.span == WHOLE_FILE:            # about the file as a whole: no position, line or caret
            assert chunks[i] == f"{err.source.filename}: error: {d.message}"
            i += 1
            if d.hint:
                assert chunks[i] == f"    hint: {d.hint}"
                i += 1
            continue
        assert chunks[i] == f"{err.source.filename}:{d.span.line}:{d.span.col}: error: {d.message}"
        i += 1
        source_line = lines[d.span.line - 1]
        assert chunks[i] == "    " + source_line.rstrip()
        caret = chunks[i + 1]
        assert caret.startswith("    " + " " * (d.span.col - 1) + "^")
        assert set(caret.strip()) <= {"^", "~"} and caret.strip().count("^") == 1
        if d.span.end_line == d.span.line:
            width = max(1, min(d.span.end_col, len(source_line) + 1) - d.span.col)
            assert len(caret.strip()) == width
        i += 2
        if d.hint:
            assert chunks[i] == f"    hint: {d.hint}"
            i += 1
    assert i == len(chunks)


# ------------------------------------------------------------ rendering

def test_rendered_text_exactly():
    path = FIXTURES / "unknown_name.plan"
    with pytest.raises(PlanError) as info:
        planlang.compile(planlang.loads(path.read_text(), "f.plan"))
    assert info.value.render() == (
        "f.plan:14:27: error: unknown name 'gaol'\n"
        "    cost stage = sum(q * (x - gaol)^2) + sum(u^2)\n"
        "                              ^~~~\n"
        "    hint: did you mean 'goal'?")


def test_rendered_syntax_error_exactly():
    with pytest.raises(PlanError) as info:
        planlang.loads("plan p\nconst dt 0.1\n", "f.plan")
    assert str(info.value) == (
        "f.plan:2:10: error: missing '=' before '0.1'\n"
        "    const dt 0.1\n"
        "             ^~~\n"
        "    hint: a declaration reads `name = expression`")


def test_several_errors_render_in_order():
    path = FIXTURES / "several_errors.plan"
    with pytest.raises(PlanError) as info:
        planlang.compile(planlang.loads(path.read_text(), "several.plan"))
    heads = [line for line in info.value.render().split("\n") if line.startswith("several.plan")]
    assert heads == ["several.plan: error: the file has no `horizon` line",
                     "several.plan:13:1: error: state 'v' has no dynamics",
                     "several.plan:16:15: error: unknown name 'B'",
                     "several.plan:17:18: error: unknown name 'q'",
                     "several.plan:17:27: error: unknown name 'gaol'"]
    assert info.value.span == WHOLE_FILE and info.value.message == "the file has no `horizon` line"


def test_multiline_span_gets_a_single_caret():
    source = Source("cost stage = sum(\n  x)\n", "m.plan")
    text = Diagnostic(Span(1, 14, 2, 4), "bad").render(source)
    assert text.split("\n")[1:] == ["    cost stage = sum(", "                 ^"]


def test_diagnostic_past_the_end_of_the_text_has_no_caret():
    text = Diagnostic(Span(9, 1, 9, 2), "late", "a hint").render(Source("horizon 3\n", "e.plan"))
    assert text == "e.plan:9:1: error: late\n    hint: a hint"


def test_error_without_source_renders_with_a_placeholder_name():
    err = PlanError(Diagnostic(Span(1, 1, 1, 2), "oops"))
    assert err.render().startswith("<plan>:1:1: error: oops")


def test_collector_sorts_and_raises_all():
    errors = Collector()
    errors.add(Span(3, 5, 3, 6), "third")
    errors.add(Span(1, 9, 1, 10), "second")
    errors.add(Span(1, 2, 1, 3), "first")
    with pytest.raises(PlanError) as info:
        errors.raise_if_any()
    assert [d.message for d in info.value.diagnostics] == ["first", "second", "third"]
    Collector().raise_if_any()          # nothing collected: no error


def test_with_source_keeps_an_existing_source():
    err = PlanError(Diagnostic(Span(1, 1, 1, 2), "x"), Source("a", "a.plan"))
    assert err.with_source(Source("b", "b.plan")).source.filename == "a.plan"
    bare = PlanError(Diagnostic(Span(1, 1, 1, 2), "x"))
    assert bare.with_source(Source("b", "b.plan")).source.filename == "b.plan"


@pytest.mark.parametrize("word, candidates, hint", [
    ("gaol", ["goal", "q"], "did you mean 'goal'?"),
    ("lqrr", ["lqr", "qp", "ilqr"], "did you mean 'lqr'?"),
    ("zzz", ["goal"], ""),
])
def test_did_you_mean(word, candidates, hint):
    assert did_you_mean(word, candidates) == hint


def test_unknown_keyword_without_a_close_match_lists_keywords():
    with pytest.raises(PlanError) as info:
        planlang.loads("plan p\nwibble x\n", "k.plan")
    (d,) = info.value.diagnostics
    assert (d.span.line, d.span.col, d.message) == (2, 1, "unknown keyword 'wibble'")
    assert "state" in d.hint and "solve" in d.hint


def test_unclosed_bracket_swallowing_later_lines_points_at_the_opener():
    text = "plan p\ncost stage = sum(x\nhorizon 3\nsolve lqr\n"
    with pytest.raises(PlanError) as info:
        planlang.loads(text, "u.plan")
    (d,) = info.value.diagnostics
    assert (d.span.line, d.span.col, d.message) == (2, 17, "unclosed bracket '('")

