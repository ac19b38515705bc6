"""The pendulum-regimes stream through the plan (`examples/pendulum_regimes.plan`): the world model
trained through five (m, l) regimes with its `continual` methods against naive fine-tuning (the
same plan without the `continual` line), both from the same initial weights.

    python examples/pendulum_regimes_data.py --out examples/data/pendulum_regimes --n 2000 --seed 0
    python benchmarks/continual_pendulum_regimes.py --out /tmp/pendulum_regimes --episodes 2 \
        [--ship examples/weights/pendulum_regimes.pt]

Prints, for each: the R matrix (held-out next-state squared error), ACC/BWT/FWT and the wall time;
the error against the true equations on 2000 fresh states per regime (RMS and max for th and
thdot); and the return of MPPI planning through the learned model, closed loop on gymnasium's
Pendulum-v1 with its mass and length set to each regime (`--episodes` seeds per regime, 200
steps), and through the true equations (the upper bound). `--ship` writes the continual model's checkpoint (the shipped weights).
`--plan` runs another plan of the same stream (e.g. examples/pendulum_regimes_progressive.plan); a
progressive world model predicts and plans regime k with its column k.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

import planlang
from planlang.continual import train_stream
from planlang.training import plan_train_config, save_weights
from runtime.continual import ProgressiveMLP
from runtime.streams import PENDULUM_REGIMES, pendulum_step

torch.set_num_threads(1)
PLAN = Path(__file__).resolve().parents[1] / "examples" / "pendulum_regimes.plan"


def fresh_states(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(th, thdot, u) uniform over [-pi, pi] x [-8, 8] x [-2, 2]: x (n, 2), u (n, 1)."""
    g = torch.Generator().manual_seed(seed)
    th = (2 * torch.rand(n, generator=g) - 1) * math.pi
    thdot = (2 * torch.rand(n, generator=g) - 1) * 8
    u = (2 * torch.rand(n, generator=g) - 1) * 2
    return torch.stack([th, thdot], 1), u[:, None]


def select_regime(module, k: int) -> None:
    """A progressive world model (`continual f by progressive()`) predicts regime k with column k."""
    network = getattr(module.blocks["f"], "network", None) if "f" in module.blocks else None
    if isinstance(network, ProgressiveMLP):
        network.select(k)


@torch.no_grad()
def equation_errors(module, n: int = 2000) -> list[dict]:
    """Per regime: RMS and max abs error of module.step against the true equations."""
    rows = []
    for k, (mass, length) in enumerate(PENDULUM_REGIMES):
        select_regime(module, k)
        x, u = fresh_states(n, 10_000 + k)
        M, L = torch.full((n,), mass), torch.full((n,), length)
        truth = torch.stack(pendulum_step(x[:, 0], x[:, 1], u[:, 0], M, L), 1)
        error = module.step(x, u, m=M, l=L) - truth
        rows.append({"rms": error.pow(2).mean(0).sqrt().tolist(), "max": error.abs().amax(0).tolist()})
    return rows


def mppi_returns(module, episodes: int) -> list[float]:
    """Mean return of MPPI through the model, closed loop on Pendulum-v1 set to each regime."""
    import gymnasium

    out = []
    for k, (mass, length) in enumerate(PENDULUM_REGIMES):
        select_regime(module, k)
        total = 0.0
        for seed in range(episodes):
            env = gymnasium.make("Pendulum-v1")
            env.unwrapped.m, env.unwrapped.l = mass, length
            torch.manual_seed(seed)
            total += module.drive(env=env, seed=seed, m=torch.tensor(mass), l=torch.tensor(length)).return_
            env.close()
        out.append(total / episodes)
    return out


TRUE_DYNAMICS = """let thdot_next = clip(x[1] + (3 * 10 / (2 * l) * sin(x[0]) + 3 / (m * l^2) * u) * 0.05, -8, 8)
dynamics x' = [x[0] + thdot_next * 0.05, thdot_next]"""


def true_model_plan(text: str) -> str:
    """The same plan with Pendulum-v1's true equations (in m and l) as its dynamics: MPPI's upper bound."""
    lines = [l for l in text.splitlines() if not l.startswith(("block f", "continual f"))]
    return "\n".join(TRUE_DYNAMICS if l.startswith("dynamics") else l for l in lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/pendulum_regimes"))
    parser.add_argument("--episodes", type=int, default=0, help="MPPI episodes per regime (0: skip)")
    parser.add_argument("--ship", type=Path, help="write the continual model's weights here")
    parser.add_argument("--only", choices=("naive", "continual"), help="run one of the two")
    parser.add_argument("--plan", type=Path, default=PLAN, help="a plan of this stream (default: pendulum_regimes)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    text = args.plan.read_text()
    line = next(l for l in text.splitlines() if l.startswith("continual "))
    report = {}
    for label, plan_text in (("continual", text), ("naive", text.replace(line, ""))):
        if args.only and label != args.only:
            continue
        plan = planlang.loads(plan_text, str(args.plan))
        config = replace(plan_train_config(plan), progress=False)
        torch.manual_seed(0)
        module = planlang.compile(plan)
        start = time.perf_counter()
        result = train_stream(module, config, plan=plan)
        seconds = time.perf_counter() - start
        errors = equation_errors(module)
        returns = mppi_returns(module, args.episodes) if args.episodes else None
        report[label] = {"method": line if label == "continual" else "naive fine-tuning", "seconds": seconds,
                         "result": json.loads(result.to_json()), "equation_errors": errors, "mppi_returns": returns}
        result.heatmap(args.out / f"{label}.png", title=f"pendulum regimes, {label}: squared error")
        print(f"== {label}: {report[label]['method']} ({seconds:.0f} s)\n{result.table(4)}")
        for k, e in enumerate(errors):
            print(f"regime {k + 1}: th rms {e['rms'][0]:.4f} max {e['max'][0]:.4f}   "
                  f"thdot rms {e['rms'][1]:.4f} max {e['max'][1]:.4f}")
        if returns:
            print("MPPI return per regime:", " / ".join(f"{r:.1f}" for r in returns))
        if label == "continual" and args.ship:
            save_weights(module, args.ship, plan, trained_by=f"python benchmarks/continual_pendulum_regimes.py --ship {args.ship}")
    if args.episodes and not args.only:
        truth = planlang.compile(planlang.loads(true_model_plan(text), str(args.plan)))
        report["true model"] = {"mppi_returns": mppi_returns(truth, args.episodes)}
        print("MPPI through the true model, return per regime:",
              " / ".join(f"{r:.1f}" for r in report["true model"]["mppi_returns"]))
    (args.out / "pendulum_regimes.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
