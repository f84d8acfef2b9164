"""The training loop: pyiqa's datasets, loaders, model registry, losses and checkpoints, driven here.

Why not ``pyiqa.train.train_pipeline`` itself: in pyiqa 0.1.16 it cannot resume on a machine without CUDA
(``load_resume_state`` maps tensors with ``torch.cuda.current_device()``), its resume restores the optimiser but
not the weights of ``GeneralIQAModel`` (``check_resume`` only looks for ``network_*`` keys), a resumed run
replays the interrupted epoch from its start, and it reports the best validation value seen (selection on
the test split). This loop fixes those and otherwise follows pyiqa's structure and file layout:
``experiments/<name>/{models/net_<iter>.pth, training_states/<iter>.state, train_<name>_<time>.log}``.

``train_splits`` runs the repeated random train/val splits protocol and writes every split's final SRCC and
PLCC with their medians (over all runs, never a best subset) to ``results.json`` and ``results.csv``.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iqa_plugins.files import atomic_path
from iqa_plugins.split_files import save_splits
from iqa_plugins.train.progress import TrainingProgress
from iqa_plugins.train.registry import register_training

__all__ = ["RunResult", "run_training", "train_splits", "make_random_splits", "metric_for_arch", "install_to_cache"]


@dataclass
class RunResult:
    """One training run. ``final_metrics`` and ``checkpoint`` are filled on rank 0 only."""

    name: str
    experiments_root: Path
    iterations: int
    final_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None
    """pyiqa's ``{"params": state_dict}`` of the final model."""
    compact_checkpoint: Path | None = None
    """The file the metric loads (``pretrained_model_path``); None for archs without a compact format."""
    model: Any = None
    summary: str = ""


def metric_for_arch(arch_type: str) -> str | None:
    """The plugin metric (``drexperts``/``exiqa``) whose arch is ``arch_type``, or None."""
    from iqa_plugins.archs.pretrained_cfgs import MODELS

    return MODELS[arch_type].metric if arch_type in MODELS else None


def _sampler_class():
    from pyiqa.data.data_sampler import EnlargedSampler

    class ResumableSampler(EnlargedSampler):
        """pyiqa's EnlargedSampler (repeats the data set ``ratio`` times per epoch: several random crops per
        image) that can drop the first ``skip`` samples of one epoch, to resume mid-epoch exactly."""

        skip = 0

        def __iter__(self):
            indices = list(super().__iter__())
            skip, self.skip = self.skip, 0
            return iter(indices[skip:])

    return ResumableSampler


def _build_loaders(opt: dict[str, Any]):
    from pyiqa.data import build_dataloader, build_dataset

    train_opt = opt["datasets"]["train"]
    train_set = build_dataset(train_opt)
    sampler = _sampler_class()(
        train_set, opt["world_size"], opt["rank"], train_opt.get("dataset_enlarge_ratio", 1),
        train_opt.get("use_shuffle", True),
    )
    train_loader = build_dataloader(
        train_set, train_opt, num_gpu=opt["num_gpu"], dist=opt["dist"], sampler=sampler, seed=opt["manual_seed"]
    )
    if len(train_loader) == 0:
        raise ValueError(
            f"datasets.train: {len(sampler)} samples per process is less than one batch of "
            f"{train_loader.batch_size} (drop_last): lower batch_size_per_gpu or raise dataset_enlarge_ratio"
        )
    val_loaders = []
    for phase, dataset_opt in opt["datasets"].items():
        if phase.split("_")[0] == "val":
            val_set = build_dataset(dataset_opt)
            val_loaders.append(build_dataloader(val_set, dataset_opt, num_gpu=opt["num_gpu"], dist=opt["dist"]))
    return train_set, sampler, train_loader, val_loaders


def _latest_state(opt: dict[str, Any]) -> Path | None:
    if opt.get("auto_resume"):
        states = sorted(
            Path(opt["path"]["training_states"]).glob("*.state"), key=lambda p: int(p.stem), reverse=True
        )
        return states[0] if states else None
    path = opt["path"].get("resume_state")
    return Path(path) if path else None


