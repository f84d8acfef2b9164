"""Speed of the 25 KADID-10k distortions and of the multi-distortion generator on 512x384 images.

Two ways to run it:

* ``python benchmarks/bench_distortions.py [--variants 2] [--workers 2]``: times every distortion at every
  level (median of repeats) and a generator run, and writes ``benchmarks/results/cpu/distortions.json`` with
  the machine, versions, date and load average (other processes sharing the CPU slow the figures down).
* ``pytest benchmarks/bench_distortions.py --benchmark-enable --benchmark-json=...``: pytest-benchmark per
  distortion (level 3) and for one generated variant.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import skimage.data
from PIL import Image

from iqa_plugins.data import generator as gen
from iqa_plugins.data.distortions import DISTORTIONS, apply_distortion, apply_distortions

SIZE = (512, 384)  # width, height: KADID-10k's image size
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
RESULTS = Path(__file__).resolve().parent / "results" / "cpu" / "distortions.json"


def photo_uint8(name: str) -> np.ndarray:
    return np.asarray(Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize(SIZE, Image.BICUBIC))


def time_distortions(repeats: int) -> dict[str, dict]:
    x = photo_uint8("astronaut").astype(np.float64) / 255.0
    table = {}
    for d in DISTORTIONS:
        per_level = []
        for level in range(1, 6):
            runs = []
            for r in range(repeats):
                t0 = time.perf_counter()
                apply_distortion(x, d.number, level, seed=r)
                runs.append(time.perf_counter() - t0)
            per_level.append(statistics.median(runs) * 1000)
        table[d.slug] = {
            "number": d.number,
            "ms_per_level": [round(v, 2) for v in per_level],
            "ms_mean": round(statistics.fmean(per_level), 2),
        }
    return table


def time_generator(variants: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "pristine"
        src.mkdir()
        for name in PHOTOS:
            Image.fromarray(photo_uint8(name)).save(src / f"{name}.png")
        t0 = time.perf_counter()
        report = gen.generate_dataset(
            src, Path(tmp) / "out", variants=variants, workers=workers, labeller="ssim", progress=False
        )
        wall = time.perf_counter() - t0
    return {
        "pristine_images": len(PHOTOS),
        "variants_per_image": variants,
        "workers": workers,
        "labeller": "ssim",
        "generated": report.generated,
        "wall_s": round(wall, 2),
        "images_per_s": round(report.generated / wall, 3),
        "note": "includes worker start-up; K uniform in 1..25 distortions per image (mean 13)",
    }


def environment() -> dict:
    """The suite's common environment record plus the image libraries the distortions use."""
    import cv2
    import PIL
    import scipy
    import skimage

    return {
        **common.environment_info("cpu"),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-image": skimage.__version__,
        "opencv": cv2.__version__,
        "pillow": PIL.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", type=int, default=2)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    distortions = time_distortions(args.repeats)
    generator = time_generator(args.variants, args.workers)
    result = {
        "benchmark": "KADID-10k distortions and multi-distortion generator, 512x384 RGB",
        "environment": environment(),
        "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "distortion_ms": distortions,
        "all_distortions_mean_ms": round(statistics.fmean(v["ms_mean"] for v in distortions.values()), 2),
        "generator": generator,
    }
    common.write_json(args.output, result)
    json.dump({k: result[k] for k in ("all_distortions_mean_ms", "generator", "load_average_1min_before_after")},
              sys.stdout, indent=1)
    print()
    return 0


# ---------------------------------------------------------------------------------------------------------------
# pytest-benchmark entry points (collected only when this file is named on the pytest command line)

try:
    import pytest
except ImportError:  # the script path does not need pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="module")
    def bench_image() -> np.ndarray:
        return photo_uint8("astronaut").astype(np.float64) / 255.0

    @pytest.mark.parametrize("number", [d.number for d in DISTORTIONS])
    def test_distortion_speed(benchmark, bench_image, number):
        out = benchmark(apply_distortion, bench_image, number, 3, 0)
        assert out.shape == bench_image.shape

    def test_generator_variant_speed(benchmark, bench_image):
        def one_variant(v=[0]):
            v[0] += 1
            rng = gen.variant_rng(0, "astronaut.png", v[0])
            return apply_distortions(bench_image, gen.sample_distortions(rng), rng)

        assert benchmark(one_variant).shape == bench_image.shape


if __name__ == "__main__":
    sys.exit(main())
