"""Subject segmentation for ``dino-seg``: which pixels of an image are the subject.

A segmenter maps images ``[N, 3, H, W]`` float in [0, 1] (and, for text-prompted ones, the
subject's class noun per image) to masks ``[N, 1, H, W]`` float in {0, 1}, 1 = subject.
``segmenter`` in the reward's options chooses one:

``precomputed`` (default; the official Customized-GRPO semantics)
    Nothing is segmented at run time. The generated image is compared whole. Each reference
    is replaced by its pre-made cut-out ``<ref>_seg.png`` (an RGB image of the subject,
    found beside the reference file named in ``metadata["reference_paths"]``, which the file
    datasets set); a mask that came with the data (jsonl ``masks``, the toy world) is
    applied instead where no cut-out exists; otherwise the raw reference is used.
``grounded-sam``
    Text-prompted detection then segmentation, both through transformers: Grounding DINO
    (``detector_path``) finds the highest-scoring box for the subject's class noun
    (``metadata["class_noun"]`` as DreamBench items carry it, else ``metadata["category"]``
    as SynCD entries do, else the ``noun`` option) and SAM (``sam_path``) turns that box
    into a mask (of its three proposals, the one with the best predicted IoU).
``foreground``
    A matting / salient-object model that ``AutoModelForImageSegmentation`` loads
    (``segmenter_path``; BiRefNet, RMBG-2.0 and RMBG-1.4 ship their own code and need
    ``trust_remote_code: true``). Its foreground map sits at ``foreground_output`` in the
    model's output (an index path into nested lists: ``[-1]`` for BiRefNet/RMBG-2.0,
    ``[0, 0]`` for RMBG-1.4) and is a logit (``foreground_activation: sigmoid``) or already
    a probability (``none``); a pixel is subject above 0.5.
``semantic``
    A semantic-segmentation model that ``AutoModelForSemanticSegmentation`` loads
    (``segmenter_path``): with one output channel a pixel is subject where sigmoid(logit) >
    0.5; with several it is subject where the arg-max class is not in ``background_labels``.
``background-difference`` (offline fallback, no weights)
    Border-colour background subtraction (:class:`BackgroundDifference`); fails on subjects
    coloured like their surroundings. Never the DreamBench default.
``none``
    Every pixel is subject (logged once).

With the model-based and heuristic segmenters, references without a mask from the data go
through the same segmenter as the generated images; pixels outside a mask are filled with
``background_fill``. Where a segmenter finds nothing (no box above the thresholds, an empty
mask) the whole image is kept rather than scoring an empty picture.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cgrpo.config import ConfigError, option
from cgrpo.rewards.images import FILL_VALUES

log = logging.getLogger(__name__)

SEGMENTERS = (
    "precomputed",
    "grounded-sam",
    "foreground",
    "semantic",
    "background-difference",
    "none",
)
NOUN_KEYS = ("class_noun", "category")
"""Metadata keys holding the subject's class noun, in order of preference."""


def cutout_path(reference: str | Path) -> Path:
    """The paper's cut-out convention: ``dir/ref.jpg`` -> ``dir/ref_seg.png``."""
    reference = Path(reference)
    return reference.with_name(f"{reference.stem}_seg.png")


def subject_noun(metadata: dict[str, Any], fallback: str | None = None) -> str | None:
    """The subject's class noun from a sample's metadata (see :data:`NOUN_KEYS`)."""
    for key in NOUN_KEYS:
        value = metadata.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return fallback


@dataclass
class SegmenterOptions:
    """The segmentation options of ``dino-seg`` (shared with ``cgrpo segments``)."""

    segmenter: str = option(
        "precomputed",
        "how subjects are isolated: precomputed (reference cut-outs <ref>_seg.png, "
        "generated images whole), grounded-sam, foreground, semantic, "
        "background-difference (offline fallback) or none",
        choices=SEGMENTERS,
    )
    detector_path: str | None = option(
        None, "local Grounding DINO directory, model + processor (segmenter: grounded-sam)"
    )
    sam_path: str | None = option(
        None, "local SAM directory, model + processor (segmenter: grounded-sam)"
    )
    noun: str | None = option(
        None, "class noun for grounded-sam where metadata has no class_noun / category"
    )
    box_threshold: float = option(0.3, "grounded-sam: minimum box score", min=0.0, max=1.0)
    text_threshold: float = option(0.25, "grounded-sam: minimum text score", min=0.0, max=1.0)
    segmenter_path: str | None = option(
        None, "local model directory (segmenter: foreground or semantic)"
    )
    trust_remote_code: bool = option(
        False, "foreground: run the model directory's own code (BiRefNet, RMBG need it)"
    )
    foreground_output: list[int] = option(
        help="foreground: index path of the map in the model output ([-1] BiRefNet, [0, 0] "
        "RMBG-1.4)",
        default_factory=lambda: [-1],
    )
    foreground_activation: str = option(
        "sigmoid",
        "foreground: sigmoid (the map holds logits) or none (probabilities)",
        choices=("sigmoid", "none"),
    )
    background_labels: list[int] = option(
        help="semantic: class ids counted as background", default_factory=lambda: [0]
    )
    background_fill: str = option(
        "white", "colour written over the background", choices=tuple(FILL_VALUES)
    )

    def validate(self, prefix: str) -> None:
        needed = {
            "grounded-sam": ("detector_path", "sam_path"),
            "foreground": ("segmenter_path",),
            "semantic": ("segmenter_path",),
        }.get(self.segmenter, ())
        for name in needed:
            if not getattr(self, name):
                raise ConfigError(
                    f"{prefix}.{name}", None, f"required when segmenter is {self.segmenter!r}"
                )