def _bind(handler: logging.StreamHandler, stream: Any) -> None:
    """Point ``handler`` at ``stream`` without flushing its old stream (``setStream`` does), which may be closed
    by now: a replaced ``sys.stderr`` that its owner has closed since."""
    with handler.lock:
        handler.stream = stream


def _set_log_file(logger: logging.Logger, log_file: Path | None, rank: int, console_level: int
                  ) -> list[tuple[logging.Handler, int, Any]]:
    """Everything goes to the run's log file; the console gets ``console_level`` and up (rank 0 only).
    Returns what to undo: the added file handler (level -1) and the console handlers' previous levels and
    streams. The console handlers write to the current ``sys.stderr``: pyiqa creates them once per process,
    bound to whatever ``sys.stderr`` was then (a caller may have replaced it since)."""
    changed: list[tuple[logging.Handler, int, Any]] = []
    logger.setLevel(min(console_level, logging.INFO) if rank == 0 else logging.ERROR)
    for handler in logger.handlers:
        if type(handler) is logging.StreamHandler:
            changed.append((handler, handler.level, handler.stream))
            handler.setLevel(console_level)
            _bind(handler, sys.stderr)
    if rank == 0 and log_file is not None:
        file_handler = logging.FileHandler(log_file, "w")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s"))
        logger.addHandler(file_handler)
        changed.append((file_handler, -1, None))
    return changed


def _restore_log(logger: logging.Logger, changed: list[tuple[logging.Handler, int, Any]]) -> None:
    for handler, level, stream in changed:
        if level == -1:
            logger.removeHandler(handler)
            handler.close()
        else:
            handler.setLevel(level)
            _bind(handler, stream)


def _validate(model, val_loaders, current_iter: int, epoch: int, history: list, rank: int) -> dict:
    results = {}
    for loader in val_loaders:
        model.validation(loader, current_iter, None, False)
        if rank == 0 and getattr(model, "metric_results", None) is not None:
            name = loader.dataset.opt["name"]
            results[name] = {k: float(v) for k, v in model.metric_results.items()}
            history.append({"iter": current_iter, "epoch": epoch, "dataset": name, **results[name]})
    return results


@dataclass(frozen=True)
class _Schedule:
    """How long training runs, in epochs and iterations."""

    iters_per_epoch: int
    total_epochs: int
    total_iters: int


def _schedule(train_opt: dict[str, Any], iters_per_epoch: int) -> _Schedule:
    """``train.total_epoch`` or ``train.total_iter`` over a loader of ``iters_per_epoch`` batches."""
    if train_opt.get("total_epoch") is not None:
        total_epochs = int(train_opt["total_epoch"])
        return _Schedule(iters_per_epoch, total_epochs, total_epochs * iters_per_epoch)
    if train_opt.get("total_iter") is not None:
        total_iters = int(train_opt["total_iter"])
        return _Schedule(iters_per_epoch, math.ceil(total_iters / iters_per_epoch), total_iters)
    raise ValueError("options need train.total_epoch or train.total_iter")


def _progress_for(opt: dict[str, Any], progress: TrainingProgress | None, log_level: int) -> TrainingProgress:
    """The caller's progress (silenced off rank 0), or bars on rank 0 unless ``log_level`` is above WARNING."""
    if progress is None:
        return TrainingProgress(opt["name"], enabled=opt["rank"] == 0 and log_level <= logging.WARNING)
    if opt["rank"] != 0:
        progress.enabled = False
    return progress


def _prepare_experiment(opt: dict[str, Any]) -> Path | None:
    """The training state to resume from (None: a fresh run, whose folders are made here)."""
    from pyiqa.utils import make_exp_dirs

    state_path = _latest_state(opt)
    if state_path is None:
        make_exp_dirs(opt)
    elif not state_path.is_file():
        raise FileNotFoundError(f"resume_state {str(state_path)!r} does not exist")
    return state_path


