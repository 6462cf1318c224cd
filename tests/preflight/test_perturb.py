"""The pre-flight perturbations: imperceptible where they should be, and what they claim."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from cgrpo.preflight import noise_sources
from cgrpo.preflight.perturb import (
    IMPERCEPTIBLE,
    PERTURBATIONS,
    jpeg_round_trip,
    pixel_noise,
    psnr,
    resize_round_trip,
    shift_one_pixel,
)


def smooth_images(n: int = 3, size: int = 96) -> torch.Tensor:
    """Photo-like test images: gradients and soft blobs, no pixel-level detail."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = []
    for k in range(n):
        blob = torch.exp(-((x - 0.3 - 0.2 * k) ** 2 + (y - 0.5) ** 2) / 0.03)
        out.append(
            torch.stack([0.2 + 0.6 * x * blob + 0.1 * y, 0.3 + 0.5 * blob, 0.6 - 0.4 * y * x])
        )
    return torch.stack(out).clamp(0, 1)


def test_pixel_noise_is_2_over_255_and_seeded():
    x = smooth_images()
    a, b = pixel_noise(x), pixel_noise(x)
    assert torch.equal(a, b)
    assert (a - x).std() == pytest.approx(2 / 255, rel=0.1)
    assert 40.0 < psnr(x, a) < 44.0


@pytest.mark.parametrize("name", IMPERCEPTIBLE)
def test_the_imperceptible_ones_keep_a_smooth_image_above_35_db(name):
    x = smooth_images()
    y = PERTURBATIONS[name](x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert 35.0 < psnr(x, y) < float("inf")  # a change, and one no one sees


def test_jpeg_keeps_full_chroma_resolution():
    from PIL import Image

    # one-pixel red/blue stripes: 4:2:0 subsampling smears them, 4:4:4 keeps them
    x = torch.zeros(1, 3, 32, 32)
    x[0, 0, :, ::2] = 1.0
    x[0, 2, :, 1::2] = 1.0
    ours = jpeg_round_trip(x)
    arr = (x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, subsampling=2)
    subsampled = torch.from_numpy(np.array(Image.open(buf))).permute(2, 0, 1)[None] / 255.0
    assert psnr(x, ours) > psnr(x, subsampled) + 10.0


def test_resize_round_trip_goes_through_three_quarters():
    x = torch.zeros(1, 3, 32, 32)
    x[..., ::2, :] = 1.0  # a 1-px line pattern cannot survive a 24-px image
    assert psnr(x, resize_round_trip(x)) < 15.0
    assert resize_round_trip(x).shape == x.shape


def test_shift_moves_one_pixel_right_and_repeats_the_edge():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    y = shift_one_pixel(x)
    assert torch.equal(y[..., 1:], x[..., :-1])
    assert torch.equal(y[..., 0], x[..., 0])


def test_noise_comes_from_the_perturbations_that_were_imperceptible_plus_the_shift():
    psnrs = {"noise": 42.0, "jpeg": 37.0, "resize": 21.8, "shift": 16.5}
    assert noise_sources(psnrs, IMPERCEPTIBLE) == ("noise", "jpeg", "shift")
    assert noise_sources({**psnrs, "resize": 33.0}, IMPERCEPTIBLE) == (
        "noise",
        "jpeg",
        "resize",
        "shift",
    )
