"""iLQR forward + backward: planlang's `runtime.ilqr` against mpc.pytorch's `mpc.MPC`.

Pendulum and cartpole swing-up from mpc.pytorch's `mpc/env_dx/` (its own dynamics modules for
the anchor; the same formulas as batched torch callables for ours), quadratic costs
1/2 tau'diag(q)tau + p'tau from the modules' `get_true_obj()`, the modules' control limits
and line-search settings, float64, one thread. Both solvers get the same iteration budget.

mpc.pytorch's horizon T counts states x_0..x_{T-1} and controls u_0..u_{T-1}, with a cost on
every (x_t, u_t) and no effect of u_{T-1}; ours counts x_0..x_T and u_0..u_{T-1} with a final
cost. The same problem is ours with horizon T - 1 and final cost l_T(x) = l(x, 0) (mpc.pytorch's
optimal u_{T-1} is 0, since the control cost is 1/2 q_u u^2). Both costs below are evaluated by
one function on the returned trajectories.

`--ours plan-native` (or `plan-torch`) solves the same problems written as plans
(`PENDULUM_PLAN`, `CARTPOLE_PLAN`, the anchor's constants filled in), on the native (C) or the
torch kernels of `solve ilqr(kernels=...)`, through the compiled plan's `ILQRProblem`
(`ILQRBackend.problem`) with the same options; gradients reach x0, q and p as plan values.

Anchor: mpc.pytorch (github locuslab/mpc.pytorch) must be importable, e.g. unpacked at
$PLANLANG_ANCHORS/mpc.pytorch (see benchmarks/README.md). Run from the repository root:

    PLANLANG_ANCHORS=/tmp/anchors python benchmarks/ilqr.py [--ours plan-native]
"""
import argparse
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, replace
from typing import Callable

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import planlang  # noqa: E402
from runtime.ilqr import ILQRBackward, ILQROptions, ILQRProblem, ilqr  # noqa: E402
from runtime.ilqr_derivatives import ExactDerivatives  # noqa: E402
from runtime.status import Status  # noqa: E402


def import_anchor():
    root = os.environ.get("PLANLANG_ANCHORS")
    if root:
        sys.path.insert(0, os.path.join(root, "mpc.pytorch"))
    try:
        from mpc import mpc
        from mpc.env_dx import cartpole, pendulum
    except ImportError as err:
        raise SystemExit(
            "mpc.pytorch is not importable. Get github locuslab/mpc.pytorch and unpack it at "
            "$PLANLANG_ANCHORS/mpc.pytorch (see benchmarks/README.md).") from err
    return mpc, pendulum, cartpole


# ---- the anchor's environments as batched torch callables (same formulas) -------------------

def pendulum_dynamics(params: torch.Tensor, dt: float, max_torque: float) -> Callable:
    """mpc/env_dx/pendulum.py PendulumDx.forward (simple=True), state (cos th, sin th, dth)."""
    def dynamics(x, u):
        g, m, l = torch.unbind(params)
        u = torch.clamp(u, -max_torque, max_torque)[:, 0]
        cos_th, sin_th, dth = torch.unbind(x, dim=1)
        th = torch.atan2(sin_th, cos_th)
        newdth = dth + dt * (-3. * g / (2. * l) * (-sin_th) + 3. * u / (m * l ** 2))
        newth = th + newdth * dt
        return torch.stack((torch.cos(newth), torch.sin(newth), newdth), dim=1)
    return dynamics