class Segmenter:
    """Images ``[N, 3, H, W]`` in [0, 1] -> masks ``[N, 1, H, W]`` in {0, 1} (1 = subject)."""

    needs_noun = False
    """True when the segmenter is prompted with the subject's class noun."""

    def __call__(
        self, images: torch.Tensor, nouns: Sequence[str | None] | None = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> Segmenter:
        return self


class NoSegmenter(Segmenter):
    """Keeps every pixel."""

    def __init__(self, who: str = "dino-seg") -> None:
        log.warning("%s: segmenter 'none': backgrounds of generated images are not removed", who)

    def __call__(self, images, nouns=None):
        return torch.ones_like(images[:, :1])


def _kmeans(points: torch.Tensor, k: int, iters: int = 10) -> torch.Tensor:
    """Centres ``[k', 3]`` (k' <= k) of ``points`` ``[P, 3]``; deterministic (evenly spaced
    starting points) so a reward gives the same mask for the same image."""
    k = min(k, points.shape[0])
    centres = points[torch.linspace(0, points.shape[0] - 1, k).long()].clone()
    for _ in range(iters):
        assign = torch.cdist(points, centres).argmin(1)
        for j in range(k):
            members = points[assign == j]
            if members.shape[0]:
                centres[j] = members.mean(0)
    return centres


@dataclass
class BackgroundDifference(Segmenter):
    """Models the background by the colours seen along the image border.

    Per image, at a working size of at most ``work_size`` px: (1) take a border band
    ``border`` wide (fraction of the short side); (2) cluster its colours with k-means
    (``clusters`` centres), so a border holding sky and floor gives several background
    colours; (3) each pixel's distance to the nearest centre (Euclidean RGB); (4) threshold
    = max(``min_threshold``, ``spread`` x the ``quantile`` of the band's own distances);
    (5) a 5x5 closing then a 3x3 opening; (6) resize (nearest) to the image. Under
    ``min_area`` of the image left: the whole image is kept.
    """

    border: float = 0.04
    clusters: int = 6
    quantile: float = 0.95
    spread: float = 1.5
    min_threshold: float = 0.1
    min_area: float = 0.01
    work_size: int = 128

    def __call__(self, images, nouns=None):
        return torch.stack([self._one(im) for im in images.float()])

    def _one(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        scale = self.work_size / max(h, w)
        small = (
            F.interpolate(image[None], scale_factor=scale, mode="area")[0] if scale < 1 else image
        )
        hs, ws = small.shape[-2:]
        b = max(1, int(round(self.border * min(hs, ws))))
        band = torch.ones(hs, ws, dtype=torch.bool, device=image.device)
        band[b : hs - b, b : ws - b] = False
        centres = _kmeans(small[:, band].T.contiguous(), self.clusters)
        dist = torch.cdist(small.reshape(3, -1).T.contiguous(), centres).min(1).values.view(hs, ws)
        thr = max(
            self.min_threshold, self.spread * float(torch.quantile(dist[band], self.quantile))
        )
        fg = (dist > thr).float()[None, None]
        # Closing fills pinholes inside the subject; opening drops isolated speckles.
        fg = -F.max_pool2d(-F.max_pool2d(fg, 5, 1, 2), 5, 1, 2)
        fg = F.max_pool2d(-F.max_pool2d(-fg, 3, 1, 1), 3, 1, 1)
        if fg.mean() < self.min_area:
            return torch.ones(1, h, w, device=image.device)
        return F.interpolate(fg, size=(h, w), mode="nearest")[0]


__all__ = [
    "NOUN_KEYS",
    "SEGMENTERS",
    "BackgroundDifference",
    "NoSegmenter",
    "Segmenter",
    "SegmenterOptions",
    "cutout_path",
    "subject_noun",
]
