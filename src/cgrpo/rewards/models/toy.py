"""Two learned rewards for the toy world: ``toy-id`` (identity) and ``toy-prompt`` (prompt).

They play the roles of DINO-Seg and HPSv3/CLIP-T in the paper, at toy scale, so the whole
RL loop (and its reward competition) can be exercised on a CPU. Both are small CNNs trained
on the procedural world by ``python -m cgrpo.rewards.models.toy_train``; their weights ship as
``cgrpo/assets/toy_id.safetensors`` and ``toy_prompt.safetensors`` with a JSON sidecar that
records the recipe and the held-out accuracy.

``toy-id`` in [-1, 1]: cosine similarity between identity embeddings of the reference's
subject and the generated image's subject. The subject is cut out first, so backgrounds do
not count: the reference uses its ground-truth mask when the request has one, the generated
image uses a learned segmenter (a small U-Net trained on the world's masks with blur
and noise, because generated images are blurry); the cut-out is cropped to its bounding box
(square, 15% margin) and resized to 24 px, so position and size do not count either. Several
references: the mean of their cosine similarities.

``toy-prompt`` in [0, 1]: a CNN with one classification head per attribute (background,
position, size, palette, pattern, shape). The score is the mean, over the attributes the
prompt asks for (``SubjectWorld.requested``), of the probability of the requested value.
The class noun counts as a request for its shape unless the prompt names another shape
("a ball in the snow" asks for background=snow and shape=round; "a cube shaped ball" asks
for shape=cube only). Prompts outside the toy grammar raise ValueError.

Images of any size are resized (bilinear, antialiased) to 32x32 first. Both rewards are
deterministic (eval mode, per-sample normalisation), so scores do not depend on batching.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cgrpo.config import option, parse
from cgrpo.rewards.base import REWARDS, Reward, RewardContext, ScoreRequest
from cgrpo.rewards.images import gaussian_blur
from cgrpo.rewards.loading import check_fit
from cgrpo.world.core import parse_prompt
from cgrpo.world.vocab import ATTRIBUTE_VALUES, NOUN_SHAPES

IMAGE_SIZE = 32
CROP_SIZE = 24  # subject cut-outs: a medium subject keeps about its native resolution
ASSETS = Path(__file__).resolve().parents[2] / "assets"
TOY_ID_WEIGHTS = ASSETS / "toy_id.safetensors"
TOY_PROMPT_WEIGHTS = ASSETS / "toy_prompt.safetensors"
TOY_ID_FORMAT = "cgrpo-toy-id-v1"
TOY_PROMPT_FORMAT = "cgrpo-toy-prompt-v1"


# --- networks --------------------------------------------------------------------------------


def _block(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    # GroupNorm, not BatchNorm: statistics are per sample, so scores never depend on the batch.
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation),
        nn.GroupNorm(4, cout),
        nn.SiLU(),
    )


class ToySegmenter(nn.Module):
    """Subject segmentation: ``[B, 3, 32, 32]`` in [0, 1] -> mask logits ``[B, 1, 32, 32]``.

    A two-level U-Net: dilated convolutions at half resolution see the whole image (receptive
    field ~30 px) to tell subject from backdrop; a skip connection at full resolution keeps the
    thin outlines.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = _block(3, width)
        self.down = nn.Sequential(
            nn.MaxPool2d(2), _block(width, 2 * width), _block(2 * width, 2 * width, 2),
            _block(2 * width, 2 * width, 4),
        )  # fmt: skip
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = _block(3 * width, width // 2)
        self.head = nn.Conv2d(width // 2, 1, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        skip = self.stem(images * 2.0 - 1.0)
        deep = self.up(self.down(skip))
        return self.head(self.fuse(torch.cat([skip, deep], dim=1)))


class ToyIdentityEmbedder(nn.Module):
    """Subject cut-outs ``[B, 4, 24, 24]`` (see :func:`crop_subjects`) -> unit vectors ``[B, D]``."""

    def __init__(self, dim: int = 128) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _block(4, 32), nn.MaxPool2d(2),
            _block(32, 64), _block(64, 64), nn.MaxPool2d(2),
            _block(64, 96), nn.MaxPool2d(2),
            nn.Conv2d(96, 64, 1), nn.SiLU(), nn.Flatten(),
        )  # fmt: skip
        self.proj = nn.Linear(64 * 9, dim)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.features(crops)), dim=-1)


