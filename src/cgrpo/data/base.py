"""The example type every dataset yields, and the dataset registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from cgrpo.image_io import pil_to_array, read_image
from cgrpo.registry import Registry


@dataclass
class Example:
    """One training/eval item.

    Attributes:
        prompt: the text prompt (non-empty).
        references: ``[R, 3, h, w]`` float in [0, 1], R >= 1 reference images.
        reference_masks: ``[R, 1, h, w]`` float in {0, 1} (1 = subject), or None.
        metadata: ground truth or bookkeeping a reward or report may use.
        key: a stable identifier (used in logs, reports and error messages).
    """

    prompt: str
    references: torch.Tensor
    reference_masks: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    key: str = ""


class BadItem(ValueError):
    """A data item that cannot be used (an unreadable image, an invalid record); the
    message names the item and the file. The trainer skips and counts these
    (``data.max_bad_fraction``); other errors of a dataset are not bad data."""


class ExampleDataset(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Example: ...


DATASETS: Registry[Any] = Registry("dataset")
"""Dataset factories by name: ``factory(options: dict, split: str) -> ExampleDataset``."""


def build_dataset(name: str, options: dict[str, Any] | None = None, split: str = "train"):
    import cgrpo.data  # noqa: F401  (registers the built-in datasets)

    return DATASETS.get(name)(dict(options or {}), split)


def image_to_tensor(image: Any) -> torch.Tensor:
    """A PIL image (any mode, see :mod:`cgrpo.image_io`) or ``[H, W, 3]`` uint8 array ->
    ``[3, H, W]`` float32 in [0, 1] (RGB)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return torch.from_numpy(pil_to_array(image)).permute(2, 0, 1)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB image array [H, W, 3], got shape {arr.shape}")
    arr = np.array(arr[..., :3])  # a writable copy: PIL-backed arrays are read-only
    t = torch.from_numpy(arr).permute(2, 0, 1)
    return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()


def load_image(path: str | Path, what: str = "image") -> torch.Tensor:
    """Read an image file of any mode as ``[3, H, W]`` float RGB (:func:`cgrpo.image_io.read_image`:
    pixel limit, 16-bit, transparency); errors name ``what`` and the path."""
    return torch.from_numpy(read_image(path, what)).permute(2, 0, 1)
