"""Joint multi-agent planning with the runtime alone: learn energies, evaluate, time.

    PYTHONPATH=$PWD python benchmarks/joint.py --train /tmp/joint_train.npz --test /tmp/joint_test.npz

Data: `runtime.interactions` intersection scenes (4 agents; generated and cached at the given
paths when missing). Candidates: K per agent from `runtime.joint_proposals.sampled_proposals`
on the generator's own goal/speed/effort cost. Energies are linear in a few weights:

    unary    = goal_features(x, goals, dt) @ w_u            (3 weights)
    pairwise = pair_hinge_features(x, (1.0, 1.2), (1, 2)) @ w_p   (2 weights)

with w = exp(theta), learned by the classification loss (ground truth inserted among the
candidates at a random index, marginals by BP) with Adam. Reports on held-out scenes:
collision rates, ADE/FDE, how often the ground truth ranks first, BP vs exact marginals, and
scenes per second for N=8, K=64.
"""
import argparse
import time
from pathlib import Path

import torch

from runtime import interactions
from runtime.joint import BeliefPropagation, Exact, classification_loss
from runtime.joint_energies import collides, goal_features, pair_hinge_features
from runtime.joint_proposals import (Candidates, double_integrator,
                                     double_integrator_endpoint_projection, insert_candidates,
                                     sampled_proposals)

SAMPLER_WEIGHTS = torch.tensor([20.0, 10.0, 1.0])     # the generator's goal, speed, effort weights
PAIR_THRESHOLDS, PAIR_POWERS = (1.0, 1.2), (1.0, 2.0)


def data(path: Path, count: int, seed: int) -> interactions.InteractionData:
    if not path.exists():
        interactions.save(interactions.generate("intersection", 4, count, seed), path)
    return interactions.load(path)


def proposals(x0, goals, dt, T, K, seed, sigma) -> Candidates:
    step = double_integrator(dt)
    weights = SAMPLER_WEIGHTS.to(x0)

    def cost(x, u):
        return goal_features(x, goals, dt) @ weights

    g = torch.Generator().manual_seed(seed)
    return sampled_proposals(step, x0, cost, K, T, 2, iters=12, sigma=1.0, final_sigma=sigma,
                             final_noise=double_integrator_endpoint_projection(dt, T), generator=g)


def features(candidates: Candidates, goals, dt):
    return (goal_features(candidates.x, goals, dt),
            pair_hinge_features(candidates.x, PAIR_THRESHOLDS, PAIR_POWERS))


def energies(theta_u, theta_p, unary_features, pair_features):
    return unary_features @ theta_u.exp(), pair_features @ theta_p.exp()


def pick(x, index):
    """Trajectories x (B, N, K, T+1, n) at candidate index (B, N) -> (B, N, T+1, n)."""
    return x.gather(2, index[:, :, None, None, None].expand(-1, -1, 1, *x.shape[3:]))[:, :, 0]


def displacement(x, gt):
    error = (x[..., :2] - gt[..., :2]).norm(dim=-1)                # (B, N, T+1)
    return error.mean().item(), error[..., -1].mean().item()


