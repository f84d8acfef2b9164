"""Triton's launch path on a machine without a GPU, so that a CPU benchmark can time the host work of a launch.

`offline_launches()` puts a stand-in driver in place for the duration of a `with` block: it answers "an sm_90
GPU" (132 multiprocessors, 227 KiB of shared memory per block, as an H100/H200), Triton compiles kernels up to
PTX (the ptxas step is skipped: no binary is needed), autotuning takes the first pruned config without timing,
and the final driver call of each launch only counts the launch. Everything else a launch does on the host runs
for real: the op's launcher function (output allocation, strides, grid), Triton's argument binding,
specialisation and cache lookups. What is not modelled is the C launcher's own argument packing and the driver
call, a few microseconds per launch, so timings under it slightly understate the host work of a real launch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

H100_PROPERTIES = {"max_shared_mem": 232448, "multiprocessor_count": 132, "max_num_regs": 65536, "warpSize": 32,
                   "sm_clock_rate": 1980000, "mem_clock_rate": 3201000, "mem_bus_width": 6144}


@dataclass
class LaunchCounter:
    launches: int = 0


def _driver_class():
    from iqa_plugins.kernels.diff_attention.compile_check import stand_in_driver_class

    class _Utils:
        def get_device_properties(self, device: int) -> dict:
            return dict(H100_PROPERTIES)

        def load_binary(self, name, kernel, shared, device):  # noqa: ANN001, ANN201
            return 1, 1, 0, 0, 1024  # module, function, registers, spills, max threads per block

        def unload_module(self, module) -> None:  # noqa: ANN001
            pass

    class OfflineDriver(stand_in_driver_class(90)):
        def __init__(self, counter: LaunchCounter) -> None:
            self.utils = _Utils()
            self.counter = counter

            def launcher_cls(src, metadata):  # noqa: ANN001, ANN202
                def launch(*args) -> None:  # noqa: ANN002
                    counter.launches += 1

                return launch

            self.launcher_cls = launcher_cls

        def get_benchmarker(self):  # noqa: ANN201
            return lambda kernel_call, quantiles=None, **kwargs: [1.0, 1.0, 1.0]  # every config ties: the first wins

        def get_current_device(self) -> int:
            return 0

    return OfflineDriver


@contextlib.contextmanager
def offline_launches(cache_dir: Path) -> Iterator[LaunchCounter]:
    """Within the block, Triton kernels launched on CPU tensors go through the whole host path and count.

    The binary-less kernels go to their own cache folder, and a machine with a GPU is refused: Triton keeps
    compiled kernels per device in memory, and a later real launch must never find one of these.
    """
    if torch.cuda.is_available():
        raise RuntimeError("offline_launches is for machines without a GPU (it would shadow real kernels)")
    from triton import knobs
    from triton.backends.nvidia import compiler as nvidia
    from triton.runtime.driver import driver

    counter = LaunchCounter()
    make_cubin, previous_cache = nvidia.CUDABackend.make_cubin, knobs.cache.dir
    previous_driver = driver._active  # None on a machine without a GPU driver (reset_active would raise there)
    nvidia.CUDABackend.make_cubin = lambda self, src, metadata, opt, capability: b""
    knobs.cache.dir = str(cache_dir)
    driver.set_active(_driver_class()(counter))
    try:
        yield counter
    finally:
        driver.set_active(previous_driver)
        knobs.cache.dir = previous_cache
        nvidia.CUDABackend.make_cubin = make_cubin
