"""Where FLUX.1's tokens sit: packed latents and the position ids of target and references.

Position ids (``[L_total, 3]``: channel 0 = image index, 1 = row, 2 = column) follow the
variant's scheme (:func:`reference_position_ids`): Kontext marks references with channel 0
set to 1 (2, 3, ... for further references); UNO keeps channel 0 at 0 and moves each
reference past the target and the previous references along rows and/or columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

ID_SCHEMES = ("kontext", "d", "h", "w", "o")


def target_position_ids(rows: int, cols: int) -> torch.Tensor:
    """``[rows * cols, 3]`` float ids of a packed ``rows x cols`` grid: ``(0, row, col)``."""
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(None, rows, cols, "cpu", torch.float32)


def reference_position_ids(
    scheme: str, target_grid: tuple[int, int], reference_grids: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """Position ids of the reference tokens, ``[sum(r * c), 3]`` float, in reference order.

    ``target_grid`` and ``reference_grids`` are packed ``(rows, cols)`` sizes.

    * ``kontext``: reference ``k`` (0-based) gets channel 0 = ``k + 1``, rows/cols from 0
      (one reference: exactly FluxKontextPipeline's ids).
    * UNO ``d`` / ``h`` / ``w`` / ``o``: channel 0 stays 0; a running shift starts at the
      target's ``(rows, cols)`` and grows by each reference's size; ``d`` adds it to rows and
      cols, ``h`` to rows only, ``w`` to cols only, ``o`` to neither.
    """
    if scheme not in ID_SCHEMES:
        raise ValueError(f"unknown id scheme {scheme!r}; choose one of: {', '.join(ID_SCHEMES)}")
    row_shift, col_shift = target_grid
    parts = []
    for k, (rows, cols) in enumerate(reference_grids):
        ids = target_position_ids(rows, cols)
        if scheme == "kontext":
            ids[:, 0] = k + 1
        else:
            if scheme in ("d", "h"):
                ids[:, 1] += row_shift
            if scheme in ("d", "w"):
                ids[:, 2] += col_shift
            row_shift += rows
            col_shift += cols
        parts.append(ids)
    if not parts:
        return torch.zeros(0, 3)
    return torch.cat(parts)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` VAE latents -> ``[B, (h/2)*(w/2), 4C]`` FLUX tokens (2x2 patches)."""
    from diffusers import FluxPipeline

    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


__all__ = ["ID_SCHEMES", "pack_latents", "reference_position_ids", "target_position_ids"]
