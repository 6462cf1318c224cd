"""The shared FLUX.1 step of both variants (Kontext and UNO): conditioning, the velocity
forward and decoding, behind :class:`cgrpo.policies.base.Policy`.

Token layout of one forward (GUIDE §2)::

    text (T5, T tokens) | target (L tokens, packed 2x2) | reference 1 | ... | reference R

The references are VAE-encoded once per :meth:`FluxPolicy.encode` call (posterior mean,
``(z - shift) * scale``) and packed like the target; the transformer sees
``cat([target, references])`` and its prediction is sliced back to the first ``L`` tokens.
Position ids follow the variant's scheme (:mod:`cgrpo.policies.flux.layout`).

The timestep goes in as sigma in [0, 1] (FluxKontextPipeline passes ``t / 1000`` with
``t = 1000 * sigma``; the transformer multiplies by 1000 itself), the guidance scale through
FLUX's guidance embedding. Text embeddings are computed once per prompt and cached.

Weights come from a local diffusers-layout directory (``model.options.path``), never a hub.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cgrpo.config import parse
from cgrpo.policies.base import POLICIES, Condition, LoraTargets
from cgrpo.policies.dit import (
    DTYPES,
    IN_MEMORY,
    DiTPolicy,
    EmbeddingCache,
    fingerprint,
    reference_pixels,
)
from cgrpo.policies.flux.layout import pack_latents, reference_position_ids, target_position_ids
from cgrpo.policies.flux.variants import (
    KONTEXT_LORA_TARGETS,
    PAPER_LORA_TARGETS,
    FluxOptions,
    check_model_dir,
    fuse_xlabs_lora,
    variant_pipeline,
)

log = logging.getLogger(__package__)  # "cgrpo.policies.flux", as before the split


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
        return variant_pipeline(self.options.variant)

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


__all__ = ["FluxPolicy"]
