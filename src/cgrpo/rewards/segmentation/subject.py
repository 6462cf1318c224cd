"""What ``dino-seg`` compares: subjects isolated as
:mod:`cgrpo.rewards.segmentation.segment` describes.

:class:`SubjectIsolation` turns a :class:`~cgrpo.rewards.base.ScoreRequest` into one
:class:`SubjectView` per sample (the generated image and the references as compared, their
masks, where each reference came from). ``dino-seg`` embeds the views; ``cgrpo segments``
writes them out for a user to check by eye.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cgrpo.rewards.base import RewardFailure, ScoreRequest
from cgrpo.rewards.images import fill_background
from cgrpo.rewards.segmentation.segment import (
    NOUN_KEYS,
    SegmenterOptions,
    cutout_path,
    subject_noun,
)
from cgrpo.rewards.segmentation.segment_models import build_segmenter

log = logging.getLogger(__name__)


@dataclass
class SubjectView:
    """What ``dino-seg`` compares for one sample.

    Attributes:
        image: ``[3, H, W]`` the generated image as compared (background filled, or whole).
        image_mask: ``[1, H, W]`` its mask, or None when it was not segmented.
        references: each ``[3, h, w]`` as compared (cut-out, filled, or raw).
        reference_masks: per reference its mask, or None (cut-out or raw).
        reference_sources: per reference where it came from: ``cut-out <path>``,
            ``mask from data``, ``segmenter <name>`` or ``raw``.
        noun: the class noun the sample carries (or the ``noun`` option), if any.
    """

    image: torch.Tensor
    image_mask: torch.Tensor | None
    references: list[torch.Tensor]
    reference_masks: list[torch.Tensor | None]
    reference_sources: list[str]
    noun: str | None


class SubjectIsolation:
    """Applies :class:`SegmenterOptions` to a :class:`ScoreRequest` (module docstring rules).

    Args:
        options: the segmentation options.
        who: the reward's name (messages, :class:`RewardFailure`).
        prefix: the options' dotted prefix (messages).
    """

    def __init__(self, options: SegmenterOptions, who: str = "dino-seg", prefix: str = "") -> None:
        self.options, self.who = options, who
        self.segmenter = build_segmenter(options, who, prefix or f"rewards.{who}.options")
        self.device = torch.device("cpu")
        self._warned_no_paths = False

    def to(self, device: torch.device | str) -> SubjectIsolation:
        self.device = torch.device(device)
        if self.segmenter is not None:
            self.segmenter.to(self.device)
        return self

    def noun(self, metadata: dict[str, Any]) -> str | None:
        """The class noun of a sample (its metadata, else the ``noun`` option)."""
        return subject_noun(metadata, self.options.noun)

    def _segment(self, images: torch.Tensor, nouns: list[str | None]) -> torch.Tensor:
        assert self.segmenter is not None
        if self.segmenter.needs_noun and None in nouns:
            raise RewardFailure(
                self.who,
                f"segmenter {self.options.segmenter!r} needs the subject's class noun: "
                f"metadata {' or '.join(repr(k) for k in NOUN_KEYS)}, or the noun option",
            )
        return self.segmenter(images, nouns)

    def _cutouts(self, metadata: dict[str, Any], count: int) -> list[Path | None]:
        paths = metadata.get("reference_paths")
        if not paths:
            if not self._warned_no_paths:
                self._warned_no_paths = True
                log.warning(
                    "%s: segmenter 'precomputed': a request names no reference files "
                    "(metadata 'reference_paths'), so no <ref>_seg.png cut-out can be found "
                    "for it; its references are used as given",
                    self.who,
                )
            return [None] * count
        if len(paths) != count:
            raise RewardFailure(
                self.who,
                f"metadata 'reference_paths' names {len(paths)} files for {count} references",
            )
        found = [cutout_path(p) for p in paths]
        return [c if c.is_file() else None for c in found]

    def images_as_compared(
        self, images: torch.Tensor, nouns: list[str | None]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Generated images ``[B, 3, H, W]`` -> (each as compared, its mask or None)."""
        images = images.to(self.device).float()
        if self.segmenter is None:
            return list(images), [None] * len(images)
        masks = self._segment(images, nouns)
        fill = self.options.background_fill
        return [fill_background(im, m, fill) for im, m in zip(images, masks)], list(masks)

    def references_as_compared(
        self, refs: torch.Tensor, mask: torch.Tensor | None, meta: dict[str, Any], noun: str | None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor | None], list[str]]:
        """One sample's references ``[R, 3, h, w]`` (with the data's masks, its metadata and
        class noun) -> (each as compared, its mask or None, its source; see
        :class:`SubjectView`)."""
        from cgrpo.data.base import load_image

        fill = self.options.background_fill
        refs = refs.to(self.device).float()
        if mask is not None and mask.shape[0] != refs.shape[0]:
            raise RewardFailure(
                self.who, f"{mask.shape[0]} reference masks for {refs.shape[0]} references"
            )
        cutouts = (
            self._cutouts(meta, refs.shape[0]) if self.segmenter is None else [None] * len(refs)
        )
        source = "mask from data"
        if self.segmenter is not None and mask is None:
            mask = self._segment(refs, [noun] * refs.shape[0])
            source = f"segmenter {self.options.segmenter}"
        out: tuple[list, list, list] = ([], [], [])
        for j, ref in enumerate(refs):
            if cutouts[j] is not None:
                image = load_image(cutouts[j], "reference cut-out").to(self.device)
                row = (image, None, f"cut-out {cutouts[j]}")
            elif mask is not None:
                row = (fill_background(ref, mask[j], fill), mask[j], source)
            else:
                row = (ref, None, "raw")
            for column, value in zip(out, row):
                column.append(value)
        return out

    def views(self, request: ScoreRequest) -> list[SubjectView]:
        """One :class:`SubjectView` per sample; samples sharing a reference tensor (a group)
        share one computation of it."""
        nouns = [self.noun(m) for m in request.metadata]
        shown, masks = self.images_as_compared(request.images, nouns)
        done: dict[tuple, tuple] = {}
        views = []
        for i, (ref, mask, meta) in enumerate(
            zip(request.references, request.reference_masks, request.metadata)
        ):
            key = (id(ref), id(mask), tuple(meta.get("reference_paths") or ()), nouns[i])
            if key not in done:
                done[key] = self.references_as_compared(ref, mask, meta, nouns[i])
            views.append(SubjectView(shown[i], masks[i], *done[key], nouns[i]))
        return views


__all__ = ["SubjectIsolation", "SubjectView"]
