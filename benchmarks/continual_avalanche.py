"""planlang's continual-learning plugins side by side with Avalanche (avalanche-lib).

Part `digits`: the permuted-digits stream (scikit-learn's bundled 8x8 digits, 5 tasks, task 0
unpermuted), one MLP 64-100-100-10, plain SGD, the same epochs, batch size and learning rate
for both libraries; naive fine-tuning, EWC, SI, LwF and replay in each, and planlang
combinations. Both are evaluated by the same function (accuracy on each task's test split
after each experience), so the R matrices, ACC, BWT and FWT are computed identically.

Part `pendulum`: the world-model stream (gymnasium Pendulum-v1 equations, 5 (m, l) regimes
learned in order); an MLP on (th, thdot, u, m, l) predicting the change of (th, thdot);
prediction error (mean squared error) on every regime after each regime.

    PYTHONPATH=$PWD:/tmp/anchors/avalanche:/tmp/anchors/avdeps \
        python benchmarks/continual_avalanche.py --part all --seeds 0 1 2 --out /tmp/continual

Avalanche is never a dependency; see benchmarks/README.md for how it was installed.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch import nn

from runtime.continual import (ContinualPlugin, Plugins, distill, evaluate, ewc, mean_squared_error,
                               replay, run_stream, si, stream_config)
from runtime.continual_metrics import ContinualResult, results_table
from runtime.streams import pendulum_regimes, permuted_digits
from runtime.training import TrainConfig

torch.set_num_threads(1)

DIGITS = stream_config(epochs=8, batch=32, lr=0.05)
EWC_LAMBDA, SI_C, SI_XI, LWF_T, LWF_W, MEMORY = 30.0, 0.01, 1e-3, 2.0, 1.0, 500


def digits_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
                         nn.Linear(100, 10))


PLANLANG: Dict[str, Callable[[], ContinualPlugin]] = {
    "naive": Plugins,
    f"ewc(lambda={EWC_LAMBDA:g})": lambda: ewc(EWC_LAMBDA),
    f"si(c={SI_C:g}, xi={SI_XI:g})": lambda: si(SI_C, SI_XI),
    f"distill(T={LWF_T:g}, weight={LWF_W:g})": lambda: distill(LWF_T, LWF_W),
    f"replay({MEMORY})": lambda: replay(MEMORY),
    f"replay({MEMORY}) + distill": lambda: replay(MEMORY) + distill(LWF_T, LWF_W),
    f"replay({MEMORY}) + ewc": lambda: replay(MEMORY) + ewc(EWC_LAMBDA),
    f"replay({MEMORY}, experience_balanced)": lambda: replay(MEMORY, "experience_balanced"),
    f"replay({MEMORY}, experience_balanced) + distill": lambda: (
        replay(MEMORY, "experience_balanced") + distill(LWF_T, LWF_W)),
    f"replay({MEMORY}, experience_balanced) + ewc": lambda: (
        replay(MEMORY, "experience_balanced") + ewc(EWC_LAMBDA)),
    f"replay({MEMORY}, ratio=2) + distill": lambda: replay(MEMORY, ratio=2.0) + distill(LWF_T, LWF_W),
    f"replay({MEMORY}, experience_balanced, ratio=2) + distill": lambda: (
        replay(MEMORY, "experience_balanced", ratio=2.0) + distill(LWF_T, LWF_W)),
}


def import_avalanche():
    """Import Avalanche's strategies. The only torchvision wheel installable here is a CUDA
    build whose C ops cannot load next to a CPU torch; its pure-Python import then fails on
    registering fake kernels for two undefined ops (torchvision::nms, qnms). Defining their
    schemas first lets it import; no torchvision op is used by this benchmark."""
    try:
        import torchvision  # noqa: F401
    except RuntimeError:
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
        import_avalanche.library = library  # keep the definitions alive
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
    from avalanche.training.storage_policy import ClassBalancedBuffer
    from avalanche.training.supervised import EWC, LwF, Naive, Replay, SynapticIntelligence
    return dict(benchmark=benchmark_from_datasets,
                dataset=_make_taskaware_tensor_classification_dataset,
                evaluator=EvaluationPlugin, naive=Naive, ewc=EWC, si=SynapticIntelligence,
                lwf=LwF, replay=Replay, replay_plugin=ReplayPlugin, class_balanced=ClassBalancedBuffer)


def avalanche_strategies(av) -> Dict[str, Callable]:
    """Avalanche's methods with the same hyperparameters, mapped onto its conventions:
    its EWC penalty is lambda * sum F (no 1/2), so lambda_av = lambda / 2; its SI penalty is
    si_lambda / 2 * sum (0.0015 * Omega, clipped at 1e-3), so si_lambda = 2 c / 0.0015. Each
    regularizer is also run at a larger strength (x50, x100) because Avalanche's importances
    are smaller than planlang's (minibatch-gradient Fisher; clipped SI importance)."""
    return {
        "naive": lambda **kw: av["naive"](**kw),
        f"EWC(ewc_lambda={EWC_LAMBDA / 2:g})": lambda **kw: av["ewc"](
            ewc_lambda=EWC_LAMBDA / 2, mode="separate", **kw),
        f"EWC(ewc_lambda={EWC_LAMBDA * 50:g})": lambda **kw: av["ewc"](
            ewc_lambda=EWC_LAMBDA * 50, mode="separate", **kw),
        f"SynapticIntelligence(si_lambda={2 * SI_C / 0.0015:g})": lambda **kw: av["si"](
            si_lambda=2 * SI_C / 0.0015, eps=SI_XI, **kw),
        f"SynapticIntelligence(si_lambda={200 * SI_C / 0.0015:g})": lambda **kw: av["si"](
            si_lambda=200 * SI_C / 0.0015, eps=SI_XI, **kw),
        f"LwF(alpha={LWF_W:g}, T={LWF_T:g})": lambda **kw: av["lwf"](
            alpha=LWF_W, temperature=LWF_T, **kw),
        f"Replay(mem_size={MEMORY})": lambda **kw: av["replay"](mem_size=MEMORY, **kw),
        f"Naive + ReplayPlugin(mem_size={MEMORY}, ClassBalancedBuffer)": lambda **kw: av["naive"](
            plugins=[av["replay_plugin"](mem_size=MEMORY, storage_policy=av["class_balanced"](MEMORY))], **kw),
    }


