"""Transitions of gymnasium's Pendulum-v1 under the five (mass, length) regimes of
`examples/pendulum_regimes.plan`, from the true equations (runtime.streams.pendulum_step):

    python examples/pendulum_regimes_data.py --out examples/data/pendulum_regimes --n 2000 --seed 0

writes regime_1.npz ... regime_5.npz in the transitions format (runtime.transitions): x (N, 2) =
(th, thdot), u (N, 1), x_next (N, 2), input_m (N, 1) and input_l (N, 1), with (th, thdot, u) uniform over [-pi, pi] x [-8, 8] x [-2, 2]; regime k is
drawn with the seed 1000 * seed + k.
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from runtime.streams import PENDULUM_REGIMES, pendulum_transitions


def regime_arrays(n: int, mass: float, length: float, seed: int) -> dict[str, np.ndarray]:
    """One regime's transitions in the format of `runtime.transitions`."""
    data = pendulum_transitions(n, mass, length, torch.Generator().manual_seed(seed), torch.float64)
    x = data.x.numpy()
    return {"x": x[:, :2], "u": x[:, 2:3], "x_next": data.y.numpy(), "input_m": x[:, 3:4], "input_l": x[:, 4:5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=2000, help="transitions per regime")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for k, (mass, length) in enumerate(PENDULUM_REGIMES, start=1):
        np.savez(args.out / f"regime_{k}.npz", **regime_arrays(args.n, mass, length, 1000 * args.seed + k))
        print(f"regime {k}: m = {mass}, l = {length}: {args.n} transitions -> {args.out / f'regime_{k}.npz'}")


if __name__ == "__main__":
    main()
