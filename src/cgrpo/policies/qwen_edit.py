"""Qwen-Image-Edit-Plus backend (``qwen-image-edit``), through diffusers.

One forward, as ``QwenImageEditPlusPipeline`` runs it::

    text (T tokens, masked padding) | target (L tokens, 2x2 packed) | reference 1 | ... | R

* Text: Qwen2.5-VL reads the prompt *and the reference images* (each resized to
  ``condition_size``; the pipeline's "Picture k:" template), through the pipeline's own
  ``encode_prompt``. The embedding depends on the references, so it is cached per (prompt,
  reference pixels). Prompts of different lengths in one batch are padded and masked.
* Latents: the Qwen-Image VAE (one frame) posterior mean, ``(z - mean) / std`` per channel,
  packed 2x2; references at ``reference_size`` (the pipeline uses a 1024 x 1024 area for a
  square reference; a smaller size costs fewer tokens), concatenated after the target.
  Positions come from ``img_shapes`` (the transformer's own RoPE over the image list).
* Guidance: true classifier-free guidance against ``negative_prompt`` (the pipeline's
  ``true_cfg_scale``; default 4 with " "): ``c = v_neg + g (v_pos - v_neg)``, rescaled per
  token to the conditional velocity's norm, ``v = c * |v_pos| / |c|``. Two transformer passes
  per step (one batched call, twice the tokens); ``guidance: 1`` turns it off. The guided
  velocity is the policy's velocity for sampling, log-probs and the update.
* Schedule (``sampling.dynamic_shift: true``): the pipeline's ``mu`` (linear in the token
  count, the scheduler's base/max shift) through the model's scheduler, which also
  stretches the schedule to end at its ``shift_terminal``.

Non-square references are centre-cropped to squares (the pipeline keeps their aspect ratio).
Weights come from a local diffusers-layout directory (``model.options.path``), never a hub.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cgrpo.config import option, parse
from cgrpo.policies.base import POLICIES, Condition, LoraTargets
from cgrpo.policies.dit import (
    DTYPES,
    IN_MEMORY,
    DiTOptions,
    DiTPolicy,
    EmbeddingCache,
    check_model_dir,
    fingerprint,
    load_scheduler,
    reference_pixels,
    resize_center_crop,
    scheduler_sigmas,
)

MODEL_PARTS = {
    "transformer": "QwenImageTransformer2DModel (config.json + weights)",
    "vae": "AutoencoderKLQwenImage (config.json + weights)",
    "text_encoder": "Qwen2_5_VLForConditionalGeneration (config.json + weights)",
    "tokenizer": "Qwen2 tokenizer files",
    "processor": "Qwen2VLProcessor files",
}
#: the released Qwen-Image scheduler config, used when the model directory has no scheduler/
SCHEDULER_DEFAULTS = {
    "use_dynamic_shifting": True,
    "time_shift_type": "exponential",
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "shift": 1.0,
    "shift_terminal": 0.02,
}

_ATTN = (
    r"transformer_blocks\.\d+\.attn\."
    r"(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
)
LORA_PRESETS = {
    # the paper's double-block set: q, k, v (one shared down-projection per stream, i.e. a
    # fused-qkv LoRA) and the output projection of the image and text streams; no MLPs
    "paper": LoraTargets(
        _ATTN, shared_down=(("to_q", "to_k", "to_v"), ("add_q_proj", "add_k_proj", "add_v_proj"))
    ),
    # the same layers with independent q/k/v LoRAs (the default)
    "attention": LoraTargets(_ATTN),
    # attention plus both streams' MLPs
    "all": LoraTargets(_ATTN + r"|transformer_blocks\.\d+\.(img_mlp|txt_mlp)\.net\.(0\.proj|2)"),
}


@dataclass
class QwenEditOptions(DiTOptions):
    """``model.options`` of the ``qwen-image-edit`` backend (``path``: a diffusers
    Qwen-Image-Edit-2509/2511 directory: transformer/, vae/, text_encoder/, tokenizer/,
    processor/, optionally scheduler/)."""

    condition_size: int = option(
        384, "side of the square each reference is shown to Qwen2.5-VL at (pipeline: 384)", min=28
    )
    guidance: float = option(
        4.0,
        "true-CFG scale against negative_prompt (two transformer passes per step; 1 = off)",
        min=0.0,
    )
    negative_prompt: str = option(" ", "the prompt true CFG guides away from")

    @property
    def true_cfg(self) -> bool:
        return self.guidance > 1.0


def _pil(images: torch.Tensor) -> list[Any]:
    """``[N, 3, H, W]`` in [0, 1] -> RGB PIL images (uint8, as a user's PIL input)."""
    from PIL import Image

    arrays = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arrays]


