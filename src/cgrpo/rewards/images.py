"""Image helpers shared by the rewards: torch preprocessing, PNG transport, model-dir checks.

Preprocessing reimplements what the transformers image processors do for the models we use
(resize, centre crop, rescale, normalise), with torch ops on float images in [0, 1], so a
reward can preprocess a batch on its own device without PIL or torchvision. Bicubic resizing
uses torch's antialiased kernel (a = -0.5, the same family as PIL's), so results agree with
the PIL-based processors up to 8-bit rounding; the tests measure that gap.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cgrpo.image_io import read_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# transformers stores PIL resampling filters as integers in preprocessor_config.json.
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


# ---------------------------------------------------------------- geometry


def shortest_edge_size(height: int, width: int, shortest: int) -> tuple[int, int]:
    """Output (h, w) when the short side is scaled to ``shortest`` (transformers' rule:
    the long side is truncated, not rounded)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest * long / short)
    return (new_long, shortest) if width <= height else (shortest, new_long)


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
) -> tuple[int, int]:
    """Qwen2-VL's target size: both sides multiples of ``factor``, area within
    [min_pixels, max_pixels], aspect ratio kept as well as possible.

    Same arithmetic (and float operation order) as Qwen's ``qwen_vl_utils`` and the
    transformers Qwen2-VL processor, so sizes match exactly.
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image aspect ratio {height}x{width} is over 200, which Qwen2-VL rejects")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resize(images: torch.Tensor, size: tuple[int, int], resample: str = "bicubic") -> torch.Tensor:
    """Resize ``[N, C, H, W]`` (or ``[C, H, W]``) float images to ``size`` = (h, w).

    Antialiased when shrinking (as PIL does); clamped to [0, 1] because PIL's uint8 output is.
    """
    squeeze = images.ndim == 3
    x = images[None] if squeeze else images
    if tuple(x.shape[-2:]) != tuple(size):
        if resample == "nearest":
            x = F.interpolate(x.float(), size=size, mode="nearest")
        else:
            x = F.interpolate(
                x.float(), size=size, mode=resample, align_corners=False, antialias=True
            ).clamp(0.0, 1.0)
    return x[0] if squeeze else x


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """``[B, C, H, W]`` -> the same, blurred with a separable Gaussian (reflect padding)."""
    if sigma <= 0:
        return images
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    c = images.shape[1]
    pad = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(pad, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def center_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre crop ``[..., H, W]`` to (h, w); zero-pads first where the image is smaller
    (transformers does the same)."""
    h, w = images.shape[-2:]
    th, tw = size
    if th > h or tw > w:
        ph, pw = max(th - h, 0), max(tw - w, 0)
        images = F.pad(images, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        h, w = images.shape[-2:]
    top, left = (h - th) // 2, (w - tw) // 2  # floor, as transformers does
    return images[..., top : top + th, left : left + tw]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel for ``[..., 3, H, W]``."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images - m) / s


@dataclass(frozen=True)
class ImageTransform:
    """Resize -> centre crop -> normalise, as a CLIP/DINOv2 image processor does.

    Attributes:
        shortest_edge: scale the short side to this (keeps aspect), or None.
        size: resize to exactly (h, w) instead, or None.
        crop: centre-crop size (h, w), or None.
        mean, std: per-channel normalisation.
        resample: "bicubic", "bilinear" or "nearest".
    """

    shortest_edge: int | None = 256
    size: tuple[int, int] | None = None
    crop: tuple[int, int] | None = (224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resample: str = "bicubic"

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """One ``[3, H, W]`` float image in [0, 1] -> ``[3, h, w]`` normalised."""
        x = image.float()
        if self.size is not None:
            x = resize(x, self.size, self.resample)
        elif self.shortest_edge is not None:
            x = resize(x, shortest_edge_size(*x.shape[-2:], self.shortest_edge), self.resample)
        if self.crop is not None:
            x = center_crop(x, self.crop)
        return normalize(x, self.mean, self.std)

    def batch(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Images of any sizes -> ``[N, 3, h, w]`` (needs a crop or a fixed size)."""
        return torch.stack([self(im) for im in images])


def transform_from_dir(path: str | Path, default: ImageTransform) -> ImageTransform:
    """Read ``preprocessor_config.json`` (if present) from a model directory.

    Uses its size / crop_size / image_mean / image_std / resample; anything missing keeps
    ``default``'s value. Steps switched off there (``do_resize`` etc. false) are skipped.
    """
    file = Path(path) / "preprocessor_config.json"
    if not file.is_file():
        return default
    try:
        cfg = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from None
    shortest, size, crop = default.shortest_edge, default.size, default.crop
    if "size" in cfg:
        s = cfg["size"]
        if isinstance(s, int):
            shortest, size = s, None
        elif "shortest_edge" in s:
            shortest, size = int(s["shortest_edge"]), None
        elif "height" in s and "width" in s:
            shortest, size = None, (int(s["height"]), int(s["width"]))
        else:
            raise ValueError(f"{file}: unsupported size {s!r} (want shortest_edge or height/width)")
    if not cfg.get("do_resize", True):
        shortest, size = None, None
    if "crop_size" in cfg:
        c = cfg["crop_size"]
        crop = (int(c), int(c)) if isinstance(c, int) else (int(c["height"]), int(c["width"]))
    if not cfg.get("do_center_crop", crop is not None):
        crop = None
    mean = tuple(cfg.get("image_mean", default.mean))
    std = tuple(cfg.get("image_std", default.std))
    if not cfg.get("do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    resample = _RESAMPLE.get(cfg.get("resample", 3), "bicubic")
    return ImageTransform(shortest, size, crop, mean, std, resample)


# ---------------------------------------------------------------- masks


FILL_VALUES = {"white": 1.0, "black": 0.0, "gray": 0.5}


def fill_background(image: torch.Tensor, mask: torch.Tensor, fill: str = "white") -> torch.Tensor:
    """Replace background pixels (mask < 0.5) with a constant colour.

    Args:
        image: ``[3, H, W]`` float in [0, 1].
        mask: ``[1, h, w]`` or ``[h, w]`` (1 = subject); resized (nearest) to the image.
        fill: "white", "black" or "gray".
    Returns ``[3, H, W]``.
    """
    m = mask.reshape(1, 1, *mask.shape[-2:]).float().to(image.device)
    if tuple(m.shape[-2:]) != tuple(image.shape[-2:]):
        m = F.interpolate(m, size=tuple(image.shape[-2:]), mode="nearest")
    keep = m[0] >= 0.5
    return torch.where(keep, image, torch.full_like(image, FILL_VALUES[fill]))


# ---------------------------------------------------------------- 8-bit / PNG transport


def to_uint8_array(image: torch.Tensor) -> np.ndarray:
    """``[C, H, W]`` float in [0, 1] -> ``[H, W, C]`` uint8 (rounded, clamped)."""
    x = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(1, 2, 0).cpu().numpy()


def quantize(image: torch.Tensor) -> torch.Tensor:
    """What an image becomes after an 8-bit round trip (same shape, float)."""
    return image.float().clamp(0, 1).mul(255).round().div(255)


def encode_png(image: torch.Tensor) -> bytes:
    """``[3, H, W]`` (RGB) or ``[1, H, W]`` (grey/mask) float in [0, 1] -> PNG bytes (8-bit)."""
    from PIL import Image

    arr = to_uint8_array(image)
    pil = Image.fromarray(arr[..., 0], mode="L") if arr.shape[2] == 1 else Image.fromarray(arr)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes, mode: str = "RGB", what: str = "image") -> torch.Tensor:
    """Encoded image bytes of any mode -> ``[3, H, W]`` (mode "RGB") or ``[1, H, W]`` ("L"),
    read by :func:`cgrpo.image_io.read_image` (pixel limit, 16-bit, transparency)."""
    t = torch.from_numpy(read_image(data, what, mode))
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1)


def b64encode_image(image: torch.Tensor) -> str:
    return base64.b64encode(encode_png(image)).decode("ascii")


def b64decode_image(text: str, mode: str = "RGB", what: str = "image") -> torch.Tensor:
    try:
        data = base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{what} is not valid base64: {e}") from None
    return decode_png(data, mode, what)


def image_digest(image: torch.Tensor) -> str:
    """SHA-256 of an image's 8-bit pixels and shape (stable across devices and dtypes)."""
    arr = to_uint8_array(image)
    h = hashlib.sha256(str(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- model directories


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def require_model_dir(
    path: str | Path | None, what: str, needs: Sequence[Any] = ("config.json", WEIGHT_FILES)
) -> Path:
    """Check a local model directory has the files a loader needs.

    Args:
        path: the directory (from an option).
        what: the option's dotted name for the message, e.g. ``rewards.dino.options.path``.
        needs: file names; a tuple inside means "one of these".
    Raises FileNotFoundError naming the path and listing the expected and present files.
    """
    if not path:
        raise ValueError(f"{what} is required: a local model directory")
    p = Path(path).expanduser()
    wanted = " and ".join(" or ".join(n) if isinstance(n, tuple) else n for n in needs)
    if not p.is_dir():
        raise FileNotFoundError(
            f"{what} = {str(path)!r} is not a directory; expected a local "
            f"model directory containing {wanted}"
        )
    missing = []
    for n in needs:
        options = n if isinstance(n, tuple) else (n,)
        if not any((p / o).is_file() for o in options):
            missing.append(" or ".join(options))
    if missing:
        present = sorted(x.name for x in p.iterdir())[:20]
        raise FileNotFoundError(
            f"{what} = {str(path)!r} lacks {', '.join(missing)}; expected "
            f"{wanted} (found: {', '.join(present) or 'nothing'})"
        )
    return p


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