def _build_model(opt: dict[str, Any], iters_per_epoch: int):
    """pyiqa's model of ``opt['model_type']``; the project's own model gets the iterations per epoch."""
    from pyiqa.models import build_model
    from pyiqa.utils.registry import MODEL_REGISTRY

    from iqa_plugins.train.model import RecipeIQAModel

    if opt["model_type"] in MODEL_REGISTRY and issubclass(MODEL_REGISTRY.get(opt["model_type"]), RecipeIQAModel):
        return MODEL_REGISTRY.get(opt["model_type"])(copy.deepcopy(opt), iters_per_epoch=iters_per_epoch)
    return build_model(opt)


@dataclass
class _Loop:
    """What the epochs of one run share: the model, the data, the schedule and what they record."""

    opt: dict[str, Any]
    model: Any
    sampler: Any
    train_loader: Any
    val_loaders: list
    schedule: _Schedule
    progress: TrainingProgress
    msg_logger: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    @property
    def save_freq(self) -> int:
        return int(float(self.opt["logger"].get("save_checkpoint_freq", 9e9)))

    @property
    def val_freq(self) -> int:
        return int(float((self.opt.get("val") or {}).get("val_freq", 9e9)))


def _load_state(opt: dict[str, Any], state_path: Path | None) -> dict[str, Any] | None:
    """The training state to resume from, with ``opt`` pointed at the weights saved with it."""
    from iqa_plugins.weights import load_checkpoint

    if state_path is None:
        return None
    state = load_checkpoint(state_path)
    # pyiqa's check_resume misses GeneralIQAModel's 'network' key: point the model at the weights.
    opt["path"]["pretrain_network"] = str(Path(opt["path"]["models"]) / f"net_{int(state['iter'])}.pth")
    opt["path"]["strict_load"] = True
    return state


def _resume(loop: _Loop, state: dict[str, Any], state_path: Path) -> tuple[int, int]:
    """Restore optimiser and schedule from ``state`` and skip the part of its epoch already trained;
    returns (start epoch, iterations done)."""
    from pyiqa.utils import get_root_logger

    start_epoch, current_iter = int(state["epoch"]), int(state["iter"])
    loop.model.resume_training(state)
    get_root_logger("pyiqa").info(f"Resumed from {state_path} (epoch {start_epoch}, iteration {current_iter}).")
    done_in_epoch = current_iter - start_epoch * loop.schedule.iters_per_epoch
    loop.sampler.skip = done_in_epoch * loop.train_loader.batch_size
    return start_epoch, current_iter


def _agreed_stop(stop: bool, loop: _Loop) -> bool:
    """Every rank must stop at the same step; rank 0's hook decides."""
    if not loop.opt["dist"]:
        return stop
    flag = torch.tensor([float(stop)], device=loop.model.device)
    torch.distributed.broadcast(flag, 0)
    return bool(flag.item())


def _train_step(loop: _Loop, batch: dict[str, Any], epoch: int, current_iter: int) -> bool:
    """One optimiser step with its logging, checkpoint and validation; True when training should stop."""
    opt, model = loop.opt, loop.model
    model.feed_data(batch)
    model.optimize_parameters(current_iter)
    log = model.get_current_log()
    stop = loop.progress.step(sum(v for k, v in log.items() if k.startswith("l_")),
                              len(batch["img"]) * opt["world_size"])
    stop = _agreed_stop(stop, loop)
    if current_iter % opt["logger"]["print_freq"] == 0 and opt["rank"] == 0:
        loop.msg_logger({
            "epoch": epoch, "iter": current_iter, "lrs": model.get_current_learning_rate(),
            "time": (time.time() - loop.started) / max(1, current_iter), "data_time": 0.0, **log,
        })
    if current_iter % loop.save_freq == 0:
        model.save(epoch, current_iter)
    if current_iter % loop.val_freq == 0 and current_iter < loop.schedule.total_iters and loop.val_loaders:
        _validate(model, loop.val_loaders, current_iter, epoch, loop.history, opt["rank"])
    return stop


