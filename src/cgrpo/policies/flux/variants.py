"""The two FLUX.1 variants, Kontext and UNO: options, LoRA target sets, the UNO LoRA, the
checkpoint layout and the diffusers pipeline each one mirrors.

Kontext (FLUX.1-Kontext) runs as diffusers' ``FluxKontextPipeline``; UNO is FLUX.1-dev with
the UNO LoRA fused into its weights (:func:`fuse_xlabs_lora`), run as ``FluxPipeline``. Both
share the FLUX step of :class:`cgrpo.policies.flux.policy.FluxPolicy`; they differ in the
reference position ids (:mod:`cgrpo.policies.flux.layout`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from cgrpo.config import ConfigError, option
from cgrpo.policies.base import LoraTargets
from cgrpo.policies.dit import DiTOptions
from cgrpo.policies.dit import check_model_dir as _check_dir
from cgrpo.policies.flux.layout import ID_SCHEMES

VARIANTS = ("kontext", "uno")

#: The modules diffusers' Kontext LoRA training adapts (preset ``diffusers``). Names match by
#: suffix, so the attention projections of the single blocks (attn.to_q/k/v) are included,
#: while the single blocks' ``proj_out`` is not (a bare "proj_out" would also hit the final
#: output layer); list ``single_transformer_blocks.N.proj_out`` explicitly to add them.
KONTEXT_LORA_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "proj_mlp",
)

#: The official UNO / Customized-GRPO LoRA (preset ``paper``) in diffusers' names. Double
#: blocks: the fused qkv and the output projection of both streams (BFL's ``img_attn.qkv``,
#: ``img_attn.proj``, ``txt_attn.qkv``, ``txt_attn.proj``); single blocks: the qkv part of
#: ``linear1`` and ``linear2`` (diffusers' ``proj_out``); nothing in the MLPs. diffusers keeps
#: q, k and v as separate layers, so each fused qkv LoRA becomes three LoRAs that share one
#: down-projection A (exactly the fused rank-r LoRA; see LoraTargets). A regular expression
#: on full names, so the final top-level ``proj_out`` is not caught.
PAPER_LORA_TARGETS = LoraTargets(
    modules=(
        r"transformer_blocks\.\d+\.attn\."
        r"(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
        r"|single_transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v)|proj_out)"
    ),
    shared_down=(("to_q", "to_k", "to_v"), ("add_q_proj", "add_k_proj", "add_v_proj")),
)

#: Sub-directories of a diffusers FLUX checkpoint this backend loads (scheduler/ is unused:
#: the sigma schedule comes from the sampling config).
MODEL_PARTS = {
    "transformer": "FluxTransformer2DModel (config.json + weights)",
    "vae": "AutoencoderKL (config.json + weights)",
    "text_encoder": "CLIPTextModel (config.json + weights)",
    "text_encoder_2": "T5EncoderModel (config.json + weights)",
    "tokenizer": "CLIP tokenizer files",
    "tokenizer_2": "T5 tokenizer files",
}
_NEEDS_CONFIG = ("transformer", "vae", "text_encoder", "text_encoder_2")


@dataclass
class FluxOptions(DiTOptions):
    """``model.options`` of the ``flux`` backend (``path``: a diffusers FLUX directory with
    transformer/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/)."""

    variant: str = option(
        "kontext", "kontext (FLUX.1-Kontext) or uno (FLUX.1-dev + UNO LoRA)", choices=VARIANTS
    )
    uno_lora: str | None = option(
        None,
        "UNO LoRA safetensors file (XLabs names); required for "
        "variant uno, fused into the base before training",
    )
    id_scheme: str | None = option(
        None,
        "reference position ids: kontext, or UNO's d (rows+cols),"
        " h (rows), w (cols), o (none); null = the variant's own"
        " (kontext / d)",
        choices=ID_SCHEMES,
    )
    guidance: float = option(
        3.5, "FLUX guidance-embedding scale (used when the model has one)", min=0.0
    )
    max_sequence_length: int = option(512, "T5 tokens per prompt", min=1, max=512)

    def validate(self, prefix: str = "model.options") -> None:
        key = f"{prefix}.uno_lora" if prefix else "uno_lora"
        if self.variant == "uno" and not self.uno_lora:
            raise ConfigError(key, self.uno_lora, "required for variant uno (the UNO LoRA file)")
        if self.variant == "kontext" and self.uno_lora:
            raise ConfigError(key, self.uno_lora, "only used with variant uno")

    @property
    def scheme(self) -> str:
        return self.id_scheme or ("kontext" if self.variant == "kontext" else "d")


def check_model_dir(path: str | Path) -> Path:
    """Raise FileNotFoundError naming every missing part of a diffusers FLUX directory."""
    return _check_dir(path, MODEL_PARTS, _NEEDS_CONFIG, "FLUX")


def fuse_xlabs_lora(transformer: nn.Module, path: str | Path) -> int:
    """Convert an XLabs-style LoRA file (UNO's format) with diffusers and fuse it into the weights.

    ``W <- W + up @ down`` for every adapted layer (XLabs LoRAs carry no alpha, so the scale
    is 1; a fused ``qkv`` LoRA shares ``down`` and splits ``up`` over to_q/to_k/to_v).
    Returns the number of layers changed. The transformer is left without any adapter.
    """
    from diffusers import FluxPipeline
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.options.uno_lora: LoRA file not found: {path}")
    raw = load_file(str(path))
    if not any(".processor." in k for k in raw):
        raise ValueError(
            f"model.options.uno_lora: {path} is not an XLabs-style LoRA (expected keys "
            f"like double_blocks.0.processor.qkv_lora1.down.weight, got "
            f"{sorted(raw)[:3]})"
        )
    converted = FluxPipeline.lora_state_dict(raw)
    targets = {k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in converted}
    linear = {n for n, m in transformer.named_modules() if isinstance(m, nn.Linear)}
    if targets - linear:
        raise ValueError(
            f"model.options.uno_lora: {path} names layers this transformer lacks: "
            f"{sorted(targets - linear)[:5]}"
        )
    transformer.load_lora_adapter(converted, prefix="transformer", adapter_name="uno")
    adapted = {n for n, m in transformer.named_modules() if isinstance(m, BaseTunerLayer)}
    if targets - adapted:  # diffusers only warns about keys it could not place
        transformer.unload_lora()
        raise ValueError(
            f"model.options.uno_lora: {path}: layers not adapted: {sorted(targets - adapted)[:5]}"
        )
    transformer.fuse_lora(adapter_names=["uno"])
    transformer.unload_lora()
    return len(targets)


def variant_pipeline(variant: str) -> Any:
    from diffusers import FluxKontextPipeline, FluxPipeline

    return FluxKontextPipeline if variant == "kontext" else FluxPipeline


__all__ = [
    "FluxOptions",
    "KONTEXT_LORA_TARGETS",
    "MODEL_PARTS",
    "PAPER_LORA_TARGETS",
    "VARIANTS",
    "check_model_dir",
    "fuse_xlabs_lora",
    "variant_pipeline",
]
