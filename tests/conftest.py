"""Shared test set-up.

Planning problems here are small: torch's intra-op threads only add synchronization, and on a
loaded 2-core CI machine a batched Cholesky on 2 threads measured ~1000x slower than on one.
"""
import torch

torch.set_num_threads(1)