def cartpole_dynamics(params: torch.Tensor, dt: float, force_mag: float) -> Callable:
    """mpc/env_dx/cartpole.py CartpoleDx.forward, state (x, dx, cos th, sin th, dth)."""
    def dynamics(state, u):
        gravity, masscart, masspole, length = torch.unbind(params)
        total_mass = masspole + masscart
        polemass_length = masspole * length
        u = torch.clamp(u[:, 0], -force_mag, force_mag)
        x, dx, cos_th, sin_th, dth = torch.unbind(state, dim=1)
        th = torch.atan2(sin_th, cos_th)
        cart_in = (u + polemass_length * dth ** 2 * sin_th) / total_mass
        th_acc = (gravity * sin_th - cos_th * cart_in) / (
            length * (4. / 3. - masspole * cos_th ** 2 / total_mass))
        xacc = cart_in - polemass_length * th_acc * cos_th / total_mass
        x = x + dt * dx
        dx = dx + dt * xacc
        th = th + dt * dth
        dth = dth + dt * th_acc
        return torch.stack((x, dx, torch.cos(th), torch.sin(th), dth), 1)
    return dynamics


# ---- the same problems as plans (q, p: the quadratic cost's weights over z = (x, u)) --------

PENDULUM_PLAN = """plan mpc_pendulum
horizon {T}
state x[3] = [1, 0, 0]
control u in [{lower}, {upper}]
param q[4] = 1
param p[4] = 0
let th = atan2(x[1], x[0])
let dth = x[2] + {dt} * (-3 * {g} / (2 * {l}) * (-x[1]) + 3 * u / ({m} * {l}^2))
dynamics x' = [cos(th + dth * {dt}), sin(th + dth * {dt}), dth]
cost stage = sum(0.5 * q * cat(x, u)^2 + p * cat(x, u))
cost final = sum(0.5 * q[0:3] * x^2 + p[0:3] * x)
solve ilqr
"""

CARTPOLE_PLAN = """plan mpc_cartpole
horizon {T}
state s[5] = [0, 0, 1, 0, 0]
control u in [{lower}, {upper}]
param q[6] = 1
param p[6] = 0
let th = atan2(s[3], s[2])
let cart_in = (u + {mp} * {l} * s[4]^2 * s[3]) / ({mc} + {mp})
let th_acc = ({g} * s[3] - s[2] * cart_in) / ({l} * (4 / 3 - {mp} * s[2]^2 / ({mc} + {mp})))
let x_acc = cart_in - {mp} * {l} * th_acc * s[2] / ({mc} + {mp})
dynamics s' = [s[0] + {dt} * s[1], s[1] + {dt} * x_acc, cos(th + {dt} * s[4]), sin(th + {dt} * s[4]),
               s[4] + {dt} * th_acc]
cost stage = sum(0.5 * q * cat(s, u)^2 + p * cat(s, u))
cost final = sum(0.5 * q[0:5] * s^2 + p[0:5] * s)
solve ilqr
"""


def task_plan(task: "Task", kernels: str):
    """The compiled plan of a task (ours: horizon T - 1 plus the final cost)."""
    env = task.env
    if task.name == "pendulum":
        g, m, l = (float(v) for v in env.params)
        text = PENDULUM_PLAN.format(T=task.T - 1, lower=float(env.lower), upper=float(env.upper),
                                    dt=env.dt, g=g, m=m, l=l)
    else:
        g, mc, mp, l = (float(v) for v in env.params)
        text = CARTPOLE_PLAN.format(T=task.T - 1, lower=float(env.lower), upper=float(env.upper),
                                    dt=env.dt, g=g, mc=mc, mp=mp, l=l)
    return planlang.compile(planlang.loads(text), dtype=torch.float64, options={"kernels": kernels})


@dataclass
class Task:
    name: str
    env: object            # the anchor's Dx module
    dynamics: Callable     # ours
    x0: torch.Tensor       # (B, n)
    T: int                 # mpc.pytorch horizon (ours: T - 1 plus a final cost)


