"""Joint plans through the language: examples/intersection_4.plan on held-out scenes.

    PYTHONPATH=$PWD python benchmarks/joint_plans.py --test /tmp/intersection_4_test.npz

The test file comes from `planlang data interactions --scene intersection --agents 4 --n 32
--seed 2 --dt 0.25 --horizon 40 -o /tmp/intersection_4_test.npz` (generated here if absent).
Reports, for the compiled plan with the shipped weights: collision rates (centres closer than 1.0
at a stage, and between stages with positions linearly interpolated at 8 points per step) of
the joint plan, of independent per-agent planning (each agent's lowest unary energy among the
same candidates) and of the ground truth; ADE/FDE of the joint plan and minADE/minFDE of the
candidates to the ground truth; how often the ground-truth configuration, inserted among the
candidates, is the plan (the plan's own inference, and exact enumeration); BP vs exact marginals;
and scenes per second for N = 8 agents, K = 64 candidates.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import planlang
from runtime.interactions import generate, intersection, load, save
from runtime.joint import BeliefPropagation, Exact, joint_energy, refine_plan
from runtime.joint_energies import min_distance

ROOT = Path(__file__).resolve().parents[1]


def fine_min_distance(x: torch.Tensor, substeps: int = 8) -> torch.Tensor:
    fraction = torch.linspace(0, 1, substeps + 1, dtype=x.dtype)[:-1, None]
    between = x[:, :, :-1, None, :2] * (1 - fraction) + x[:, :, 1:, None, :2] * fraction
    return min_distance(torch.cat([between.flatten(2, 3), x[:, :, -1:, :2]], dim=2))


def rates(x: torch.Tensor) -> tuple[float, float]:
    return (min_distance(x) < 1.0).double().mean().item(), (fine_min_distance(x) < 1.0).double().mean().item()


def gather(candidates: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
    B, N = plan.shape
    return candidates[torch.arange(B)[:, None], torch.arange(N)[None], plan]


def displacement(x: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ADE, FDE) per agent (..., N): mean and final distance of positions to the ground truth."""
    d = (x[..., :2] - truth[..., :2]).norm(dim=-1)
    return d.mean(-1), d[..., -1]


def exact_in_chunks(unary: torch.Tensor, pairwise: torch.Tensor, chunk: int = 2):
    """`runtime.joint.Exact` a few scenes at a time (K^N configurations each), results concatenated."""
    parts = [Exact()(unary[i:i + chunk], pairwise[i:i + chunk]) for i in range(0, unary.shape[0], chunk)]
    return type(parts[0])(*(None if p[0] is None else torch.cat(p) for p in zip(*parts)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--test", type=Path, default=Path("/tmp/intersection_4_test.npz"))
    parser.add_argument("--n-test", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weights", type=Path, default=ROOT / "examples" / "weights" / "intersection_4.pt")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.test.exists():
        save(generate("intersection", 4, args.n_test, 2, T=40, dt=0.25), args.test)
    data = load(args.test)
    plan = planlang.load(ROOT / "examples" / "intersection_4.plan")
    module = planlang.compile(plan, weights=args.weights)
    x0, goals, truth = data.x0.float(), data.goals.float(), data.x.float()
    M = x0.shape[0]

    with torch.no_grad():
        start = time.perf_counter()
        sol = module(x=x0, goal=goals)
        seconds = time.perf_counter() - start
        independent = gather(sol.candidates.x, sol.unary.argmin(2))
        print(f"{M} held-out intersection scenes, N = 4, K = {sol.marginals.shape[2]} candidates, "
              f"{M / seconds:.2f} scenes/s (batch {M})")
        print("| plan | collision rate (stages) | (between stages) | ADE (m) | FDE (m) |")
        print("|---|---:|---:|---:|---:|")
        for name, x in (("ground truth (centralized optimum)", truth),
                        ("independent per-agent planning (argmin unary)", independent),
                        ("joint plan (BP + refine)", sol.x)):
            ade, fde = displacement(x, truth)
            stage, between = rates(x)
            print(f"| {name} | {stage:.3f} | {between:.3f} | {ade.mean():.3f} | {fde.mean():.3f} |")
        ade, fde = displacement(sol.candidates.x, truth[:, :, None])
        print(f"minADE / minFDE over the candidates: {ade.amin(2).mean():.3f} / {fde.amin(2).mean():.3f} m")
        reached = (sol.x[:, :, -1, :2] - goals).norm(dim=-1)
        print(f"joint plan: max distance to the goal {reached.max():.4f} m, max final speed "
              f"{sol.x[:, :, -1, 2:].norm(dim=-1).max():.4f} m/s")

        torch.manual_seed(0)
        inserted = module.backend.solve(module, {"x": x0, "goal": goals}, reference_u=data.u.float())
        exact_plan = exact_in_chunks(inserted.unary.double(), inserted.pairwise.double()).plan
        print(f"ground truth inserted: ranked first by the plan's inference on "
              f"{(inserted.plan == inserted.gt_index).all(1).double().mean():.3f} of the scenes, by exact "
              f"enumeration on {(exact_plan == inserted.gt_index).all(1).double().mean():.3f}")
        unary, pairwise = sol.unary.double(), sol.pairwise.double()
        reference = exact_in_chunks(unary, pairwise)
        for iters in (30, 100):
            bp = BeliefPropagation(iters, 0.5)(unary, pairwise)
            refined = refine_plan(unary, pairwise, bp.plan, 50)
            gap = (joint_energy(unary, pairwise, refined) - reference.energy).amax()
            print(f"BP ({iters} iterations, damping 0.5) vs exact, 4 agents: max |marginal difference| "
                  f"{(bp.marginals - reference.marginals).abs().max():.3g}; MAP equal on "
                  f"{(refined == reference.plan).all(1).double().mean():.3f} after refine (max energy gap {gap:.3g}), "
                  f"{(bp.plan == reference.plan).all(1).double().mean():.3f} before")

    text = plan.source.text.replace("agents 4", "agents 8").replace("levels=5, spread=2.5", "levels=8, spread=2.5")
    big = planlang.compile(planlang.loads(text))
    starts = intersection(torch.Generator().manual_seed(5), 4, 8)
    with torch.no_grad():
        big(x=starts.x0[:1].float(), goal=starts.goals[:1].float())          # warm up
        start = time.perf_counter()
        out = big(x=starts.x0.float(), goal=starts.goals.float())
        seconds = time.perf_counter() - start
    print(f"N = 8, K = {out.marginals.shape[2]}, T = {big.horizon}: {4 / seconds:.3f} scenes/s end to end "
          f"(batch 4, {args.threads} thread(s)); collisions {rates(out.x)[1]:.2f}")


if __name__ == "__main__":
    main()
