"""Evidence for the Triton-path test bounds: run the float64 comparison over many seeds, with the real kernels
(it must never fail) and with deliberately wrong ones (it must fail).

    TRITON_INTERPRET=1 .venv/bin/python tests/kernels/tolerance_sweep.py --seeds 200 \
        --out benchmarks/results/cpu/tolerance_sweep.json

Runs the same `check_vs_float64` and input draws as `test_triton_path_matches_float64`, on its small shapes
(the interpreter is slow). Wrong kernels: the softmax scale off by 1e-4, alpha off by 1e-4, the saved LSE of
stream 2 off by 1e-4 in the backward; each is a bug a real kernel could have and is small next to the
inputs yet far above fp32 rounding.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from pathlib import Path

import torch
import triton

from test_diff_attention import KERNEL_DEVICE, TRITON_SHAPES, check_vs_float64, make_inputs

from iqa_plugins.kernels.diff_attention import triton_kernels as tk

SMALL = [s for s in TRITON_SHAPES if s[3] <= 50]  # N <= 50: a few hundred milliseconds each


@contextlib.contextmanager
def wrong(kind: str):  # noqa: ANN201
    forward, backward = tk.forward, tk.backward
    if kind == "scale":
        tk.forward = lambda *a, **k: forward(*a[:6], a[6] * (1 + 1e-4), *a[7:], **k)
    elif kind == "alpha":
        tk.forward = lambda *a, **k: forward(*a[:5], a[5] * (1 + 1e-4), *a[6:], **k)
    elif kind == "lse2":
        tk.backward = lambda *a: backward(*a[:10], a[10] + 1e-4, a[11])
    try:
        yield
    finally:
        tk.forward, tk.backward = forward, backward


def run(shape: tuple[int, ...], seed: int) -> str | None:
    torch.manual_seed(seed)
    B, H = shape[:2]
    inputs = make_inputs(*shape, device=KERNEL_DEVICE)
    alpha = (torch.rand(B, H, device=KERNEL_DEVICE) + 0.1).requires_grad_()
    try:
        check_vs_float64(inputs, alpha, tol=2e-5)
    except AssertionError as exc:
        return str(exc).splitlines()[0]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--wrong-seeds", type=int, default=50)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if KERNEL_DEVICE is None:
        raise SystemExit("set TRITON_INTERPRET=1 (or run on a CUDA machine)")
    start = time.time()
    result = {"device": KERNEL_DEVICE, "triton": triton.__version__, "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "load_average_1m": os.getloadavg()[0],
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "shapes": SMALL, "runs": {}}
    for kind in ("scale", "alpha", "lse2", "correct"):
        seeds = args.seeds if kind == "correct" else args.wrong_seeds
        failures = []
        with wrong(kind):
            for seed in range(seeds):
                for shape in SMALL:
                    msg = run(shape, seed)
                    if msg is not None:
                        failures.append({"seed": seed, "shape": shape, "error": msg})
                done = (seed + 1) * len(SMALL)
                result["runs"][kind] = {"checks": done, "failed": len(failures), "examples": failures[:5]}
                if (seed + 1) % 10 == 0 or seed + 1 == seeds:
                    print(f"{kind}: {len(failures)} of {done} checks failed", flush=True)
                    result["seconds"] = round(time.time() - start)
                    if args.out:  # written as it goes: a partial sweep still leaves its evidence
                        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
