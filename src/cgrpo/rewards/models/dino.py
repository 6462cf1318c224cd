"""DINO identity rewards: ``dino`` and ``dino-seg``.

Score = cosine similarity (raw, in [-1, 1]; the 0-1 scale DreamBench papers print) between
the CLS embeddings of the generated image and its reference image(s); with several
references, the mean over references. An identical pair scores 1.

The network follows the checkpoint's ``config.json``:

* ``model_type: vit`` -- DINO v1 (``ViTModel``; facebook/dino-vits16 is the DreamBench
  metric of DreamBooth, UNO and the Customized-GRPO evaluation), CLS token of the last
  hidden state (after the final layer norm). A pooler in the checkpoint is not used.
* ``model_type: dinov2`` -- DINOv2 (``Dinov2Model``; the Customized-GRPO training reward),
  the same CLS token (transformers' ``pooler_output``).

Anything else (a CLIP directory, say) is refused, and so are weights that do not fit the
network exactly (:mod:`cgrpo.rewards.loading`). Preprocessing follows the directory's
``preprocessor_config.json`` (default: short side 256, bicubic, centre crop 224, ImageNet
mean/std) with torch ops.

``dino-seg`` (the paper's identity reward) compares subjects only, as
:mod:`cgrpo.rewards.segmentation.segment` prepares them. By default
(``segmenter: precomputed``) that is the official behaviour: the generated image whole
against the reference's cut-out ``<ref>_seg.png`` (the raw reference where there is none).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cgrpo.config import option, parse
from cgrpo.rewards.base import REWARDS, Reward, RewardContext, ScoreRequest
from cgrpo.rewards.images import ImageTransform, torch_dtype, transform_from_dir
from cgrpo.rewards.loading import load_pretrained
from cgrpo.rewards.segmentation.segment import SegmenterOptions
from cgrpo.rewards.segmentation.subject import SubjectIsolation

DINO_TRANSFORM = ImageTransform(shortest_edge=256, crop=(224, 224))
DINO_MODEL_TYPES = ("vit", "dinov2")


@dataclass
class DinoOptions:
    path: str = option(
        help="local DINO model directory (config.json + weights): DINO v1 "
        "(model_type vit, e.g. dino-vits16) or DINOv2 (model_type dinov2)"
    )
    batch_size: int = option(32, "images per forward pass", min=1)
    dtype: str = option("float32", "model dtype", choices=("float32", "bfloat16", "float16"))


@dataclass
class DinoSegOptions(SegmenterOptions, DinoOptions):
    """``dino`` options plus the segmentation options of
    :mod:`cgrpo.rewards.segmentation.segment`."""


def load_dino(path: str, what: str) -> torch.nn.Module:
    """DINO v1 (``ViTModel`` without pooler) or DINOv2 (``Dinov2Model``), as config.json
    says; weights must fit exactly."""
    from transformers import Dinov2Model, ViTModel

    from cgrpo.rewards.images import require_model_dir
    from cgrpo.rewards.loading import model_type_of

    kind = model_type_of(require_model_dir(path, what), what)
    if kind not in DINO_MODEL_TYPES:
        raise ValueError(
            f"{what} = {path!r}: config.json is model_type {kind!r}; expected 'vit' "
            "(DINO v1, e.g. dino-vits16) or 'dinov2'"
        )
    if kind == "vit":
        return load_pretrained(
            ViTModel, path, what, ignore_unexpected=("pooler.",), add_pooling_layer=False
        )
    return load_pretrained(Dinov2Model, path, what)


def cosine_to_references(gen: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
    """Mean cosine similarity of each generated embedding to its own references.

    Args:
        gen: ``[B, D]`` embeddings.
        refs: B tensors ``[R_i, D]``.
    Returns ``[B]`` in [-1, 1].
    """
    g = torch.nn.functional.normalize(gen.float(), dim=-1)
    return torch.stack(
        [
            (torch.nn.functional.normalize(r.float(), dim=-1) @ g[i]).mean()
            for i, r in enumerate(refs)
        ]
    )


class DinoReward(Reward):
    """DINO CLS cosine similarity (column named after the reward)."""

    def __init__(self, options: DinoOptions, context: RewardContext, name: str = "dino") -> None:
        super().__init__()
        self.name, self.columns, self.options = name, (name,), options
        where = f"rewards.{name}.options.path"
        model = load_dino(options.path, where)
        self.model = model.to(torch_dtype(options.dtype)).requires_grad_(False)
        self.transform = transform_from_dir(Path(options.path).expanduser(), DINO_TRANSFORM)
        self.to(context.device)

    def to(self, device: torch.device | str) -> DinoReward:
        super().to(device)
        self.model.to(self.device)
        return self

    def embed(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Images ``[3, H, W]`` of any sizes -> CLS embeddings ``[N, D]`` (float32)."""
        out = []
        dtype = next(self.model.parameters()).dtype
        for i in range(0, len(images), self.options.batch_size):
            x = self.transform.batch(
                [im.to(self.device) for im in images[i : i + self.options.batch_size]]
            )
            hidden = self.model(pixel_values=x.to(dtype)).last_hidden_state
            out.append(hidden[:, 0].float())
        return torch.cat(out)

    def _prepare(
        self, request: ScoreRequest
    ) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """The generated images and, per sample, its references as compared; samples that
        share references share the list object (so it is embedded once)."""
        lists: dict[int, list[torch.Tensor]] = {}
        refs = [lists.setdefault(id(r), list(r)) for r in request.references]
        return list(request.images), refs

    def _score(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        gens, refs = self._prepare(request)
        start: dict[int, int] = {}
        flat: list[torch.Tensor] = []
        for r in refs:
            if id(r) not in start:
                start[id(r)] = len(flat)
                flat.extend(r)
        feats = self.embed(gens + flat)
        gen_f, ref_f = feats[: len(gens)], feats[len(gens) :]
        per_sample = [ref_f[start[id(r)] : start[id(r)] + len(r)] for r in refs]
        return {self.name: cosine_to_references(gen_f, per_sample)}


class DinoSegReward(DinoReward):
    """``dino`` on subjects only (see :mod:`cgrpo.rewards.segmentation.segment`)."""

    def __init__(
        self, options: DinoSegOptions, context: RewardContext, name: str = "dino-seg"
    ) -> None:
        self.isolation = SubjectIsolation(options, name, f"rewards.{name}.options")
        super().__init__(options, context, name)

    def to(self, device: torch.device | str) -> DinoSegReward:
        super().to(device)
        self.isolation.to(self.device)
        return self

    def _prepare(
        self, request: ScoreRequest
    ) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        views = self.isolation.views(request)
        return [v.image for v in views], [v.references for v in views]


@REWARDS.register("dino")
def _build_dino(options: dict, context: RewardContext) -> DinoReward:
    return DinoReward(parse(DinoOptions, options, prefix="rewards.dino.options"), context)


@REWARDS.register("dino-seg")
def _build_dino_seg(options: dict, context: RewardContext) -> DinoSegReward:
    return DinoSegReward(parse(DinoSegOptions, options, prefix="rewards.dino-seg.options"), context)


__all__ = [
    "DINO_MODEL_TYPES",
    "DinoOptions",
    "DinoReward",
    "DinoSegOptions",
    "DinoSegReward",
    "cosine_to_references",
    "load_dino",
]