def _train_epochs(loop: _Loop, start_epoch: int, current_iter: int) -> tuple[int, int]:
    """Train until the schedule ends or the progress hook stops it; returns (last epoch, iterations done)."""
    schedule = loop.schedule
    epoch, stop = start_epoch, False
    for epoch in range(start_epoch, schedule.total_epochs):
        if current_iter >= schedule.total_iters or stop:
            break
        loop.sampler.set_epoch(epoch)
        loop.progress.start_epoch(epoch, schedule.total_epochs, min(schedule.iters_per_epoch,
                                                                    schedule.total_iters - current_iter))
        for batch in loop.train_loader:
            current_iter += 1
            stop = _train_step(loop, batch, epoch, current_iter)
            if current_iter >= schedule.total_iters or stop:
                break
        loop.progress.end_epoch()
        loop.model.update_learning_rate(epoch + 2, warmup_iter=loop.opt["train"].get("warmup_iter", -1))
    return epoch, current_iter


def _finish(loop: _Loop, epoch: int, current_iter: int) -> RunResult:
    """Validate the final model and, on rank 0, write its checkpoints and the history."""
    opt, root = loop.opt, Path(loop.opt["path"]["experiments_root"])
    final = _validate(loop.model, loop.val_loaders, current_iter, epoch, loop.history, opt["rank"]) \
        if loop.val_loaders else {}
    result = RunResult(opt["name"], root, current_iter, final, loop.history, model=loop.model)
    if opt["rank"] == 0:
        result.checkpoint, result.compact_checkpoint = _save_final(opt, loop.model)
        (root / "history.json").write_text(json.dumps({"final": final, "history": loop.history}, indent=1))
    if opt["dist"]:  # the other ranks wait here while rank 0 validates and writes
        torch.distributed.barrier()
    result.summary = loop.progress.summary() + "".join(
        f"; {name} SRCC {m.get('srcc', float('nan')):.4f} PLCC {m.get('plcc', float('nan')):.4f}"
        for name, m in final.items())
    return result


def run_training(
    opt: dict[str, Any],
    *,
    log_level: int = logging.WARNING,
    progress: TrainingProgress | None = None,
) -> RunResult:
    """Train with finalized options (``options.finalize_options``); resumes from ``path.resume_state`` or,
    with ``auto_resume``, from the newest state of this experiment.

    ``log_level``: what reaches the console (INFO adds the options, the network and pyiqa's periodic loss
    lines; the run's log file always gets everything). ``progress``: per-epoch bars and the per-step hook
    (default: bars on rank 0 unless ``log_level`` is above WARNING); its ``should_stop`` ends training early.
    """
    import pyiqa  # noqa: F401  (activates the plugin: archs resolve through pyiqa's registry)
    from pyiqa.utils import MessageLogger, get_root_logger, get_time_str
    from pyiqa.utils.options import dict2str

    register_training()
    opt = copy.deepcopy(opt)
    progress = _progress_for(opt, progress, log_level)
    state_path = _prepare_experiment(opt)
    logger = get_root_logger("pyiqa")
    log_file = Path(opt["path"]["experiments_root"]) / f"train_{opt['name']}_{get_time_str()}.log"
    changed = _set_log_file(logger, log_file, opt["rank"], log_level)
    try:
        logger.info(dict2str(opt))
        train_set, sampler, train_loader, val_loaders = _build_loaders(opt)
        schedule = _schedule(opt["train"], len(train_loader))
        opt["train"]["total_iter"] = schedule.total_iters  # as pyiqa's pipeline fills it in
        logger.info(
            f"{len(train_set)} training images x {opt['train'].get('dataset_enlarge_ratio', 1)} crops, "
            f"{schedule.iters_per_epoch} iterations per epoch, {schedule.total_epochs} epochs "
            f"({schedule.total_iters} iterations)"
        )
        state = _load_state(opt, state_path)
        model = _build_model(opt, schedule.iters_per_epoch)
        loop = _Loop(opt, model, sampler, train_loader, val_loaders, schedule, progress)
        start_epoch, current_iter = _resume(loop, state, state_path) if state is not None else (0, 0)
        loop.msg_logger = MessageLogger(opt, current_iter, None)
        loop.started = time.time()
        epoch, current_iter = _train_epochs(loop, start_epoch, current_iter)
        logger.info(f"Training done in {time.time() - loop.started:.1f}s; saving the final model.")
        return _finish(loop, epoch, current_iter)
    finally:
        progress.end_epoch()
        _restore_log(logger, changed)


