"""Recipe: add a generator backend. One file; its last line registers it.

``model.backend: tiny-mlp`` then trains it. A backend is a :class:`~cgrpo.policies.Policy`:
``encode`` (prompts + references -> a Condition), ``latent_shape``, ``forward`` (the velocity
at noise level sigma) and ``decode`` (latents -> images), with the module that gets LoRA in
``self.denoiser``. This one is a per-pixel MLP conditioned on the reference's mean colour.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cgrpo.policies import POLICIES, Condition, Policy


class TinyMLP(Policy):
    backend = "tiny-mlp"
    default_lora_targets = ("hidden", "out")

    def __init__(self, size: int = 16, width: int = 32) -> None:
        super().__init__()
        self.size = size
        self.denoiser = nn.ModuleDict(
            {"hidden": nn.Linear(3 + 3 + 1, width), "out": nn.Linear(width, 3)}
        )

    def encode(self, prompts: Sequence[str], references: Sequence[torch.Tensor]) -> Condition:
        colour = torch.stack([r.float().mean(dim=(0, 2, 3)) for r in references])  # [B, 3]
        return Condition({"colour": colour * 2 - 1})

    def latent_shape(self) -> tuple[int, ...]:
        return (self.size * self.size, 3)  # one token per pixel, RGB in [-1, 1]

    def forward(self, latents: torch.Tensor, sigma: torch.Tensor, cond: Condition) -> torch.Tensor:
        n = latents.shape[1]
        colour = cond.tensors["colour"].to(latents)[:, None].expand(-1, n, -1)
        s = sigma.to(latents)[:, None, None].expand(-1, n, 1)
        h = torch.nn.functional.silu(self.denoiser["hidden"](torch.cat([latents, colour, s], -1)))
        return self.denoiser["out"](h)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images = latents.reshape(-1, self.size, self.size, 3).permute(0, 3, 1, 2)
        return ((images + 1) / 2).clamp(0, 1)


def build(options: dict, device: torch.device, dtype: torch.dtype) -> TinyMLP:
    return TinyMLP(**options).to(device=device, dtype=dtype)


POLICIES.register("tiny-mlp", build)