def make_tasks(pendulum, cartpole, batch: int) -> list[Task]:
    g = torch.Generator().manual_seed(0)

    def uniform(low, high):
        return torch.rand(batch, generator=g) * (high - low) + low

    pend = pendulum.PendulumDx(torch.tensor((10., 1., 1.)), simple=True)
    th, thdot = uniform(-torch.pi, torch.pi), uniform(-1., 1.)
    pend_x0 = torch.stack((torch.cos(th), torch.sin(th), thdot), 1)

    cart = cartpole.CartpoleDx()
    th, thdot = uniform(-2 * torch.pi, 2 * torch.pi), uniform(-.5, .5)
    pos, vel = uniform(-.5, .5), uniform(-.5, .5)
    cart_x0 = torch.stack((pos, vel, torch.cos(th), torch.sin(th), thdot), 1)
    return [Task("pendulum", pend, pendulum_dynamics(pend.params, pend.dt, pend.max_torque),
                 pend_x0, 20),
            Task("cartpole", cart, cartpole_dynamics(cart.params, cart.dt, cart.force_mag),
                 cart_x0, 25)]


# ---- one forward + backward of each solver ---------------------------------------------------
# Both return x_0..x_{T-1} (B, T, n) and u_0..u_{T-1} (B, T, m) (ours padded with u_{T-1} = 0)
# with the gradients of loss = sum u^2 + sum x w.r.t. x0 and the cost data q, p.

class Clock:
    """CPU time of this process (robust to other jobs on shared cores) and wall time."""

    def __init__(self):
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def read(self) -> tuple[float, float]:
        return time.process_time() - self.cpu, time.perf_counter() - self.wall


def trajectory_cost(x, u, q, p):
    """sum_t 1/2 tau_t' diag(q) tau_t + p' tau_t over x (B, T, n), u (B, T, m)."""
    tau = torch.cat((x, u), -1)
    return (0.5 * q * tau * tau + p * tau).sum((1, 2))


def run_ours(task: Task, options: ILQROptions, q0, p0, exact_cost: bool):
    q, p, x0 = (t.clone().requires_grad_() for t in (q0, p0, task.x0))
    n = x0.shape[1]

    def stage_cost(x, u):
        z = torch.cat((x, u), -1)
        return (0.5 * q * z * z + p * z).sum(-1)

    def final_cost(x):
        return (0.5 * q[:n] * x * x + p[:n] * x).sum(-1)

    def cost_derivatives(x, u):       # exact (gradient, Hessian), as mpc.pytorch's QuadCost (C, c)
        z = torch.cat((x, u), -1)
        return q * z + p, torch.diag_embed(q.expand_as(z))

    def final_derivatives(x):
        return q[:n] * x + p[:n], torch.diag_embed(q[:n].expand_as(x))

    derivatives = ExactDerivatives(stage_cost_derivatives=cost_derivatives,
                                   final_cost_derivatives=final_derivatives)
    problem = ILQRProblem(task.dynamics, stage_cost, final_cost,
                          lower=torch.tensor(float(task.env.lower)),
                          upper=torch.tensor(float(task.env.upper)),
                          derivatives=derivatives if exact_cost else ExactDerivatives())
    return solve_and_backward(Clock(), problem, x0, (x0, q, p), task, options, q0, p0)


def run_plan(module, task: Task, options: ILQROptions, q0, p0):
    """`run_ours` on the compiled plan's problem (its cost derivatives are exact jets); the clock
    also covers binding the values and building the problem."""
    q, p, x0 = (t.clone().requires_grad_() for t in (q0, p0, task.x0))
    clock = Clock()
    state = module.layout.states[0].ref.name
    env, x0b, like = module.bind({state: x0, "q": q, "p": p})
    problem = module.backend.problem(env, x0.shape[0], like)
    return solve_and_backward(clock, problem, x0b, (x0, q, p), task, options, q0, p0)


