"""Running the `planlang` command line in subprocesses, several at a time.

Each `python -m planlang.cli ...` pays ~2-4 s of interpreter and torch import on a loaded
machine, so a test module hands all its invocations to `CLI.prefetch` up front: they run on a
small thread pool, and each test then waits only for its own. `cli(*args)` runs (or reuses) one
invocation; results are keyed by their argument tuple.
"""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240          # per invocation; generous: the machine is shared and loaded
WORKERS = 4              # mostly waiting on imports: more than the 2 cores pays off


@dataclass
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:      # what an assertion message shows
        return (f"planlang {' '.join(self.args)} -> exit {self.returncode}\n"
                f"--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}")


def _run(args: tuple[str, ...]) -> Result:
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run([sys.executable, "-m", "planlang.cli", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        return Result(args, -1, str(err.stdout or ""), f"timed out after {TIMEOUT_S} s\n{err.stderr or ''}")
    return Result(args, proc.returncode, proc.stdout, proc.stderr)


class CLI:
    def __init__(self, workers: int = WORKERS):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="planlang-cli")
        self._runs: dict[tuple[str, ...], Future] = {}

    def prefetch(self, *invocations) -> None:
        """Start every invocation (a sequence of arguments) now, in the background."""
        for args in invocations:
            key = tuple(str(a) for a in args)
            if key not in self._runs:
                self._runs[key] = self._pool.submit(_run, key)

    def __call__(self, *args) -> Result:
        """`planlang ARGS...` from the repository root: exit code, stdout, stderr."""
        self.prefetch(args)
        return self._runs[tuple(str(a) for a in args)].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="session")
def cli():
    runner = CLI()
    yield runner
    runner.close()
