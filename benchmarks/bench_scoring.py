"""Scoring throughput as a user gets it: `iqa-plugins score` (decode + score + write) against the bare model loop
on pre-decoded tensors and against pyiqa's own command, plus start-up, the thread/worker policy under a competing
load, and the Ray engine with 1 and 2 workers.

    .venv/bin/python -m pytest benchmarks/bench_scoring.py --benchmark-enable -q     (or benchmarks/run.py)

Model: DR.Experts, small config (the demo's size), random weights installed as the default checkpoint in a
benchmark-local TORCH_HOME, so `pyiqa drexperts -t DIR` and `iqa-plugins score DIR --metric drexperts` load the
same file without options. Input: N = 48 JPEG photos of 512x384 (crops of scikit-image's photos, quality 90: the
decoding cost of real photos of this size; 512 on a GPU). Cases, all in one run so their ratios share the machine's load:
- `bare_loop/torch_defaults`, `bare_loop/policy`: `metric(batch)` on tensors already decoded and stacked, batches
  of 8 (the command's default), under torch's defaults and under the command's thread policy;
- `loop/command`, `loop/pyiqa_command`: each command's scoring loop on the N images with its model already built:
  decode + score + CSV write under the thread policy for `iqa-plugins score`, one path at a time through
  `metric(path)` for `pyiqa drexperts -t DIR` (its command's loop). The bare loops and the command's loop run
  in fresh processes (`scoring_loops.py`): libgomp fixes its spin setting when torch is imported; they run
  again with one competing process spinning on a core (`.../competing`);
- `entry_point/command`, `entry_point/pyiqa_command`: each command's own entry point on the N images, called in
  this process (imports paid once, the model built in every run, as a command does);
- `start_up/command`, `start_up/pyiqa_command`: a fresh process of each command on one image, start to exit
  (the time to the first score of one image); `start_up/imports_floor`: a fresh process that only imports what
  building the model needs (torch, open_clip and what it imports), the floor under both;
- `policy/<load>/<config>`: the command on N images with the default policy, with one decoding process and
  torch on the other cores (OpenMP threads asleep at once: the policy it replaced) and with libgomp's long spin,
  on the machine as it is and with one competing process spinning on a core;
- `ray/workers<k>`: the Ray engine's Python API (`image_paths_dataset` + `map_batches(ImageScorer)`) with k CPU
  actors (one torch thread each) on a local cluster started here, on 8 N images; the job's start-up (time to the
  first result: actors import torch and build the model) and the pool's rate after it, and the scaling
  efficiency rate2 / (2 rate1).
The module writes `scoring.json` (environment, load average per case, images/s, ratios) into the results folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import common
import numpy as np
import pytest
import torch
from PIL import Image

RESULTS_DIR = Path(__file__).parent / "results"
BIN = Path(sys.executable).parent
BATCH = 8
RAY_COPIES = 8  # the Ray cases score 8 x N images: every job starts its actors, the set must outweigh that
_results: dict[str, dict] = {}


PHOTOS = ("astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")


def _photo(index: int) -> Image.Image:
    """A distinct 512x384 photo: one of scikit-image's photos (offline), cropped at an index-dependent place."""
    import skimage.data

    image = Image.fromarray(getattr(skimage.data, PHOTOS[index % len(PHOTOS)])())
    height, width = common.IMAGE_HW
    scale = (1.0 + 0.1 * (index // len(PHOTOS))) * max(width / image.width, height / image.height)
    image = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))))
    rng = np.random.default_rng(index)
    left, top = (int(rng.integers(0, extra + 1)) for extra in (image.width - width, image.height - height))
    return image.crop((left, top, left + width, top + height))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, bench_mode, bench_device):
    pytest.importorskip("skimage", reason="the benchmark's photos are scikit-image's bundled ones")
    from iqa_plugins.archs.drexperts_arch import DEFAULT_WEIGHTS, DRExperts, save_pretrained

    root = tmp_path_factory.mktemp("scoring")
    cache = root / "torch_home" / "hub" / "pyiqa"  # pyiqa's cache under TORCH_HOME
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    save_pretrained(DRExperts(pretrained=False, config="small"), cache / DEFAULT_WEIGHTS.filename,
                    source="benchmark: random small config")
    # a GPU scores the small model hundreds of times faster: more images, so start-up costs do not dominate
    count = 4 if bench_mode == "quick" else (512 if bench_device.type == "cuda" else 48)
    folders = {"all": root / "all", "one": root / "one", "many": root / "many"}
    for folder in folders.values():
        folder.mkdir()
    for index in range(count):
        _photo(index).save(folders["all"] / f"{index:04d}.jpg", quality=90)
        for copy in range(RAY_COPIES if bench_mode == "full" else 1):  # the Ray cases' larger set
            shutil.copy(folders["all"] / f"{index:04d}.jpg", folders["many"] / f"{copy:02d}_{index:04d}.jpg")
    Image.open(folders["all"] / "0000.jpg").save(folders["one"] / "0000.jpg", quality=90)
    env = {**os.environ, "TORCH_HOME": str(root / "torch_home"), "PYTHONUNBUFFERED": "1"}
    return {"root": root, "folders": folders, "count": count, "env": env, "weights": cache / DEFAULT_WEIGHTS.filename,
            "device": bench_device}


