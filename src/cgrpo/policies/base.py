"""The policy interface every generator backend implements.

A policy is a flow-matching generator conditioned on a prompt and reference image(s).
The trainer only talks to this interface, so the built-in pocket generator and the FLUX
backends run through the very same sampling, scoring and update code.

Conventions (GUIDE §1): ``x_s = (1 - s) * x0 + s * noise``; the policy predicts the
velocity ``v ~ noise - x0``; ``s`` (sigma) goes from 1 (noise) to 0 (data).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cgrpo.registry import Registry


@dataclass
class Condition:
    """Batched conditioning, opaque to the trainer.

    Every tensor in ``tensors`` has the batch on dim 0; ``extras`` holds non-batched
    values a backend needs (e.g. a guidance scale). The trainer only selects rows,
    repeats them for a group, and moves them between devices.
    """

    tensors: dict[str, torch.Tensor]
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def select(self, index: torch.Tensor | Sequence[int] | slice) -> Condition:
        return Condition({k: v[index] for k, v in self.tensors.items()}, dict(self.extras))

    def repeat_interleave(self, repeats: int) -> Condition:
        return Condition(
            {k: v.repeat_interleave(repeats, dim=0) for k, v in self.tensors.items()},
            dict(self.extras),
        )

    def to(self, device: torch.device | str) -> Condition:
        return Condition({k: v.to(device) for k, v in self.tensors.items()}, dict(self.extras))


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters shared by all backends (peft does the work)."""

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None  # None: the backend's defaults
    init_weights: bool | str = True  # peft's init: True gives B = 0, so the start equals the base


class Policy(nn.Module):
    """Base class of generator backends.

    Subclasses implement :meth:`encode`, :meth:`latent_shape`, :meth:`forward`,
    :meth:`decode` and :attr:`default_lora_targets`, and keep the module that receives
    LoRA in ``self.denoiser``.
    """

    backend: str = "base"
    default_lora_targets: tuple[str, ...] = ()
    denoiser: nn.Module

    # ----- conditioning and geometry -------------------------------------------------
    def encode(self, prompts: Sequence[str], references: Sequence[torch.Tensor]) -> Condition:
        """Condition for B (prompt, references) pairs.

        ``references[i]`` is ``[R, 3, h, w]`` float in [0, 1]. Runs without gradients;
        backends cache text embeddings per prompt.
        """
        raise NotImplementedError

    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one sample's latent (without the batch dim), e.g. ``(L, C)`` packed."""
        raise NotImplementedError

    @property
    def image_seq_len(self) -> int:
        """Number of target image tokens (drives FLUX's dynamic shift)."""
        return int(self.latent_shape()[0])

    # ----- the model ------------------------------------------------------------------
    def forward(self, latents: torch.Tensor, sigma: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Velocity ``[B, *latent_shape]`` at noise level ``sigma`` ``[B]`` (float in [0, 1])."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` float in [0, 1] from final latents."""
        raise NotImplementedError

    # ----- LoRA (shared; peft does the work) ----------------------------------------------
    def add_lora(self, settings: LoraSettings, adapter_name: str = "default") -> None:
        """Freeze the base and inject a trainable LoRA adapter into ``self.denoiser``."""
        from peft import LoraConfig, inject_adapter_in_model

        targets = list(settings.target_modules or self.default_lora_targets)
        if not targets:
            raise ValueError(f"backend {self.backend!r} defines no LoRA target modules")
        self.requires_grad_(False)
        config = LoraConfig(
            r=settings.rank,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=targets,
            init_lora_weights=settings.init_weights,
        )
        inject_adapter_in_model(config, self.denoiser, adapter_name=adapter_name)
        self._lora_config = config
        for p in self.trainable_parameters():
            p.data = p.data.float()  # LoRA in fp32 even when the base is bf16

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.denoiser.named_parameters() if "lora_" in n]

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.denoiser.named_parameters() if "lora_" in n)

    @contextlib.contextmanager
    def adapter_disabled(self) -> Iterator[None]:
        """Run the frozen base model (the KL reference) inside this context."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in self.denoiser.modules() if isinstance(m, BaseTunerLayer)]
        for m in layers:
            m.enable_adapters(False)
        try:
            yield
        finally:
            for m in layers:
                m.enable_adapters(True)
                # enable_adapters re-marks adapter weights trainable; keep our choice intact
            for p in self.trainable_parameters():
                p.requires_grad_(True)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return {
            k: v.detach().cpu().contiguous()
            for k, v in get_peft_model_state_dict(self.denoiser).items()
        }

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.denoiser, state)
        unexpected = getattr(result, "unexpected_keys", None) or []
        lora_missing = [k for k in (getattr(result, "missing_keys", None) or []) if "lora_" in k]
        if unexpected or lora_missing:
            raise ValueError(
                f"adapter does not match backend {self.backend!r}: "
                f"unexpected {unexpected[:5]}, missing {lora_missing[:5]}"
            )

    def save_adapter(self, directory: str | Path) -> None:
        """Save the trainable adapter (safetensors); backends may add a loader-friendly copy."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.adapter_state_dict(), str(directory / "adapter.safetensors"))

    def load_adapter(self, directory: str | Path) -> None:
        from safetensors.torch import load_file

        path = Path(directory) / "adapter.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"no adapter at {path}")
        self.load_adapter_state_dict(load_file(str(path)))


POLICIES: Registry[Any] = Registry("backend")
"""Backend factories by name: ``factory(options: dict, device, dtype) -> Policy``."""


def build_policy(
    name: str,
    options: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Policy:
    import cgrpo.policies  # noqa: F401  (registers the built-in backends)

    return POLICIES.get(name)(dict(options or {}), torch.device(device), dtype)
