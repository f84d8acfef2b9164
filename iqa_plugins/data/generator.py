"""Multi-distortion data set generator (the ExIQA recipe on KADID-10k's 25 distortions).

For every pristine image in a folder it writes ``variants`` distorted versions. Each variant draws K uniformly
from 1..``max_distortions``, then K distinct distortions (uniformly, without replacement) each at a uniform
level 1..5, and applies them in the drawn order (``sampling="uniform"``). ``sampling="grouped"`` follows ARNIQA
instead: K groups out of 7 (brightness, blur, spatial, noise, colour, compression, sharpness/contrast), one
distortion per group, so K is at most 7.

Output folder::

    images/<stem>_<variant>.png   distorted images (lossless PNG, 8-bit RGB)
    records/<stem>_<variant>.json one record per image (distortions, levels, order, label): the journal
    strengths.csv                 image, reference, variant, the 25 strengths (level/5, 0 if absent), order
    meta_info.csv                 pyiqa GeneralNRDataset meta file: dist_name, mos, ref_name (needs a labeller)
    split.pkl                     pyiqa split file: {split_index: {'train': rows, 'val': rows, 'test': rows}}
    config.json                   the settings that define the images (seed, variants, ...)

Train pyiqa's ``GeneralNRDataset`` with ``dataroot_target: <out>/images``, ``meta_info_file:
<out>/meta_info.csv``, ``split_file: <out>/split.pkl``. Row indices in ``split.pkl`` refer to both CSVs (same row
order); splits are by pristine image, so no content is shared between train, val and test.

The generator has no quality labels of its own: the ``mos`` column comes from a labeller, a callable
``(pristine, distorted) -> float`` on float RGB in [0, 1] (higher = better), by default SSIM; the CLI offers
``--label none|psnr|ssim`` and Python callers can pass any (picklable) full-reference metric.

Runs are deterministic for a seed (each variant's randomness comes from (seed, image file name, variant index),
independent of worker scheduling), resumable (finished variants are skipped; files are written to a temporary
name and renamed, records after images, so an interrupted run leaves no half-written file), and tolerant of bad
inputs (unreadable images are reported by name and skipped; the exit status is then nonzero).
"""

from __future__ import annotations

import argparse
import csv
import errno
import hashlib
import io
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterable, Sequence, Union

import numpy as np
from PIL import Image

from iqa_plugins.data.distortions import (
    DISTORTIONS,
    NUM_LEVELS,
    apply_distortions,
    to_float,
    to_uint8,
)
from iqa_plugins.files import stale_temporaries, write_bytes_atomic, write_text_atomic
from iqa_plugins.io import IMAGE_EXTENSIONS, read_image
from iqa_plugins.split_files import SPLIT_FILE, save_splits

__all__ = [
    "ARNIQA_GROUPS",
    "IMAGE_EXTENSIONS",
    "LABELLERS",
    "GenerationReport",
    "GeneratorError",
    "add_arguments",
    "generate_dataset",
    "main",
    "psnr_label",
    "sample_distortions",
    "ssim_label",
    "variant_rng",
]


# ARNIQA's seven groups of the KADID distortions; it leaves out #6 and #15, which join the colour and noise groups.
ARNIQA_GROUPS: tuple[tuple[int, ...], ...] = (
    (16, 17, 18),  # brightness change
    (1, 2, 3),  # blur
    (19, 20, 21, 22, 23),  # spatial distortions
    (11, 12, 13, 14, 15),  # noise
    (4, 5, 6, 7, 8),  # colour distortions
    (9, 10),  # compression
    (24, 25),  # sharpness and contrast
)

_SAMPLINGS = ("uniform", "grouped")
_FORMAT_VERSION = 1

Labeller = Callable[[np.ndarray, np.ndarray], float]


class GeneratorError(ValueError):
    """Bad generator arguments or an output folder made with other settings."""


# ----------------------------------------------------------------------------------------------------------------
# labels


def psnr_label(pristine: np.ndarray, distorted: np.ndarray) -> float:
    """PSNR in dB of float RGB images in [0, 1], capped at 100 dB for (near-)identical images."""
    mse = float(np.mean((np.asarray(pristine, np.float64) - np.asarray(distorted, np.float64)) ** 2))
    return float(10.0 * np.log10(1.0 / max(mse, 1e-10)))


