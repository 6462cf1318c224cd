"""DINOv2 identity rewards: ``dino`` and ``dino-seg``.

Score = 100 x cosine similarity between the DINOv2 CLS embeddings (``pooler_output``: the
CLS token after the final layer norm) of the generated image and its reference image(s);
with several references, the mean over references. An identical pair scores 100.

``dino-seg`` (the paper's identity reward) first removes backgrounds so that only the
subject is compared: pixels outside the subject mask are filled with a constant colour
(``background_fill``, white by default, matching white-backdrop product shots). Reference
masks come from ``ScoreRequest.reference_masks`` (the data layer reads ``<ref>_seg.png``);
references without a mask and all generated images go through the configured segmenter
(:mod:`cgrpo.rewards.segment`).

Weights load from a local transformers ``Dinov2Model`` directory (``path``, required, e.g. a
download of facebook/dinov2-base). Preprocessing follows its ``preprocessor_config.json``
(default: short side 256, bicubic, centre crop 224, ImageNet mean/std) with torch ops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cgrpo.config import option, parse
from cgrpo.rewards.base import REWARDS, Reward, RewardContext, ScoreRequest
from cgrpo.rewards.images import (
    FILL_VALUES,
    ImageTransform,
    fill_background,
    require_model_dir,
    torch_dtype,
    transform_from_dir,
)
from cgrpo.rewards.segment import SEGMENTERS, build_segmenter

DINO_TRANSFORM = ImageTransform(shortest_edge=256, crop=(224, 224))


@dataclass
class DinoOptions:
    path: str = option(
        help="local DINOv2 model directory (config.json + weights, "
        "loadable by transformers Dinov2Model)"
    )
    batch_size: int = option(32, "images per forward pass", min=1)
    dtype: str = option("float32", "model dtype", choices=("float32", "bfloat16", "float16"))
    scale: float = option(
        100.0,
        "multiplier of the cosine similarity (100: identical = 100)",
        min=0.0,
        min_exclusive=True,
    )


@dataclass
class DinoSegOptions(DinoOptions):
    segmenter: str = option(
        "background-difference",
        "how generated images (and references without a mask) are segmented",
        choices=SEGMENTERS,
    )
    segmenter_path: str | None = option(
        None, "local transformers semantic-segmentation model directory (segmenter: model)"
    )
    background_labels: list[int] = option(
        help="class ids counted as background by a multi-class segmentation model",
        default_factory=lambda: [0],
    )
    background_fill: str = option(
        "white", "colour written over the background", choices=tuple(FILL_VALUES)
    )


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
    """DINOv2 CLS cosine similarity x ``scale`` (column named after the reward)."""

    def __init__(self, options: DinoOptions, context: RewardContext, name: str = "dino") -> None:
        super().__init__()
        from transformers import Dinov2Model

        self.name, self.columns, self.options = name, (name,), options
        where = f"rewards.{name}.options.path"
        path = require_model_dir(options.path, where)
        try:
            model = Dinov2Model.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"{where} = {options.path!r}: not loadable as Dinov2Model: {e}"
            ) from None
        self.model = model.to(torch_dtype(options.dtype)).eval().requires_grad_(False)
        self.transform = transform_from_dir(path, DINO_TRANSFORM)
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
            out.append(self.model(pixel_values=x.to(dtype)).pooler_output.float())
        return torch.cat(out)

    def _prepare(self, request: ScoreRequest) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The generated images and the flat list of distinct references, ready to embed."""
        return list(request.images), list(request.references)

    def _score(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        gens, refs = self._prepare(request)
        # Group members share one reference tensor: embed each distinct object once.
        order: dict[int, int] = {}
        flat: list[torch.Tensor] = []
        for r in refs:
            if id(r) not in order:
                order[id(r)] = len(flat)
                flat.extend(list(r))
        feats = self.embed(gens + flat)
        gen_f, ref_f = feats[: len(gens)], feats[len(gens) :]
        per_sample = [ref_f[order[id(r)] : order[id(r)] + r.shape[0]] for r in refs]
        return {self.name: cosine_to_references(gen_f, per_sample) * self.options.scale}


class DinoSegReward(DinoReward):
    """``dino`` on background-removed images (subject only)."""

    def __init__(
        self, options: DinoSegOptions, context: RewardContext, name: str = "dino-seg"
    ) -> None:
        super().__init__(options, context, name)
        self.segmenter = build_segmenter(
            options.segmenter,
            options.segmenter_path,
            options.background_labels,
            who=name,
            what=f"rewards.{name}.options.segmenter_path",
        )
        self.segmenter.to(self.device)

    def to(self, device: torch.device | str) -> DinoSegReward:
        super().to(device)
        if hasattr(self, "segmenter"):
            self.segmenter.to(self.device)
        return self

    def _prepare(self, request: ScoreRequest) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        fill = self.options.background_fill
        images = request.images.to(self.device).float()
        masks = self.segmenter(images)
        gens = [fill_background(im, m, fill) for im, m in zip(images, masks)]
        refs: list[torch.Tensor] = []
        done: dict[int, torch.Tensor] = {}
        for r, m in zip(request.references, request.reference_masks):
            key = id(r)
            if key not in done:
                r = r.to(self.device).float()
                if m is None:
                    m = self.segmenter(r)
                elif m.shape[0] != r.shape[0]:
                    raise ValueError(
                        f"reward {self.name!r}: {m.shape[0]} reference masks for "
                        f"{r.shape[0]} references"
                    )
                done[key] = torch.stack([fill_background(ri, mi, fill) for ri, mi in zip(r, m)])
            refs.append(done[key])
        return gens, refs


@REWARDS.register("dino")
def _build_dino(options: dict, context: RewardContext) -> DinoReward:
    return DinoReward(parse(DinoOptions, options, prefix="rewards.dino.options"), context)


@REWARDS.register("dino-seg")
def _build_dino_seg(options: dict, context: RewardContext) -> DinoSegReward:
    return DinoSegReward(parse(DinoSegOptions, options, prefix="rewards.dino-seg.options"), context)


__all__ = ["DinoOptions", "DinoSegOptions", "DinoReward", "DinoSegReward", "cosine_to_references"]