def solve_and_backward(clock: Clock, problem: ILQRProblem, x0, leaves, task: Task, options: ILQROptions,
                       q0, p0):
    """Solve from u = 0, pad u_{T-1} = 0 (mpc.pytorch's horizon), backpropagate the loss to the
    leaves (x0, q, p): (times, trajectory cost, gradients, solution)."""
    sol = ilqr(problem, x0, torch.zeros(x0.shape[0], task.T - 1, 1), options)
    x, u = sol.x, torch.cat((sol.u, torch.zeros_like(sol.u[:, :1])), 1)
    ((u ** 2).sum() + x.sum()).backward()
    return clock.read(), trajectory_cost(x.detach(), u.detach(), q0, p0), tuple(t.grad for t in leaves), sol


def run_anchor(mpc, task: Task, iters: int, eps: float, q0, p0):
    q, p, x0 = (t.clone().requires_grad_() for t in (q0, p0, task.x0))
    env, B, T = task.env, task.x0.shape[0], task.T
    clock = Clock()
    C = torch.diag(q).unsqueeze(0).unsqueeze(0).repeat(T, B, 1, 1)
    c = p.unsqueeze(0).repeat(T, B, 1)
    x, u, _ = mpc.MPC(
        env.n_state, env.n_ctrl, T, u_lower=float(env.lower), u_upper=float(env.upper),
        lqr_iter=iters, eps=eps, verbose=-1, exit_unconverged=False,
        detach_unconverged=False, linesearch_decay=env.linesearch_decay,
        max_linesearch_iter=env.max_linesearch_iter, not_improved_lim=iters,
        grad_method=mpc.GradMethods.AUTO_DIFF,
    )(x0, mpc.QuadCost(C, c), env)
    x, u = x.transpose(0, 1), u.transpose(0, 1)
    ((u ** 2).sum() + x.sum()).backward()
    return clock.read(), trajectory_cost(x.detach(), u.detach(), q0, p0), (x0.grad, q.grad, p.grad)


def budgets(task: Task):
    """(label, mpc.pytorch iterations, its eps, our options): the same iteration budget."""
    env = task.env
    line_search = dict(step_decay=env.linesearch_decay, line_search_steps=env.max_linesearch_iter)
    # Fixed budget: never stop early and accept any step that does not increase the cost, as
    # mpc.pytorch does with eps = 0.
    fixed = dict(tol=0.0, cost_tol=0.0, armijo=0.0, **line_search)
    # mpc.pytorch stops when every ||u_new - u||_2 < eps (full step); our relative step test
    # ||k||_inf <= tol max(1, ||u||_inf) with tol = eps / (sqrt(T m) max(1, |limit|)) is at
    # least as strict (no cost test).
    limit = max(1.0, abs(float(env.lower)), abs(float(env.upper)))
    tol = 1e-2 / ((task.T * env.n_ctrl) ** 0.5 * limit)
    return [("fixed 10 iters", 10, 0.0, ILQROptions(max_iters=10, **fixed)),
            ("fixed 30 iters", 30, 0.0, ILQROptions(max_iters=30, **fixed)),
            ("<=50 iters, eps 1e-2", 50, 1e-2,
             ILQROptions(max_iters=50, tol=tol, cost_tol=0.0, **line_search))]