def _record(key: str, info: dict, benchmark=None) -> None:
    info = {**info, "load_average_1m": round(os.getloadavg()[0], 2)}
    _results[key] = info
    if benchmark is not None:
        benchmark.extra_info.update(info)
    _write()


def _write() -> None:
    summary: dict[str, float | None] = {}
    for scope in ("loop", "entry_point"):
        ours, theirs = _results.get(f"{scope}/command"), _results.get(f"{scope}/pyiqa_command")
        for name in ("torch_defaults", "policy"):
            bare = _results.get(f"bare_loop/{name}")
            if bare and ours:
                summary[f"command_{scope}_over_bare_loop_{name}"] = ours["images_per_s"] / bare["images_per_s"]
        if ours and theirs:
            summary[f"command_{scope}_over_pyiqa_command_{scope}"] = ours["images_per_s"] / theirs["images_per_s"]
    competing = {name: _results.get(f"{key}/competing") for name, key in LOOP_CASES.items()}
    if competing["command"] and competing["bare_torch_defaults"]:
        summary["competing_command_loop_over_bare_loop_torch_defaults"] = (
            competing["command"]["images_per_s"] / competing["bare_torch_defaults"]["images_per_s"])
    if competing["bare_policy"] and competing["bare_torch_defaults"]:
        summary["competing_bare_loop_policy_over_torch_defaults"] = (
            competing["bare_policy"]["images_per_s"] / competing["bare_torch_defaults"]["images_per_s"])
    for tool in ("command", "pyiqa_command"):
        if f"start_up/{tool}" in _results:
            summary[f"{tool}_first_score_of_one_image_s"] = _results[f"start_up/{tool}"]["median_s"]
    if "start_up/imports_floor" in _results:
        summary["imports_floor_s"] = _results["start_up/imports_floor"]["median_s"]
    ray1, ray2 = _results.get("ray/workers1"), _results.get("ray/workers2")
    if ray1 and ray2 and ray1.get("steady_images_per_s") and ray2.get("steady_images_per_s"):
        summary["ray_scaling_efficiency_2_workers"] = ray2["steady_images_per_s"] / (2 * ray1["steady_images_per_s"])
    device = next((torch.device(r["device_type"]) for r in _results.values()), torch.device("cpu"))
    out_dir = common.results_dir() or RESULTS_DIR / common.device_slug(device)
    common.write_json(out_dir / "scoring.json", {
        "schema": common.SCHEMA,
        "benchmark": "iqa-plugins score vs the bare model loop vs pyiqa's command; thread policy; Ray engine",
        "environment": common.environment_info(device),
        "model": "drexperts, small config, random weights as the default checkpoint",
        "input": f"JPEG photos {common.IMAGE_HW[1]}x{common.IMAGE_HW[0]}, batch {BATCH}",
        "summary": summary,
        "results": _results,
    })


def _time_process(args: list[str], env: dict, rounds: int) -> list[float]:
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
        seconds.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return seconds


