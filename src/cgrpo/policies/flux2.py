"""FLUX.2 backends (``flux2``): FLUX.2-dev and the FLUX.2-klein models, through diffusers.

One forward, as ``Flux2Pipeline`` / ``Flux2KleinPipeline`` run it::

    text (T tokens) | target (L tokens) | reference 1 | ... | reference R

* Latents: the VAE (``AutoencoderKLFlux2``) posterior mean, 2x2-patchified into channels,
  normalised by the VAE's batch-norm statistics, flattened row-major to ``[L, C]``;
  references the same. Position ids have 4 axes ``(t, h, w, l)``: the target ``t = 0``,
  reference ``k`` ``t = 10 + 10 k`` (the pipelines' scheme), text ``(0, 0, 0, l)``.
* Timestep: sigma in [0, 1] (the pipelines pass ``t / 1000``).
* Guidance as each model defines it (``model.options.guidance``): FLUX.2-dev embeds the
  scale (one pass per step); klein runs true classifier-free guidance against the empty
  prompt, ``v = v_neg + g (v_pos - v_neg)``, two transformer passes per step (batched into
  one call, so twice the tokens; ``guidance: 1`` turns it off, for the step-distilled klein).
  The guided velocity is the policy's velocity: sampling, log-probs and the update all see it.
* Text: klein's Qwen3 (hidden states of layers 9, 18, 27 stacked), dev's Mistral Small 3.1
  (layers 10, 20, 30), each through the pipeline's own encoding function; embeddings are
  cached per prompt (:class:`cgrpo.policies.dit.EmbeddingCache`).
* Schedule (``sampling.dynamic_shift: true``): the pipelines' empirical ``mu`` (a function of
  the token count and the number of steps) through the model's scheduler.

Weights come from a local diffusers-layout directory (``model.options.path``), never a hub.
"""

from __future__ import annotations

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
    scheduler_sigmas,
)

VARIANTS = ("klein", "dev")
#: text-encoder hidden states the pipelines stack (``text_encoder_out_layers``)
TEXT_LAYERS = {"klein": (9, 18, 27), "dev": (10, 20, 30)}
MODEL_PARTS = {
    "transformer": "Flux2Transformer2DModel (config.json + weights)",
    "vae": "AutoencoderKLFlux2 (config.json + weights)",
    "text_encoder": "Qwen3ForCausalLM (klein) / Mistral3ForConditionalGeneration (dev)",
    "tokenizer": "tokenizer (klein) / processor (dev) files",
}
#: the released FLUX.2 scheduler config, used when the model directory has no scheduler/
SCHEDULER_DEFAULTS = {
    "use_dynamic_shifting": True,
    "time_shift_type": "exponential",
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "shift": 3.0,
}

_DOUBLE_ATTN = (
    r"transformer_blocks\.\d+\.attn\."
    r"(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
)
# FLUX.2's single blocks fuse q, k, v and the MLP input into one layer, and the attention and
# MLP outputs into another (BFL's linear1 / linear2): a LoRA there adapts both parts.
_SINGLE = r"single_transformer_blocks\.\d+\.attn\.(to_qkv_mlp_proj|to_out)"
_QKV = (("to_q", "to_k", "to_v"), ("add_q_proj", "add_k_proj", "add_v_proj"))
LORA_PRESETS = {
    # the paper's layer set carried over: double-block attention of both streams (one shared
    # down-projection per fused qkv), single blocks' linear1 / linear2; no double-block MLPs
    "paper": LoraTargets(f"{_DOUBLE_ATTN}|{_SINGLE}", shared_down=_QKV),
    # the same layers with independent q/k/v LoRAs (the default)
    "attention": LoraTargets(f"{_DOUBLE_ATTN}|{_SINGLE}"),
    # every linear layer of the blocks: attention, both MLPs of the double blocks, single blocks
    "all": LoraTargets(
        f"{_DOUBLE_ATTN}|{_SINGLE}"
        r"|transformer_blocks\.\d+\.(ff|ff_context)\.(linear_in|linear_out)"
    ),
}