def gradient_check(mpc, task: Task, q, p, backward: ILQRBackward, run_ours=run_ours):
    """Relative error of each solver's d loss / d p against central differences of our
    re-solves (both converge to the same trajectories), on 4 elements solved tightly."""
    task = Task(task.name, task.env, task.dynamics, task.x0[:4], task.T)
    line_search = dict(step_decay=task.env.linesearch_decay,
                       line_search_steps=task.env.max_linesearch_iter)
    tight = ILQROptions(max_iters=500, tol=1e-10, cost_tol=0.0, backward=backward, **line_search)
    _, _, (_, _, ours), sol = run_ours(task, tight, q, p, exact_cost=True)
    _, _, (_, _, theirs) = run_anchor(mpc, task, 200, 1e-9, q, p)
    direction = torch.randn(p.shape, generator=torch.Generator().manual_seed(1))
    h = 1e-5

    def loss(p):
        run = run_ours(task, tight, q, p.detach(), exact_cost=True)[3]
        return (run.u ** 2).sum() + run.x.sum()

    fd = (loss(p + h * direction) - loss(p - h * direction)) / (2 * h)
    solved = (sol.status == Status.SOLVED).all().item()
    return [abs((g @ direction - fd) / fd).item() for g in (ours, theirs)], solved


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tasks", nargs="+", default=["pendulum", "cartpole"])
    parser.add_argument("--autodiff-cost", action="store_true",
                        help="differentiate our costs by autodiff instead of passing their "
                             "exact derivatives (mpc.pytorch is given C, c directly)")
    parser.add_argument("--backward", choices=[b.value for b in ILQRBackward],
                        default=ILQRBackward.IMPLICIT.value, help="our backward mode")
    parser.add_argument("--ours", choices=["runtime", "plan-torch", "plan-native"], default="runtime",
                        help="runtime: torch callables written here; plan-*: the plans, on the "
                             "torch or the native kernels")
    args = parser.parse_args()
    backward = ILQRBackward(args.backward)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    mpc, pendulum, cartpole = import_anchor()
    warnings.filterwarnings("ignore", message="indexing with dtype torch.uint8")  # mpc.pytorch

    print(f"torch {torch.__version__}, float64, 1 thread, batch {args.batch}, median of "
          f"{args.repeats} interleaved repeats, forward + backward; ours: "
          f"{'autodiff' if args.autodiff_cost else 'exact'} cost derivatives, "
          f"{backward.value} backward, {args.ours}")
    print("CPU ms (and the wall-clock speedup); costs: mean over the batch; solved: ours")
    print(f"{'task':9} {'budget':21} {'ours ms':>8} {'mpc ms':>8} {'speedup':>7} {'wall':>5} "
          f"{'ours cost':>10} {'mpc cost':>10} {'solved':>7}")
    tasks = [t for t in make_tasks(pendulum, cartpole, args.batch) if t.name in args.tasks]
    runners = {}
    for task in tasks:
        if args.ours == "runtime":
            runners[task.name] = run_ours
        else:
            module = task_plan(task, args.ours.removeprefix("plan-"))
            runners[task.name] = lambda task, options, q, p, exact_cost, module=module: \
                run_plan(module, task, options, q, p)
    for task in tasks:
        solve = runners[task.name]
        q, p = task.env.get_true_obj()
        solve(task, budgets(task)[0][3], q, p, exact_cost=not args.autodiff_cost)  # warm-up
        run_anchor(mpc, task, 1, 0.0, q, p)
        for label, iters, eps, options in budgets(task):
            options = replace(options, backward=backward)
            ours, theirs = [], []
            for _ in range(args.repeats):
                ours.append(solve(task, options, q, p, exact_cost=not args.autodiff_cost))
                theirs.append(run_anchor(mpc, task, iters, eps, q, p))
            t_ours, t_mpc = ([statistics.median(r[0][i] for r in runs) for i in (0, 1)]
                             for runs in (ours, theirs))
            solved = (ours[-1][3].status == Status.SOLVED).sum().item()
            print(f"{task.name:9} {label:21} {1e3 * t_ours[0]:8.1f} {1e3 * t_mpc[0]:8.1f} "
                  f"{t_mpc[0] / t_ours[0]:6.1f}x {t_mpc[1] / t_ours[1]:4.1f}x "
                  f"{ours[-1][1].mean().item():10.4f} "
                  f"{theirs[-1][1].mean().item():10.4f} {solved:3d}/{args.batch}")
    print("\nd loss / d p along a random direction vs central differences of re-solves "
          "(relative error):")
    for task in tasks:
        q, p = task.env.get_true_obj()
        (ours, theirs), solved = gradient_check(mpc, task, q, p, backward, runners[task.name])
        print(f"{task.name:9} ours {ours:.1e}   mpc.pytorch {theirs:.1e}   "
              f"(ours converged: {solved})")


if __name__ == "__main__":
    main()
