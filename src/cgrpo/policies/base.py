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
from typing import Any, ClassVar

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
class LoraTargets:
    """Which modules of the denoiser get LoRA.

    ``modules`` is peft's ``target_modules``: names matched by suffix, or one regular
    expression matched against the full module name. ``shared_down`` lists groups of
    sibling modules (e.g. ``("to_q", "to_k", "to_v")`` of one attention) whose LoRAs share
    one down-projection A: that is exactly one rank-r LoRA on their fused, concatenated
    projection (``delta [W_q; W_k; W_v] = [B_q; B_k; B_v] A``), in function, gradient and
    parameter count. Each module still computes ``x A^T`` itself (three small matmuls instead
    of one), and a LoRA dropout would draw a mask per module (training refuses dropout).
    """

    modules: tuple[str, ...] | str
    shared_down: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters shared by all backends (peft does the work)."""

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    #: a preset name of the backend, module names, or None: the backend's default
    targets: str | tuple[str, ...] | None = None
    #: peft's ``init_lora_weights``: True (Kaiming-uniform A), "gaussian" (A ~ N(0, (1/r)^2))
    #: or False (random B, for tests); B = 0 otherwise, so the start equals the base
    init_weights: bool | str = True


class Policy(nn.Module):
    """Base class of generator backends.

    Subclasses implement :meth:`encode`, :meth:`latent_shape`, :meth:`forward`,
    :meth:`decode` and :attr:`default_lora_targets` (optionally named
    :attr:`lora_presets`), and keep the module that receives LoRA in ``self.denoiser``.
    """

    backend: str = "base"
    default_lora_targets: tuple[str, ...] = ()
    #: a key of :attr:`lora_presets` used when no targets are given (else default_lora_targets)
    default_lora_preset: ClassVar[str | None] = None
    lora_presets: ClassVar[dict[str, LoraTargets]] = {}
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

    def dynamic_sigmas(self, num_steps: int) -> torch.Tensor:
        """The ``[N + 1]`` resolution-dependent schedule (1 -> 0) as this model's pipeline
        defines it (``sampling.dynamic_shift``); default: FLUX.1's, from the token count."""
        from cgrpo.grpo import dynamic_sigma_schedule

        return dynamic_sigma_schedule(num_steps, self.image_seq_len)

    # ----- the model ------------------------------------------------------------------
    def forward(self, latents: torch.Tensor, sigma: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Velocity ``[B, *latent_shape]`` at noise level ``sigma`` ``[B]`` (float in [0, 1])."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` float in [0, 1] from final latents."""
        raise NotImplementedError

    # ----- LoRA (shared; peft does the work) ----------------------------------------------
    def resolve_lora_targets(self, targets: str | Sequence[str] | None) -> LoraTargets:
        """A preset name, a list of module names, or None (the backend's default)."""
        if targets is None:
            if self.default_lora_preset is not None:
                return self.lora_presets[self.default_lora_preset]
            return LoraTargets(tuple(self.default_lora_targets))
        if isinstance(targets, str):
            if targets not in self.lora_presets:
                have = ", ".join(self.lora_presets) or "none"
                raise ValueError(
                    f"backend {self.backend!r} has no LoRA preset {targets!r} (presets: "
                    f"{have}); give a list of module names, or null for its default"
                )
            return self.lora_presets[targets]
        return LoraTargets(tuple(targets))

    def add_lora(self, settings: LoraSettings, adapter_name: str = "default") -> None:
        """Freeze the base and inject a trainable LoRA adapter into ``self.denoiser``."""
        from peft import LoraConfig, inject_adapter_in_model

        targets = self.resolve_lora_targets(settings.targets)
        if not targets.modules:
            raise ValueError(f"backend {self.backend!r} defines no LoRA target modules")
        if not isinstance(targets.modules, str):  # peft only warns about names it never met
            names = [n for n, _ in self.denoiser.named_modules()]
            unmatched = [
                t for t in targets.modules if not any(n == t or n.endswith(f".{t}") for n in names)
            ]
            if unmatched:
                raise ValueError(f"no module of backend {self.backend!r} is named {unmatched}")
        self.requires_grad_(False)
        config = LoraConfig(
            r=settings.rank,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=(
                targets.modules if isinstance(targets.modules, str) else list(targets.modules)
            ),
            init_lora_weights=settings.init_weights,
        )
        inject_adapter_in_model(config, self.denoiser, adapter_name=adapter_name)
        self._lora_config = config
        self._shared_down = share_down_projections(self.denoiser, targets.shared_down, adapter_name)
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

        # copies: modules that share a down-projection must not share storage in the file
        return {
            k: v.detach().to("cpu", copy=True).contiguous()
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
        for group in getattr(self, "_shared_down", []):
            downs = [state[f"{name}.lora_A.weight"] for name in group]
            if any(not torch.equal(downs[0], d) for d in downs[1:]):
                raise ValueError(
                    f"adapter has different LoRA down-projections for {', '.join(group)}, "
                    "which this adapter's targets share (a fused-projection LoRA)"
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


def share_down_projections(
    root: nn.Module, groups: Sequence[Sequence[str]], adapter_name: str
) -> list[tuple[str, ...]]:
    """Make every complete group of sibling LoRA layers use its first member's A.

    Returns the tied groups as full module names (relative to ``root``). The tied A stays one
    parameter, so optimizers, DDP and ``parameters()`` see it once.
    """
    from peft.tuners.lora import LoraLayer

    tied = []
    for parent_name, parent in root.named_modules():
        for group in groups:
            layers = [getattr(parent, name, None) for name in group]
            if not all(isinstance(layer, LoraLayer) for layer in layers):
                continue
            shared = layers[0].lora_A[adapter_name].weight
            for layer in layers[1:]:
                layer.lora_A[adapter_name].weight = shared
            prefix = f"{parent_name}." if parent_name else ""
            tied.append(tuple(prefix + name for name in group))
    return tied


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
