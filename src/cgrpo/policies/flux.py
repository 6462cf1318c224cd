"""FLUX.1-Kontext and UNO (FLUX.1-dev + UNO LoRA) backends, built on diffusers + peft.

Token layout of one forward (GUIDE §2)::

    text (T5, T tokens) | target (L tokens, packed 2x2) | reference 1 | ... | reference R

The references are VAE-encoded once per :meth:`FluxPolicy.encode` call (posterior mean,
``(z - shift) * scale``) and packed like the target; the transformer sees
``cat([target, references])`` and its prediction is sliced back to the first ``L`` tokens.
Position ids (``[L_total, 3]``: channel 0 = image index, 1 = row, 2 = column) follow the
variant's scheme (:func:`reference_position_ids`): Kontext marks references with channel 0
set to 1 (2, 3, ... for further references); UNO keeps channel 0 at 0 and moves each
reference past the target and the previous references along rows and/or columns.

The timestep goes in as sigma in [0, 1] (FluxKontextPipeline passes ``t / 1000`` with
``t = 1000 * sigma``; the transformer multiplies by 1000 itself), the guidance scale through
FLUX's guidance embedding. Text embeddings are computed once per prompt and cached.

Weights come from a local diffusers-layout directory (``model.options.path``), never a hub.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cgrpo.config import ConfigError, option, parse
from cgrpo.policies.base import POLICIES, Condition, LoraTargets
from cgrpo.policies.dit import (
    ATTENTION_BACKENDS,
    DTYPES,
    IN_MEMORY,
    DiTOptions,
    DiTPolicy,
    EmbeddingCache,
    fingerprint,
    reference_pixels,
    resize_center_crop,
)
from cgrpo.policies.dit import check_model_dir as _check_dir

log = logging.getLogger(__name__)

VARIANTS = ("kontext", "uno")
ID_SCHEMES = ("kontext", "d", "h", "w", "o")

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


# ----------------------------------------------------------------------------- pure helpers
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


def _pipeline_class(variant: str) -> Any:
    from diffusers import FluxKontextPipeline, FluxPipeline

    return FluxKontextPipeline if variant == "kontext" else FluxPipeline


# ----------------------------------------------------------------------------- the policy
class _TextStack:
    """Text encoders and tokenizers, kept outside the module tree so that ``policy.to()``,
    ``state_dict()`` and optimisers never touch them."""

    def __init__(self, text_encoder, tokenizer, text_encoder_2, tokenizer_2, device) -> None:
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        self.device = torch.device(device)
        for enc in (text_encoder, text_encoder_2):
            enc.requires_grad_(False).eval().to(self.device)

    @torch.no_grad()
    def encode(self, prompts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t5 [n, max_len, D], pooled CLIP [n, P])``, padded/truncated as FluxPipeline does."""
        clip_ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        pooled = self.text_encoder(clip_ids.to(self.device), output_hidden_states=False)
        t5_ids = self.tokenizer_2(
            prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt"
        ).input_ids
        t5 = self.text_encoder_2(t5_ids.to(self.device), output_hidden_states=False)[0]
        return t5, pooled.pooler_output


