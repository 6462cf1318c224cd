"""Changes to an image that should not change what a reward says about it.

Three are imperceptible (a person comparing the two images side by side sees no
difference): pixel noise of 2/255, a JPEG round trip at quality 95 without chroma
subsampling, and a resize round trip (0.75x and back, antialiased). The fourth, a 1-px
shift, is small but visible on a tiny image; a reward should still rank a group the same
way after it, since a generator's samples differ by far more than one pixel of placement.

Each perturbation maps ``[B, 3, H, W]`` float images in [0, 1] to the same shape; random
ones are seeded, so a check repeats exactly.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cgrpo.image_io import read_image

NOISE_STD = 2.0 / 255.0
JPEG_QUALITY = 95
RESIZE_FACTOR = 0.75

Perturbation = Callable[[torch.Tensor], torch.Tensor]


def pixel_noise(images: torch.Tensor, std: float = NOISE_STD, seed: int = 0) -> torch.Tensor:
    """Gaussian noise of ``std`` per pixel and channel, clamped to [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=gen, dtype=torch.float32).to(images.device)
    return (images.float() + std * noise).clamp(0, 1)


def jpeg_round_trip(images: torch.Tensor, quality: int = JPEG_QUALITY) -> torch.Tensor:
    """Each image encoded as JPEG at ``quality`` with 4:4:4 chroma (PIL ``subsampling=0``)
    and decoded again (the 8-bit rounding is part of it)."""
    from PIL import Image

    out = []
    arrays = (images.float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    for arr in arrays:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=quality, subsampling=0)
        out.append(read_image(buf.getvalue(), "JPEG round trip"))
    back = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()
    return back.to(images.device)


def resize_round_trip(images: torch.Tensor, factor: float = RESIZE_FACTOR) -> torch.Tensor:
    """Down to ``factor`` of the size and back, bilinear with antialiasing both ways."""
    h, w = images.shape[-2:]
    small = (max(1, round(h * factor)), max(1, round(w * factor)))
    x = F.interpolate(images.float(), size=small, mode="bilinear", antialias=True)
    x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True)
    return x.clamp(0, 1)


def shift_one_pixel(images: torch.Tensor) -> torch.Tensor:
    """The image moved one pixel to the right; the new left column repeats the old edge."""
    return torch.cat([images[..., :1], images[..., :-1]], dim=-1).float()


IMPERCEPTIBLE = ("noise", "jpeg", "resize")
"""Perturbations no one sees; ``shift`` is the small, visible one."""

PERTURBATIONS: dict[str, Perturbation] = {
    "noise": pixel_noise,
    "jpeg": jpeg_round_trip,
    "resize": resize_round_trip,
    "shift": shift_one_pixel,
}

DESCRIPTIONS = {
    "noise": f"Gaussian pixel noise, std {NOISE_STD * 255:.0f}/255",
    "jpeg": f"JPEG round trip, quality {JPEG_QUALITY}, 4:4:4 chroma",
    "resize": f"resize to {RESIZE_FACTOR}x and back, bilinear, antialiased",
    "shift": "1-px shift to the right, edge column repeated",
}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of two image batches in [0, 1] (inf if equal)."""
    mse = float((a.float() - b.float()).square().mean())
    return float("inf") if mse == 0 else 10.0 * float(np.log10(1.0 / mse))


__all__ = [
    "DESCRIPTIONS",
    "IMPERCEPTIBLE",
    "PERTURBATIONS",
    "jpeg_round_trip",
    "pixel_noise",
    "psnr",
    "resize_round_trip",
    "shift_one_pixel",
]
