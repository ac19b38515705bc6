"""Launching data-parallel training the way `torchrun` does, on one machine.

`launch(nproc, fn, *args)` starts `nproc` processes (torch.multiprocessing spawn), sets in each
the variables torchrun sets (MASTER_ADDR=127.0.0.1, MASTER_PORT, RANK, LOCAL_RANK, WORLD_SIZE),
joins the process group through the `env://` rendezvous (gloo on CPU, nccl when every rank has a
CUDA device of its own) and calls `fn(*args)`. Inside, `runtime.training.Trainer` sees the
initialized group and wraps its loss in DistributedDataParallel. A script already started by
`torchrun` calls `init_from_env()` instead.
"""
from __future__ import annotations

import os
import socket
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() > 1 else "gloo"


def launch(nproc: int, fn: Callable, *args, backend: str | None = None, start_method: str = "spawn") -> None:
    """Run `fn(*args)` in `nproc` processes joined in one process group (see the module docstring).

    `fn` must be picklable (a module-level function). Results travel through files: rank 0 writes
    them. An exception in any process is raised here (torch's ProcessRaisedException).
    `start_method="fork"` (CPU only) skips the children's imports of torch and planlang: much
    faster to start, but unsafe once CUDA or torch's thread pools are initialized in the parent.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    port = free_port()
    mp.start_processes(_worker, args=(nproc, port, backend or default_backend(), fn, args), nprocs=nproc,
                       join=True, start_method=start_method)


def _worker(rank: int, world: int, port: int, backend: str, fn: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    init_from_env(backend)
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group described by torchrun's environment variables, if any.

    Returns True when this process is part of a group (already, or joined now).
    """
    if dist.is_initialized():
        return True
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, init_method="env://")
    return True


def device() -> torch.device:
    """This process's device: its own CUDA device under nccl, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