PYIQA_PARAMS_FILE = "pyiqa_params_final.pth"


def _save_final(opt: dict[str, Any], model) -> tuple[Path, Path | None]:
    """The final weights: pyiqa's ``{"params": state_dict}`` under ``models/`` (for pyiqa's own tools) and,
    for the plugin's archs, the metric's compact checkpoint ``<experiment>/<metric>.pth``, the file to use."""
    from iqa_plugins.train.checkpoints import save_compact
    from iqa_plugins.weights import save_checkpoint

    net = model.get_bare_model(model.net)
    params = {k.removeprefix("module."): v.detach().cpu() for k, v in net.state_dict().items()}
    pyiqa_file = save_checkpoint({"params": params}, Path(opt["path"]["models"]) / PYIQA_PARAMS_FILE)
    metric = metric_for_arch(opt["network"]["type"])
    compact = save_compact(opt, net, Path(opt["path"]["experiments_root"]) / f"{metric}.pth") if metric else None
    return pyiqa_file, compact


def install_to_cache(checkpoint: Path, arch_type: str, variant: str | None = None) -> Path:
    """Copy ``checkpoint`` into pyiqa's weight cache under the file name of ``variant`` (a data set or tag of
    ``archs.pretrained_cfgs``; None: the default variant, the file ``pretrained=True`` loads)."""
    from iqa_plugins.train.checkpoints import default_weights_filename
    from iqa_plugins.weights import cache_dir

    target = cache_dir() / default_weights_filename(arch_type, variant)
    with atomic_path(target) as tmp:
        shutil.copyfile(checkpoint, tmp)
    return target


# ---------------------------------------------------------------------------------------------------------------
# repeated random splits


def _dataset_length(dataset_opt: dict[str, Any]) -> int:
    from pyiqa.data import build_dataset

    bare = {k: v for k, v in dataset_opt.items() if k not in ("split_file", "split_index", "augment")}
    bare["phase"] = "train"
    return len(build_dataset(bare))


def make_random_splits(n: int, num_splits: int, train_ratio: float, seed: int) -> dict[int, dict[str, list[int]]]:
    """pyiqa split-file content: ``{index: {'train': rows, 'val': rows}}`` for indices 1..num_splits."""
    if not 0 < train_ratio < 1:
        raise ValueError(f"train_ratio must be in (0, 1), got {train_ratio}")
    n_train = int(round(train_ratio * n))
    if not 0 < n_train < n:
        raise ValueError(f"{n} rows cannot be split {train_ratio:.0%}/{1 - train_ratio:.0%}")
    rng = np.random.default_rng(seed)
    splits = {}
    for index in range(1, num_splits + 1):
        order = rng.permutation(n)
        splits[index] = {"train": sorted(order[:n_train].tolist()), "val": sorted(order[n_train:].tolist())}
    return splits


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values), "mean": statistics.fmean(values),
        "std": statistics.pstdev(values), "min": min(values), "max": max(values),
    }