class ToyIdentityModel(nn.Module):
    """The toy-id network pair: a segmenter for generated images and an identity embedder."""

    def __init__(self) -> None:
        super().__init__()
        self.segmenter = ToySegmenter()
        self.embedder = ToyIdentityEmbedder()

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 32, 32]`` -> hard subject masks ``[B, 1, 32, 32]`` in {0, 1}."""
        return (self.segmenter(images) > 0).float()

    def embed(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Identity embeddings ``[B, D]`` of ``[B, 3, 32, 32]`` images; masks ``[B, 1, 32, 32]``
        (None: segment them)."""
        masks = self.segment(images) if masks is None else (masks > 0.5).float()
        return self.embedder(crop_subjects(images, masks))


class ToyAttributeNet(nn.Module):
    """``[B, 3, 32, 32]`` -> logits per attribute, ``{name: [B, n_values]}``.

    Attributes and their value order are :data:`cgrpo.world.vocab.ATTRIBUTE_VALUES`.
    """

    def __init__(self, hidden: int = 192) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _block(3, 32), nn.MaxPool2d(2),
            _block(32, 48), _block(48, 64), nn.MaxPool2d(2),
            _block(64, 96), nn.MaxPool2d(2),
            nn.Conv2d(96, 64, 1), nn.SiLU(), nn.Flatten(),
            nn.Linear(64 * 16, hidden), nn.SiLU(),
        )  # fmt: skip
        self.heads = nn.ModuleDict(
            {name: nn.Linear(hidden, len(values)) for name, values in ATTRIBUTE_VALUES.items()}
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(images * 2.0 - 1.0)
        return {name: head(h) for name, head in self.heads.items()}


# --- image plumbing ----------------------------------------------------------------------------


def to_world_size(images: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, C, size, size]`` (bilinear, antialiased); same size: unchanged."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)  # fmt: skip


def crop_subjects(images: torch.Tensor, masks: torch.Tensor, out: int = CROP_SIZE,
                  margin: float = 1.15) -> torch.Tensor:  # fmt: skip
    """Cut out each subject and frame it: ``[B, 3, H, W]``, ``[B, 1, H, W]`` -> ``[B, 4, out, out]``.

    Channels: ``(rgb - 0.5) * mask`` (background zeroed) and the mask. The crop is the square
    around the mask's bounding box, ``margin`` times its longer side; an empty mask keeps the
    whole image. Removing background, position and size leaves what identity is made of.
    """
    b, _, h, w = images.shape
    m = masks[:, 0] > 0.5
    rows, cols = m.any(dim=2), m.any(dim=1)  # [B, H], [B, W]
    ys, xs = torch.arange(h, device=images.device), torch.arange(w, device=images.device)
    y0 = torch.where(rows, ys, h).amin(dim=1).float()
    y1 = torch.where(rows, ys, -1).amax(dim=1).float()
    x0 = torch.where(cols, xs, w).amin(dim=1).float()
    x1 = torch.where(cols, xs, -1).amax(dim=1).float()
    empty = ~rows.any(dim=1)
    y0, x0 = torch.where(empty, 0.0, y0), torch.where(empty, 0.0, x0)
    y1, x1 = torch.where(empty, h - 1.0, y1), torch.where(empty, w - 1.0, x1)
    side = torch.maximum(y1 - y0 + 1, x1 - x0 + 1) * margin  # pixels
    # affine_grid works in [-1, 1] units with align_corners=False: pixel i spans 2/h.
    cx, cy = (x0 + x1 + 1) / w - 1, (y0 + y1 + 1) / h - 1
    theta = torch.zeros(b, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = side / w, cx
    theta[:, 1, 1], theta[:, 1, 2] = side / h, cy
    mf = m[:, None].to(images.dtype)
    x = torch.cat([(images - 0.5) * mf, mf], dim=1)
    grid = F.affine_grid(theta, [b, 4, out, out], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# --- weights I/O --------------------------------------------------------------------------------


def save_weights(module: nn.Module, path: str | Path, fmt: str, extra: dict[str, str]) -> None:
    """Write ``module``'s state dict as safetensors with ``{"format": fmt, **extra}`` metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={"format": fmt, **extra})


def load_weights(module: nn.Module, path: str | Path, fmt: str) -> nn.Module:
    """Load safetensors weights into ``module`` (strict), checking the format tag; eval mode."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"toy reward weights not found: {path} (rebuild with "
            f"`python -m cgrpo.rewards.models.toy_train --out {path.parent}`)"
        )
    with safe_open(str(path), framework="pt") as f:
        found = (f.metadata() or {}).get("format")
    if found != fmt:
        raise ValueError(f"{path} holds {found!r} weights, expected {fmt!r}")
    state = load_file(str(path))
    expected = module.state_dict()
    check_fit(
        "toy reward weights",
        path,
        sorted(set(expected) - set(state)),
        sorted(set(state) - set(expected)),
        [k for k in state if k in expected and state[k].shape != expected[k].shape],
        f"the {fmt} network",
    )
    module.load_state_dict(state, strict=True)
    return module.eval().requires_grad_(False)


def load_toy_id(path: str | Path | None = None) -> ToyIdentityModel:
    """The trained toy-id network pair (default: the packaged asset)."""
    return load_weights(ToyIdentityModel(), path or TOY_ID_WEIGHTS, TOY_ID_FORMAT)


def load_toy_prompt(path: str | Path | None = None) -> ToyAttributeNet:
    """The trained toy-prompt attribute network (default: the packaged asset)."""
    return load_weights(ToyAttributeNet(), path or TOY_PROMPT_WEIGHTS, TOY_PROMPT_FORMAT)


def sidecar(path: str | Path) -> dict[str, Any]:
    """The JSON recipe/metrics file written next to a weights file."""
    return json.loads(Path(path).with_suffix(".json").read_text())


# --- scoring -------------------------------------------------------------------------------------


def prompt_targets(prompt: str, class_term: bool = True) -> dict[str, str]:
    """The attribute values ``prompt`` asks for, as scored by toy-prompt (see module docs)."""
    req = parse_prompt(prompt)
    targets = {k: v for k, v in req.items() if k in ATTRIBUTE_VALUES}
    if class_term and "shape" not in targets:
        targets["shape"] = NOUN_SHAPES[req["noun"]]
    return targets


def attribute_score(probs: dict[str, torch.Tensor], targets: list[dict[str, str]]) -> torch.Tensor:
    """Mean probability of each sample's targets: ``{attr: [B, n]}``, B dicts -> ``[B]``."""
    scores = []
    for i, want in enumerate(targets):
        p = [probs[a][i, ATTRIBUTE_VALUES[a].index(v)] for a, v in want.items()]
        scores.append(torch.stack(p).mean() if p else probs["shape"].new_tensor(0.0))
    return torch.stack(scores)


@dataclass
class ToyIdOptions:
    weights: str = option("", "toy-id safetensors file; empty: the packaged cgrpo/assets one")
    use_reference_masks: bool = option(
        True, "cut references out with their given masks; false: segment them like generations"
    )
    chunk_size: int = option(256, "images per forward pass", min=1)


@dataclass
class ToyPromptOptions:
    weights: str = option("", "toy-prompt safetensors file; empty: the packaged cgrpo/assets one")
    class_term: bool = option(
        True, "count the class noun as a request for its shape unless another shape is named"
    )
    blur: float = option(
        0.0,
        "Gaussian blur sigma (pixels at 32 x 32) before the classifier; 0: none. The small "
        "generator's speckle otherwise decides the ranking within a group",
        min=0.0,
        max=4.0,
    )
    chunk_size: int = option(256, "images per forward pass", min=1)


def _chunks(x: torch.Tensor, n: int):
    return [x[i : i + n] for i in range(0, x.shape[0], n)]


class ToyIdentityReward(Reward):
    """toy-id: identity similarity in [-1, 1] between reference and generated subjects."""

    name = "toy-id"
    columns = ("toy-id",)

    def __init__(self, options: ToyIdOptions) -> None:
        super().__init__()
        self.options = options
        self.model = load_toy_id(options.weights or None)

    def to(self, device: torch.device | str) -> ToyIdentityReward:
        super().to(device)
        self.model.to(self.device)
        return self

    def _embed(self, images: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        images = to_world_size(images.to(self.device, torch.float32)).clamp(0, 1)
        if masks is not None:
            masks = to_world_size(masks.to(self.device, torch.float32))
        out = []
        for i, chunk in enumerate(_chunks(images, self.options.chunk_size)):
            m = None if masks is None else masks[i * self.options.chunk_size :][: len(chunk)]
            out.append(self.model.embed(chunk, m))
        return torch.cat(out)

    def _score(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        gen = self._embed(request.images, None)
        counts = [r.shape[0] for r in request.references]
        refs = torch.cat([to_world_size(r.float()) for r in request.references])
        given = request.reference_masks
        if self.options.use_reference_masks and all(m is not None for m in given):
            masks = torch.cat([to_world_size(m.float()) for m in given])
            ref = self._embed(refs, masks)
        elif self.options.use_reference_masks and any(m is not None for m in given):
            # Mixed batch: embed each sample's references on their own terms.
            ref = torch.cat([
                self._embed(to_world_size(r.float()),
                            None if m is None else to_world_size(m.float()))
                for r, m in zip(request.references, given)
            ])  # fmt: skip
        else:
            ref = self._embed(refs, None)
        sims = []
        for i, part in enumerate(torch.split(ref, counts)):
            sims.append((part @ gen[i]).mean())
        return {"toy-id": torch.stack(sims)}


class ToyPromptReward(Reward):
    """toy-prompt: mean probability in [0, 1] of the attributes the prompt asks for."""

    name = "toy-prompt"
    columns = ("toy-prompt",)

    def __init__(self, options: ToyPromptOptions) -> None:
        super().__init__()
        self.options = options
        self.model = load_toy_prompt(options.weights or None)

    def to(self, device: torch.device | str) -> ToyPromptReward:
        super().to(device)
        self.model.to(self.device)
        return self

    def probabilities(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-attribute class probabilities ``{attr: [B, n_values]}`` of ``[B, 3, H, W]``."""
        images = to_world_size(images.to(self.device, torch.float32)).clamp(0, 1)
        images = gaussian_blur(images, self.options.blur)
        parts = [self.model(c) for c in _chunks(images, self.options.chunk_size)]
        return {k: torch.cat([p[k] for p in parts]).softmax(dim=-1) for k in parts[0]}

    def _score(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        targets = [prompt_targets(p, self.options.class_term) for p in request.prompts]
        probs = self.probabilities(request.images)
        return {"toy-prompt": attribute_score(probs, targets)}


@REWARDS.register("toy-id")
def build_toy_id(options: dict[str, Any], context: RewardContext) -> ToyIdentityReward:
    """Factory: ``options`` are :class:`ToyIdOptions` fields."""
    opts = parse(ToyIdOptions, options, prefix="rewards.toy-id.options")
    return ToyIdentityReward(opts).to(context.device)


@REWARDS.register("toy-prompt")
def build_toy_prompt(options: dict[str, Any], context: RewardContext) -> ToyPromptReward:
    """Factory: ``options`` are :class:`ToyPromptOptions` fields."""
    opts = parse(ToyPromptOptions, options, prefix="rewards.toy-prompt.options")
    return ToyPromptReward(opts).to(context.device)