def _loop_in_child(case: str, setup: dict, rounds: int) -> dict:
    """`scoring_loops.py CASE` in a fresh process (its own OpenMP setting); its timings and thread counts."""
    args = [sys.executable, "-I", str(Path(__file__).parent / "scoring_loops.py"), case,
            str(setup["folders"]["all"]), str(setup["weights"]), setup["device"].type, str(rounds), str(BATCH)]
    result = subprocess.run(args, capture_output=True, text=True, env=setup["env"], timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"scoring_loops.py {case} failed ({result.returncode}): {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# bare loops under torch's defaults and under the command's policy, and the command's own loop
LOOP_CASES = {"bare_torch_defaults": "bare_loop/torch_defaults", "bare_policy": "bare_loop/policy",
              "command": "loop/command"}


@pytest.mark.parametrize("load", ["as_is", pytest.param("competing", marks=pytest.mark.slow)])
@pytest.mark.parametrize("case", list(LOOP_CASES))
def test_scoring_loop(benchmark, setup, bench_mode, case, load):
    if load == "competing" and setup["device"].type != "cpu":
        pytest.skip("the competing process takes a CPU core")
    with _competing_load(load):
        measured = _loop_in_child(case, setup, rounds=1 if bench_mode == "quick" else 5)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # the timings are the child process's
    median = float(np.median(measured["seconds"]))
    key = LOOP_CASES[case] if load == "as_is" else f"{LOOP_CASES[case]}/competing"
    _record(key, {"device_type": setup["device"].type, "images": measured["images"],
                               "torch_threads": measured["torch_threads"], "workers": measured["workers"],
                               "rounds_s": measured["seconds"], "median_s": median,
                               "images_per_s": measured["images"] / median}, benchmark)


def _command(tool: str, folder: Path, device: torch.device, extra: list[str] = ()) -> list[str]:
    """The command line a user types (arguments after the program name)."""
    if tool == "command":
        return ["score", str(folder), "--metric", "drexperts", "--device", device.type,
                "-o", str(folder.parent / f"{folder.name}.csv"), "-q", *extra]
    return ["drexperts", "-t", str(folder), "--device", device.type]


def _run_in_process(tool: str, argv: list[str]) -> None:
    """One run of the command's own entry point in this process (imports already paid; model built each run)."""
    threads = torch.get_num_threads()
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            if tool == "command":
                from iqa_plugins.cli import main

                status = main(argv)
            else:
                from unittest import mock

                from pyiqa.pyiqa_cmd import main

                with mock.patch.object(sys, "argv", ["pyiqa", *argv]):
                    status = main()
    finally:
        torch.set_num_threads(threads)  # the command applies its thread policy to this process
    if status:
        raise RuntimeError(f"{tool} {' '.join(argv)} exited with {status}")


def _pyiqa_scoring_loop(setup: dict):
    """pyiqa's command's loop after its model is built: one path at a time through `metric(path)`."""
    import pyiqa
    from pyiqa.utils import scandir_images

    metric = pyiqa.create_metric("drexperts", device=setup["device"])

    def run():
        for target in scandir_images(str(setup["folders"]["all"])):
            metric(target).item()
    return run


# the entry points build the model every run: seconds more per round, so CI's quick mode skips them
@pytest.mark.parametrize("scope, tool", [("loop", "pyiqa_command"),
                                         pytest.param("entry_point", "command", marks=pytest.mark.slow),
                                         pytest.param("entry_point", "pyiqa_command", marks=pytest.mark.slow)])
def test_command_throughput(benchmark, setup, bench_mode, monkeypatch, tool, scope):
    monkeypatch.setenv("TORCH_HOME", setup["env"]["TORCH_HOME"])  # the benchmark's checkpoint as the default
    threads = torch.get_num_threads()
    try:
        if scope == "loop":
            run = _pyiqa_scoring_loop(setup)
        else:
            argv = _command(tool, setup["folders"]["all"], setup["device"])
            _run_in_process(tool, _command(tool, setup["folders"]["one"], setup["device"]))  # warm-up

            def run():
                _run_in_process(tool, argv)
        run()  # warm-up
        benchmark.pedantic(run, rounds=1 if bench_mode == "quick" else 3, iterations=1)
    finally:
        torch.set_num_threads(threads)
    median = benchmark.stats.stats.median
    _record(f"{scope}/{tool}", {"device_type": setup["device"].type, "images": setup["count"],
                                "median_s": median, "images_per_s": setup["count"] / median}, benchmark)


# What any process that builds DR.Experts imports (open_clip imports timm, torchvision, torch._dynamo and
# transformers): the floor under both commands' start-up.
IMPORTS_FLOOR = "import torch, open_clip"


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["command", "pyiqa_command", "imports_floor"])
def test_first_score_of_one_image(benchmark, setup, tool):
    if tool == "imports_floor":
        args = [sys.executable, "-I", "-c", IMPORTS_FLOOR]
    else:
        program = [str(BIN / "iqa-plugins")] if tool == "command" else [str(BIN / "pyiqa")]
        args = program + _command(tool, setup["folders"]["one"], setup["device"])
    _time_process(args, setup["env"], 1)  # warm the file cache
    seconds = _time_process(args, setup["env"], 3)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # the timings are the fresh processes' above
    _record(f"start_up/{tool}", {"device_type": setup["device"].type, "images": 1, "rounds_s": seconds,
                                 "median_s": sorted(seconds)[1], "images_per_s": 1 / sorted(seconds)[1]}, benchmark)


