"""The one image reader: files and encoded bytes of any mode to float arrays, size-checked.

Every image cgrpo reads from outside (references, masks, generated images under
evaluation, images sent to a reward server) goes through :func:`read_image`:

* a **pixel limit** (:data:`MAX_PIXELS`, 8192 x 8192) is checked from the header, before
  anything is decoded, so a decompression bomb is a ``ValueError`` naming the file and the
  limit, not an allocation failure;
* **16-bit** greyscale (``I;16*``, and PIL's 32-bit ``I``, which is how 16-bit PNGs may
  arrive) is scaled by 1/65535 and ``F`` is clipped to [0, 1], instead of being clipped to
  white by an 8-bit conversion;
* **transparency** (RGBA, LA, palette or greyscale with a transparent colour) is composited
  onto white, the backdrop of product-style reference shots;
* palette, greyscale, CMYK and the rest convert through PIL's own conversions, so 8-bit
  images read exactly as ``Image.convert`` gives them.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

MAX_PIXELS = 8192 * 8192
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
# ITU-R 601-2 luma, the weights of PIL's "L" conversion
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def read_image(
    source: str | Path | bytes,
    what: str = "image",
    mode: Literal["RGB", "L"] = "RGB",
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """An image file (path) or encoded image (bytes) as float32 in [0, 1]: ``[H, W, 3]``
    for ``mode="RGB"``, ``[H, W]`` for ``"L"``.

    Raises FileNotFoundError for a missing path and ValueError naming ``what`` and the
    file for anything unreadable or over ``max_pixels``.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, bytes):
        name, stream = what, io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{what} not found: {path}")
        name, stream = f"{what} {path}", path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise ValueError(
                        f"{name} is {width}x{height} pixels, over the limit of "
                        f"{max_pixels} pixels ({_side(max_pixels)})"
                    )
                return pil_to_array(im, mode)
    except Image.DecompressionBombError as e:
        raise ValueError(f"{name} is over the pixel limit: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError) as e:
        raise ValueError(f"{name} is not a readable image: {e}") from None


def pil_to_array(im: Any, mode: Literal["RGB", "L"] = "RGB") -> np.ndarray:
    """A PIL image of any mode -> float32 in [0, 1], ``[H, W, 3]`` (RGB) or ``[H, W]`` (L)."""
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', not {mode!r}")
    if im.mode in _SIXTEEN_BIT or im.mode == "F":
        grey = np.asarray(im).astype(np.float32)
        grey = np.clip(grey / 65535.0 if im.mode != "F" else grey, 0.0, 1.0)
        return grey if mode == "L" else np.repeat(grey[..., None], 3, axis=2)
    if im.mode in _ALPHA or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:]
        rgb = rgba[..., :3] * alpha + (1.0 - alpha)
        return rgb if mode == "RGB" else rgb @ _LUMA
    return np.asarray(im.convert(mode), dtype=np.float32) / 255.0


def _side(pixels: int) -> str:
    side = int(pixels**0.5)
    return f"{side} x {side}" if side * side == pixels else f"{pixels / 1e6:.0f} Mpx"
