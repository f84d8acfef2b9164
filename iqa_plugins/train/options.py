"""Training options: the shipped recipes, merging and overriding them, and the distributed set-up.

Options use pyiqa's training YAML schema (``name``, ``model_type``, ``num_gpu``, ``datasets``, ``network``,
``path``, ``train``, ``val``, ``logger``) plus one key of ours: ``random_splits: {num_splits, train_ratio,
seed}``, read by the runner (repeated random train/val splits of the meta file's rows).
"""

from __future__ import annotations

import copy
import os
import random
from pathlib import Path
from typing import Any

import yaml

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


class OptionsError(ValueError):
    """Bad options: a missing recipe, a malformed override, an unknown key path."""


def available_recipes(model: str) -> list[str]:
    """Data set names with a shipped recipe for ``model`` (files ``recipes/<model>_<dataset>.yml``)."""
    prefix = f"{model}_"
    return sorted(p.stem[len(prefix):] for p in RECIPES_DIR.glob(f"{prefix}*.yml"))


def recipe_path(model: str, dataset: str) -> Path:
    path = RECIPES_DIR / f"{model}_{dataset}.yml"
    if not path.is_file():
        known = ", ".join(available_recipes(model)) or "none"
        raise OptionsError(f"--dataset {dataset!r}: no {model} recipe (known: {known})")
    return path


def load_options(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise OptionsError(f"options file {str(path)!r} does not exist")
    with path.open() as handle:
        opt = yaml.safe_load(handle)
    if not isinstance(opt, dict):
        raise OptionsError(f"options file {str(path)!r} must hold a YAML mapping")
    return opt


def merge_options(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in ``override`` replaces ``base``."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_options(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_value(text: str) -> Any:
    """A YAML scalar, with YAML 1.1's dot-less exponents (``2e-4``) read as floats too."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(opt: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``KEY.PATH=VALUE`` overrides, e.g. ``train.total_epoch=2``; intermediate mappings are created."""
    opt = copy.deepcopy(opt)
    for item in overrides:
        key_path, sep, text = item.partition("=")
        keys = [k for k in key_path.strip().split(".") if k]
        if not sep or not keys:
            raise OptionsError(f"--set expects KEY.PATH=VALUE, got {item!r}")
        node = opt
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise OptionsError(f"--set {item!r}: {key!r} is not a mapping")
            node = child
        node[keys[-1]] = parse_value(text.strip())
    return opt


# pyiqa applies a data set's ``augment`` entries in their mapping order; a resize must come before the crop
# (the recipes resize first, then crop 384 px), also when it arrives later through --opt or --set.
RESIZE_AUGMENTS = ("resize", "adaptive_resize", "random_square_resize", "random_arp_resize")


def resize_before_crop(opt: dict[str, Any]) -> dict[str, Any]:
    """Every data set's ``augment`` with its resize entries moved first (other entries keep their order)."""
    opt = copy.deepcopy(opt)
    for dataset in (opt.get("datasets") or {}).values():
        augment = dataset.get("augment")
        if isinstance(augment, dict):
            first = {k: v for k, v in augment.items() if k in RESIZE_AUGMENTS}
            dataset["augment"] = {**first, **{k: v for k, v in augment.items() if k not in RESIZE_AUGMENTS}}
    return opt


def init_distributed(launcher: str) -> tuple[int, int]:
    """Join the process group ``torchrun`` describes; returns (rank, world_size).

    pyiqa's own ``init_dist`` assumes CUDA and NCCL; here CUDA machines use NCCL with one GPU per process
    (``LOCAL_RANK``) and CPU-only ones use gloo.
    """
    import torch
    import torch.distributed as dist

    if launcher == "none":
        return 0, 1
    if launcher != "pytorch":
        raise OptionsError(f"--launcher must be 'none' or 'pytorch', got {launcher!r}")
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise OptionsError(f"--launcher pytorch needs torchrun's environment; missing {', '.join(missing)}")
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def finalize_options(opt: dict[str, Any], root: str | os.PathLike, *, launcher: str = "none") -> dict[str, Any]:
    """Fill in what pyiqa's ``parse_options`` adds: distribution, seed, phases, experiment paths."""
    import torch
    from pyiqa.utils import set_random_seed
    from pyiqa.utils.options import make_paths

    opt = resize_before_crop(opt)
    for key in ("name", "datasets", "network", "train"):
        if key not in opt:
            raise OptionsError(f"options lack the required key {key!r}")
    if "train" not in opt["datasets"]:
        raise OptionsError("options lack datasets.train")
    opt.setdefault("model_type", "RecipeIQAModel")
    opt.setdefault("path", {})
    opt["path"].setdefault("resume_state", None)
    logger_opt = opt.setdefault("logger", {})
    logger_opt.setdefault("print_freq", 10)
    logger_opt.setdefault("save_checkpoint_freq", 9e9)
    logger_opt.setdefault("use_tb_logger", False)
    logger_opt.setdefault("wandb", None)

    opt["rank"], opt["world_size"] = init_distributed(launcher)
    opt["dist"] = launcher != "none"
    num_gpu = opt.get("num_gpu", "auto")
    if num_gpu == "auto":
        num_gpu = torch.cuda.device_count()
    if num_gpu and not torch.cuda.is_available():
        raise OptionsError(f"num_gpu={num_gpu} but CUDA is not available (use --device cpu)")
    opt["num_gpu"] = 1 if (opt["dist"] and num_gpu) else int(num_gpu)

    if opt.get("manual_seed") is None:
        opt["manual_seed"] = random.randint(1, 10000)
    set_random_seed(int(opt["manual_seed"]) + opt["rank"])

    for phase, dataset in opt["datasets"].items():
        dataset["phase"] = phase.split("_")[0]
    opt["is_train"] = True
    opt.setdefault("auto_resume", False)
    make_paths(opt, str(root))
    return opt