class _TextStack:
    """Qwen2.5-VL, tokenizer and processor, outside the module tree; encodes through a
    text-only ``QwenImageEditPlusPipeline`` (its template, image placeholders, token drop)."""

    def __init__(self, text_encoder, tokenizer, processor, device) -> None:
        from diffusers import QwenImageEditPlusPipeline

        self.text_encoder = text_encoder.requires_grad_(False).eval().to(device)
        self.device = torch.device(device)
        self.pipe = QwenImageEditPlusPipeline(
            scheduler=None,
            vae=None,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            processor=processor,
            transformer=None,
        )

    @torch.no_grad()
    def encode(self, prompt: str, images: list[Any]) -> torch.Tensor:
        """``[T, D]`` for one prompt with its reference images (PIL)."""
        embeds, mask = self.pipe.encode_prompt(prompt=[prompt], image=images, device=self.device)
        return embeds[0] if mask is None else embeds[0][mask[0].bool()]


def pad_embeddings(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[T_i, D]`` rows -> ``([B, T, D]`` zero-padded, ``[B, T]`` bool mask)."""
    length = max(r.shape[0] for r in rows)
    out = rows[0].new_zeros(len(rows), length, rows[0].shape[1])
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = True
    return out, mask


class QwenEditPolicy(DiTPolicy):
    """Qwen-Image-Edit-Plus behind :class:`cgrpo.policies.base.Policy`.

    :meth:`from_pretrained` loads a local diffusers directory (the ``qwen-image-edit``
    registry entry); :meth:`from_components` wraps given modules (tiny test ones).
    """

    backend = "qwen-image-edit"
    lora_presets = LORA_PRESETS
    default_lora_preset = "attention"

    def __init__(self, options, transformer, vae, text, scheduler, source=IN_MEMORY) -> None:
        super().__init__(options, transformer, vae, source)
        self._text = text
        self._text_cache = EmbeddingCache(options.text_cache_size, options.text_cache_dir)
        self.scheduler = scheduler

    @staticmethod
    def vae_scale(vae: nn.Module) -> int:
        return 2 ** len(vae.temperal_downsample)

    def pipeline_class(self) -> Any:
        from diffusers import QwenImageEditPlusPipeline

        return QwenImageEditPlusPipeline

    # ----- construction ------------------------------------------------------------------
    @classmethod
    def from_components(
        cls,
        *,
        transformer: nn.Module,
        vae: nn.Module | None = None,
        text_encoder: nn.Module | None = None,
        tokenizer: Any = None,
        processor: Any = None,
        scheduler: Any = None,
        options: Mapping[str, Any] | QwenEditOptions | None = None,
        device: torch.device | str = "cpu",
        source: str = IN_MEMORY,
    ) -> QwenEditPolicy:
        """A policy around given modules (``options`` as ``model.options``, no ``path``)."""
        if not isinstance(options, QwenEditOptions):
            data = {"path": source, **dict(options or {})}
            options = parse(QwenEditOptions, data, "model.options")
        device = torch.device(device)
        cls.prepare(options, transformer, vae, device)
        parts = (text_encoder, tokenizer, processor)
        text = None
        if any(p is not None for p in parts):
            if any(p is None for p in parts):
                raise ValueError("pass all of text_encoder, tokenizer, processor or none of them")
            text_device = cls.place_text(options, device, text_encoder)
            text = _TextStack(text_encoder, tokenizer, processor, text_device)
        scheduler = scheduler or load_scheduler(None, SCHEDULER_DEFAULTS)
        return cls(options, transformer, vae, text, scheduler, source)

    @classmethod
    def from_pretrained(
        cls, options: Mapping[str, Any] | QwenEditOptions, device: torch.device | str = "cpu"
    ) -> QwenEditPolicy:
        """Load every part from ``options.path`` (local files only)."""
        from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
        from transformers import (
            AutoProcessor,
            AutoTokenizer,
            Qwen2_5_VLForConditionalGeneration,
        )

        if not isinstance(options, QwenEditOptions):
            options = parse(QwenEditOptions, options, "model.options")
        needs = ("transformer", "vae", "text_encoder")
        root = check_model_dir(options.path, MODEL_PARTS, needs, "Qwen-Image-Edit")
        dtype = DTYPES[options.dtype]
        kw = {"local_files_only": True}
        return cls.from_components(
            transformer=QwenImageTransformer2DModel.from_pretrained(
                root / "transformer", torch_dtype=dtype, **kw
            ),
            vae=AutoencoderKLQwenImage.from_pretrained(root / "vae", torch_dtype=dtype, **kw),
            text_encoder=Qwen2_5_VLForConditionalGeneration.from_pretrained(
                root / "text_encoder", dtype=dtype, **kw
            ),
            tokenizer=AutoTokenizer.from_pretrained(root / "tokenizer", **kw),
            processor=AutoProcessor.from_pretrained(root / "processor", **kw),
            scheduler=load_scheduler(root, SCHEDULER_DEFAULTS),
            options=options,
            device=device,
            source=str(root.resolve()),
        )

    # ----- geometry and schedule -----------------------------------------------------------
    def img_shapes(self, num_references: int) -> list[tuple[int, int, int]]:
        """One sample's ``img_shapes``: ``(frames, rows, cols)`` of the target then each reference."""
        target = (1, *self._grid(self.options.height, self.options.width))
        return [target, *[(1, *self._grid(*self.reference_hw))] * num_references]

    def dynamic_sigmas(self, num_steps: int) -> torch.Tensor:
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_shift

        cfg = self.scheduler.config
        mu = calculate_shift(
            self.image_seq_len,
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.15),
        )
        return scheduler_sigmas(self.scheduler, num_steps, mu)

    # ----- conditioning --------------------------------------------------------------------
    def _text_embeddings(
        self, prompts: Sequence[str], conditions: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """``[T_i, D]`` per (prompt, its references at condition size), cached per pair."""
        text = self._text
        if text is None:
            raise RuntimeError(
                "this QwenEditPolicy was built without a text encoder; "
                "use condition_from_embeddings()"
            )
        pairs = {}
        keys = []
        for prompt, images in zip(prompts, conditions, strict=True):
            pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
            digest = hashlib.sha256(pixels.numpy().tobytes()).hexdigest()[:32]
            key = f"{prompt}\x00{tuple(pixels.shape)}\x00{digest}"
            pairs[key] = (prompt, images)
            keys.append(key)

        def encode(batch: list[str]) -> list[dict[str, torch.Tensor]]:
            return [{"embeds": text.encode(pairs[k][0], _pil(pairs[k][1]))} for k in batch]

        key = fingerprint(self.source, text.text_encoder.config)
        return [r["embeds"] for r in self._text_cache.get(keys, encode, key, self.dtype)]

    @torch.no_grad()
    def encode_references(self, references: Sequence[torch.Tensor]) -> torch.Tensor:
        """``B`` tensors ``[R, 3, h, w]`` in [0, 1] -> packed latents ``[B, R * L_ref, C]``."""
        from diffusers import QwenImageEditPlusPipeline

        vae = self._need_vae()
        pixels, num_refs = reference_pixels(references, self.reference_hw, "Qwen-Image-Edit")
        chunks = []
        for x in self.vae_chunks(pixels):
            z = vae.encode((2.0 * x - 1.0).unsqueeze(2)).latent_dist.mode()
            mean, std = self._latent_stats(z)
            n, c, _, h, w = z.shape
            chunks.append(QwenImageEditPlusPipeline._pack_latents((z - mean) / std, n, c, h, w))
        packed = torch.cat(chunks)  # [B * R, L_ref, C]
        return packed.reshape(len(references), num_refs * packed.shape[1], packed.shape[2])

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.vae.config
        shape = (1, cfg.z_dim, 1, 1, 1)
        mean = torch.tensor(cfg.latents_mean).view(shape).to(like.device, like.dtype)
        std = torch.tensor(cfg.latents_std).view(shape).to(like.device, like.dtype)
        return mean, std

    def condition_from_embeddings(
        self,
        prompt_embeds: Sequence[torch.Tensor],
        reference_latents: torch.Tensor,
        num_references: int,
        negative_prompt_embeds: Sequence[torch.Tensor] | None = None,
    ) -> Condition:
        """A :class:`Condition` from ready tensors: one ``[T_i, D]`` embedding per sample (and
        per sample's negative prompt with true CFG), ``reference_latents [B, R * L_ref, C]``.
        All are padded to one length and masked."""
        rows = list(prompt_embeds)
        cfg = self.options.true_cfg
        if cfg:
            if negative_prompt_embeds is None:
                raise ValueError("guidance > 1 (true CFG) needs negative_prompt_embeds")
            rows += list(negative_prompt_embeds)
        padded, mask = pad_embeddings([r.to(self.dtype) for r in rows])
        b = len(prompt_embeds)
        device = reference_latents.device
        tensors = {
            "prompt_embeds": padded[:b].to(device),
            "prompt_mask": mask[:b].to(device),
            "reference_latents": reference_latents.to(self.dtype),
        }
        if cfg:
            tensors["negative_prompt_embeds"] = padded[b:].to(device)
            tensors["negative_prompt_mask"] = mask[b:].to(device)
        return Condition(tensors, {"num_references": num_references})

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], references: Sequence[torch.Tensor]) -> Condition:
        if len(prompts) != len(references):
            raise ValueError(f"{len(prompts)} prompts for {len(references)} reference sets")
        latents = self.encode_references(references)
        side = self.options.condition_size
        shown = [resize_center_crop(r.float(), (side, side)) for r in references]
        embeds = self._text_embeddings(list(prompts), shown)
        negative = None
        if self.options.true_cfg:
            negative = self._text_embeddings([self.options.negative_prompt] * len(shown), shown)
        return self.condition_from_embeddings(
            embeds, latents, int(references[0].shape[0]), negative
        )

    # ----- the model -----------------------------------------------------------------------
    def forward(self, latents: torch.Tensor, sigma: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Velocity ``[B, L, C]`` (float32; with guidance > 1 the CFG-guided, rescaled one)."""
        t = cond.tensors
        b, length = latents.shape[:2]
        if sigma.shape != (b,):
            raise ValueError(f"sigma must have shape [{b}], got {list(sigma.shape)}")
        hidden = torch.cat([latents.to(self.dtype), t["reference_latents"]], dim=1)
        prompt, mask = t["prompt_embeds"], t["prompt_mask"]
        cfg = self.options.true_cfg
        if cfg:  # one call for the conditional and unconditional halves
            hidden = torch.cat([hidden, hidden])
            prompt = torch.cat([prompt, t["negative_prompt_embeds"]])
            mask = torch.cat([mask, t["negative_prompt_mask"]])
            sigma = torch.cat([sigma, sigma])
        shapes = self.img_shapes(cond.extras["num_references"])
        out = self.denoiser(
            hidden_states=hidden,
            encoder_hidden_states=prompt,
            encoder_hidden_states_mask=None if bool(mask.all()) else mask,
            timestep=sigma.to(latents.device),
            img_shapes=[shapes] * hidden.shape[0],
            return_dict=False,
        )[0][:, :length].float()
        if not cfg:
            return out
        pos, neg = out[:b], out[b:]
        guided = neg + self.options.guidance * (pos - neg)
        return guided * (pos.norm(dim=-1, keepdim=True) / guided.norm(dim=-1, keepdim=True))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` float32 in [0, 1] (as the pipeline's ``output_type="pt"``)."""
        from diffusers import QwenImageEditPlusPipeline

        vae = self._need_vae()
        z = QwenImageEditPlusPipeline._unpack_latents(
            latents.to(vae.dtype), self.options.height, self.options.width, self.vae_scale_factor
        )
        mean, std = self._latent_stats(z)
        z = z * std + mean
        images = [vae.decode(c, return_dict=False)[0][:, :, 0].float() for c in self.vae_chunks(z)]
        return (torch.cat(images) / 2 + 0.5).clamp(0.0, 1.0)


@POLICIES.register("qwen-image-edit")
def _build_qwen_edit(
    options: dict[str, Any], device: torch.device, dtype: torch.dtype
) -> QwenEditPolicy:
    """Registry entry; weights use ``model.options.dtype`` (bf16 by default)."""
    del dtype
    return QwenEditPolicy.from_pretrained(parse(QwenEditOptions, options, "model.options"), device)


__all__ = ["LORA_PRESETS", "MODEL_PARTS", "QwenEditOptions", "QwenEditPolicy", "pad_embeddings"]
