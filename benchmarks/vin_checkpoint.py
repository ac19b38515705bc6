"""Turn a VIN trained by benchmarks/vin_train.py (its state_dict + config) into a planlang
checkpoint of an example plan, loadable by `planlang.compile(plan, weights=...)`:

    python benchmarks/vin_checkpoint.py RAW.pt examples/vin_8x8.plan examples/weights/vin_8x8.pt

The checkpoint stores the plan's text and hash: edit the plan, and re-run this to re-bind it.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import planlang  # noqa: E402
from planlang.training import save_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("plan", type=Path)
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    raw = torch.load(args.raw, weights_only=True)
    plan = planlang.load(args.plan)
    module = planlang.compile(plan)
    if module.planner.config()["k"] != raw["config"]["k"]:
        raise SystemExit(f"{args.plan} has k={module.planner.config()['k']}, the weights k={raw['config']['k']}")
    module.planner.load_state_dict(raw["state_dict"])
    save_weights(module, args.output, plan, training=raw.get("training", {}))
    print(f"{args.output}: weights of {args.raw} for plan {plan.name}")


if __name__ == "__main__":
    main()