def run_avalanche(av, make_strategy, stream, seed: int, config: TrainConfig) -> torch.Tensor:
    model = digits_mlp(seed)
    train = [av["dataset"](t.train.x, t.train.y, task_labels=0, targets=t.train.y.tolist())
             for t in stream]
    test = [av["dataset"](t.test.x, t.test.y, task_labels=0, targets=t.test.y.tolist())
            for t in stream]
    benchmark = av["benchmark"](train=train, test=test)
    strategy = make_strategy(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=config.lr,
                                                 momentum=config.momentum),
        criterion=nn.CrossEntropyLoss(), train_mb_size=config.batch,
        train_epochs=config.epochs, eval_mb_size=1000, device="cpu",
        evaluator=av["evaluator"](loggers=[]))
    torch.manual_seed(seed)
    rows = []
    for experience in benchmark.train_stream:
        strategy.train(experience)
        rows.append(evaluate(model, stream, Plugins(), _accuracy))
    return torch.stack(rows)


def _accuracy(outputs, targets):
    return (outputs.argmax(-1) == targets).double().mean().item()


def mean_result(results: List[ContinualResult]) -> ContinualResult:
    return ContinualResult(torch.stack([r.R for r in results]).mean(0),
                           torch.stack([r.baseline for r in results]).mean(0),
                           task_names=results[0].task_names)


def spread(results: List[ContinualResult]) -> str:
    accs = torch.tensor([r.acc for r in results])
    return f"{accs.std().item():.3f}" if len(results) > 1 else "n/a"


