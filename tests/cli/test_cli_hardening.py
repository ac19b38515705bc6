"""The command line never prints a traceback: closed pipes, internal errors, one-solver cross checks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import planlang
from planlang import cli as planlang_cli

ROOT = Path(__file__).resolve().parents[2]
DI = "examples/double_integrator.plan"


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
    # 400 initial states: ~1 MB of JSON, far more than a pipe buffers, so `head` closes it mid-write.
    batch = "[" + ",".join(["[1,0]"] * 400) + "]"
    err = tmp_path / "stderr.txt"
    command = f'"{sys.executable}" -m planlang.cli run {DI} --json --set x="{batch}" 2>"{err}" | head -1'
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.stdout == "{\n"
    assert err.read_text() == ""


def test_an_internal_error_is_one_line_not_a_traceback(capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(planlang, "compile", broken)
    code = planlang_cli.main(["run", DI])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err == "planlang: internal error: ZeroDivisionError: a bug\n"


def test_cross_check_of_a_plan_only_one_solver_takes_says_so(capsys):
    code = planlang_cli.main(["check", "--cross", "examples/pendulum.plan"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "only ilqr takes this plan: nothing to compare" in out and "FAIL" not in out
