"""Plots of solutions: states and controls over time (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path


def plot_solution(module, sol, path: Path, element: int = 0) -> None:
    """Write a figure with one panel per state and per control of batch element `element`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sol.layout)
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.2 * len(names)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        which = sol.layout[name][0]
        traj = sol[name][element].detach().cpu().reshape(sol[name].shape[1], -1)
        steps = range(traj.shape[0])
        for k in range(traj.shape[1]):
            label = f"{name}[{k}]" if traj.shape[1] > 1 else name
            if which == "u":
                ax.step(steps, traj[:, k], where="post", label=label)
            else:
                ax.plot(steps, traj[:, k], marker=".", label=label)
        ax.set_ylabel(("state " if which == "x" else "control ") + name)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("stage t")
    status = sol.status_names()[element]
    fig.suptitle(f"{module.plan_name} ({module.solver}, cost {sol.cost[element].item():.4g}, {status})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_episode(episode, path: Path) -> None:
    """Observations, actions and rewards of a closed-loop episode (`runtime.gym_env.Episode`)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(7, 6.6), sharex=True)
    for values, ax, label in ((episode.observations, axes[0], "observation"), (episode.actions, axes[1], "action")):
        flat = values.reshape(values.shape[0], -1)
        for k in range(flat.shape[1]):
            ax.plot(flat[:, k], label=f"{label}[{k}]")
        ax.set_ylabel(label)
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(alpha=0.3)
    axes[2].plot(episode.rewards)
    axes[2].set_ylabel("reward")
    axes[2].set_xlabel("step")
    axes[2].grid(alpha=0.3)
    fig.suptitle(f"episode return {episode.return_:.4g}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
