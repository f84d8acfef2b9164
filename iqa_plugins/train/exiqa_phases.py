"""ExIQA's two training phases and their evaluation, as plain functions over DataLoaders.

Phase 1 (distortion identification): the binary cross-entropy of Eq. 8 between P(d|I) and the ground-truth
strengths (level / 5, 0 when absent), by prompt tuning (only the visual prompt tokens and the attribute weight
logits train; CLIP frozen; the paper's 2e-3, cosine with linear warm-up) or by full fine-tuning (CLIP unfrozen
except its logit scale; 5e-5; the text features are then encoded inside every step and re-cached at the end).

Phase 2 (quality): CLIP, prompts and attribute weights frozen; the regressor learns the normalised MOS (MSE,
Eq. 9) from all 125 attribute probabilities.

Batches may be ``(images, targets)`` tuples or pyiqa dicts (``img`` and ``mos_label``; ``strengths`` for
:class:`StrengthsDataset`). Images are RGB in [0, 1]; the model applies its own resize and normalisation.

Evaluation: Eq. 10 accuracy (the prediction falls in the interval centred on the true strength), Eq. 11 RMSE,
and SRCC/PLCC of the quality scores (scipy.stats).
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset, TensorDataset

from iqa_plugins.archs.crops import upscale_to_min_side
from iqa_plugins.archs.exiqa_arch import ExIQA, resize_center_crop
from iqa_plugins.io import read_image
from iqa_plugins.split_files import SPLIT_FILE, folder_split_rows
from iqa_plugins.train.progress import TrainingProgress
from iqa_plugins.train.schedule import cosine_warmup_schedule

__all__ = [
    "StrengthsDataset",
    "cosine_warmup_schedule",
    "distortion_accuracy",
    "distortion_loss",
    "distortion_rmse",
    "evaluate",
    "evaluate_distortions",
    "evaluate_quality",
    "train_phase1",
    "train_phase2",
]

PHASE1_LR = {"prompt": 2e-3, "full": 5e-5}  # the paper's peak learning rates
_PROB_EPS = 1e-6  # keeps BCE finite when a probability saturates in float32


# ---------------------------------------------------------------------------------------------------- data


class StrengthsDataset(Dataset):
    """Images and their 25 distortion strengths from the generator's ``strengths.csv``.

    Args:
        root: the generator's output folder (holding ``strengths.csv`` and ``images/``).
        distortion_slugs: strength columns, in the model's distortion order (``model.attribute_set.distortion_slugs``).
        phase: None for all rows, or "train"/"val"/"test" rows of ``split.pkl`` (pyiqa's split format).
        split_index: which split of ``split.pkl``.
        image_size: resize (short side) and centre-crop every image to this size, as the model would, so that
            images of different sizes batch together; None keeps them as read.
        random_crops: instead of resizing, cut a random ``image_size`` crop at the image's own resolution and
            flip it at random (horizontally, vertically), for models with the ``input="crops"`` protocol; the
            strengths of the whole image label the crop (KADID's distortions cover the whole image).
        repeats: items per image per epoch (different random crops; pyiqa's ``dataset_enlarge_ratio``).
        in_memory: decode every image once, up front, and keep it (small sets read many times per epoch).
    Items are ``(image (3, S, S) float32 in [0, 1], strengths (25,) float32)``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        distortion_slugs: Sequence[str],
        phase: str | None = None,
        split_index: int = 1,
        image_size: int | None = 224,
        csv_name: str = "strengths.csv",
        image_dir: str = "images",
        random_crops: bool = False,
        repeats: int = 1,
        in_memory: bool = False,
    ) -> None:
        if random_crops and image_size is None:
            raise ValueError("StrengthsDataset: random_crops needs image_size (the crop size)")
        if repeats < 1:
            raise ValueError(f"StrengthsDataset: repeats must be >= 1, got {repeats}")
        self.root = Path(root)
        table = self.root / csv_name
        if not table.is_file():
            raise FileNotFoundError(f"StrengthsDataset: {str(table)!r} does not exist (root={str(root)!r})")
        with open(table, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [c for c in ("image", *distortion_slugs) if c not in columns]
            if missing:
                raise ValueError(f"{str(table)!r} lacks the columns {missing}")
            rows = list(reader)
        if phase is not None:
            indices = folder_split_rows(self.root, split_index, phase)  # no code runs from a data folder
            if indices is None:
                raise FileNotFoundError(f"StrengthsDataset: phase={phase!r} needs {str(self.root / SPLIT_FILE)!r}")
            rows = [rows[i] for i in indices]
        self.images = [self.root / image_dir / r["image"] for r in rows]
        self.strengths = torch.tensor([[float(r[s]) for s in distortion_slugs] for r in rows], dtype=torch.float32)
        if self.strengths.numel() and (self.strengths.min() < 0 or self.strengths.max() > 1):
            raise ValueError(f"{str(table)!r}: strengths must lie in [0, 1]")
        self.image_size = image_size
        self.random_crops = random_crops
        self.repeats = repeats
        self._decoded = [read_image(path) for path in self.images] if in_memory else None

    def __len__(self) -> int:
        return len(self.images) * self.repeats

    def _pixels(self, index: int) -> np.ndarray:
        return read_image(self.images[index]) if self._decoded is None else self._decoded[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index %= len(self.images)
        image = torch.from_numpy(np.ascontiguousarray(self._pixels(index))).permute(2, 0, 1)[None]
        if self.random_crops:
            size = int(self.image_size)
            image = upscale_to_min_side(image.float(), size)
            top = int(torch.randint(0, image.shape[-2] - size + 1, ()))
            left = int(torch.randint(0, image.shape[-1] - size + 1, ()))
            image = image[..., top : top + size, left : left + size]
            flips = [dim for dim in (-1, -2) if torch.rand(()) < 0.5]
            image = image.flip(flips) if flips else image
        elif self.image_size is not None:
            image = resize_center_crop(image, self.image_size).clamp(0, 1)
        return image[0].float(), self.strengths[index]


def _unpack(batch: Any, target_keys: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, dict):
        for key in target_keys:
            if key in batch:
                return batch["img"], batch[key]
        raise ValueError(f"batch dict has none of the target keys {list(target_keys)}: {sorted(batch)}")
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError("a batch must be (images, targets) or a dict with 'img' and the targets")


# ---------------------------------------------------------------------------------------------- schedule/loss


def _optimiser_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, schedule: LambdaLR) -> float:
    """One update of either phase: backward, step, advance the per-step schedule; returns the loss value."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
    return loss.item()


def distortion_loss(dist_probs: torch.Tensor, strengths: torch.Tensor) -> torch.Tensor:
    """Eq. 8: mean binary cross-entropy between P(d|I) and the ground-truth strengths, over images and distortions."""
    if dist_probs.shape != strengths.shape:
        raise ValueError(f"strengths shape {tuple(strengths.shape)} differs from predictions {tuple(dist_probs.shape)}")
    p = dist_probs.float().clamp(_PROB_EPS, 1 - _PROB_EPS)
    return F.binary_cross_entropy(p, strengths.float().to(p.device))


def distortion_accuracy(pred: torch.Tensor, target: torch.Tensor, levels: int | torch.Tensor = 5) -> float:
    """Eq. 10: share of (image, distortion) pairs whose prediction lies in the interval centred on the true
    strength. With L levels the strengths are 0, 1/L, ..., 1 and the intervals [0, 1/2L), [1/2L, 3/2L), ...,
    [1 - 1/2L, 1] (the paper's L = 5: [0, .1), [.1, .3), ..., [.9, 1]). ``levels`` may differ per distortion:
    a tensor broadcast against the last dimension (e.g. CSIQ's contrast change has 4 levels)."""
    levels = torch.as_tensor(levels, dtype=torch.float32, device=pred.device)
    predicted_level = torch.minimum(torch.floor(pred.float().clamp(0, 1) * levels + 0.5), levels)
    true_level = torch.round(target.float().to(pred.device) * levels)
    return float((predicted_level == true_level).float().mean())


def distortion_rmse(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Eq. 11: root-mean-square error between predicted and true strengths over all pairs."""
    return float(torch.sqrt(F.mse_loss(pred.float(), target.float())))


# -------------------------------------------------------------------------------------------------- phase 1


def _device_of(model: nn.Module, device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else next(model.parameters()).device


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


class _Phase1Step(nn.Module):
    """Phase 1's differentiable part as one forward (what DistributedDataParallel wraps): P(d|I) of a batch,
    with the text features encoded inside the step when the text tower trains."""

    def __init__(self, model: ExIQA, encode_text: bool) -> None:
        super().__init__()
        self.model = model
        self.encode_text = encode_text

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        text_diff = None
        if self.encode_text:
            pos, neg = self.model.encode_attribute_text()
            text_diff = pos - neg
        return self.model.attribute_outputs(images, text_diff=text_diff)[1]


def _progress(progress: TrainingProgress | None, label: str, on_step: Callable[[int, float], Any] | None
              ) -> TrainingProgress:
    if progress is None:
        return TrainingProgress(label, enabled=False, on_step=on_step)
    if on_step is not None:
        progress.on_step = on_step
    return progress


def _stop_everywhere(stop: bool, device: torch.device) -> bool:
    """Rank 0's decision to stop, on every rank (they must leave the loop at the same step)."""
    if not _distributed():
        return stop
    flag = torch.tensor([float(stop)], device=device)
    torch.distributed.broadcast(flag, 0)
    return bool(flag.item())


def _run_epochs(batches: Iterable, epochs: int, progress: TrainingProgress, device: torch.device,
                step: Callable[[Any], tuple[float, int]], *, set_epoch: bool = False,
                max_steps: int | None = None, deadline: float | None = None) -> list[float]:
    """The loop both phases share: ``epochs`` passes over ``batches`` with ``step(batch) -> (loss, images)``
    per batch, until ``max_steps`` steps are done, ``time.monotonic()`` passes ``deadline`` or the progress
    hook stops it (on every rank at once, as rank 0 decides); returns the loss of every step. ``set_epoch``:
    tell the loader's sampler the epoch (a DistributedSampler reshuffles its shards)."""
    step_loss: list[float] = []
    steps_per_epoch = len(batches)  # type: ignore[arg-type]
    for epoch in range(epochs):
        sampler = getattr(batches, "sampler", None)
        if set_epoch and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        progress.start_epoch(epoch, epochs, steps_per_epoch)
        for batch in batches:
            loss, images = step(batch)
            step_loss.append(loss)
            stop = (progress.step(loss, images) or len(step_loss) == max_steps
                    or (deadline is not None and time.monotonic() >= deadline))
            if _stop_everywhere(stop, device):
                progress.end_epoch()
                return step_loss
        progress.end_epoch()
    return step_loss


def _phase1_trainable(model: ExIQA, mode: str, train_text: bool) -> list[nn.Parameter]:
    """Freeze everything, then unfreeze what phase 1 trains: the prompt tokens and attribute weights, and in
    "full" mode CLIP but its logit scale (its vision tower only without ``train_text``)."""
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = [model.weight_logits] + ([model.prompt_tokens] if model.prompt_tokens is not None else [])
    if mode == "full":
        clip_params = [p for name, p in model.clip.named_parameters() if name != "logit_scale"]
        if not train_text:
            clip_params = [p for name, p in model.clip.named_parameters() if name.startswith("visual.")]
        trainable += clip_params
    for p in trainable:
        p.requires_grad_(True)
    return trainable


def _phase1_step_module(model: ExIQA, mode: str, train_text: bool) -> nn.Module:
    step_module: nn.Module = _Phase1Step(model, encode_text=mode == "full" and train_text)
    if _distributed():
        # Built after requires_grad is set: DDP synchronises exactly the trainable parameters, and starts
        # every process from rank 0's weights.
        step_module = nn.parallel.DistributedDataParallel(step_module)
    return step_module


def _after_phase1(model: ExIQA, mode: str) -> None:
    """Back to the arch's own state: CLIP frozen, the rest trainable, eval mode, text features current."""
    for p in model.parameters():
        p.requires_grad_(True)
    for p in model.clip.parameters():
        p.requires_grad_(False)
    model.eval()
    if mode == "full":
        model.refresh_text_features()  # CLIP changed: the cached features must follow


def train_phase1(
    model: ExIQA,
    loader: Iterable,
    epochs: int,
    lr: float | None = None,
    *,
    mode: str = "prompt",
    warmup_epochs: float | None = None,
    weight_decay: float = 0.0,
    train_text: bool = True,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    device: str | torch.device | None = None,
    on_step: Callable[[int, float], None] | None = None,
    progress: TrainingProgress | None = None,
) -> dict[str, Any]:
    """Phase 1: learn to identify distortions (Eq. 8 BCE) with a cosine schedule and linear warm-up.

    Args:
        model: an :class:`ExIQA` (its CLIP stays frozen in "prompt" mode).
        loader: batches of (images (B, 3, H, W) in [0, 1], strengths (B, D) in [0, 1]). Under
            ``torch.distributed`` (e.g. ``torchrun``) each process gives its own shard (a DistributedSampler)
            and the model trains as DistributedDataParallel (gradients averaged over the processes).
        epochs: passes over ``loader``.
        lr: peak learning rate; default 2e-3 ("prompt") or 5e-5 ("full"), the paper's.
        mode: "prompt" (prompt tokens + attribute weight logits) or "full" (also all of CLIP but its logit
            scale; text features are recomputed in every step when ``train_text`` and re-cached at the end).
        warmup_epochs: linear warm-up length; default a fifth of ``epochs`` (the paper: 20 of 100).
        weight_decay: AdamW weight decay (0 = Adam).
        max_steps: end after this many optimiser steps, within the last epoch, with the schedule sized to end
            there (default ``epochs`` full passes); e.g. to fill a time budget that is not a whole number of
            epochs.
        max_seconds: a wall-time budget: training ends after the step that spends it, and the cosine decays
            with the larger of the step and time fractions, so it reaches 0 by then however fast the machine.
        device: where to train (default: the model's device).
        on_step: called as ``on_step(step, loss)`` after every optimiser step.
        progress: per-epoch bars and the stop hook (default: none drawn, never stops early).

    Returns:
        {"mode", "epochs", "steps", "lr", "epoch_loss": [mean loss per epoch], "step_loss": [loss per step],
        "seconds": wall time of the loop}.
    """
    if mode not in PHASE1_LR:
        raise ValueError(f"mode must be one of {sorted(PHASE1_LR)}, got {mode!r}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    total = epochs * len(loader)  # type: ignore[arg-type]
    if max_steps is not None and not 1 <= max_steps <= total:
        raise ValueError(f"max_steps must lie in 1 .. epochs * len(loader) = {total}, got {max_steps}")
    total = total if max_steps is None else int(max_steps)
    lr = PHASE1_LR[mode] if lr is None else float(lr)
    device = _device_of(model, device)
    model.to(device)
    progress = _progress(progress, f"exiqa phase 1 ({mode})", on_step)
    trainable = _phase1_trainable(model, mode, train_text)
    step_module = _phase1_step_module(model, mode, train_text)

    warmup = round((epochs / 5 if warmup_epochs is None else warmup_epochs) * len(loader))  # type: ignore[arg-type]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    schedule = cosine_warmup_schedule(optimizer, total, min(warmup, total), seconds=max_seconds)
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    world = torch.distributed.get_world_size() if _distributed() else 1

    def step(batch: Any) -> tuple[float, int]:
        images, strengths = _unpack(batch, ("strengths", "label"))
        images, strengths = images.to(device), strengths.to(device)
        loss = distortion_loss(step_module(images), strengths)
        return _optimiser_step(loss, optimizer, schedule), len(images) * world

    model.train()
    first_epoch = len(progress.epoch_loss)
    try:
        step_loss = _run_epochs(loader, epochs, progress, device, step, set_epoch=True, max_steps=total,
                                deadline=deadline)
    finally:
        _after_phase1(model, mode)
    return {"mode": mode, "epochs": epochs, "steps": len(step_loss), "lr": lr,
            "epoch_loss": progress.epoch_loss[first_epoch:], "step_loss": step_loss}


# -------------------------------------------------------------------------------------------------- phase 2


def _normalise_mos(mos: torch.Tensor, mos_range: tuple[float, float] | None, lower_better: bool = False
                   ) -> torch.Tensor:
    """Scores to [0, 1], higher = better quality: ``mos_range`` (low, high) maps low to 0 and high to 1, or
    the reverse for ``lower_better`` scales (DMOS: low to 1, high to 0)."""
    mos = mos.float().reshape(-1)
    if mos_range is not None:
        lo, hi = map(float, mos_range)
        if not hi > lo:
            raise ValueError(f"mos_range must be (low, high) with high > low, got {mos_range}")
        mos = (mos - lo) / (hi - lo)
    elif mos.numel() and (mos.min() < 0 or mos.max() > 1):
        raise ValueError(
            f"MOS values in [{float(mos.min()):.4g}, {float(mos.max()):.4g}] are not normalised to [0, 1]: "
            "pass mos_range=(low, high) of the data set's scale"
        )
    return 1 - mos if lower_better else mos


@torch.no_grad()
def _attribute_table(
    model: ExIQA, loader: Iterable, device: torch.device, mos_range: tuple[float, float] | None,
    lower_better: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All attribute probabilities of ``loader`` (one pass, frozen model) and their normalised MOS; under
    ``torch.distributed`` each process reads its shard and every process gets the whole table."""
    model.eval()
    feats, targets = [], []
    for batch in loader:
        images, mos = _unpack(batch, ("mos_label", "mos", "label"))
        attr, _ = model.attribute_outputs(images.to(device))
        feats.append(attr.float())
        targets.append(_normalise_mos(mos, mos_range, lower_better).to(device))
    table = (torch.cat(feats).cpu(), torch.cat(targets).cpu()) if feats else None
    if _distributed():
        shards: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(shards, table)
        shards = [t for t in shards if t is not None]
        table = (torch.cat([t[0] for t in shards]), torch.cat([t[1] for t in shards])) if shards else None
    if table is None:
        raise ValueError("the loader yielded no batch")
    return table[0].to(device), table[1].to(device)


_MIN_ATTR_STD = 0.01  # an attribute that barely varies in training is not amplified beyond 100x


@torch.no_grad()
def _standardise_first_layer(linear: nn.Linear, shift: torch.Tensor, scale: torch.Tensor) -> None:
    """Rewrite W x + b as W' (x - shift) / scale + b' (the same function, taking standardised inputs)."""
    linear.bias += linear.weight @ shift.to(linear.weight)
    linear.weight *= scale.to(linear.weight)


@torch.no_grad()
def _unstandardise_first_layer(linear: nn.Linear, shift: torch.Tensor, scale: torch.Tensor) -> None:
    """The inverse of :func:`_standardise_first_layer`: back to a layer taking raw attribute probabilities."""
    linear.weight /= scale.to(linear.weight)
    linear.bias -= linear.weight @ shift.to(linear.weight)


@torch.no_grad()
def _centre_output(regressor: nn.Sequential, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Shift the last bias so that the mean logit over ``inputs`` is the logit of the mean target."""
    was_training = regressor.training
    regressor.eval()
    mean_logit = regressor(inputs).mean()
    regressor.train(was_training)
    goal = torch.logit(targets.float().mean().clamp(0.01, 0.99))
    regressor[-1].bias += (goal - mean_logit).to(regressor[-1].bias)


def _freeze_all_but_regressor(model: ExIQA) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.regressor.parameters():
        p.requires_grad_(True)


def _seed_phase2(seed: int | None) -> torch.Generator | None:
    """The generator of the cached table's shuffling, with dropout seeded alike; under ``torch.distributed``
    seed 0 unless given (every process trains the same regressor on the same whole table)."""
    if _distributed() and seed is None:
        seed = 0
    if seed is None:
        return None
    torch.manual_seed(seed)  # dropout: the same masks in every process
    return torch.Generator().manual_seed(seed)


def train_phase2(
    model: ExIQA,
    loader: Iterable,
    epochs: int,
    lr: float = 1e-3,
    *,
    weight_decay: float = 0.0,
    mos_range: tuple[float, float] | None = None,
    lower_better: bool = False,
    cache_attributes: bool = True,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    on_step: Callable[[int, float], None] | None = None,
    progress: TrainingProgress | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Phase 2: the regressor learns normalised MOS (MSE) from the 125 attribute probabilities; all else frozen.

    Args:
        loader: batches of (images, MOS) or pyiqa dicts (``img``, ``mos_label``).
        mos_range: (low, high) of the MOS scale, mapped to [0, 1]; None: targets must already lie in [0, 1].
        lower_better: the scores are DMOS-like (low = good): the targets become 1 - normalised score, so the
            model's output stays higher-is-better.
        progress: per-epoch bars and the stop hook (default: none drawn, never stops early).
        seed: seeds the regressor's shuffling and dropout (None: the global random state; 0 under
            ``torch.distributed``, where every process gathers the whole attribute table and trains the same
            small regressor from the same seed, so all stay equal without gradient traffic).
        cache_attributes: the frozen part is deterministic (fixed resize and crop), so compute the attribute
            probabilities once and train the regressor on them (fast); False re-runs CLIP every epoch, which
            only matters when the loader augments (a first pass over ``loader`` still gives the statistics
            of the standardisation below).
        batch_size: mini-batch size on the cached table (default: the loader's batch size, else 32).
        Other arguments as :func:`train_phase1`; cosine schedule without warm-up.

    Conditioning: attribute probabilities are all positive and often share most of their value across images,
    so raw, every Adam step moves all first-layer pre-activations the same way and a fresh regressor overshoots
    into the sigmoid's flat tails, where it stays (loss stuck, every score 1.0). So the regressor trains on the
    training set's standardised attributes (the standardisation is folded into the first Linear layer before
    and after, so the trained function and the checkpoint format are exactly as without it), and the output
    bias starts at the logit of the mean target.

    Returns:
        {"epochs", "steps", "lr", "epoch_loss", "step_loss"}.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    device = _device_of(model, device)
    model.to(device)
    _freeze_all_but_regressor(model)
    progress = _progress(progress, "exiqa phase 2", on_step)
    if _distributed() and not cache_attributes:
        raise ValueError("train_phase2 under torch.distributed needs cache_attributes=True")
    attrs, targets = _attribute_table(model, loader, device, mos_range, lower_better)
    generator = _seed_phase2(seed)
    shift, scale = attrs.mean(0), attrs.std(0, correction=0).clamp_min(_MIN_ATTR_STD)
    standardised = (attrs - shift) / scale
    batches: Iterable = loader
    if cache_attributes:  # the table itself, shuffled
        size = batch_size or getattr(loader, "batch_size", None) or 32
        batches = DataLoader(TensorDataset(standardised, targets), batch_size=size, shuffle=True, generator=generator)
    optimizer = torch.optim.AdamW(model.regressor.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = cosine_warmup_schedule(optimizer, epochs * len(batches), 0)  # type: ignore[arg-type]

    def step(batch: Any) -> tuple[float, int]:
        if cache_attributes:
            attr, target = batch
        else:
            images, mos = _unpack(batch, ("mos_label", "mos", "label"))
            with torch.no_grad():
                attr, _ = model.attribute_outputs(images.to(device))
            attr = (attr.float() - shift) / scale
            target = _normalise_mos(mos, mos_range, lower_better).to(device)
        pred = model.score_from_attributes(attr).squeeze(1)
        return _optimiser_step(F.mse_loss(pred.float(), target.float()), optimizer, schedule), len(target)

    _standardise_first_layer(model.regressor[0], shift, scale)
    _centre_output(model.regressor, standardised, targets)
    model.eval()
    model.regressor.train()  # dropout only where it belongs
    first_epoch = len(progress.epoch_loss)
    try:
        step_loss = _run_epochs(batches, epochs, progress, device, step)
    finally:
        _unstandardise_first_layer(model.regressor[0], shift, scale)
        for name, p in model.named_parameters():
            p.requires_grad_(not name.startswith("clip."))
        model.eval()
    return {"epochs": epochs, "steps": len(step_loss), "lr": lr, "epoch_loss": progress.epoch_loss[first_epoch:],
            "step_loss": step_loss}


# ------------------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate_distortions(model: ExIQA, loader: Iterable, device: str | torch.device | None = None) -> dict[str, Any]:
    """Phase-1 metrics over ``loader`` (images, strengths): Eq. 10 accuracy (all pairs, and only the pairs
    whose distortion is present), Eq. 11 RMSE, the Eq. 8 loss, and the accuracy per distortion."""
    device = _device_of(model, device)
    model.eval()
    preds, targets = [], []
    for batch in loader:
        images, strengths = _unpack(batch, ("strengths", "label"))
        _, dist = model.attribute_outputs(images.to(device))
        preds.append(dist.float().cpu())
        targets.append(strengths.float().cpu())
    if not preds:
        raise ValueError("the loader yielded no batch")
    pred, target = torch.cat(preds), torch.cat(targets)
    present = target > 0
    names = model.distortion_names
    levels = torch.tensor(model.attribute_set.distortion_levels, dtype=torch.float32).expand_as(pred)
    return {
        "accuracy": distortion_accuracy(pred, target, levels),
        "accuracy_present": distortion_accuracy(pred[present], target[present], levels[present])
        if present.any() else float("nan"),
        "rmse": distortion_rmse(pred, target),
        "bce": float(distortion_loss(pred, target)),
        "per_distortion_accuracy": {n: distortion_accuracy(pred[:, g], target[:, g], levels[:, g])
                                    for g, n in enumerate(names)},
        "num_images": int(pred.shape[0]),
    }


@torch.no_grad()
def evaluate_quality(
    model: ExIQA,
    loader: Iterable,
    *,
    mos_range: tuple[float, float] | None = None,
    lower_better: bool = False,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Phase-2 metrics over ``loader`` (images, MOS): SRCC, PLCC, KRCC and RMSE of the scores against the
    normalised MOS (correlations are unaffected by the normalisation)."""
    device = _device_of(model, device)
    model.eval()
    scores, targets = [], []
    for batch in loader:
        images, mos = _unpack(batch, ("mos_label", "mos", "label"))
        scores.append(model(images.to(device)).float().reshape(-1).cpu())
        targets.append(_normalise_mos(mos, mos_range, lower_better).cpu())
    if not scores:
        raise ValueError("the loader yielded no batch")
    s, t = torch.cat(scores).numpy(), torch.cat(targets).numpy()
    if len(s) < 3:
        raise ValueError(f"correlations need at least 3 images, got {len(s)}")
    return {
        "srcc": float(stats.spearmanr(s, t).statistic),
        "plcc": float(stats.pearsonr(s, t).statistic),
        "krcc": float(stats.kendalltau(s, t).statistic),
        "rmse": float(np.sqrt(np.mean((s - t) ** 2))),
        "num_images": len(s),
    }


def evaluate(model: ExIQA, loader: Iterable, phase: int, **kwargs: Any) -> dict[str, Any]:
    """:func:`evaluate_distortions` for ``phase=1``, :func:`evaluate_quality` for ``phase=2``."""
    if phase == 1:
        return evaluate_distortions(model, loader, **kwargs)
    if phase == 2:
        return evaluate_quality(model, loader, **kwargs)
    raise ValueError(f"phase must be 1 or 2, got {phase!r}")
