"""The reward server's wire format: JSON with images as base64 PNG (no pickle).

``POST /score`` body::

    {"images": [PNG, ...],                     # B generated images, all one size
     "prompts": [str, ...],                    # B prompts
     "references": [[REF, ...], ...],          # B non-empty groups of reference images
     "reference_masks": [[REF, ...] | null],   # optional; one mask (grey) per reference
     "metadata": [{...}, ...],                 # optional; B JSON objects
     "pool": [PNG, ...]}                       # optional; images several samples share

A ``REF`` is a PNG (base64) or an integer index into ``pool``. :func:`encode_request` sends
each distinct reference and mask once through the pool (a group of G samples shares one
reference); :func:`decode_request` decodes each distinct image once and gives samples with
the same references the same tensor, so rewards embed it once (they de-duplicate by
identity). The answer is ``{"columns": {NAME: [float, ...]}}``, errors ``{"error": message}``.

Images travel as 8-bit PNG, so they are quantised to 1/255 steps in transit (lossless for
images that already are 8-bit); masks travel as 8-bit grey PNG (subject where >= 0.5).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import torch

from cgrpo.rewards.base import ScoreRequest
from cgrpo.rewards.images import b64decode_image, b64encode_image


def _plain(value: Any) -> Any:
    """Metadata -> JSON-safe values (tensors and arrays become lists, unknowns strings)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


class _Pool:
    """PNG strings sent once; a group tensor seen again (same object) is not re-encoded."""

    def __init__(self) -> None:
        self.images: list[str] = []
        self._index: dict[str, int] = {}
        self._groups: dict[int, list[int]] = {}

    def add_group(self, group: torch.Tensor) -> list[int]:
        key = id(group)
        if key not in self._groups:
            self._groups[key] = [self._add(b64encode_image(im)) for im in group]
        return self._groups[key]

    def _add(self, png: str) -> int:
        if png not in self._index:
            self._index[png] = len(self.images)
            self.images.append(png)
        return self._index[png]


def encode_request(request: ScoreRequest) -> dict[str, Any]:
    """A :class:`ScoreRequest` as the JSON body of ``POST /score``; references and masks
    go through the pool, each distinct image once."""
    pool = _Pool()
    return {
        "images": [b64encode_image(im) for im in request.images],
        "prompts": list(request.prompts),
        "references": [pool.add_group(refs) for refs in request.references],
        "reference_masks": [
            None if m is None else pool.add_group(m) for m in request.reference_masks
        ],
        "metadata": [_plain(m) for m in request.metadata],
        "pool": pool.images,
    }


class _Decoder:
    """Decodes each distinct image (and each distinct group) of one request once."""

    def __init__(self, pool: Any) -> None:
        if not isinstance(pool, list) or not all(isinstance(p, str) for p in pool):
            raise ValueError("field 'pool' must be a list of base64 PNG strings")
        self.pool = pool
        self._images: dict[tuple[str, str], torch.Tensor] = {}
        self._groups: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}

    def _png(self, ref: Any, where: str) -> str:
        if isinstance(ref, str):
            return ref
        if isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref < len(self.pool):
            return self.pool[ref]
        raise ValueError(
            f"{where} must be a base64 PNG or an index into 'pool' (which holds "
            f"{len(self.pool)} images), got {str(ref)[:40]!r}"
        )

    def image(self, png: str, mode: str, where: str) -> torch.Tensor:
        key = (mode, png)
        if key not in self._images:
            try:
                self._images[key] = b64decode_image(png, mode, where)
            except ValueError:
                raise
            except Exception as e:  # whatever else the image library raises on hostile data
                raise ValueError(f"{where} cannot be decoded: {type(e).__name__}: {e}") from None
        return self._images[key]

    def group(self, refs: Any, mode: str, where: str) -> torch.Tensor:
        """``[R, C, h, w]`` from a non-empty list of REFs of one size; shared when repeated.
        Mode "L" (masks) gives {0, 1} masks, subject where >= 0.5."""
        if not isinstance(refs, list) or not refs:
            raise ValueError(f"{where} must be a non-empty list of images")
        pngs = tuple(self._png(r, f"{where}[{j}]") for j, r in enumerate(refs))
        key = (mode, pngs)
        if key not in self._groups:
            images = [self.image(p, mode, f"{where}[{j}]") for j, p in enumerate(pngs)]
            sizes = sorted({tuple(im.shape[1:]) for im in images})
            if len(sizes) > 1:
                raise ValueError(f"{where} holds images of different sizes {sizes}")
            stacked = torch.stack(images)
            self._groups[key] = (stacked >= 0.5).float() if mode == "L" else stacked
        return self._groups[key]


