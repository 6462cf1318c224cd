"""CLIP rewards: ``clip-i`` (image-image) and ``clip-t`` (image-text).

Score = raw cosine similarity of CLIP's projected embeddings, the 0-1 scale DreamBench
papers print (CLIP-I of an identical pair is 1; typical CLIP-T values are 0.25-0.35).
``clip-i`` averages over a sample's references. ``clip-t`` is clipped at 0, as the official
DreamBench evaluation does; the full prompt is encoded, truncated to the text encoder's
context (77 tokens for OpenAI CLIP).

Weights and tokenizer load from one local transformers ``CLIPModel`` directory (``path``),
e.g. openai/clip-vit-base-patch32 (the DreamBench metric); weights that do not fit, or a
directory of another model type, are refused (:mod:`cgrpo.rewards.loading`). Images are
preprocessed with torch ops following its ``preprocessor_config.json`` (default: short side
224, bicubic, centre crop 224, OpenAI CLIP mean/std).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cgrpo.config import option, parse
from cgrpo.rewards.base import REWARDS, Reward, RewardContext, ScoreRequest
from cgrpo.rewards.images import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    WEIGHT_FILES,
    ImageTransform,
    torch_dtype,
    transform_from_dir,
)
from cgrpo.rewards.loading import first_line, load_pretrained
from cgrpo.rewards.models.dino import cosine_to_references

CLIP_TRANSFORM = ImageTransform(
    shortest_edge=224, crop=(224, 224), mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD
)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


@dataclass
class ClipOptions:
    path: str = option(
        help="local CLIP model directory (config.json, weights and tokenizer "
        "files, loadable by transformers CLIPModel / AutoTokenizer)"
    )
    batch_size: int = option(32, "images per forward pass", min=1)
    dtype: str = option("float32", "model dtype", choices=("float32", "bfloat16", "float16"))


def _features(out: object) -> torch.Tensor:
    """transformers v4 returns the projected features; v5 wraps them in ``pooler_output``."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # type: ignore[attr-defined]


class _ClipReward(Reward):
    needs_tokenizer = False

    def __init__(self, options: ClipOptions, context: RewardContext, name: str) -> None:
        super().__init__()
        from transformers import AutoTokenizer, CLIPModel

        self.name, self.columns, self.options = name, (name,), options
        where = f"rewards.{name}.options.path"
        path = Path(options.path).expanduser() if options.path else options.path
        needs = ["config.json", WEIGHT_FILES] + ([TOKENIZER_FILES] if self.needs_tokenizer else [])
        model = load_pretrained(CLIPModel, options.path, where, model_types=("clip",), needs=needs)
        self.tokenizer = None
        if self.needs_tokenizer:
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            except (OSError, ValueError) as e:
                raise ValueError(
                    f"{where} = {options.path!r}: tokenizer not loadable: {first_line(e)}"
                ) from None
        self.model = model.to(torch_dtype(options.dtype)).eval().requires_grad_(False)
        self.transform = transform_from_dir(path, CLIP_TRANSFORM)
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self.to(context.device)

    def to(self, device: torch.device | str) -> _ClipReward:
        super().to(device)
        self.model.to(self.device)
        return self

    def embed_images(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Images ``[3, H, W]`` of any size -> projected embeddings ``[N, D]`` (float32)."""
        dtype = next(self.model.parameters()).dtype
        out = []
        for i in range(0, len(images), self.options.batch_size):
            x = self.transform.batch(
                [im.to(self.device) for im in images[i : i + self.options.batch_size]]
            )
            out.append(_features(self.model.get_image_features(pixel_values=x.to(dtype))).float())
        return torch.cat(out)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Prompts -> projected embeddings ``[N, D]`` (float32), truncated to the context."""
        out = []
        for i in range(0, len(texts), self.options.batch_size):
            tok = self.tokenizer(
                texts[i : i + self.options.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            tok = {
                k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")
            }
            out.append(_features(self.model.get_text_features(**tok)).float())
        return torch.cat(out)


class ClipImageReward(_ClipReward):
    """``clip-i``: CLIP image-embedding cosine to the references."""

    def __init__(self, options: ClipOptions, context: RewardContext, name: str = "clip-i") -> None:
        super().__init__(options, context, name)

    def _score(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        flat: list[torch.Tensor] = []
        start: dict[int, int] = {}
        for r in request.references:
            if id(r) not in start:
                start[id(r)] = len(flat)
                flat.extend(list(r))
        feats = self.embed_images(list(request.images) + flat)
        b = len(request)
        refs = [feats[b + start[id(r)] : b + start[id(r)] + r.shape[0]] for r in request.references]
        return {self.name: cosine_to_references(feats[:b], refs)}


class ClipTextReward(_ClipReward):
    """``clip-t``: cosine between CLIP image and prompt embeddings, clipped at 0."""

    needs_tokenizer = True

    def __init__(self, options: ClipOptions, context: RewardContext, name: str = "clip-t") -> None:
        super().__init__(options, context, name)

    def _score(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        img = torch.nn.functional.normalize(self.embed_images(list(request.images)), dim=-1)
        txt = torch.nn.functional.normalize(self.embed_texts(list(request.prompts)), dim=-1)
        return {self.name: (img * txt).sum(-1).clamp(min=0.0)}


@REWARDS.register("clip-i")
def _build_clip_i(options: dict, context: RewardContext) -> ClipImageReward:
    return ClipImageReward(parse(ClipOptions, options, prefix="rewards.clip-i.options"), context)


@REWARDS.register("clip-t")
def _build_clip_t(options: dict, context: RewardContext) -> ClipTextReward:
    return ClipTextReward(parse(ClipOptions, options, prefix="rewards.clip-t.options"), context)


__all__ = ["ClipOptions", "ClipImageReward", "ClipTextReward"]
