"""How a scoring process shares the CPU cores between decoding workers and torch's own threads.

Why a policy: torch's intra-op threads synchronise at every operator. When they outnumber the cores actually
free (decoding workers busy on the same cores, or other jobs on a shared machine) each barrier waits for a
descheduled thread, and a 2-thread model can run several times slower than a 1-thread one (measured in
``benchmarks/bench_scoring_throughput.py``). So the cores are split, not shared:

- CPU scoring: one decoding process (decoding a photo costs a few percent of a neural metric's compute, and one
  process is enough to keep the next batch ready while the model runs), torch gets the remaining cores.
- CUDA scoring: the model runs on the GPU, so decoding is what limits throughput; every core but one decodes,
  torch keeps one thread to feed the device (pinned host memory, non-blocking copies).
- Decoding workers run single-threaded so that each stays on its one core (PyTorch's DataLoader sets one torch
  thread in every worker; decoding itself is PIL, single-threaded).
- Waiting OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE`` unless the user set it),
  so an oversubscribed or shared machine loses less.

An explicit ``--threads``/``--workers`` choice is honoured; :func:`plan_threads` only warns when it asks for more
busy threads than there are cores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["ThreadPlan", "apply_plan", "available_cores", "plan_threads", "quiet_openmp_waits"]


@dataclass(frozen=True)
class ThreadPlan:
    torch_threads: int
    workers: int
    cores: int
    warning: str | None = None


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset restrict)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def plan_threads(device_type: str, threads: int | None = None, workers: int | None = None,
                 cores: int | None = None) -> ThreadPlan:
    """Torch threads and decoding workers for scoring on ``device_type`` ("cpu" or "cuda").

    ``threads``/``workers``: the user's explicit choice (None: the policy decides). Raises ValueError on values
    below their minimum (threads >= 1, workers >= 0).
    """
    cores = cores or available_cores()
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    if workers is not None and workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    if device_type == "cuda":
        default_workers, default_threads = max(1, cores - 1), 1
    else:
        default_workers = 1 if cores >= 2 else 0
        default_threads = max(1, cores - (workers if workers is not None else default_workers))
    workers = default_workers if workers is None else workers
    threads = default_threads if threads is None else threads
    # On CUDA torch's thread mostly waits for the device: only the decoding processes compete for cores.
    busy = workers + (threads if device_type != "cuda" else 0)
    warning = None
    if busy > cores:
        warning = (f"{threads} torch thread(s) and {workers} decoding worker(s) oversubscribe the {cores} "
                   f"available core(s), which slows scoring down; "
                   f"--threads {max(1, cores - min(workers, cores - 1))} with --workers {min(workers, cores - 1)} "
                   f"fits them")
    return ThreadPlan(torch_threads=threads, workers=workers, cores=cores, warning=warning)


def quiet_openmp_waits() -> None:
    """Make idle OpenMP threads sleep rather than spin; effective only before torch is first imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def apply_plan(plan: ThreadPlan) -> None:
    """Set torch's intra-op threads in this process."""
    import torch

    torch.set_num_threads(plan.torch_threads)

