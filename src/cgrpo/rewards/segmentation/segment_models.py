"""Model-based segmenters for ``dino-seg``, and :func:`build_segmenter`, which builds the one
``segmenter`` names (the contracts and offline segmenters are in
:mod:`cgrpo.rewards.segmentation.segment`).

All load from local directories with transformers (never a download), through the strict
loader :func:`cgrpo.rewards.loading.load_pretrained`, so a directory whose weights do not
fit is refused instead of running with random layers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from cgrpo.rewards.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    to_uint8_array,
    transform_from_dir,
)
from cgrpo.rewards.loading import first_line, load_pretrained
from cgrpo.rewards.segmentation.segment import (
    SEGMENTERS,
    BackgroundDifference,
    NoSegmenter,
    Segmenter,
    SegmenterOptions,
)

log = logging.getLogger(__name__)

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def _fixed_size_transform(path: str, side: int) -> ImageTransform:
    """The directory's preprocessing, forced to one square size so any inputs batch."""
    default = ImageTransform(None, (side, side), None, IMAGENET_MEAN, IMAGENET_STD)
    t = transform_from_dir(path, default)
    if t.size is None:
        s = t.shortest_edge or side
        t = ImageTransform(None, (s, s), None, t.mean, t.std, t.resample)
    return t


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to_pil(images: torch.Tensor) -> list[Any]:
    from PIL import Image

    return [Image.fromarray(to_uint8_array(im)) for im in images]


def _whole_if_empty(mask: torch.Tensor, min_area: float = 1e-3) -> torch.Tensor:
    return torch.ones_like(mask) if mask.float().mean() < min_area else mask


class SemanticSegmenter(Segmenter):
    """``semantic``: an ``AutoModelForSemanticSegmentation`` directory (logits ``[N, K, h, w]``)."""

    def __init__(self, path: str | None, background_labels: list[int], what: str) -> None:
        from transformers import AutoModelForSemanticSegmentation

        self.model = load_pretrained(AutoModelForSemanticSegmentation, path, what)
        self.transform = _fixed_size_transform(str(path), 512)
        self.background_labels = background_labels

    def to(self, device):
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images, nouns=None):
        x = self.transform.batch(list(images.float())).to(_device_of(self.model))
        logits = self.model(pixel_values=x).logits.float()
        if logits.shape[1] == 1:
            fg = (logits.sigmoid() > 0.5).float()
        else:
            cls = logits.argmax(dim=1, keepdim=True)
            bg = torch.tensor(self.background_labels, device=cls.device)
            fg = (~torch.isin(cls, bg)).float()
        return F.interpolate(fg, size=tuple(images.shape[-2:]), mode="nearest").to(images.device)


def select_output(output: Any, index_path: Sequence[int], what: str) -> torch.Tensor:
    """The foreground map ``[N, 1, h, w]`` inside a model's output.

    ``output`` is a tensor, an object with ``logits``, or nested lists/tuples that
    ``index_path`` walks (``[-1]``: the last element; ``[0, 0]``: first of the first).
    """
    x = getattr(output, "logits", output)
    walked: list[int] = []
    for i in index_path:
        if isinstance(x, torch.Tensor):
            break
        if not isinstance(x, list | tuple) or not -len(x) <= i < len(x):
            raise ValueError(
                f"{what}: the model output at {walked} has no element {i} "
                f"(got {type(x).__name__}); set foreground_output"
            )
        x, walked = x[i], [*walked, i]
    if not isinstance(x, torch.Tensor):
        raise ValueError(
            f"{what}: the model output at {walked} is a {type(x).__name__}, not a tensor; "
            "set foreground_output"
        )
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(
            f"{what}: the model output at {walked} has shape {tuple(x.shape)}; expected "
            "[N, 1, h, w] foreground maps (set foreground_output)"
        )
    return x


class ForegroundSegmenter(Segmenter):
    """``foreground``: a matting / salient-object model loaded by
    ``AutoModelForImageSegmentation`` (default input 1024x1024, ImageNet mean/std, unless
    the directory's ``preprocessor_config.json`` says otherwise)."""

    def __init__(
        self,
        path: str | None,
        output: list[int],
        activation: str,
        trust_remote_code: bool,
        what: str,
    ) -> None:
        from transformers import AutoModelForImageSegmentation

        if not trust_remote_code and _ships_code(path):
            raise ValueError(
                f"{what} = {path!r} ships its own model code (auto_map in config.json); set "
                "trust_remote_code: true in the reward options if you trust that directory"
            )
        self.model = load_pretrained(
            AutoModelForImageSegmentation, path, what, trust_remote_code=trust_remote_code
        )
        self.what, self.output, self.activation = what, output, activation
        self.transform = _fixed_size_transform(str(path), 1024)

    def to(self, device):
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images, nouns=None):
        model_dtype = next(self.model.parameters()).dtype
        x = self.transform.batch(list(images.float())).to(_device_of(self.model), model_dtype)
        maps = select_output(self.model(x), self.output, self.what).float()
        if self.activation == "sigmoid":
            maps = maps.sigmoid()
        fg = F.interpolate(maps, size=tuple(images.shape[-2:]), mode="bilinear") > 0.5
        return torch.stack([_whole_if_empty(m.float()) for m in fg]).to(images.device)