def _list_field(body: dict[str, Any], key: str, n: int | None, optional: bool = False) -> list:
    """``body[key]``, a list of ``n`` items (an optional field may be absent, null or [])."""
    value = body.get(key)
    if optional and not value:
        return []
    if not isinstance(value, list):
        raise ValueError(f"field {key!r} must be a list")
    if n is not None and len(value) != n:
        raise ValueError(f"field {key!r} has {len(value)} items for {n} images")
    return value


def decode_request(body: Any) -> ScoreRequest:
    """The inverse of :func:`encode_request` (also accepts REFs inline, without a pool);
    images of any PNG mode and size, as RGB.

    Raises ValueError naming the field at fault.
    """
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    decoder = _Decoder(body.get("pool", []))
    raw_images = _list_field(body, "images", None)
    if not raw_images:
        raise ValueError("field 'images' is empty")
    n = len(raw_images)
    prompts = _list_field(body, "prompts", n)
    if not all(isinstance(p, str) for p in prompts):
        raise ValueError("field 'prompts' must hold strings")
    raw_refs = _list_field(body, "references", n)
    raw_masks = _list_field(body, "reference_masks", n, optional=True)
    metadata = _list_field(body, "metadata", n, optional=True)
    if not all(isinstance(m, dict) for m in metadata):
        raise ValueError("field 'metadata' must be a list of objects")

    images = []
    for i, s in enumerate(raw_images):
        if not isinstance(s, str):
            raise ValueError(f"images[{i}] must be a base64 PNG string")
        images.append(decoder.image(s, "RGB", f"images[{i}]"))
    sizes = sorted({tuple(im.shape) for im in images})
    if len(sizes) > 1:
        raise ValueError(f"images differ in size {sizes}; send one size per request")
    refs = [decoder.group(g, "RGB", f"references[{i}]") for i, g in enumerate(raw_refs)]
    masks: list[torch.Tensor | None] = []
    for i, group in enumerate(raw_masks):
        if group is None:
            masks.append(None)
            continue
        m = decoder.group(group, "L", f"reference_masks[{i}]")
        if m.shape[0] != refs[i].shape[0]:
            raise ValueError(
                f"reference_masks[{i}] has {m.shape[0]} masks for {refs[i].shape[0]} references"
            )
        if m.shape[2:] != refs[i].shape[2:]:
            raise ValueError(
                f"reference_masks[{i}] are {tuple(m.shape[2:])}, their references "
                f"{tuple(refs[i].shape[2:])} (height, width)"
            )
        masks.append(m)
    return ScoreRequest(
        images=torch.stack(images),
        prompts=prompts,
        references=refs,
        reference_masks=masks,
        metadata=metadata,
    )


# ---------------------------------------------------------------- HTTP bodies (server side)


def parse_body(body: bytes) -> Any:
    """JSON -> :class:`ScoreRequest`; every malformed body is a ValueError naming the fault."""
    try:
        return decode_request(json.loads(body))
    except RecursionError:
        raise ValueError("the JSON body nests too deeply") from None


async def read_body(request: Any, limit: int, timeout_s: float) -> bytes | None:
    """The whole body, or None when it is over ``limit`` bytes (then read and dropped).
    TimeoutError when it takes over ``timeout_s``; starlette's ClientDisconnect when the
    client goes away."""
    chunks: list[bytes] = []
    size = 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            else:
                chunks.clear()

    await asyncio.wait_for(read(), timeout_s)
    return None if size > limit else b"".join(chunks)


async def drain_body(request: Any) -> None:
    """Read the rest of the body (keep-alive); a client already gone is no error."""
    from starlette.requests import ClientDisconnect

    with contextlib.suppress(ClientDisconnect):
        async for _ in request.stream():
            pass


__all__ = ["decode_request", "drain_body", "encode_request", "parse_body", "read_body"]
