"""One image reader for every input: a pixel limit checked before decoding, and 16-bit,
palette, greyscale and transparent images read as they look."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reliability_helpers import bomb_png

import cgrpo
from cgrpo.data.base import image_to_tensor, load_image
from cgrpo.image_io import MAX_PIXELS, read_image
from cgrpo.rewards.images import decode_png, encode_png


def saved(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_sixteen_bit_greyscale_is_not_white(tmp_path):
    values = np.array([[0, 16384, 32768], [49152, 65535, 1000]], dtype=np.uint16)
    path = saved(Image.fromarray(values), tmp_path / "deep.png")
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I")  # how PIL hands 16-bit PNGs over
    tensor = load_image(path)
    assert tensor.shape == (3, 2, 3)
    torch.testing.assert_close(tensor[0], torch.from_numpy(values / 65535.0).float())
    assert torch.equal(tensor[0], tensor[2])
    assert tensor.mean() < 0.5  # the old 8-bit conversion read this as almost all white


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent
    rgba[1, 0] = (0, 0, 255, 51)  # 20% blue
    rgba[1, 1] = (0, 0, 0, 255)
    path = saved(Image.fromarray(rgba), tmp_path / "cutout.png")
    got = load_image(path).permute(1, 2, 0)
    want = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]], [[0.8, 0.8, 1.0], [0.0, 0.0, 0.0]]])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    grey_alpha = Image.fromarray(np.ascontiguousarray(rgba[..., [0, 3]]))
    la = load_image(saved(grey_alpha, tmp_path / "la.png"))
    assert la[:, 0, 1].tolist() == [1.0, 1.0, 1.0]


def test_palette_with_a_transparent_index(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 128, 0] + [9, 9, 9] * 255)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 1
    got = load_image(saved(pal, tmp_path / "pal.png", transparency=1))
    assert got[:, 0, 0].tolist() == pytest.approx([0.0, 128 / 255, 0.0])
    assert got[:, 0, 1].tolist() == [1.0, 1.0, 1.0]


def test_eight_bit_images_read_exactly_as_before(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    for name, image in (("rgb.png", Image.fromarray(rgb)), ("l.png", Image.fromarray(grey))):
        path = saved(image, tmp_path / name)
        want = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 255
        assert torch.equal(load_image(path), want)
        assert torch.equal(image_to_tensor(image), want)
    data = encode_png(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    mask = decode_png(data, "L")
    want_l = torch.from_numpy(np.array(Image.fromarray(rgb).convert("L"))).float() / 255
    torch.testing.assert_close(mask[0], want_l, atol=1 / 255, rtol=0)


@pytest.mark.parametrize("side", [9000, 15000])  # over our limit; over PIL's own as well
def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(side, side))
    with pytest.raises(ValueError, match=r"reference image .*bomb\.png is .*(over|exceeds)"):
        load_image(path, "reference image")
    with pytest.raises(ValueError, match=r"^images\[3\] is .*(over|exceeds)"):
        decode_png(path.read_bytes(), "RGB", "images[3]")
    assert side * side > MAX_PIXELS


def test_the_limit_message_names_the_file_and_the_limit(tmp_path):
    path = tmp_path / "wide.png"
    path.write_bytes(bomb_png(9000, 9000))
    with pytest.raises(ValueError) as info:
        read_image(path, "reference image")
    assert str(info.value) == (
        f"reference image {path} is 9000x9000 pixels, over the limit of {MAX_PIXELS} pixels "
        "(8192 x 8192)"
    )


def test_unreadable_bytes_name_the_source(tmp_path):
    path = tmp_path / "cut.png"
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, format="PNG")
    path.write_bytes(buf.getvalue()[:60])
    with pytest.raises(ValueError, match="cut.png is not a readable image"):
        load_image(path)
    with pytest.raises(ValueError, match=r"^references\[0\]\[1\] is not a readable image"):
        decode_png(b"\x00garbage", "RGB", "references[0][1]")


def test_every_image_file_is_opened_by_the_one_reader():
    """No module but cgrpo.image_io decodes images with PIL (so none skips the pixel limit)."""
    package = Path(cgrpo.__file__).parent
    openers = [
        str(p.relative_to(package))
        for p in sorted(package.rglob("*.py"))
        if "Image.open(" in p.read_text(encoding="utf-8")
    ]
    assert openers == ["image_io.py"]
