"""How a scoring process shares the CPU cores between decoding and torch's own threads.

Why a policy: torch's intra-op threads synchronise at every operator. When they outnumber the cores actually
free (a decoding process busy on the same cores, or other jobs on a shared machine), each barrier waits for a
descheduled thread, and a 2-thread model can run several times slower than a 1-thread one. Measured on a
2-core machine with the small DR.Experts (``benchmarks/bench_scoring.py``; decoding a 512x384 JPEG costs about
a fifth of scoring it there):

- CPU scoring on fewer than 4 cores: torch gets every core and images are decoded in the scoring process,
  between batches. A decoding process of its own would take a whole core from the model for a fifth of its
  work (that split ran at 0.6x of this one on an idle machine, and no faster with another job spinning).
  From 4 cores on, one decoding process overlaps decoding with scoring at the cost of one core of several.
- CUDA scoring: the model runs on the GPU, so decoding is what limits throughput; every core but one decodes,
  torch keeps one thread to feed the device (pinned host memory, non-blocking copies).
- Decoding workers run single-threaded so that each stays on its one core (PyTorch's DataLoader sets one torch
  thread in every worker; decoding itself is PIL, single-threaded).
- Waiting OpenMP threads spin only briefly before they sleep (``GOMP_SPINCOUNT=1000`` unless the user set it or
  ``OMP_WAIT_POLICY``; every ``iqa-plugins`` command and every Ray scoring actor): libgomp's default spin of 300,000 rounds keeps a descheduled team spinning against
  whatever else runs (with one other busy process, 2 threads scored at half the rate of the short spin), while
  sleeping at once (``OMP_WAIT_POLICY=PASSIVE``) costs a wake-up at every operator of a small model (a quarter
  of the idle rate).

An explicit ``--threads``/``--workers`` choice is honoured; :func:`plan_threads` only warns when it asks for more
busy threads than there are cores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["ThreadPlan", "apply_plan", "available_cores", "bound_openmp_spin", "plan_threads"]

# Below this many cores a CPU scoring process decodes its images itself instead of in a separate process.
SEPARATE_DECODER_MIN_CORES = 4
# Rounds a waiting libgomp thread spins before it sleeps (libgomp's default: 300,000).
OPENMP_SPIN_COUNT = "1000"


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
        default_workers = 1 if cores >= SEPARATE_DECODER_MIN_CORES else 0
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


def bound_openmp_spin() -> None:
    """Let idle OpenMP threads spin only briefly; effective only before torch is first imported, and only
    where the user has set neither ``GOMP_SPINCOUNT`` nor ``OMP_WAIT_POLICY``."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)


def apply_plan(plan: ThreadPlan) -> None:
    """Set torch's intra-op threads in this process."""
    import torch

    torch.set_num_threads(plan.torch_threads)

