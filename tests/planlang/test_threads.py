"""Parsing is thread-safe: the cached parser keeps no per-parse state that threads share."""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import planlang
from planlang import PlanError

FIXTURES = Path(__file__).with_name("fixtures") / "errors"
SYNTAX = ["unclosed_bracket", "mismatched_bracket", "unmatched_closing_bracket", "unknown_keyword",
          "missing_equals", "unexpected_token", "unexpected_end_of_line"]
GOOD = (Path(__file__).resolve().parents[2] / "examples" / "double_integrator.plan").read_text()


def _outcome(text: str) -> str:
    try:
        planlang.loads(text, "t.plan")
    except PlanError as err:
        return err.render()
    return "ok"


def test_parsing_from_eight_threads_gives_the_sequential_messages():
    texts = [(FIXTURES / f"{name}.plan").read_text() for name in SYNTAX] + [GOOD]
    expected = [_outcome(t) for t in texts]
    assert expected[-1] == "ok" and all(e != "ok" for e in expected[:-1])
    jobs = [i % len(texts) for i in range(240)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)              # switch threads as often as possible: races show up
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            got = list(pool.map(lambda i: _outcome(texts[i]), jobs))
    finally:
        sys.setswitchinterval(interval)
    wrong = [(i, g) for i, g in zip(jobs, got) if g != expected[i]]
    assert not wrong, f"{len(wrong)} of {len(jobs)} parses wrong, e.g. {SYNTAX[wrong[0][0]] if wrong[0][0] < len(SYNTAX) else 'good'}: {wrong[0][1]}"