def ssim_label(pristine: np.ndarray, distorted: np.ndarray) -> float:
    """SSIM (scikit-image, 7x7 uniform window, colour channels averaged) of float RGB images in [0, 1]."""
    from skimage.metrics import structural_similarity

    return float(
        structural_similarity(
            np.asarray(pristine, np.float64), np.asarray(distorted, np.float64), channel_axis=2, data_range=1.0
        )
    )


LABELLERS: dict[str, Labeller] = {"psnr": psnr_label, "ssim": ssim_label}


# ----------------------------------------------------------------------------------------------------------------
# sampling


def variant_rng(seed: int, image_name: str, variant: int) -> np.random.Generator:
    """The random generator of one variant, from (seed, image file name, variant index) only."""
    digest = hashlib.sha256(f"{int(seed)}\0{image_name}\0{int(variant)}".encode()).digest()
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest[:16], "little")))


def sample_distortions(
    rng: np.random.Generator, max_distortions: int = 25, sampling: str = "uniform"
) -> list[tuple[int, int]]:
    """Draw the (KADID number, level) steps of one variant, in the order they are applied."""
    if sampling == "uniform":
        k = int(rng.integers(1, max_distortions + 1))
        numbers = rng.choice(len(DISTORTIONS), size=k, replace=False) + 1
    elif sampling == "grouped":
        k = int(rng.integers(1, min(max_distortions, len(ARNIQA_GROUPS)) + 1))
        groups = rng.choice(len(ARNIQA_GROUPS), size=k, replace=False)
        numbers = np.array([rng.choice(ARNIQA_GROUPS[g]) for g in groups])
    else:
        raise GeneratorError(f"sampling must be one of {_SAMPLINGS}, got {sampling!r}")
    levels = rng.integers(1, NUM_LEVELS + 1, size=len(numbers))
    return [(int(n), int(lv)) for n, lv in zip(numbers, levels)]


# ----------------------------------------------------------------------------------------------------------------
# files


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _read_rgb(path: Path) -> np.ndarray:
    # The project's reader: EXIF orientation, alpha, 16-bit and CMYK handled, errors name the file.
    return to_uint8(read_image(path))


def _remove_stale_temporaries(*folders: Path) -> int:
    removed = 0
    for folder in folders:
        for p in stale_temporaries(folder):
            p.unlink()
            removed += 1
    return removed


