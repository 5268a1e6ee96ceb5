"""Data parallelism for prompt training under ``accelerate launch`` / ``torchrun``.

Each rank trains on its own batches; the prompt's gradient is averaged with an all-reduce, so every rank holds the
identical prompt after every step. Outside a launcher these are no-ops.
"""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist


def init_from_env() -> None:
    """Join the process group a launcher describes in the environment (gloo on CPU, nccl on GPUs)."""
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    atexit.register(_leave)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def _leave() -> None:
    """Destroy the group before the interpreter exits: a gloo group left to static destructors can abort the
    process ("terminate called without an active exception") after its work is done."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a CPU tensor over ranks in place (through the GPU when the backend is nccl)."""
    if rank_and_world()[1] > 1:
        on_backend = tensor.cuda() if dist.get_backend() == "nccl" else tensor
        dist.all_reduce(on_backend, op=dist.ReduceOp.SUM)
        tensor.copy_(on_backend.cpu())
    return tensor


def average_gradient(parameter: torch.nn.Parameter) -> None:
    world = rank_and_world()[1]
    if world > 1 and parameter.grad is not None:
        dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
        parameter.grad /= world


def is_main() -> bool:
    return rank_and_world()[0] == 0
