"""Public IQA data sets as ExIQA training folders (``iqa-plugins train exiqa --prepare NAME``).

ExIQA's phase 1 learns each distortion's strength; KADID-10k, TID2013, CSIQ and LIVE name it in their file
names (or, for LIVE, in per-folder ``info.txt`` files). A converter reads a data set as distributed and writes
the folder ``train exiqa`` reads: ``strengths.csv`` (image, then one column per distortion of the data set's
attribute set, strength = level / levels, 0 where absent), ``meta_info.csv`` (image, score) when the data set's
own score file is there, ``split.pkl`` (one random train/test split by reference image) and ``images``, a link
to the data set's root (image names are relative to it).

Naming schemes read:
- KADID-10k: ``images/I01_03_05.png`` = reference 01, distortion 03, level 05 (of 5); scores ``dmos.csv``
  (``dist_img,ref_img,dmos,var``; higher = better despite the name).
- TID2013: ``distorted_images/i01_03_5.bmp`` = reference 01, distortion 03 (of 24), level 5; scores
  ``mos.txt`` + ``mos_with_names.txt`` (``MOS name`` per line; 0..9, higher = better).
- CSIQ: ``dst_imgs/<type>/<reference>.<TYPE>.<level>.png`` with TYPE in AWGN, JPEG, jpeg2000, fnoise, BLUR,
  contrast (levels 1..5, 1..4 for contrast); no score file is read (give CSIQ's DMOS table as ``meta_info.csv``).
- LIVE Release 2: ``<jp2k|jpeg|wn|gblur|fastfading>/imgN.bmp`` with ``info.txt`` lines ``reference image
  parameter``; the parameter is continuous, so levels 1..5 are its quintiles within the distortion, ordered by
  severity (a lower bit rate or channel SNR, a larger noise or blur sigma is more severe); scores ``dmos.mat``
  (``dmos``, ``orgs``: DMOS, lower = better; images flagged in ``orgs`` are undistorted copies, strength 0).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iqa_plugins.archs.exiqa_arch import load_attribute_set
from iqa_plugins.split_files import SPLIT_FILE, save_splits


@dataclass(frozen=True)
class LabelledImage:
    """One distorted image: its path (relative to the data set root), reference, distortion and level."""

    image: str
    reference: str
    distortion: int
    """The distortion's number in the data set's own numbering (the attribute set's ``number``)."""
    level: int
    """1..levels; 0 for an undistorted copy."""
    score: float | None = None


def _read_scores(path: Path, name_column: int, score_column: int, skip_header: bool, sep: str | None = None
                 ) -> dict[str, float]:
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines()[1 if skip_header else 0:]
    rows = [line.replace(",", " ").split() if sep is None else line.split(sep) for line in lines if line.strip()]
    return {Path(r[name_column]).name.lower(): float(r[score_column]) for r in rows}


def scan_kadid10k(root: Path) -> list[LabelledImage]:
    folder = root / "images" if (root / "images").is_dir() else root
    scores = _read_scores(root / "dmos.csv", 0, 2, skip_header=True)
    items = []
    for path in sorted(folder.iterdir()):
        match = re.fullmatch(r"(I\d+)_(\d+)_(\d+)\.png", path.name, re.IGNORECASE)
        if match:
            items.append(LabelledImage(str(path.relative_to(root)), match[1].upper(), int(match[2]), int(match[3]),
                                       scores.get(path.name.lower())))
    return items


def scan_tid2013(root: Path) -> list[LabelledImage]:
    folder = root / "distorted_images"
    scores = _read_scores(root / "mos_with_names.txt", 1, 0, skip_header=False)
    items = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = re.fullmatch(r"(i\d+)_(\d+)_(\d)\.bmp", path.name, re.IGNORECASE)
        if match:
            items.append(LabelledImage(str(path.relative_to(root)), match[1].upper(), int(match[2]), int(match[3]),
                                       scores.get(path.name.lower())))
    return items


_CSIQ_TYPES = {"awgn": 1, "jpeg": 2, "jpeg2000": 3, "fnoise": 4, "blur": 5, "contrast": 6}


def scan_csiq(root: Path) -> list[LabelledImage]:
    folder = root / "dst_imgs" if (root / "dst_imgs").is_dir() else root
    items = []
    for path in sorted(folder.rglob("*.png")):
        match = re.fullmatch(r"(.+)\.([A-Za-z0-9]+)\.(\d)\.png", path.name)
        if match and match[2].lower() in _CSIQ_TYPES:
            items.append(LabelledImage(str(path.relative_to(root)), match[1].lower(), _CSIQ_TYPES[match[2].lower()],
                                       int(match[3])))
    return items


# LIVE's folders in the order of dmos.mat, their sizes there, and whether a larger parameter is more severe.
_LIVE_FOLDERS = {"jp2k": (1, 227, False), "jpeg": (2, 233, False), "wn": (3, 174, True),
                 "gblur": (4, 174, True), "fastfading": (5, 174, False)}


def _read_live_dmos(root: Path) -> tuple[np.ndarray, np.ndarray] | None:
    path = root / "dmos.mat"
    if not path.is_file():
        return None
    from scipy.io import loadmat  # MATLAB files are data, not pickles

    mat = loadmat(path)
    return np.asarray(mat["dmos"], dtype=float).ravel(), np.asarray(mat["orgs"]).ravel()


def scan_live(root: Path) -> list[LabelledImage]:
    dmos = _read_live_dmos(root)
    items, offset = [], 0
    for folder, (number, size, larger_is_worse) in _LIVE_FOLDERS.items():
        info = root / folder / "info.txt"
        if not info.is_file():
            offset += size
            continue
        rows = [line.split() for line in info.read_text().splitlines() if len(line.split()) >= 3]
        params = np.array([float(r[2]) for r in rows])
        severity = params if larger_is_worse else -params
        # quintiles of the severity ranks: level 1 = the mildest fifth ... 5 = the most severe
        ranks = severity.argsort(kind="stable").argsort(kind="stable")
        levels = 1 + (ranks * 5) // max(1, len(rows))
        for row, level in zip(rows, levels):
            index = int(re.fullmatch(r"img(\d+)\.bmp", row[1], re.IGNORECASE)[1])
            score = original = None
            if dmos is not None:
                score, original = float(dmos[0][offset + index - 1]), bool(dmos[1][offset + index - 1])
            items.append(LabelledImage(f"{folder}/{row[1]}", row[0].lower(), number, 0 if original else int(level),
                                       score))
        offset += size
    return items


SCANNERS: dict[str, Callable[[Path], list[LabelledImage]]] = {
    "kadid10k": scan_kadid10k, "tid2013": scan_tid2013, "csiq": scan_csiq, "live": scan_live,
}


def prepare_dataset(name: str, source: str | Path, out: str | Path, *, train_ratio: float = 0.8, seed: int = 0
                    ) -> dict[str, int]:
    """Write ``out/{strengths.csv, meta_info.csv, split.pkl, images}`` for data set ``name`` found at ``source``.

    Returns counts: images, references, train and test rows, scored images.
    """
    if name not in SCANNERS:
        raise ValueError(f"--prepare {name!r}: unknown data set; choose one of {', '.join(SCANNERS)}")
    source, out = Path(source).expanduser().resolve(), Path(out).expanduser()
    if not source.is_dir():
        raise FileNotFoundError(f"--source {str(source)!r} is not a folder")
    items = SCANNERS[name](source)
    if not items:
        raise ValueError(f"--source {str(source)!r}: no {name} images found (see `iqa-plugins train --help`)")
    attributes = load_attribute_set(name)
    column = {number: g for g, number in enumerate(attributes.distortion_numbers)}
    unknown = sorted({i.distortion for i in items} - set(column))
    if unknown:
        raise ValueError(f"{str(source)!r}: distortion numbers {unknown} are not in the {name} attribute set")
    levels = attributes.distortion_levels
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() == source:
        raise ValueError("--data must be a folder other than --source (it gets an 'images' link to --source)")
    with (out / "strengths.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", *attributes.distortion_slugs])
        for item in items:
            row = [0.0] * attributes.num_distortions
            g = column[item.distortion]
            if item.level > levels[g]:
                raise ValueError(f"{item.image}: level {item.level} exceeds the {levels[g]} levels of "
                                 f"{attributes.distortion_names[g]}")
            row[g] = item.level / levels[g]
            writer.writerow([item.image, *(f"{v:.6g}" for v in row)])
    scored = [i for i in items if i.score is not None]
    if scored and len(scored) == len(items):
        with (out / "meta_info.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["dist_name", "mos"])
            writer.writerows((i.image, i.score) for i in items)
    references = sorted({i.reference for i in items})
    order = np.random.default_rng(seed).permutation(len(references))
    train_refs = {references[k] for k in order[: max(1, round(train_ratio * len(references)))]}
    split = {1: {"train": [k for k, i in enumerate(items) if i.reference in train_refs], "val": [],
                 "test": [k for k, i in enumerate(items) if i.reference not in train_refs]}}
    save_splits(out / SPLIT_FILE, split)  # the generator's split format
    link = out / "images"
    if link.is_symlink() or link.exists():
        if not (link.is_symlink() and link.resolve() == source):
            raise ValueError(f"{str(link)!r} exists and is not a link to {str(source)!r}")
    else:
        link.symlink_to(source, target_is_directory=True)
    return {"images": len(items), "references": len(references), "train": len(split[1]["train"]),
            "test": len(split[1]["test"]), "scored": len(scored)}