def _list_pristine(input_dir: Path) -> list[Path]:
    if not input_dir.is_dir():
        raise GeneratorError(f"input_dir {str(input_dir)!r} is not a folder")
    paths = sorted(p for p in input_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise GeneratorError(f"input_dir {str(input_dir)!r} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    stems: dict[str, Path] = {}
    for p in paths:
        if p.stem in stems:
            raise GeneratorError(f"input images {stems[p.stem].name!r} and {p.name!r} share the name {p.stem!r}")
        stems[p.stem] = p
    return paths


# ----------------------------------------------------------------------------------------------------------------
# the work for one pristine image (runs in worker processes)


@dataclass(frozen=True)
class _Job:
    source: str
    output_dir: str
    variants: int
    max_distortions: int
    seed: int
    sampling: str
    fingerprint: str
    label_name: str | None
    labeller: Labeller | None


@dataclass
class _JobResult:
    source: str
    generated: int = 0
    skipped: int = 0
    relabelled: int = 0
    error: str | None = None


def _variant_name(stem: str, variant: int, variants: int) -> str:
    return f"{stem}_{variant:0{max(2, len(str(variants - 1)))}d}"


def _load_record(path: Path, fingerprint: str) -> dict | None:
    try:
        record = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("fingerprint") == fingerprint else None


def _run_job(job: _Job) -> _JobResult:
    src = Path(job.source)
    out = Path(job.output_dir)
    result = _JobResult(source=src.name)
    pristine: np.ndarray | None = None
    try:
        for v in range(job.variants):
            name = _variant_name(src.stem, v, job.variants)
            img_path = out / "images" / f"{name}.png"
            rec_path = out / "records" / f"{name}.json"
            record = _load_record(rec_path, job.fingerprint) if rec_path.exists() else None
            done = record is not None and img_path.exists()
            if done and (job.label_name is None or record.get("label_name") == job.label_name):
                result.skipped += 1
                continue
            if pristine is None:
                pristine = _read_rgb(src)
            if done:
                distorted = _read_rgb(img_path)
                result.relabelled += 1
            else:
                rng = variant_rng(job.seed, src.name, v)
                steps = sample_distortions(rng, job.max_distortions, job.sampling)
                distorted = to_uint8(apply_distortions(to_float(pristine), steps, rng))
                write_bytes_atomic(img_path, _png_bytes(distorted))
                record = {
                    "fingerprint": job.fingerprint,
                    "image": img_path.name,
                    "reference": src.name,
                    "variant": v,
                    "steps": [{"number": n, "slug": DISTORTIONS[n - 1].slug, "level": lv} for n, lv in steps],
                }
                result.generated += 1
            if job.labeller is not None:
                record["label_name"] = job.label_name
                record["label"] = float(job.labeller(to_float(pristine), to_float(distorted)))
            write_text_atomic(rec_path, json.dumps(record, indent=1))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        result.error = f"{src.name}: {type(exc).__name__}: {exc}"
    return result


def _init_worker() -> None:
    # One process per core already: keep OpenCV from adding threads of its own.
    import cv2

    cv2.setNumThreads(1)


# ----------------------------------------------------------------------------------------------------------------
# tables


def _strength_columns() -> list[str]:
    return [d.slug for d in DISTORTIONS]


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def _split_rows(
    records: list[dict], ratios: tuple[float, float, float], num_splits: int, seed: int
) -> dict[int, dict[str, list[int]]]:
    references = sorted({r["reference"] for r in records})
    rows_of: dict[str, list[int]] = {ref: [] for ref in references}
    for i, r in enumerate(records):
        rows_of[r["reference"]].append(i)
    total = sum(ratios)
    n = len(references)
    n_train = int(round(ratios[0] / total * n))
    n_val = min(int(round(ratios[1] / total * n)), n - n_train)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5911]))
    splits: dict[int, dict[str, list[int]]] = {}
    for index in range(1, num_splits + 1):
        order = [references[j] for j in rng.permutation(n)]
        parts = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
        splits[index] = {phase: sorted(i for ref in refs for i in rows_of[ref]) for phase, refs in parts.items()}
    return splits


def _write_tables(
    out: Path,
    records: list[dict],
    label_name: str | None,
    ratios: tuple[float, float, float],
    num_splits: int,
    seed: int,
) -> None:
    slugs = _strength_columns()
    strength_rows = []
    for r in records:
        strengths = dict.fromkeys(slugs, 0.0)
        for step in r["steps"]:
            strengths[step["slug"]] = step["level"] / NUM_LEVELS
        order = ";".join(step["slug"] for step in r["steps"])
        strength_rows.append([r["image"], r["reference"], r["variant"], *(strengths[s] for s in slugs), order])
    _write_csv(out / "strengths.csv", ["image", "reference", "variant", *slugs, "order"], strength_rows)
    if label_name is not None:
        _write_csv(
            out / "meta_info.csv",
            ["dist_name", "mos", "ref_name"],
            ([r["image"], repr(float(r["label"])), r["reference"]] for r in records),
        )
    save_splits(out / SPLIT_FILE, _split_rows(records, ratios, num_splits, seed))


# ----------------------------------------------------------------------------------------------------------------
# the API


@dataclass
class GenerationReport:
    """What a run did. ``failed`` lists 'file: reason' for every pristine image that could not be used."""

    images: int = 0
    generated: int = 0
    skipped: int = 0
    relabelled: int = 0
    stale_temporaries_removed: int = 0
    failed: list[str] = field(default_factory=list)
    rows: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed


def generate_dataset(
    input_dir: Union[str, Path],
    output_dir: Union[str, Path],
    *,
    variants: int = 10,
    max_distortions: int = 25,
    seed: int = 0,
    sampling: str = "uniform",
    labeller: Union[str, Labeller, None] = "ssim",
    label_name: str | None = None,
    split_ratios: tuple[float, float, float] = (0.7, 0.1, 0.2),
    num_splits: int = 1,
    workers: int = 1,
    progress: bool = True,
) -> GenerationReport:
    """Generate (or finish) a multi-distortion data set; see the module docstring for the output layout.

    Args:
        input_dir: folder of pristine images (its top level; files with other extensions are ignored).
        output_dir: created if needed; a folder made with other ``variants``/``max_distortions``/``seed``/
            ``sampling`` is refused.
        variants: distorted versions per pristine image.
        max_distortions: largest K (distortions per variant), 1..25 (at most 7 count with ``"grouped"``).
        seed: makes the run reproducible.
        sampling: ``"uniform"`` (ExIQA) or ``"grouped"`` (ARNIQA).
        labeller: ``"psnr"``, ``"ssim"``, a picklable callable (pristine, distorted) -> float on float RGB in
            [0, 1], or None (then no meta_info.csv is written).
        label_name: name stored with the labels (default: the labeller's name); finished variants carrying
            another label name are relabelled from their saved PNG without being regenerated.
        split_ratios: train/val/test fractions of the pristine images.
        num_splits: number of random splits in split.pkl (indices 1..num_splits; pyiqa's default index is 1).
        workers: processes; 1 runs in this process.
        progress: show a tqdm progress bar.
    """
    _check_settings(variants, max_distortions, sampling, split_ratios, num_splits, workers)
    labeller, label_name = _resolve_labeller(labeller, label_name)
    sources = _list_pristine(Path(input_dir))
    out = _prepare_output(Path(output_dir))
    fingerprint = _claim_output(out, {
        "format_version": _FORMAT_VERSION,
        "variants": variants,
        "max_distortions": max_distortions,
        "seed": int(seed),
        "sampling": sampling,
    })

    report = GenerationReport(images=len(sources))
    report.stale_temporaries_removed = _remove_stale_temporaries(out / "images", out / "records", out)
    jobs = [
        _Job(str(p), str(out), variants, max_distortions, int(seed), sampling, fingerprint, label_name, labeller)
        for p in sources
    ]
    _tally(report, _run_jobs(jobs, workers, progress))
    records = _finished_records(out, sources, variants, fingerprint, label_name)
    report.rows = len(records)
    _write_tables(out, records, label_name, tuple(float(r) for r in split_ratios), num_splits, int(seed))
    return report


def _check_settings(variants: int, max_distortions: int, sampling: str, split_ratios: Sequence[float],
                    num_splits: int, workers: int) -> None:
    if not isinstance(variants, int) or variants < 1:
        raise GeneratorError(f"variants must be a positive integer, got {variants!r}")
    if not isinstance(max_distortions, int) or not 1 <= max_distortions <= len(DISTORTIONS):
        raise GeneratorError(f"max_distortions must be an integer in 1..{len(DISTORTIONS)}, got {max_distortions!r}")
    if sampling not in _SAMPLINGS:
        raise GeneratorError(f"sampling must be one of {_SAMPLINGS}, got {sampling!r}")
    if len(split_ratios) != 3 or min(split_ratios) < 0 or sum(split_ratios) <= 0:
        raise GeneratorError(f"split_ratios must be three non-negative numbers, not all 0, got {split_ratios!r}")
    if not isinstance(num_splits, int) or num_splits < 1:
        raise GeneratorError(f"num_splits must be a positive integer, got {num_splits!r}")
    if not isinstance(workers, int) or workers < 1:
        raise GeneratorError(f"workers must be a positive integer, got {workers!r}")


def _resolve_labeller(labeller: Union[str, Labeller, None], label_name: str | None
                      ) -> tuple[Labeller | None, str | None]:
    """The labelling function and the name stored with its labels (None, None: no labels)."""
    if isinstance(labeller, str):
        if labeller not in LABELLERS:
            raise GeneratorError(f"labeller must be one of {sorted(LABELLERS)}, a callable or None, got {labeller!r}")
        return LABELLERS[labeller], label_name or labeller
    if labeller is None:
        return None, None
    if not callable(labeller):
        raise GeneratorError(f"labeller must be a callable, a name or None, got {type(labeller).__name__}")
    return labeller, label_name or getattr(labeller, "__name__", type(labeller).__name__)


def _prepare_output(out: Path) -> Path:
    """``out`` with its ``images`` and ``records`` folders, checked writable."""
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "records").mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK) or not os.access(out / "images", os.W_OK):
            raise PermissionError(errno.EACCES, "Permission denied", str(out))
    except OSError as error:
        raise GeneratorError(f"output_dir {str(out)!r} cannot be written: {error.strerror or error}") from None
    return out


