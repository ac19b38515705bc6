"""Shared test set-up and fixtures.

Planning problems here are small: torch's intra-op threads only add synchronization, and on a
loaded 2-core CI machine a batched Cholesky on 2 threads measured ~1000x slower than on one.

Golden files are compared by default; `PLANLANG_UPDATE_GOLDEN=1 python -m pytest tests/planlang
tests/compiler` rewrites them (review the diff, then commit them with the change that caused it).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.plan"))


@pytest.fixture(params=EXAMPLES, ids=[p.stem for p in EXAMPLES])
def example_path(request) -> Path:
    """Every `examples/*.plan` in turn."""
    return request.param


class Golden:
    """Compare JSON-able data with a golden file, or rewrite the file when updating."""

    def __init__(self, update: bool):
        self.update = update

    def check(self, path: Path, data) -> None:
        text = _format(json.loads(json.dumps(data))) + "\n"
        if self.update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return
        if not path.exists():
            pytest.fail(f"no golden file {path.relative_to(ROOT)}; write it with "
                        "PLANLANG_UPDATE_GOLDEN=1 python -m pytest tests/planlang tests/compiler")
        assert json.loads(text) == json.loads(path.read_text()), \
            f"{path.relative_to(ROOT)} is out of date (PLANLANG_UPDATE_GOLDEN=1 rewrites it; review the diff)"


def _format(value, indent: str = "") -> str:
    """JSON with every object or list that fits in 100 characters on one line (readable diffs)."""
    flat = json.dumps(value)
    if len(flat) + len(indent) <= 100 or not isinstance(value, (dict, list)) or not value:
        return flat
    inner = indent + "  "
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k)}: {_format(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    return "[\n" + ",\n".join(inner + _format(v, inner) for v in value) + "\n" + indent + "]"


@pytest.fixture(scope="session")
def golden() -> Golden:
    return Golden(os.environ.get("PLANLANG_UPDATE_GOLDEN") == "1")