class GroundedSam(Segmenter):
    """``grounded-sam``: Grounding DINO box for the class noun, then SAM's mask in that box."""

    needs_noun = True

    def __init__(
        self,
        detector_path: str | None,
        sam_path: str | None,
        box_threshold: float,
        text_threshold: float,
        prefix: str,
    ) -> None:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, SamModel

        needs = ["config.json", PROCESSOR_FILES]
        self.detector = load_pretrained(
            AutoModelForZeroShotObjectDetection,
            detector_path,
            f"{prefix}.detector_path",
            model_types=("grounding-dino",),
        )
        self.sam = load_pretrained(
            SamModel, sam_path, f"{prefix}.sam_path", model_types=("sam", "sam_hq")
        )
        self.detector_processor = _processor(
            AutoProcessor, detector_path, f"{prefix}.detector_path", needs
        )
        self.sam_processor = _processor(AutoProcessor, sam_path, f"{prefix}.sam_path", needs)
        self.box_threshold, self.text_threshold = box_threshold, text_threshold
        self.missed = 0  # images where no box passed the thresholds (kept whole)

    def to(self, device):
        self.detector.to(device)
        self.sam.to(device)
        return self

    @torch.no_grad()
    def boxes(self, pil: list[Any], nouns: Sequence[str]) -> list[list[float] | None]:
        """Per image the best ``[x0, y0, x1, y1]`` box (pixels) for its noun, or None."""
        texts = [f"{n.strip().lower()}." for n in nouns]
        inputs = self.detector_processor(images=pil, text=texts, return_tensors="pt", padding=True)
        inputs = inputs.to(_device_of(self.detector))
        out = self.detector(**inputs)
        sizes = [(im.height, im.width) for im in pil]
        # Positional thresholds: the keyword was renamed (box_threshold -> threshold) in v5.
        results = self.detector_processor.post_process_grounded_object_detection(
            out, inputs["input_ids"], self.box_threshold, self.text_threshold, sizes
        )
        best: list[list[float] | None] = []
        for r in results:
            if len(r["scores"]) == 0:
                best.append(None)
            else:
                best.append([float(v) for v in r["boxes"][int(r["scores"].argmax())]])
        return best

    @torch.no_grad()
    def __call__(self, images, nouns=None):
        if nouns is None or any(n is None for n in nouns):
            raise ValueError("grounded-sam needs a class noun per image")
        h, w = images.shape[-2:]
        masks = torch.ones(images.shape[0], 1, h, w, device=images.device)
        pil = _to_pil(images)
        boxes = self.boxes(pil, nouns)
        found = [i for i, b in enumerate(boxes) if b is not None]
        if len(found) < len(boxes) and not self.missed:
            log.warning(
                "grounded-sam: no %r box scored over box_threshold %s; that image is kept "
                "whole (further misses are only counted)",
                nouns[boxes.index(None)],
                self.box_threshold,
            )
        self.missed += len(boxes) - len(found)
        if not found:
            return masks
        inputs = self.sam_processor(
            images=[pil[i] for i in found],
            input_boxes=[[boxes[i]] for i in found],
            return_tensors="pt",
        )
        device = _device_of(self.sam)
        out = self.sam(
            pixel_values=inputs["pixel_values"].to(device),
            input_boxes=inputs["input_boxes"].to(device),
            multimask_output=True,
        )
        full = self.sam_processor.post_process_masks(
            out.pred_masks.cpu(),
            inputs["original_sizes"].cpu(),
            inputs["reshaped_input_sizes"].cpu(),
        )
        for k, i in enumerate(found):
            best = int(out.iou_scores[k, 0].argmax())
            masks[i, 0] = _whole_if_empty(full[k][0, best].to(masks.device).float())
        return masks


def _ships_code(path: str | None) -> bool:
    """Whether a model directory's config.json maps auto classes to its own code."""
    import json
    from pathlib import Path

    config = Path(path or "").expanduser() / "config.json"
    try:
        return config.is_file() and "auto_map" in json.loads(config.read_text())
    except json.JSONDecodeError:
        return False  # the loader reports the broken file


def _processor(loader: Any, path: str | None, what: str, needs: list[Any]) -> Any:
    from cgrpo.rewards.images import require_model_dir

    directory = require_model_dir(path, what, needs)
    try:
        return loader.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"{what} = {path!r}: processor not loadable: {first_line(e)}") from None


def build_segmenter(
    options: SegmenterOptions, who: str = "dino-seg", prefix: str = "rewards.dino-seg.options"
) -> Segmenter | None:
    """The segmenter ``options.segmenter`` names; None for ``precomputed`` (nothing runs)."""
    kind = options.segmenter
    if kind == "precomputed":
        return None
    if kind == "grounded-sam":
        return GroundedSam(
            options.detector_path,
            options.sam_path,
            options.box_threshold,
            options.text_threshold,
            prefix,
        )
    if kind == "foreground":
        return ForegroundSegmenter(
            options.segmenter_path,
            list(options.foreground_output),
            options.foreground_activation,
            options.trust_remote_code,
            f"{prefix}.segmenter_path",
        )
    if kind == "semantic":
        return SemanticSegmenter(
            options.segmenter_path, list(options.background_labels), f"{prefix}.segmenter_path"
        )
    if kind == "background-difference":
        return BackgroundDifference()
    if kind == "none":
        return NoSegmenter(who)
    raise ValueError(f"unknown segmenter {kind!r}; choose one of: {', '.join(SEGMENTERS)}")


__all__ = [
    "ForegroundSegmenter",
    "GroundedSam",
    "SemanticSegmenter",
    "build_segmenter",
    "select_output",
]