class FluxPolicy(DiTPolicy):
    """FLUX.1-Kontext / UNO behind :class:`cgrpo.policies.base.Policy`.

    Build it with :meth:`from_pretrained` (a local diffusers directory; what the ``flux``
    registry entry does) or :meth:`from_components` (in-memory modules, e.g. tiny test ones).
    ``vae`` and the text parts may be None for benchmarks that feed embeddings directly
    (:meth:`condition_from_embeddings`); :meth:`encode` / :meth:`decode` then raise.
    """

    backend = "flux"
    default_lora_targets = KONTEXT_LORA_TARGETS
    lora_presets = {"paper": PAPER_LORA_TARGETS, "diffusers": LoraTargets(KONTEXT_LORA_TARGETS)}

    def __init__(
        self,
        options: FluxOptions,
        transformer: nn.Module,
        vae: nn.Module | None,
        text: _TextStack | None,
        source: str = IN_MEMORY,
    ) -> None:
        super().__init__(options, transformer, vae, source)
        self._text = text
        self._text_cache = EmbeddingCache(options.text_cache_size, options.text_cache_dir)

    def pipeline_class(self) -> Any:
        return _pipeline_class(self.options.variant)

    # ----- construction ------------------------------------------------------------------
    @classmethod
    def from_components(
        cls,
        *,
        transformer: nn.Module,
        vae: nn.Module | None = None,
        text_encoder: nn.Module | None = None,
        tokenizer: Any = None,
        text_encoder_2: nn.Module | None = None,
        tokenizer_2: Any = None,
        options: Mapping[str, Any] | FluxOptions | None = None,
        device: torch.device | str = "cpu",
        source: str = IN_MEMORY,
    ) -> FluxPolicy:
        """A policy around given modules. ``options`` as in ``model.options`` (``path`` is not
        needed); the base weights are cast to ``options.dtype`` and the UNO LoRA, if any, is
        fused into ``transformer`` in place."""
        if not isinstance(options, FluxOptions):
            options = parse(FluxOptions, {"path": source, **dict(options or {})}, "model.options")
        device = torch.device(device)
        if options.variant == "uno":
            n = fuse_xlabs_lora(transformer, options.uno_lora)
            log.info("fused UNO LoRA %s into %d layers", options.uno_lora, n)
        cls.prepare(options, transformer, vae, device)
        text = None
        parts = (text_encoder, tokenizer, text_encoder_2, tokenizer_2)
        if any(p is not None for p in parts):
            if any(p is None for p in parts):
                raise ValueError(
                    "pass all of text_encoder, tokenizer, text_encoder_2, tokenizer_2 "
                    "or none of them"
                )
            text_device = cls.place_text(options, device, text_encoder, text_encoder_2)
            text = _TextStack(text_encoder, tokenizer, text_encoder_2, tokenizer_2, text_device)
        return cls(options, transformer, vae, text, source)

    @classmethod
    def from_pretrained(
        cls, options: Mapping[str, Any] | FluxOptions, device: torch.device | str = "cpu"
    ) -> FluxPolicy:
        """Load every part from ``options.path`` (local files only)."""
        from diffusers import AutoencoderKL, FluxTransformer2DModel
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

        if not isinstance(options, FluxOptions):
            options = parse(FluxOptions, options, "model.options")
        root = check_model_dir(options.path)
        dtype = DTYPES[options.dtype]
        kw = {"local_files_only": True}
        transformer = FluxTransformer2DModel.from_pretrained(
            root / "transformer", torch_dtype=dtype, **kw
        )
        vae = AutoencoderKL.from_pretrained(root / "vae", torch_dtype=dtype, **kw)
        text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder", dtype=dtype, **kw)
        text_encoder_2 = T5EncoderModel.from_pretrained(root / "text_encoder_2", dtype=dtype, **kw)
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer", **kw)
        tokenizer_2 = AutoTokenizer.from_pretrained(root / "tokenizer_2", **kw)
        return cls.from_components(
            transformer=transformer,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            options=options,
            device=device,
            source=str(root.resolve()),
        )

    # ----- geometry ---------------------------------------------------------------------
    def position_ids(self, num_references: int) -> torch.Tensor:
        """``[L + R * L_ref, 3]`` ids of target then references under the configured scheme."""
        target = self._grid(self.options.height, self.options.width)
        refs = [self._grid(*self.reference_hw)] * num_references
        return torch.cat(
            [
                target_position_ids(*target),
                reference_position_ids(self.options.scheme, target, refs),
            ]
        )

    # ----- conditioning -------------------------------------------------------------------
    def _text_embeddings(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``([B, T, D], [B, P])`` for ``prompts``, each distinct prompt encoded once ever."""
        text = self._text
        if text is None:
            raise RuntimeError(
                "this FluxPolicy was built without text encoders; use condition_from_embeddings()"
            )
        max_len = self.options.max_sequence_length

        def encode(batch: list[str]) -> list[dict[str, torch.Tensor]]:
            t5, pooled = text.encode(batch, max_len)
            return [{"t5": t5[i], "pooled": pooled[i]} for i in range(len(batch))]

        key = fingerprint(
            self.source, max_len, text.text_encoder.config, text.text_encoder_2.config
        )
        rows = self._text_cache.get(list(prompts), encode, key, self.dtype)
        return torch.stack([r["t5"] for r in rows]), torch.stack([r["pooled"] for r in rows])

    @torch.no_grad()
    def encode_references(self, references: Sequence[torch.Tensor]) -> torch.Tensor:
        """``B`` tensors ``[R, 3, h, w]`` in [0, 1] -> packed latents ``[B, R * L_ref, C]``.

        All ``B * R`` images go through the VAE in one pass (in ``vae_batch_size`` chunks).
        """
        vae = self._need_vae()
        pixels, num_refs = reference_pixels(references, self.reference_hw, "FLUX")
        cfg = vae.config
        shift = cfg.shift_factor or 0.0
        chunks = []
        for x in self.vae_chunks(pixels):
            z = vae.encode(2.0 * x - 1.0).latent_dist.mode()
            chunks.append(pack_latents((z - shift) * cfg.scaling_factor))
        packed = torch.cat(chunks)  # [B * R, L_ref, C]
        return packed.reshape(len(references), num_refs * packed.shape[1], packed.shape[2])

    def condition_from_embeddings(
        self,
        prompt_embeds: torch.Tensor,
        pooled: torch.Tensor,
        reference_latents: torch.Tensor,
        num_references: int,
    ) -> Condition:
        """A :class:`Condition` from ready tensors: ``prompt_embeds [B, T, D]``,
        ``pooled [B, P]``, packed ``reference_latents [B, R * L_ref, C]``."""
        b = prompt_embeds.shape[0]
        ids = self.position_ids(num_references)
        if ids.shape[0] != self.latent_shape()[0] + reference_latents.shape[1]:
            raise ValueError(
                f"reference_latents has {reference_latents.shape[1]} tokens; "
                f"{num_references} reference(s) of {self.reference_hw} need "
                f"{ids.shape[0] - self.latent_shape()[0]}"
            )
        device = prompt_embeds.device
        return Condition(
            {
                "prompt_embeds": prompt_embeds.to(self.dtype),
                "pooled_prompt_embeds": pooled.to(self.dtype),
                "reference_latents": reference_latents.to(self.dtype),
                # ids are shared by the batch, but stored per row so select/cat/to keep them aligned
                "img_ids": ids.to(device).unsqueeze(0).expand(b, -1, -1).contiguous(),
            },
            {"num_references": num_references},
        )

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], references: Sequence[torch.Tensor]) -> Condition:
        if len(prompts) != len(references):
            raise ValueError(f"{len(prompts)} prompts for {len(references)} reference sets")
        t5, pooled = self._text_embeddings(list(prompts))
        refs = self.encode_references(references)
        device = self._device()
        return self.condition_from_embeddings(
            t5.to(device), pooled.to(device), refs, int(references[0].shape[0])
        )

    # ----- the model ----------------------------------------------------------------------
    def forward(self, latents: torch.Tensor, sigma: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Velocity ``[B, L, C]`` (float32) for packed target latents ``[B, L, C]``."""
        t = cond.tensors
        b, length = latents.shape[:2]
        if sigma.shape != (b,):
            raise ValueError(f"sigma must have shape [{b}], got {list(sigma.shape)}")
        hidden = torch.cat([latents.to(self.dtype), t["reference_latents"]], dim=1)
        prompt = t["prompt_embeds"]
        txt_ids = torch.zeros(prompt.shape[1], 3, device=latents.device, dtype=torch.float32)
        guidance = None
        if self.denoiser.config.guidance_embeds:
            guidance = torch.full((b,), self.options.guidance, device=latents.device)
        out = self.denoiser(
            hidden_states=hidden,
            encoder_hidden_states=prompt,
            pooled_projections=t["pooled_prompt_embeds"],
            timestep=sigma.to(latents.device),
            img_ids=t["img_ids"][0],
            txt_ids=txt_ids,
            guidance=guidance,
            return_dict=False,
        )[0]
        return out[:, :length].float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` float32 in [0, 1] (as FluxPipeline's ``output_type="pt"``)."""
        vae = self._need_vae()
        from diffusers import FluxPipeline

        cfg = vae.config
        z = FluxPipeline._unpack_latents(
            latents, self.options.height, self.options.width, self.vae_scale_factor
        )
        z = z / cfg.scaling_factor + (cfg.shift_factor or 0.0)
        images = [vae.decode(c, return_dict=False)[0].float() for c in self.vae_chunks(z)]
        return (torch.cat(images) / 2 + 0.5).clamp(0.0, 1.0)


@POLICIES.register("flux")
def _build_flux(options: dict[str, Any], device: torch.device, dtype: torch.dtype) -> FluxPolicy:
    """Registry entry. FLUX weights use ``model.options.dtype`` (bf16 by default); the
    generic ``dtype`` argument is not used by this backend."""
    del dtype
    return FluxPolicy.from_pretrained(parse(FluxOptions, options, "model.options"), device)


__all__ = [
    "ATTENTION_BACKENDS",
    "FluxOptions",
    "FluxPolicy",
    "ID_SCHEMES",
    "KONTEXT_LORA_TARGETS",
    "MODEL_PARTS",
    "PAPER_LORA_TARGETS",
    "VARIANTS",
    "check_model_dir",
    "fuse_xlabs_lora",
    "pack_latents",
    "reference_position_ids",
    "resize_center_crop",
    "target_position_ids",
]