@dataclass
class Flux2Options(DiTOptions):
    """``model.options`` of the ``flux2`` backend (``path``: a diffusers FLUX.2 directory with
    transformer/, vae/, text_encoder/, tokenizer/, optionally scheduler/)."""

    variant: str = option(
        "klein",
        "klein (FLUX.2-klein, Qwen3 text) or dev (FLUX.2-dev, Mistral text)",
        choices=VARIANTS,
    )
    guidance: float = option(
        4.0,
        "dev: the embedded guidance scale; klein: the true-CFG scale against the empty prompt "
        "(two transformer passes per step; 1 = off, for the step-distilled klein)",
        min=0.0,
    )
    max_sequence_length: int = option(512, "text tokens per prompt", min=1, max=512)
    text_encoder_layers: tuple[int, ...] | None = option(
        None,
        "text-encoder hidden states stacked into the prompt embedding; null = the variant's "
        "(klein 9, 18, 27; dev 10, 20, 30)",
    )

    @property
    def true_cfg(self) -> bool:
        return self.variant == "klein" and self.guidance > 1.0


class _TextStack:
    """Text encoder and tokenizer/processor, outside the module tree (never trained, never
    in ``state_dict()``); encodes with the pipeline's own function."""

    def __init__(self, variant: str, text_encoder, tokenizer, device, layers=None) -> None:
        self.variant, self.text_encoder, self.tokenizer = variant, text_encoder, tokenizer
        self.layers = tuple(layers or TEXT_LAYERS[variant])
        self.device = torch.device(device)
        text_encoder.requires_grad_(False).eval().to(self.device)

    @torch.no_grad()
    def encode(self, prompts: list[str], max_len: int) -> torch.Tensor:
        """``[n, max_len, 3 * hidden]``: the chosen hidden states, stacked per token."""
        from diffusers import Flux2KleinPipeline, Flux2Pipeline

        kw = {
            "dtype": self.text_encoder.dtype,
            "device": self.device,
            "max_sequence_length": max_len,
            "hidden_states_layers": self.layers,
        }
        if self.variant == "klein":
            fn = Flux2KleinPipeline._get_qwen3_prompt_embeds
        else:
            fn = Flux2Pipeline._get_mistral_3_small_prompt_embeds
        return fn(self.text_encoder, self.tokenizer, prompts, **kw)


