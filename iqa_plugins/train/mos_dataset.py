"""Images with their mean opinion scores, as a pyiqa meta CSV lists them: ExIQA's phase-2 data."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch.utils.data import Dataset

__all__ = ["MOSDataset"]


class MOSDataset(Dataset):
    """Images of a pyiqa meta CSV (first column image name, second MOS), resized and centre-cropped to
    ``image_size`` as ExIQA's "resize" input does, so that they batch (None: as read, for the "crops" input).
    Items: (image (3, H, W) in [0, 1], MOS (1,))."""

    def __init__(self, meta_csv: Path, image_dir: Path, rows: list[int] | None, image_size: int | None) -> None:
        if not meta_csv.is_file():
            raise FileNotFoundError(f"--meta-info {str(meta_csv)!r} does not exist")
        with meta_csv.open(newline="") as handle:
            table = list(csv.reader(handle))[1:]
        if rows is not None:
            table = [table[i] for i in rows]
        self.items = [(image_dir / r[0], float(r[1])) for r in table]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        from iqa_plugins.archs.exiqa_arch import resize_center_crop
        from iqa_plugins.io import read_image

        path, mos = self.items[index]
        image = torch.from_numpy(read_image(path).copy()).permute(2, 0, 1).unsqueeze(0)
        if self.image_size is not None:
            image = resize_center_crop(image, self.image_size).clamp(0, 1)
        return image.squeeze(0).float(), torch.tensor([mos], dtype=torch.float32)