@contextlib.contextmanager
def _competing_load(kind: str) -> Iterator[None]:
    """`competing`: another process spinning on one core for the duration (a second job on the machine)."""
    if kind != "competing":
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        yield
    finally:
        spinner.kill()
        spinner.wait()


POLICY_CONFIGS = {
    "default": ([], {}),
    # one decoding process and torch on the cores it leaves, waiting OpenMP threads asleep at once
    "split_passive": (["--workers", "1", "--threads", str(max(1, (os.cpu_count() or 1) - 1))],
                      {"OMP_WAIT_POLICY": "PASSIVE"}),
    # the default split of the cores with libgomp's own long spin
    "default_long_spin": ([], {"GOMP_SPINCOUNT": "300000"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("config", list(POLICY_CONFIGS))
@pytest.mark.parametrize("load", ["as_is", "competing"])
def test_thread_policy(benchmark, setup, load, config):
    if setup["device"].type != "cpu":
        pytest.skip("the CPU thread policy is measured on CPUs")
    extra, env = POLICY_CONFIGS[config]
    args = [str(BIN / "iqa-plugins"), *_command("command", setup["folders"]["all"], setup["device"], extra)]
    with _competing_load(load):
        seconds = _time_process(args, {**setup["env"], **env}, 2)
        _record(f"policy/{load}/{config}", {"device_type": "cpu", "images": setup["count"], "rounds_s": seconds,
                                           "median_s": min(seconds), "images_per_s": setup["count"] / min(seconds),
                                           "options": extra, "env": env})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(_results[f"policy/{load}/{config}"])


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_ray_workers(benchmark, setup, workers):
    ray = pytest.importorskip("ray", reason="the Ray engine is an optional extra: pip install 'iqa-plugins[ray]'")
    from iqa_plugins.scale.ray_engine import ImageScorer, image_paths_dataset

    if setup["device"].type != "cpu":
        pytest.skip("CPU actors here; on GPUs one actor per GPU (--num-gpus-per-worker 1)")
    if not ray.is_initialized():
        ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    # The Python API as a user composes it; arrival times of the results separate the actors' start-up (import
    # torch, build the model: once per job) from the pool's scoring rate.
    dataset, bad = image_paths_dataset([str(setup["folders"]["many"])], rows_per_block=BATCH)
    scored = dataset.map_batches(
        ImageScorer, fn_constructor_kwargs={"metric": "drexperts",
                                            "metric_options": {"pretrained_model_path": str(setup["weights"])}},
        batch_size=BATCH, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1, batch_format="numpy")
    start = time.perf_counter()
    arrivals = []
    for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
        assert not any(batch["error"]), batch["error"]
        arrivals.append((time.perf_counter() - start, len(batch["path"])))
    total = time.perf_counter() - start
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    images = sum(n for _, n in arrivals)
    assert not bad and images == len(list(setup["folders"]["many"].iterdir()))
    # from the first result on, both actors are running: the rate over the rest is the pool's
    steady = (images - arrivals[0][1]) / (arrivals[-1][0] - arrivals[0][0])
    _record(f"ray/workers{workers}", {"device_type": "cpu", "images": images, "workers": workers,
                                      "median_s": total, "first_result_s": arrivals[0][0],
                                      "steady_images_per_s": steady, "images_per_s": images / total}, benchmark)
    if workers == 2:
        ray.shutdown()
