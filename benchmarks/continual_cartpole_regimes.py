"""The cart-pole-regimes stream through the plan (`examples/cartpole_regimes.plan`): the world model
trained through five (pole mass, pole half-length, cart friction) regimes with continual methods
against naive fine-tuning (the same plan without the `continual` line), all from the same initial
weights.

    python examples/cartpole_regimes_data.py --out examples/data/cartpole_regimes --n 4000 --seed 0
    python benchmarks/continual_cartpole_regimes.py --out /tmp/cartpole_regimes --states 8 \
        [--method "ewc(lambda=10)"]

Prints, for each: the R matrix (held-out next-state squared error), ACC/BWT/FWT and the wall time;
the error against the true equations (`runtime.streams.cartpole_step`) on 2000 fresh states per
regime (RMS of each state entry); and the closed-loop return of the plan's MPPI planning through
the learned model while the true equations of each regime move the cart-pole (`--states` starts,
simulated in one batch, x0 in [-0.5, 0.5], th0 in [-0.3, 0.3], 150 steps = 3 s; return = minus the
plan's realized cost; "balanced": the fraction of starts whose pole is within 12 degrees of upright
and cart within 2.4 m, gymnasium's CartPole limits, during the last 50 steps), and through the true
equations (the upper bound). `--method` adds continual lines to compare (the plan's own line always runs).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

import planlang
from planlang.continual import train_stream
from planlang.training import plan_train_config
from runtime.streams import CARTPOLE_RANGES, CARTPOLE_REGIMES, cartpole_step
from runtime.world_model import wrap_angle

torch.set_num_threads(1)
PLAN = Path(__file__).resolve().parents[1] / "examples" / "cartpole_regimes.plan"
STEPS = 150
BALANCED_STEPS = 50
TRUE_DYNAMICS = """let total = 1 + mp
let acc = (force - b * s[1] + mp * l * s[3]^2 * sin(s[2])) / total
let thacc = (9.8 * sin(s[2]) - cos(s[2]) * acc) / (l * (4 / 3 - mp * cos(s[2])^2 / total))
dynamics s' = [s[0] + 0.02 * s[1], s[1] + 0.02 * (acc - mp * l * thacc * cos(s[2]) / total),
               s[2] + 0.02 * s[3], s[3] + 0.02 * thacc]"""


def true_model_plan(text: str, regime: tuple[float, float, float]) -> str:
    """The plan with the true equations as its dynamics and the regime as its inputs' defaults."""
    lines = [l for l in text.splitlines() if not l.startswith(("block f", "continual f"))]
    lines = [TRUE_DYNAMICS if l.startswith("dynamics") else l for l in lines]
    for name, value in zip(("mp", "l", "b"), regime):
        lines = [f"input {name} = {value}" if l.startswith(f"input {name} ") else l for l in lines]
    return "\n".join(lines) + "\n"


@torch.no_grad()
def equation_errors(module, n: int = 2000) -> list[list[float]]:
    """Per regime: RMS error of module.step against the true equations, per state entry (4,)."""
    rows = []
    for k, regime in enumerate(CARTPOLE_REGIMES):
        g = torch.Generator().manual_seed(10_000 + k)
        half = torch.tensor([*CARTPOLE_RANGES, 10.0])
        z = (torch.rand(n, 5, generator=g) * 2 - 1) * half
        mp, l, b = (torch.full((n,), v) for v in regime)
        error = module.step(z[:, :4], z[:, 4:], mp=mp, l=l, b=b) - cartpole_step(z[:, :4], z[:, 4], mp, l, b)
        rows.append(error.pow(2).mean(0).sqrt().tolist())
    return rows


def starts(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.stack([(torch.rand(n, generator=g) * 2 - 1) * 0.5, torch.zeros(n),
                        (torch.rand(n, generator=g) * 2 - 1) * 0.3, torch.zeros(n)], 1)


@torch.no_grad()
def closed_loop(module, systems: list, n_starts: int) -> list[dict]:
    """Per regime: mean return and balanced fraction of MPPI through `module` on the true system
    (module None: MPPI through the true equations themselves)."""
    out = []
    for regime, system in zip(CARTPOLE_REGIMES, systems):
        torch.manual_seed(0)
        planner = system if module is None else module
        values = {} if module is None else dict(zip(("mp", "l", "b"), map(torch.tensor, regime)))
        sol = planner.simulate(STEPS, system=system if module is not None else None, s=starts(n_starts), **values)
        last = sol.x[:, -BALANCED_STEPS:]
        up = (wrap_angle(last[:, :, 2]).abs() < 0.2095).all(1) & (last[:, :, 0].abs() < 2.4).all(1)
        out.append({"return": -sol.cost.mean().item(), "balanced": up.double().mean().item()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/cartpole_regimes"))
    parser.add_argument("--states", type=int, default=8, help="closed-loop starts per regime (0: skip)")
    parser.add_argument("--method", action="append", default=[], help="another continual method to compare")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    text = PLAN.read_text()
    line = next(l for l in text.splitlines() if l.startswith("continual "))
    variants = [("naive", text.replace(line, "")), (line, text)]
    variants += [(f"continual f by {m}", text.replace(line, f"continual f by {m}")) for m in args.method]
    systems = [planlang.compile(planlang.loads(true_model_plan(text, r), str(PLAN))) for r in CARTPOLE_REGIMES]
    report = {}
    for label, plan_text in variants:
        plan = planlang.loads(plan_text, str(PLAN))
        config = replace(plan_train_config(plan), progress=False)
        torch.manual_seed(0)
        module = planlang.compile(plan)
        start = time.perf_counter()
        result = train_stream(module, config, plan=plan)
        seconds = time.perf_counter() - start
        errors = equation_errors(module)
        loop = closed_loop(module, systems, args.states) if args.states else None
        report[label] = {"seconds": seconds, "result": json.loads(result.to_json()), "equation_rms": errors,
                         "closed_loop": loop}
        print(f"== {label} ({seconds:.0f} s)\n{result.table(4)}", flush=True)
        for k, e in enumerate(errors):
            print(f"regime {k + 1}: RMS x {e[0]:.4f} xdot {e[1]:.4f} th {e[2]:.4f} thdot {e[3]:.4f}")
        if loop:
            print("MPPI through the model, return / balanced per regime:",
                  " | ".join(f"{r['return']:.1f} / {r['balanced']:.2f}" for r in loop), flush=True)
        (args.out / "cartpole_regimes.json").write_text(json.dumps(report, indent=1))
    if args.states:
        report["true equations"] = {"closed_loop": closed_loop(None, systems, args.states)}
        print("MPPI through the true equations, return / balanced per regime:",
              " | ".join(f"{r['return']:.1f} / {r['balanced']:.2f}" for r in report["true equations"]["closed_loop"]))
    (args.out / "cartpole_regimes.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
