"""Data-parallel training speed-up: epoch time with 1 and N processes on the same global batch.

Imitation learning of point_mass_2d.plan's weights through its LQR (float64): 2048 demonstrations
from random starts, global batch 512 (4 optimizer steps per epoch), no validation. Each run
trains `--epochs` epochs through `planlang train`'s job (`planlang.cli_train.train_job`), launched
like torchrun (gloo, one torch thread per process); its figure is the median epoch time after the
first epoch (the first pays one-time set-up), read from the run's JSON log; a count repeated in
`--nproc` is run again (interleaved) and its runs' median is reported.

    PYTHONPATH=$PWD python benchmarks/train_ddp.py [--nproc 1 2 1 2] [--epochs 4] [--n 2048] [--batch 512]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

import planlang
from planlang.cli_train import train_job
from planlang.training import generate_demos
from runtime.demos import save_demos
from runtime.distributed import launch
from runtime.training import TrainConfig

PLAN = "examples/point_mass_2d.plan"


def epoch_times(nproc: int, data: Path, tmp: Path, epochs: int, batch: int) -> list[float]:
    log = tmp / f"log{nproc}.json"
    config = TrainConfig(epochs=epochs, batch=batch, lr=0.05, validation=0, progress=False, data=str(data), log=str(log))
    job = {"plan": PLAN, "config": config.to_dict(), "resume": None, "dtype": "float64",
           "summary": str(tmp / f"summary{nproc}.json")}
    if nproc == 1:
        train_job(job)
    else:
        launch(nproc, train_job, job, backend="gloo")
    return [r["time_s"] for r in json.loads(log.read_text())["history"]]


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()
    teacher = planlang.compile(planlang.load(PLAN), dtype=torch.float64)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_demos(tmp / "demos.npz", generate_demos(teacher, args.n, seed=0))
        runs: dict[int, list[float]] = {}
        for nproc in args.nproc:            # repeat a count (--nproc 1 2 1 2) to interleave runs
            times = epoch_times(nproc, tmp / "demos.npz", tmp, args.epochs, args.batch)
            runs.setdefault(nproc, []).append(statistics.median(times[1:] or times))
            print(f"run: {nproc} process(es), epoch {runs[nproc][-1]:.3f} s", flush=True)
        base = statistics.median(runs[min(runs)])
        print(f"{'processes':>9}  {'epoch s':>8}  {'speed-up':>8}")
        for nproc, epochs in sorted(runs.items()):
            epoch = statistics.median(epochs)
            print(f"{nproc:>9}  {epoch:>8.3f}  {base / epoch:>8.2f}")


if __name__ == "__main__":
    main()
