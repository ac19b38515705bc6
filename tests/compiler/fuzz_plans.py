"""A seeded mutation fuzzer over the example plans: every mutant must end in a located
`PlanError` or a `Solution` with statuses -- never another exception, never a hang.

Each mutant is one example plan with one or two token-level changes: a number replaced by an
extreme value (1e308, 1e309, 2**31, 20 digits, ...) or by a non-finite expression (1/0,
log(0), ...), a token deleted, duplicated or replaced by another token of the language, or a
line deleted or duplicated. A mutant is parsed, compiled (float64) and, when its solver is one
of `solvers` and its horizon at most `solve_horizon`, solved once (iterations capped at `iters`)
with zeros for inputs that have no default. A crash is any exception but `PlanError`, or a
`solved` element with a non-finite x, u or cost; a hang is a mutant over `seconds` of CPU time.

    PYTHONPATH=$PWD python tests/compiler/fuzz_plans.py --mutants 5000 --seed 1 --solvers lqr qp ilqr
"""
from __future__ import annotations

import argparse
import collections
import random
import re
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

import planlang
from planlang.errors import PlanError

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.plan"))
_TOKEN = re.compile(r'"""[\s\S]*?"""|#[^\n]*|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+|[A-Za-z_]\w*|\S')
EXTREME_NUMBERS = ("0", "-1", "1e308", "1e309", "-1e308", "99999999999999999999", "2147483648",
                   "1e-320", "1000", "3", "0.5", "2.5", "1e30", "-0")
NONFINITE = ("1/0", "log(0)", "0/0", "exp(1000)", "-1/0", "sqrt(-1)")
ODD_EXPRESSIONS = ("sum(eye(1e308))", "sum(zeros(99999999999))", "x[1e309]", "u^1e309", "eye(3)",
                   "zeros(2, 2)", "[1e308, 1e308]", "[[1, 2], [3, 4]]")
TOKENS = ("+", "-", "*", "/", "^", "@", "(", ")", "[", "]", ",", "=", ":", "'", "state", "control",
          "param", "input", "learn", "const", "horizon", "dynamics", "cost", "constraint", "solve",
          "lqr", "qp", "ilqr", "stage", "final", "positive", "psd", "in", "by", "rk4", "dot", "sum",
          "exp", "log", "sqrt", "norm", "quad", "x", "u", "0", "1", "<=", ">=", "==")


@dataclass
class Outcome:
    kind: str                    # "error", "solved", "status", "compiled", "crash", "hang"
    detail: str = ""


@dataclass
class Report:
    counts: collections.Counter = field(default_factory=collections.Counter)
    failures: list[tuple[str, Outcome]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class _Timeout(Exception):
    pass


def mutate(text: str, rng: random.Random) -> str:
    """`text` with one or two random token- or line-level changes."""
    for _ in range(rng.choice((1, 1, 2))):
        text = _mutate_once(text, rng)
    return text


def _mutate_once(text: str, rng: random.Random) -> str:
    tokens = [m for m in _TOKEN.finditer(text) if not m.group().startswith(("#", '"""'))]
    kind = rng.choice(("number", "number", "number", "nonfinite", "odd", "delete", "duplicate",
                       "replace", "replace", "line"))
    if kind == "line":
        lines = text.split("\n")
        i = rng.randrange(len(lines))
        lines[i:i + 1] = [] if rng.random() < 0.5 else [lines[i], lines[i]]
        return "\n".join(lines)
    numbers = [m for m in tokens if m.group()[0].isdigit() or m.group()[0] == "."]
    pool = numbers if kind in ("number", "nonfinite", "odd") and numbers else tokens
    target = rng.choice(pool)
    new = {"number": lambda: rng.choice(EXTREME_NUMBERS), "nonfinite": lambda: rng.choice(NONFINITE),
           "odd": lambda: rng.choice(ODD_EXPRESSIONS), "delete": lambda: "",
           "duplicate": lambda: target.group() + " " + target.group(),
           "replace": lambda: rng.choice(TOKENS)}[kind]()
    return text[:target.start()] + new + text[target.end():]


@dataclass(frozen=True)
class Limits:
    solvers: tuple[str, ...] = ("lqr", "qp")   # iLQR solves of the examples take seconds each
    solve_horizon: int = 200
    iters: int = 5
    seconds: float = 10.0


def run_one(text: str, limits: Limits) -> Outcome:
    """Parse, compile and (limits permitting) solve one plan text, within `limits.seconds`."""
    previous = signal.signal(signal.SIGPROF, _raise_timeout)
    signal.setitimer(signal.ITIMER_PROF, limits.seconds)     # CPU time: a loaded machine is no hang
    try:
        return _run(text, limits)
    except _Timeout:
        return Outcome("hang", f"over {limits.seconds:g} s")
    except PlanError as err:
        return Outcome("error", err.message)
    except Exception as err:            # the point of the fuzzer: anything else is a crash
        return Outcome("crash", "".join(traceback.format_exception(err)[-3:]))
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def _raise_timeout(signum, frame):
    raise _Timeout


def _run(text: str, limits: Limits) -> Outcome:
    plan = planlang.loads(text, "mutant.plan")
    module = planlang.compile(plan, dtype=torch.float64)
    if module.horizon > limits.solve_horizon or module.solver not in limits.solvers:
        return Outcome("compiled")
    if "iters" in module.info.options:
        module.info.options["iters"] = min(module.info.options["iters"], limits.iters)
    values = {name: torch.zeros(var.shape, dtype=torch.float64)
              for name, var in module.inputs().items() if module.default(name) is None}
    with torch.no_grad():
        sol = module(**values)
    if bool(sol.ok.all()):
        for name in ("x", "u", "cost"):
            if not bool(torch.isfinite(getattr(sol, name)).all()):
                return Outcome("crash", f"'solved' with a non-finite {name}")
        return Outcome("solved")
    return Outcome("status", ",".join(sorted(set(sol.status_names()))))


def fuzz(mutants: int, seed: int, limits: Limits = Limits(), budget: float | None = None) -> Report:
    """Run `mutants` mutants (fewer if `budget` seconds run out); a Report of outcomes and failures."""
    rng = random.Random(seed)
    texts = [p.read_text() for p in EXAMPLES]
    report = Report()
    start = time.perf_counter()
    for _ in range(mutants):
        if budget is not None and time.perf_counter() - start > budget:
            break
        text = mutate(rng.choice(texts), rng)
        outcome = run_one(text, limits)
        report.counts[outcome.kind] += 1
        if outcome.kind in ("crash", "hang"):
            report.failures.append((text, outcome))
    report.seconds = time.perf_counter() - start
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutants", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--solvers", nargs="+", default=list(Limits.solvers), help="solve mutants of these")
    parser.add_argument("--solve-horizon", type=int, default=Limits.solve_horizon)
    parser.add_argument("--iters", type=int, default=Limits.iters, help="cap on iterative solvers' iterations")
    parser.add_argument("--seconds", type=float, default=Limits.seconds, help="per-mutant CPU-time limit (a hang)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    limits = Limits(tuple(args.solvers), args.solve_horizon, args.iters, args.seconds)
    report = fuzz(args.mutants, args.seed, limits)
    for text, outcome in report.failures:
        print(f"---- {outcome.kind}: {outcome.detail}\n{text}")
    print(f"{report.total} mutants in {report.seconds:.1f} s: {dict(report.counts)}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
