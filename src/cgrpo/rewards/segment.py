"""Subject segmenters for background removal (used by ``dino-seg``).

A segmenter maps images ``[N, 3, H, W]`` float in [0, 1] to masks ``[N, 1, H, W]`` float in
{0, 1}, 1 = subject. Three are built in, chosen with ``segmenter`` in the reward's options:

``background-difference`` (offline, no weights)
    Models the background by the colours seen along the image border and keeps pixels unlike
    all of them. Steps, per image, at a working size of at most 128 px: (1) take a border
    band ``border`` wide (fraction of the short side); (2) cluster its colours with k-means
    (``clusters`` centres, deterministic start), so a border holding sky and floor, or a
    textured backdrop, gives several background colours; (3) each pixel's distance to the
    nearest centre (Euclidean RGB, in [0, sqrt(3)]); (4) threshold = max(``min_threshold``,
    ``spread`` x the ``quantile`` of the band's own distances), so a busy border raises the
    bar; (5) a 5x5 closing then a 3x3 opening (max-pool based) fill pinholes and drop
    speckles; (6) the mask is resized (nearest) to the image. If under ``min_area`` of the
    image survives, the split failed (a subject coloured like its surroundings) and the
    whole image is kept rather than scoring an empty picture. It isolates subjects that
    differ in colour from their surroundings (product shots, toys on plain or textured
    floors); subjects coloured like the scene (a tabby cat on a brown sofa) are not found.
    A fallback, not a replacement for a learned segmenter.

``model`` (a user-supplied transformers segmentation model, loaded from a local path)
    Contract: ``segmenter_path`` is a directory that ``AutoModelForSemanticSegmentation`` loads
    with ``local_files_only`` (config.json + weights; a ``preprocessor_config.json`` gives the
    input size/mean/std, default 512x512 ImageNet). Its output ``logits`` are
    ``[N, K, h, w]``: with K = 1 a pixel is subject where sigmoid(logit) > 0.5 (binary
    matting/salient-object models); with K > 1 it is subject where the arg-max class is not in
    ``background_labels`` (default [0], the usual "background" class). Masks are resized to
    the input with nearest-neighbour.

``none``
    No segmentation: every pixel is subject (logged once with ``logging.warning``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cgrpo.rewards.images import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, require_model_dir

log = logging.getLogger(__name__)

SEGMENTERS = ("background-difference", "model", "none")


class Segmenter:
    """Images ``[N, 3, H, W]`` in [0, 1] -> masks ``[N, 1, H, W]`` in {0, 1} (1 = subject)."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> Segmenter:
        return self


class NoSegmenter(Segmenter):
    """Keeps every pixel."""

    def __init__(self, who: str = "dino-seg") -> None:
        log.warning("%s: segmenter 'none': backgrounds of generated images are not removed", who)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
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
    """Border-colour background subtraction (see the module docstring for the algorithm)."""

    border: float = 0.04
    clusters: int = 6
    quantile: float = 0.95
    spread: float = 1.5
    min_threshold: float = 0.1
    min_area: float = 0.01
    work_size: int = 128

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
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


@dataclass
class ModelSegmenter(Segmenter):
    """A local transformers semantic-segmentation model (contract in the module docstring)."""

    path: str
    background_labels: list[int] = field(default_factory=lambda: [0])
    what: str = "segmenter_path"

    def __post_init__(self) -> None:
        from transformers import AutoModelForSemanticSegmentation

        from cgrpo.rewards.images import transform_from_dir

        p = require_model_dir(self.path, self.what)
        self.model = AutoModelForSemanticSegmentation.from_pretrained(
            p, local_files_only=True
        ).eval()
        default = ImageTransform(
            shortest_edge=None, size=(512, 512), crop=None, mean=IMAGENET_MEAN, std=IMAGENET_STD
        )
        self.transform = transform_from_dir(p, default)
        if self.transform.crop is None and self.transform.size is None:
            # Keep arbitrary inputs batchable: a shortest-edge-only config still needs one size.
            s = self.transform.shortest_edge or 512
            self.transform = ImageTransform(
                None, (s, s), None, self.transform.mean, self.transform.std, self.transform.resample
            )

    def to(self, device: torch.device | str) -> ModelSegmenter:
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        x = self.transform.batch(list(images.float())).to(device)
        logits = self.model(pixel_values=x).logits.float()
        if logits.shape[1] == 1:
            fg = (logits.sigmoid() > 0.5).float()
        else:
            cls = logits.argmax(dim=1, keepdim=True)
            bg = torch.tensor(self.background_labels, device=cls.device)
            fg = (~torch.isin(cls, bg)).float()
        return F.interpolate(fg, size=tuple(images.shape[-2:]), mode="nearest").to(images.device)


def build_segmenter(
    kind: str,
    path: str | None = None,
    background_labels: list[int] | None = None,
    who: str = "dino-seg",
    what: str = "segmenter_path",
) -> Segmenter:
    """The segmenter named ``kind`` (one of :data:`SEGMENTERS`)."""
    if kind == "background-difference":
        return BackgroundDifference()
    if kind == "model":
        if not path:
            raise ValueError(f"{what} is required when segmenter is 'model'")
        return ModelSegmenter(path, list(background_labels or [0]), what)
    if kind == "none":
        return NoSegmenter(who)
    raise ValueError(f"unknown segmenter {kind!r}; choose one of: {', '.join(SEGMENTERS)}")