def _claim_output(out: Path, settings: dict) -> str:
    """Record ``settings`` in ``out/config.json``, or refuse a folder made with others; returns the settings'
    fingerprint, which every finished record carries."""
    config_path = out / "config.json"
    if config_path.exists():
        try:
            previous = json.loads(config_path.read_text("utf-8"))
        except (OSError, ValueError) as error:
            raise GeneratorError(
                f"{str(config_path)!r} is unreadable or not JSON ({error}); it records the settings of the "
                "images in that folder: restore it, or generate into another folder"
            ) from None
        if previous != settings:
            raise GeneratorError(
                f"output_dir {str(out)!r} was generated with {previous}, not {settings}: use another folder"
            )
    else:
        write_text_atomic(config_path, json.dumps(settings, indent=1))
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _run_jobs(jobs: list[_Job], workers: int, progress: bool) -> list[_JobResult]:
    """Every pristine image's job, in this process (``workers == 1``) or in a pool of spawned processes."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), unit="image", desc="generate", disable=not progress)
    results: list[_JobResult] = []
    try:
        if workers == 1:
            for job in jobs:
                results.append(_run_job(job))
                bar.update(1)
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
                for fut in as_completed([pool.submit(_run_job, job) for job in jobs]):
                    results.append(fut.result())
                    bar.update(1)
    finally:
        bar.close()
    return results


def _tally(report: GenerationReport, results: list[_JobResult]) -> None:
    for r in results:
        report.generated += r.generated
        report.skipped += r.skipped
        report.relabelled += r.relabelled
        if r.error is not None:
            report.failed.append(r.error)
    report.failed.sort()


def _finished_records(out: Path, sources: list[Path], variants: int, fingerprint: str,
                      label_name: str | None) -> list[dict]:
    """The records of this run's settings whose image exists (and, when labelling, carry ``label_name``)."""
    records = []
    for p in sources:
        for v in range(variants):
            name = _variant_name(p.stem, v, variants)
            record = _load_record(out / "records" / f"{name}.json", fingerprint)
            if record is None or not (out / "images" / f"{name}.png").exists():
                continue
            if label_name is not None and record.get("label_name") != label_name:
                continue
            records.append(record)
    return records


# ----------------------------------------------------------------------------------------------------------------
# the command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the generator's options to ``parser`` (used by ``iqa-plugins generate`` and ``python -m``)."""
    parser.add_argument("input_dir", type=Path, help="folder of pristine images")
    parser.add_argument("output_dir", type=Path, help="output folder (created; re-running resumes)")
    parser.add_argument("--variants", type=int, default=10, help="distorted versions per image (default 10)")
    parser.add_argument(
        "--max-distortions",
        type=int,
        default=25,
        help="largest number of distortions per variant, K uniform in 1..this (default 25)",
    )
    parser.add_argument(
        "--sampling",
        choices=_SAMPLINGS,
        default="uniform",
        help="uniform: K distinct distortions out of 25 (ExIQA); grouped: K of ARNIQA's 7 groups, one each",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--label",
        choices=("none", *LABELLERS),
        default="ssim",
        help="full-reference measure for the mos column of meta_info.csv; none writes no meta_info.csv",
    )
    parser.add_argument(
        "--split-ratios",
        type=float,
        nargs=3,
        default=(0.7, 0.1, 0.2),
        metavar=("TRAIN", "VAL", "TEST"),
        help="fractions of pristine images per split (default 0.7 0.1 0.2)",
    )
    parser.add_argument("--num-splits", type=int, default=1, help="random splits in split.pkl (default 1)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def main(args: argparse.Namespace) -> int:
    """Run the generator from parsed arguments; returns the exit status (0 ok, 1 some inputs failed, 2 bad
    arguments)."""
    try:
        report = generate_dataset(
            args.input_dir,
            args.output_dir,
            variants=args.variants,
            max_distortions=args.max_distortions,
            seed=args.seed,
            sampling=args.sampling,
            labeller=None if args.label == "none" else args.label,
            split_ratios=tuple(args.split_ratios),
            num_splits=args.num_splits,
            workers=args.workers,
            progress=not args.no_progress,
        )
    except GeneratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    removed = report.stale_temporaries_removed
    print(
        f"{report.images} images: {report.generated} variants generated, {report.skipped} already done, "
        f"{report.relabelled} relabelled; {report.rows} rows in {args.output_dir}"
        + (f"; removed {removed} stale temporary files" if removed else "")
    )
    for line in report.failed:
        print(f"failed: {line}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m iqa_plugins.data.generator", description=__doc__.split("\n")[0])
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