def with_ground_truth(cands, d, seed):
    g = torch.Generator().manual_seed(seed)
    B, N, K = cands.x.shape[:3]
    index = torch.randint(K, (B, N), generator=g)
    return insert_candidates(cands, d.x.to(cands.x), d.u.to(cands.u), index), index


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, default=Path("/tmp/joint_train.npz"))
    parser.add_argument("--test", type=Path, default=Path("/tmp/joint_test.npz"))
    parser.add_argument("--n-train", type=int, default=40)
    parser.add_argument("--n-test", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--plan-candidates", type=int, default=64)
    parser.add_argument("--plan-sigma", type=float, default=2.0)
    parser.add_argument("--collision-prior", type=float, default=1000.0)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--bp-iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.float32
    train, test = data(args.train, args.n_train, 1), data(args.test, args.n_test, 2)
    dt, T, K = train.dt, train.u.shape[2], args.candidates
    bp = BeliefPropagation(iters=args.bp_iters, damping=0.3)

    def prepare(d, seed):
        x0, goals = d.x0.to(dtype), d.goals.to(dtype)
        labelled, index = with_ground_truth(proposals(x0, goals, dt, T, K, seed, args.sigma), d, seed)
        return index, features(labelled, goals, dt)

    started = time.perf_counter()
    train_index, train_features = prepare(train, 10)
    test_index, test_features_gt = prepare(test, 20)
    test_cands = proposals(test.x0.to(dtype), test.goals.to(dtype), dt, T, args.plan_candidates,
                           30, args.plan_sigma)
    test_features = features(test_cands, test.goals.to(dtype), dt)
    print(f"proposals and features: {time.perf_counter() - started:.1f} s")

    theta_u = torch.zeros(3, dtype=dtype, requires_grad=True)
    theta_p = torch.zeros(2, dtype=dtype, requires_grad=True)
    optimizer = torch.optim.Adam([theta_u, theta_p], lr=0.1)
    started = time.perf_counter()
    for step in range(args.steps):
        optimizer.zero_grad()
        loss = classification_loss(*energies(theta_u, theta_p, *train_features), train_index,
                                   bp).mean()
        loss.backward()
        optimizer.step()
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    print(f"training: {time.perf_counter() - started:.1f} s; w_u = {theta_u.exp().tolist()}, "
          f"w_p = {theta_p.exp().tolist()}")

    with torch.no_grad():
        unary, pairwise = energies(theta_u, theta_p, *test_features)
        independent = unary.argmin(2)
        joint = bp(unary, pairwise).plan
        prior = pairwise + args.collision_prior * test_features[1][..., 0]
        joint_prior = bp(unary, prior).plan
        gt_x = test.x.to(dtype)
        rows = [("ground truth", gt_x),
                ("independent (learned unary only)", pick(test_cands.x, independent)),
                ("joint plan (learned, BP max-product)", pick(test_cands.x, joint)),
                (f"joint plan (learned + {args.collision_prior:g} x penetration)",
                 pick(test_cands.x, joint_prior))]
        print(f"\nheld-out: {len(test.x0)} intersection scenes, N=4, K={args.plan_candidates} "
              f"sampled candidates (sigma {args.plan_sigma}; ground truth not among them)")
        print("| plan | collision rate | ADE m | FDE m |")
        for name, x in rows:
            ade, fde = displacement(x, gt_x)
            print(f"| {name} | {collides(x).float().mean().item():.3f} | {ade:.3f} | {fde:.3f} |")
        best = (test_cands.x[..., :2] - gt_x[:, :, None, :, :2]).norm(dim=-1)   # (B, N, K, T+1)
        print(f"minADE {best.mean(-1).amin(2).mean().item():.3f} m, "
              f"minFDE {best[..., -1].amin(2).mean().item():.3f} m (best candidate per agent)")

        unary, pairwise = energies(theta_u, theta_p, *test_features_gt)
        bp_plan = bp(unary, pairwise).plan
        exact_first, gap = [], []
        for chunk in range(0, len(unary), 4):
            u_c, p_c = unary[chunk:chunk + 4].double(), pairwise[chunk:chunk + 4].double()
            exact_first.append((Exact()(u_c, p_c).plan == test_index[chunk:chunk + 4]).all(1))
        exact_first = torch.cat(exact_first).float().mean().item()
        bp_first = (bp_plan == test_index).all(1).float().mean().item()
        print(f"\nK={K} candidates (sigma {args.sigma}) with the ground truth inserted: "
              f"GT joint configuration ranked first (exact MAP) "
              f"{exact_first:.3f}; BP plan == GT {bp_first:.3f}")

        small_u, small_p = unary[:, :, :8].double(), pairwise[:, :, :, :8, :8].double()
        for name, method in (("BP", BeliefPropagation(iters=args.bp_iters, damping=0.3)),
                             ("BP 50 iters", BeliefPropagation(iters=50, damping=0.3))):
            exact = Exact()(small_u, small_p)
            result = method(small_u, small_p)
            gap.append((name, (result.marginals - exact.marginals).abs().max().item(),
                        (result.plan == exact.plan).all(1).float().mean().item()))
        tree = (Exact()(small_u[:, :2], small_p[:, :2, :2]),
                BeliefPropagation(iters=3)(small_u[:, :2], small_p[:, :2, :2]))
        print(f"BP vs exact, first 8 candidates: two agents max |dp| "
              f"{(tree[0].marginals - tree[1].marginals).abs().max().item():.2e}; "
              + "; ".join(f"{n} four agents max |dp| {g:.2e}, same MAP {a:.2f}" for n, g, a in gap))

    timing(dt, T, bp, args.sigma, args.threads)


def timing(dt, T, bp, sigma, threads, N=8, K=64, B=4, repeats=3):
    """Scenes per second for N agents, K candidates: proposals, energies, BP, in float32."""
    g = torch.Generator().manual_seed(0)
    starts = interactions.SCENES["intersection"](g, B, N)
    x0, goals = starts.x0.float(), starts.goals.float()
    stages = {"proposals": 0.0, "energies": 0.0, "bp": 0.0}
    theta_u, theta_p = torch.zeros(3), torch.zeros(2)
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            cands = proposals(x0, goals, dt, T, K, 0, sigma)
            t1 = time.perf_counter()
            unary, pairwise = energies(theta_u, theta_p, *features(cands, goals, dt))
            t2 = time.perf_counter()
            bp(unary, pairwise)
            t3 = time.perf_counter()
            for name, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2)):
                stages[name] += seconds
    total = sum(stages.values())
    print(f"\nN={N}, K={K}, T={T}, batch {B}, {repeats} repeats, {threads} thread(s): "
          + ", ".join(f"{k} {B * repeats / v:.1f} scenes/s" for k, v in stages.items())
          + f"; all {B * repeats / total:.2f} scenes/s")


if __name__ == "__main__":
    main()