class Flux2Policy(DiTPolicy):
    """FLUX.2-dev / FLUX.2-klein behind :class:`cgrpo.policies.base.Policy`.

    :meth:`from_pretrained` loads a local diffusers directory (the ``flux2`` registry entry);
    :meth:`from_components` wraps given modules (tiny test ones). Without text encoder or VAE,
    :meth:`condition_from_embeddings` takes ready tensors.
    """

    backend = "flux2"
    lora_presets = LORA_PRESETS
    default_lora_preset = "attention"

    def __init__(self, options, transformer, vae, text, scheduler, source=IN_MEMORY) -> None:
        super().__init__(options, transformer, vae, source)
        self._text = text
        self._text_cache = EmbeddingCache(options.text_cache_size, options.text_cache_dir)
        self.scheduler = scheduler

    def pipeline_class(self) -> Any:
        from diffusers import Flux2KleinPipeline, Flux2Pipeline

        return Flux2KleinPipeline if self.options.variant == "klein" else Flux2Pipeline

    # ----- construction ------------------------------------------------------------------
    @classmethod
    def from_components(
        cls,
        *,
        transformer: nn.Module,
        vae: nn.Module | None = None,
        text_encoder: nn.Module | None = None,
        tokenizer: Any = None,
        scheduler: Any = None,
        options: Mapping[str, Any] | Flux2Options | None = None,
        device: torch.device | str = "cpu",
        source: str = IN_MEMORY,
    ) -> Flux2Policy:
        """A policy around given modules (``options`` as ``model.options``, ``path`` not
        needed)."""
        if not isinstance(options, Flux2Options):
            options = parse(Flux2Options, {"path": source, **dict(options or {})}, "model.options")
        device = torch.device(device)
        cls.prepare(options, transformer, vae, device)
        text = None
        if (text_encoder is None) != (tokenizer is None):
            raise ValueError("pass both text_encoder and tokenizer, or neither")
        if text_encoder is not None:
            text_device = cls.place_text(options, device, text_encoder)
            layers = options.text_encoder_layers
            text = _TextStack(options.variant, text_encoder, tokenizer, text_device, layers)
        scheduler = scheduler or load_scheduler(None, SCHEDULER_DEFAULTS)
        return cls(options, transformer, vae, text, scheduler, source)

    @classmethod
    def from_pretrained(
        cls, options: Mapping[str, Any] | Flux2Options, device: torch.device | str = "cpu"
    ) -> Flux2Policy:
        """Load every part from ``options.path`` (local files only)."""
        from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
        from transformers import AutoProcessor, AutoTokenizer

        if not isinstance(options, Flux2Options):
            options = parse(Flux2Options, options, "model.options")
        root = check_model_dir(options.path, MODEL_PARTS, ("transformer", "vae"), "FLUX.2")
        dtype = DTYPES[options.dtype]
        kw = {"local_files_only": True}
        if options.variant == "klein":
            from transformers import Qwen3ForCausalLM as TextModel

            tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer", **kw)
        else:
            from transformers import Mistral3ForConditionalGeneration as TextModel

            tokenizer = AutoProcessor.from_pretrained(root / "tokenizer", **kw)
        return cls.from_components(
            transformer=Flux2Transformer2DModel.from_pretrained(
                root / "transformer", torch_dtype=dtype, **kw
            ),
            vae=AutoencoderKLFlux2.from_pretrained(root / "vae", torch_dtype=dtype, **kw),
            text_encoder=TextModel.from_pretrained(root / "text_encoder", dtype=dtype, **kw),
            tokenizer=tokenizer,
            scheduler=load_scheduler(root, SCHEDULER_DEFAULTS),
            options=options,
            device=device,
            source=str(root.resolve()),
        )

    # ----- geometry and schedule -----------------------------------------------------------
    def position_ids(self, num_references: int) -> torch.Tensor:
        """``[L + R * L_ref, 4]`` ids of the target then the references (pipelines' scheme)."""
        from diffusers import Flux2Pipeline

        c = int(self.denoiser.config.in_channels)
        target = torch.empty(1, c, *self._grid(self.options.height, self.options.width))
        ref = torch.empty(1, c, *self._grid(*self.reference_hw))
        ids = [Flux2Pipeline._prepare_latent_ids(target)[0]]
        if num_references:
            ids.append(Flux2Pipeline._prepare_image_ids([ref] * num_references)[0])
        return torch.cat(ids)

    def dynamic_sigmas(self, num_steps: int) -> torch.Tensor:
        from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

        return scheduler_sigmas(
            self.scheduler, num_steps, compute_empirical_mu(self.image_seq_len, num_steps)
        )

    # ----- conditioning --------------------------------------------------------------------
    def _text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        text = self._text
        if text is None:
            raise RuntimeError(
                "this Flux2Policy was built without a text encoder; use condition_from_embeddings()"
            )
        max_len = self.options.max_sequence_length

        def encode(batch: list[str]) -> list[dict[str, torch.Tensor]]:
            return [{"embeds": e} for e in text.encode(batch, max_len)]

        key = fingerprint(self.source, max_len, text.layers, text.text_encoder.config)
        rows = self._text_cache.get(list(prompts), encode, key, self.dtype)
        return torch.stack([r["embeds"] for r in rows])

    @torch.no_grad()
    def encode_references(self, references: Sequence[torch.Tensor]) -> torch.Tensor:
        """``B`` tensors ``[R, 3, h, w]`` in [0, 1] -> latents ``[B, R * L_ref, C]``."""
        from diffusers import Flux2Pipeline

        vae = self._need_vae()
        pixels, num_refs = reference_pixels(references, self.reference_hw, "FLUX.2")
        chunks = []
        for x in self.vae_chunks(pixels):
            z = Flux2Pipeline._patchify_latents(vae.encode(2.0 * x - 1.0).latent_dist.mode())
            mean, std = self._bn_stats(z)
            chunks.append(Flux2Pipeline._pack_latents((z - mean) / std))
        packed = torch.cat(chunks)  # [B * R, L_ref, C]
        return packed.reshape(len(references), num_refs * packed.shape[1], packed.shape[2])

    def _bn_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bn, eps = self.vae.bn, self.vae.config.batch_norm_eps
        mean = bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + eps).to(like.device, like.dtype)
        return mean, std

    def condition_from_embeddings(
        self,
        prompt_embeds: torch.Tensor,
        reference_latents: torch.Tensor,
        num_references: int,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> Condition:
        """A :class:`Condition` from ready tensors: ``prompt_embeds [B, T, D]``, packed
        ``reference_latents [B, R * L_ref, C]``; with klein's true CFG also the empty prompt's
        ``negative_prompt_embeds`` (``[1, T, D]`` or ``[B, T, D]``)."""
        b = prompt_embeds.shape[0]
        need = (
            num_references * self._grid(*self.reference_hw)[0] * self._grid(*self.reference_hw)[1]
        )
        if reference_latents.shape[1] != need:
            raise ValueError(
                f"reference_latents has {reference_latents.shape[1]} tokens; {num_references} "
                f"reference(s) of {self.reference_hw} need {need}"
            )
        tensors = {
            "prompt_embeds": prompt_embeds.to(self.dtype),
            "reference_latents": reference_latents.to(self.dtype),
        }
        if self.options.true_cfg:
            if negative_prompt_embeds is None:
                raise ValueError("klein with guidance > 1 (true CFG) needs negative_prompt_embeds")
            neg = negative_prompt_embeds.to(self.dtype).expand(b, -1, -1).contiguous()
            tensors["negative_prompt_embeds"] = neg
        return Condition(tensors, {"num_references": num_references})

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], references: Sequence[torch.Tensor]) -> Condition:
        if len(prompts) != len(references):
            raise ValueError(f"{len(prompts)} prompts for {len(references)} reference sets")
        cfg = self.options.true_cfg
        embeds = self._text_embeddings([*prompts, ""] if cfg else list(prompts))
        device = self._device()
        embeds = embeds.to(device)
        return self.condition_from_embeddings(
            embeds[: len(prompts)],
            self.encode_references(references),
            int(references[0].shape[0]),
            embeds[len(prompts) :] if cfg else None,
        )

    # ----- the model -----------------------------------------------------------------------
    def forward(self, latents: torch.Tensor, sigma: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Velocity ``[B, L, C]`` (float32; klein with guidance > 1: the CFG-guided one)."""
        t = cond.tensors
        b, length = latents.shape[:2]
        if sigma.shape != (b,):
            raise ValueError(f"sigma must have shape [{b}], got {list(sigma.shape)}")
        device = latents.device
        hidden = torch.cat([latents.to(self.dtype), t["reference_latents"]], dim=1)
        prompt = t["prompt_embeds"]
        if self.options.true_cfg:  # one call for the conditional and unconditional halves
            hidden = torch.cat([hidden, hidden])
            prompt = torch.cat([prompt, t["negative_prompt_embeds"]])
            sigma = torch.cat([sigma, sigma])
        guidance = None
        if self.options.variant == "dev" and self.denoiser.config.guidance_embeds:
            guidance = torch.full((hidden.shape[0],), self.options.guidance, device=device)
        txt_ids = torch.zeros(prompt.shape[1], 4, dtype=torch.long, device=device)
        txt_ids[:, 3] = torch.arange(prompt.shape[1], device=device)
        out = self.denoiser(
            hidden_states=hidden,
            encoder_hidden_states=prompt,
            timestep=sigma.to(device),
            img_ids=self.position_ids(cond.extras["num_references"]).to(device),
            txt_ids=txt_ids,
            guidance=guidance,
            return_dict=False,
        )[0][:, :length].float()
        if not self.options.true_cfg:
            return out
        pos, neg = out[:b], out[b:]
        return neg + self.options.guidance * (pos - neg)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` float32 in [0, 1] (as the pipelines' ``output_type="pt"``)."""
        from diffusers import Flux2Pipeline

        vae = self._need_vae()
        rows, cols = self._grid(self.options.height, self.options.width)
        b, _, c = latents.shape
        z = latents.to(vae.dtype).permute(0, 2, 1).reshape(b, c, rows, cols)
        mean, std = self._bn_stats(z)
        z = Flux2Pipeline._unpatchify_latents(z * std + mean)
        images = [vae.decode(c, return_dict=False)[0].float() for c in self.vae_chunks(z)]
        return (torch.cat(images) / 2 + 0.5).clamp(0.0, 1.0)


@POLICIES.register("flux2")
def _build_flux2(options: dict[str, Any], device: torch.device, dtype: torch.dtype) -> Flux2Policy:
    """Registry entry; weights use ``model.options.dtype`` (bf16 by default)."""
    del dtype
    return Flux2Policy.from_pretrained(parse(Flux2Options, options, "model.options"), device)


__all__ = ["LORA_PRESETS", "MODEL_PARTS", "TEXT_LAYERS", "VARIANTS", "Flux2Options", "Flux2Policy"]
