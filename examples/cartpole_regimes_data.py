"""Transitions of the cart-pole under the five (pole mass, pole half-length, cart friction) regimes
of `examples/cartpole_regimes.plan`, from the true equations (runtime.streams.cartpole_step:
gymnasium CartPole-v1 with a continuous force and viscous cart friction):

    python examples/cartpole_regimes_data.py --out examples/data/cartpole_regimes --n 4000 --seed 0

writes regime_1.npz ... regime_5.npz in the transitions format (runtime.transitions): x (N, 4) =
(x, xdot, th, thdot), u (N, 1) the force, x_next (N, 4), input_mp, input_l and input_b (N, 1), with
(x, xdot, th, thdot, force) uniform over [-2.4, 2.4] x [-3, 3] x [-1, 1] x [-4, 4] x [-10, 10];
regime k is drawn with the seed 1000 * seed + k.
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from runtime.streams import CARTPOLE_REGIMES, cartpole_transitions


def regime_arrays(n: int, regime: tuple[float, float, float], seed: int) -> dict[str, np.ndarray]:
    """One regime's transitions in the format of `runtime.transitions`."""
    data = cartpole_transitions(n, regime, torch.Generator().manual_seed(seed), torch.float64)
    x = data.x.numpy()
    return {"x": x[:, :4], "u": x[:, 4:5], "x_next": data.y.numpy(),
            "input_mp": x[:, 5:6], "input_l": x[:, 6:7], "input_b": x[:, 7:8]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=4000, help="transitions per regime")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for k, regime in enumerate(CARTPOLE_REGIMES, start=1):
        np.savez(args.out / f"regime_{k}.npz", **regime_arrays(args.n, regime, 1000 * args.seed + k))
        print(f"regime {k}: (mp, l, b) = {regime}: {args.n} transitions -> {args.out / f'regime_{k}.npz'}")


if __name__ == "__main__":
    main()
