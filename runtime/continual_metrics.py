"""Continual-learning metrics (Lopez-Paz & Ranzato, 2017) from the accuracy matrix.

R (T, T): R[i, j] is the score on task j after training through task i (row i is measured
after experience i, on every task, including those not seen yet). b (T,): the score of the
randomly initialized model on each task.

    ACC = 1/T       sum_j       R[T-1, j]                 average final score
    BWT = 1/(T-1)   sum_{j<T-1} R[T-1, j] - R[j, j]       backward transfer (< 0: forgetting)
    FWT = 1/(T-1)   sum_{j>0}   R[j-1, j] - b[j]          forward transfer

For an error (lower is better) the same formulas hold, with the signs read the other way
(BWT > 0 means the error on old tasks grew).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor


def _check_square(R: Tensor) -> None:
    if R.dim() != 2 or R.shape[0] != R.shape[1] or R.shape[0] < 1:
        raise ValueError(f"R must be a non-empty square (T, T) matrix, got shape {tuple(R.shape)}")


def average_accuracy(R: Tensor) -> float:
    """ACC: mean of the last row of R."""
    _check_square(R)
    return R[-1].mean().item()


def backward_transfer(R: Tensor) -> float:
    """BWT: mean over j < T-1 of R[T-1, j] - R[j, j] (0 for a single task)."""
    _check_square(R)
    if R.shape[0] == 1:
        return 0.0
    return (R[-1, :-1] - R.diagonal()[:-1]).mean().item()


def forward_transfer(R: Tensor, baseline: Tensor) -> float:
    """FWT: mean over j > 0 of R[j-1, j] - b[j] (0 for a single task)."""
    _check_square(R)
    if baseline.shape != (R.shape[0],):
        raise ValueError(f"baseline must have shape ({R.shape[0]},), got {tuple(baseline.shape)}")
    if R.shape[0] == 1:
        return 0.0
    return (R.diagonal(offset=1) - baseline[1:]).mean().item()


@dataclass(frozen=True)
class ContinualResult:
    """An accuracy matrix with its baseline and names; metrics, table, heat map and JSON."""

    R: Tensor                       # (T, T)
    baseline: Optional[Tensor] = None   # (T,) score of the random init; FWT needs it
    metric: str = "accuracy"
    higher_is_better: bool = True
    task_names: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_square(self.R)
        if self.task_names and len(self.task_names) != self.R.shape[0]:
            raise ValueError(f"{len(self.task_names)} task names for {self.R.shape[0]} tasks")

    @property
    def names(self) -> Tuple[str, ...]:
        return self.task_names or tuple(f"task {j}" for j in range(self.R.shape[0]))

    @property
    def acc(self) -> float:
        return average_accuracy(self.R)

    @property
    def bwt(self) -> float:
        return backward_transfer(self.R)

    @property
    def fwt(self) -> Optional[float]:
        return None if self.baseline is None else forward_transfer(self.R, self.baseline)

    def summary(self) -> dict:
        return {"ACC": self.acc, "BWT": self.bwt, "FWT": self.fwt}

    def table(self, digits: int = 3) -> str:
        """R as a text table (rows: after training on; columns: evaluated on) and the metrics."""
        width = max(len(n) for n in self.names) + 2
        head = "after \\ on".ljust(width) + "".join(n.rjust(width) for n in self.names)
        lines = [head]
        for name, row in zip(self.names, self.R.tolist()):
            lines.append(name.ljust(width) + "".join(f"{v:.{digits}f}".rjust(width) for v in row))
        if self.baseline is not None:
            lines.append("random init".ljust(width) + "".join(
                f"{v:.{digits}f}".rjust(width) for v in self.baseline.tolist()))
        fwt = "n/a" if self.fwt is None else f"{self.fwt:+.{digits}f}"
        lines.append(f"{self.metric}: ACC {self.acc:.{digits}f}  BWT {self.bwt:+.{digits}f}  "
                     f"FWT {fwt}")
        return "\n".join(lines)

    def heatmap(self, path: Union[str, Path, None] = None, title: str = ""):
        """Plot R as a heat map (matplotlib Figure); saved to `path` when given."""
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        T = self.R.shape[0]
        fig, ax = plt.subplots(figsize=(1.2 * T + 2, 1.0 * T + 1.5))
        cmap = "viridis" if self.higher_is_better else "viridis_r"
        image = ax.imshow(self.R.numpy(), cmap=cmap)
        for i in range(T):
            for j in range(T):
                ax.text(j, i, f"{self.R[i, j].item():.2f}", ha="center", va="center",
                        color="white", fontsize=8)
        ax.set_xticks(range(T), self.names, rotation=45, ha="right")
        ax.set_yticks(range(T), self.names)
        ax.set_xlabel("evaluated on")
        ax.set_ylabel("after training on")
        ax.set_title(title or f"{self.metric}: ACC {self.acc:.3f}, BWT {self.bwt:+.3f}")
        fig.colorbar(image, ax=ax, label=self.metric)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig

    def to_json(self) -> str:
        return json.dumps({
            "R": self.R.tolist(),
            "baseline": None if self.baseline is None else self.baseline.tolist(),
            "metric": self.metric, "higher_is_better": self.higher_is_better,
            "task_names": list(self.names), **self.summary()}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ContinualResult":
        data = json.loads(text)
        baseline = data["baseline"]
        return cls(torch.tensor(data["R"], dtype=torch.float64),
                   None if baseline is None else torch.tensor(baseline, dtype=torch.float64),
                   data["metric"], data["higher_is_better"], tuple(data["task_names"]))


def results_table(results: Sequence[Tuple[str, ContinualResult]], digits: int = 3) -> str:
    """A markdown table with one row per method: ACC, BWT, FWT."""
    lines = ["| method | ACC | BWT | FWT |", "|---|---:|---:|---:|"]
    for name, result in results:
        fwt = "n/a" if result.fwt is None else f"{result.fwt:+.{digits}f}"
        lines.append(f"| {name} | {result.acc:.{digits}f} | {result.bwt:+.{digits}f} | {fwt} |")
    return "\n".join(lines)