def _split_options(opt: dict[str, Any], index: int, split_file: Path, train_meta: Any) -> dict[str, Any]:
    """``opt`` for split ``index``: its own experiment folder; the data sets reading the training meta file
    take that split's rows."""
    run_opt = copy.deepcopy(opt)
    run_opt["name"] = f"{opt['name']}_split{index:02d}"
    run_root = Path(opt["path"]["experiments_root"]) / run_opt["name"]
    run_opt["path"].update(
        experiments_root=str(run_root), models=str(run_root / "models"), log=str(run_root),
        training_states=str(run_root / "training_states"), visualization=str(run_root / "visualization"),
    )
    for dataset_opt in run_opt["datasets"].values():
        if dataset_opt.get("meta_info_file") == train_meta:
            dataset_opt.pop("split_index", None)
            dataset_opt.update(split_file=str(split_file), split_index=index)
    return run_opt


def _table_rows(index: int, split: dict[str, list[int]], result: RunResult) -> list[dict[str, Any]]:
    """The results table's rows of one split: one per validation data set."""
    return [{
        "split": index, "dataset": dataset, "train_rows": len(split["train"]), "val_rows": len(split["val"]),
        "iterations": result.iterations, **{k: metrics[k] for k in ("srcc", "plcc") if k in metrics},
        "checkpoint": str(result.compact_checkpoint or result.checkpoint),
    } for dataset, metrics in result.final_metrics.items()]


def _results_table(opt: dict[str, Any], num_splits: int, train_ratio: float, seed: int,
                   rows: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {
        "name": opt["name"], "num_splits": num_splits, "train_ratio": train_ratio, "seed": seed,
        "protocol": "final model of every split on its held-out rows; medians over ALL splits "
                    "(no selection of runs or epochs on the test rows)",
        "splits": rows, "summary": {},
    }
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        table["summary"][dataset] = {k: _summary([r[k] for r in mine]) for k in ("srcc", "plcc") if k in mine[0]}
    return table


def _write_results(folder: Path, table: dict[str, Any]) -> None:
    """``results.json`` (the whole table) and ``results.csv`` (one row per split and data set, then medians)."""
    (folder / "results.json").write_text(json.dumps(table, indent=1))
    with (folder / "results.csv").open("w", newline="") as handle:
        fields = ["split", "dataset", "train_rows", "val_rows", "iterations", "srcc", "plcc", "checkpoint"]
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table["splits"])
        for dataset, stats in table["summary"].items():
            writer.writerow({"split": "median", "dataset": dataset, **{k: stats[k]["median"] for k in stats}})


def train_splits(
    opt: dict[str, Any],
    *,
    num_splits: int,
    train_ratio: float = 0.8,
    seed: int = 123,
    log_level: int = logging.WARNING,
    report: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Train once per random train/val split of the training meta file and tabulate the final results.

    Every data set in ``opt['datasets']`` reading the training meta file gets the split (train rows for the
    ``train`` phase, the rest for ``val``); other validation sets (cross-data-set tests) are used whole.
    Returns the results table (also written to ``experiments/<name>/results.{json,csv}`` on rank 0).
    ``report`` receives one summary line per finished split (rank 0).
    """
    import torch.distributed as dist

    summary_root = Path(opt["path"]["experiments_root"])
    splits = make_random_splits(_dataset_length(opt["datasets"]["train"]), num_splits, train_ratio, seed)
    summary_root.mkdir(parents=True, exist_ok=True)
    split_file = summary_root / f"random_splits_{num_splits}x{round(train_ratio * 100)}_seed{seed}.pkl"
    if opt["rank"] == 0:
        save_splits(split_file, splits)
    if opt["dist"]:
        dist.barrier()

    rows, runs = [], []
    train_meta = opt["datasets"]["train"].get("meta_info_file")
    for index in range(1, num_splits + 1):
        result = run_training(_split_options(opt, index, split_file, train_meta), log_level=log_level)
        runs.append(result)
        if report is not None and opt["rank"] == 0:
            report(f"split {index}/{num_splits}: {result.summary}")
        rows += _table_rows(index, splits[index], result)
    table = _results_table(opt, num_splits, train_ratio, seed, rows)
    if opt["rank"] == 0 and rows:
        _write_results(summary_root, table)
    table["runs"] = runs
    return table