def digits_part(seeds: List[int], out: Path, with_avalanche: bool, only: str = "") -> str:
    stream = permuted_digits(n_tasks=5, seed=0)
    names = tuple(t.name for t in stream)
    rows, details = [], {}

    def record(label, make_rows):
        results, start = [], time.perf_counter()
        for seed in seeds:
            baseline = evaluate(digits_mlp(seed), stream, Plugins(), _accuracy)
            results.append(ContinualResult(make_rows(seed), baseline, task_names=names))
        result = mean_result(results)
        rows.append((f"{label} (acc sd {spread(results)}, {time.perf_counter() - start:.0f} s)",
                     result))
        details[label] = json.loads(result.to_json())
        print(rows[-1][0], result.summary(), flush=True)
        return result

    for label, make in PLANLANG.items():
        if only not in f"planlang {label}":
            continue
        record(f"planlang {label}", lambda seed, make=make: run_stream(
            digits_mlp(seed), stream, make(), replace(DIGITS, seed=seed)))
    if with_avalanche:
        av = import_avalanche()
        for label, make in avalanche_strategies(av).items():
            if only not in f"avalanche {label}":
                continue
            record(f"avalanche {label}",
                   lambda seed, make=make: run_avalanche(av, make, stream, seed, DIGITS))
    (out / "digits.json").write_text(json.dumps(details, indent=2))
    best = max(rows, key=lambda row: row[1].acc)
    best[1].heatmap(out / "digits_best.png", title=best[0].split(" (")[0])
    return results_table(rows)


class ResidualMLP(nn.Module):
    """next (th, thdot) = (th, thdot) + MLP(th, thdot, u, m, l): x (B, 5) -> (B, 2)."""

    def __init__(self, seed: int, hidden: int = 64):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(5, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                                 nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, x):
        return x[:, :2] + self.net(x)


PENDULUM = stream_config(epochs=10, batch=64, lr=0.05, momentum=0.9)
PENDULUM_METHODS: Dict[str, Callable[[], ContinualPlugin]] = {
    "naive": Plugins,
    "ewc(lambda=100)": lambda: ewc(100.0),
    "si(c=0.01)": lambda: si(0.01, 1e-3),
    "distill(T=None, weight=1)": lambda: distill(None, 1.0),
    "replay(500)": lambda: replay(500),
    "replay(500) + distill": lambda: replay(500) + distill(None, 1.0),
}


def pendulum_part(seeds: List[int], out: Path) -> str:
    stream = pendulum_regimes(n_train=2000, n_test=500, seed=0)
    names = tuple(t.name for t in stream)
    lines, details = [], {}
    for label, make in PENDULUM_METHODS.items():
        results = []
        for seed in seeds:
            model = ResidualMLP(seed)
            baseline = evaluate(model, stream, Plugins(), mean_squared_error)
            R = run_stream(model, stream, make(),
                           replace(PENDULUM, seed=seed),
                           score=mean_squared_error)
            results.append(ContinualResult(R, baseline, "mean squared error", False, names))
        result = mean_result(results)
        result = ContinualResult(result.R, result.baseline, "mean squared error", False, names)
        details[label] = json.loads(result.to_json())
        print(label, "\n" + result.table(4), flush=True)
        diag = " / ".join(f"{v:.4f}" for v in result.R.diagonal().tolist())
        final = " / ".join(f"{v:.4f}" for v in result.R[-1].tolist())
        lines.append(f"| {label} | {final} | {diag} | {result.acc:.4f} | {result.bwt:+.4f} |")
    (out / "pendulum.json").write_text(json.dumps(details, indent=2))
    head = ("| method | error on each regime after the last | error on each regime right after "
            "it | mean final error | BWT (> 0: forgetting) |\n|---|---|---|---:|---:|")
    return head + "\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("digits", "pendulum", "all"), default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-avalanche", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("/tmp/continual"))
    parser.add_argument("--only", default="", help="run only the methods whose label contains this")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part in ("digits", "all"):
        print(digits_part(args.seeds, args.out, not args.no_avalanche, args.only))
    if args.part in ("pendulum", "all"):
        print(pendulum_part(args.seeds, args.out))


if __name__ == "__main__":
    main()
