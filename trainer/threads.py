"""How many threads torch computes with: each trainer command sets it on purpose and restores it afterwards.

torch's default is one thread per physical core of the machine, whatever else runs there and whatever CPUs the
process may use; two jobs on one machine then fight over the cores and both slow down. The commands default to the
CPUs this process may use (its affinity mask), split between the ranks a launcher started on this machine, and
``--threads`` sets the count for jobs that share a machine. Restoring the count keeps in-process runs (tests, a
notebook) as they were.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from ctpreg.registry.errors import InvalidInput

log = logging.getLogger(__name__)


def cpus_available() -> int:
    """CPUs this process may run on (its affinity mask, where the OS has one), not all the machine has."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run the body with ``n`` torch threads (``None``: the CPUs this process may use, shared by the ranks a
    launcher started on this machine), then restore the count found."""
    if n is not None and n < 1:
        raise InvalidInput(f"threads must be >= 1, got {n}")
    from .deps import require

    require("torch")
    import torch

    cpus = cpus_available()
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by torchrun / accelerate launch
    count = n or max(1, cpus // max(1, local_ranks))
    shared = f", shared by {local_ranks} ranks" if local_ranks > 1 else ""
    given = f"--threads {n}; " if n else ""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    log.info("torch: %d thread(s) (%sdefault: the %d CPU(s) this process may use%s)", count, given, cpus, shared)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)
