"""Example custom rewards for cgrpo: plain functions, no cgrpo imports needed.

A custom reward is any function

    fn(images: Tensor[B, 3, H, W] in [0, 1], prompts: list[str], references: list[Tensor[R, 3, h, w]])
        -> Tensor[B] | list[float] | dict[str, Tensor[B]]

Use it in a config by file path or module path (higher scores are better):

    rewards:
      - name: custom
        options: {target: "examples/custom_reward.py:colorfulness"}
      - name: "python:examples/custom_reward.py:image_stats"
        options: {columns: [brightness, colorfulness]}

or serve it out of process:

    cgrpo serve-reward custom --options '{"target": "examples/custom_reward.py:colorfulness"}'
"""

from __future__ import annotations

import torch


def colorfulness(
    images: torch.Tensor,
    prompts: list[str],
    references: list[torch.Tensor],
) -> torch.Tensor:
    """Hasler & Suesstrunk's (2003) colourfulness M = sigma_rgyb + 0.3 * mu_rgyb on the
    0-255 scale: about 0 for grey images, ~100+ for saturated, varied colour. ``[B]``."""
    x = images.float() * 255.0
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    rg = (r - g).flatten(1)
    yb = (0.5 * (r + g) - b).flatten(1)
    sigma = torch.sqrt(rg.var(1, unbiased=False) + yb.var(1, unbiased=False))
    mu = torch.sqrt(rg.mean(1) ** 2 + yb.mean(1) ** 2)
    return sigma + 0.3 * mu


def brightness(
    images: torch.Tensor, prompts: list[str], references: list[torch.Tensor], target: float = 0.5
) -> list[float]:
    """Closeness of mean luma (Rec. 601) to ``target``: 1 at the target, 0 at the far end.
    Returns a list to show that plain floats work too."""
    luma = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    gap = (luma.flatten(1).mean(1) - target).abs() / max(target, 1 - target)
    return (1 - gap).tolist()


def image_stats(
    images: torch.Tensor,
    prompts: list[str],
    references: list[torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Two columns at once: declare them with the ``columns`` option."""
    return {
        "brightness": torch.tensor(brightness(images, prompts, references)),
        "colorfulness": colorfulness(images, prompts, references),
    }
