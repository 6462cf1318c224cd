"""Tiny random Qwen-Image-Edit-Plus components, built offline from configs.

Transformer: 2 blocks, 3 heads x 16, rope (8, 4, 4). VAE: base dim 4, three levels (scale
factor 4), 4 latent channels, so a 32 x 32 image is an 8 x 8 latent, 16 packed tokens of 16
channels. Text: a 2-layer Qwen2.5-VL of hidden size 16 with a 2-block vision tower, a
byte-level Qwen2 tokenizer (no merges) holding the chat and vision special tokens, and a
Qwen2VLProcessor of the PIL image processor and that tokenizer (transformers' processor also
wants a video processor, which needs torchvision; the test one declares only the two parts).

The pipeline fixes the reference sizes (a 1024 x 1024 area for the VAE, 384 x 384 for the
VLM); :func:`small_pipeline_sizes` shrinks those module constants to this tiny model's.
"""

from __future__ import annotations

import contextlib

import torch

SIZE = 32  # target, VAE references and the VLM's view of a reference
VISION = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def tokenizer():
    from flux2_tiny import qwen_tokenizer

    return qwen_tokenizer(VISION)


def processor(tok):
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    class ImageTextProcessor(Qwen2VLProcessor):
        @classmethod
        def get_attributes(cls):
            return ["image_processor", "tokenizer"]

    return ImageTextProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tok)


def tiny_transformer(seed: int = 0, zero_cond_t: bool = False):
    """``zero_cond_t``: Qwen-Image-Edit-2511's reference tokens modulated at timestep 0."""
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(seed)
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
        zero_cond_t=zero_cond_t,
    )


def tiny_components(seed: int = 0) -> dict:
    """transformer, vae, text_encoder, tokenizer, processor, scheduler."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from cgrpo.policies.qwen_edit import SCHEDULER_DEFAULTS

    tok = tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in VISION}
    text = {
        "hidden_size": 16,
        "intermediate_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        "rope_theta": 1000000.0,
        "vocab_size": len(tok),
        "bos_token_id": None,
        "eos_token_id": None,
    }
    vision = {"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2}
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config={**vision, "out_hidden_size": 16},
        hidden_size=16,
        vocab_size=len(tok),
        bos_token_id=None,
        eos_token_id=None,
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
    )
    torch.manual_seed(seed + 2)
    text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLQwenImage(
        base_dim=4,
        z_dim=4,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[1.5, 0.7, 1.2, 2.0],
    )
    return {
        "transformer": tiny_transformer(seed),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tok,
        "processor": processor(tok),
        "scheduler": FlowMatchEulerDiscreteScheduler(**SCHEDULER_DEFAULTS),
    }


def tiny_options(**overrides) -> dict:
    opts = {"height": SIZE, "width": SIZE, "dtype": "fp32", "condition_size": SIZE}
    opts.update(overrides)
    return opts


def tiny_policy(components: dict | None = None, **overrides):
    from cgrpo.policies.qwen_edit import QwenEditPolicy

    c = components or tiny_components()
    return QwenEditPolicy.from_components(**c, options=tiny_options(**overrides))


@contextlib.contextmanager
def small_pipeline_sizes():
    """The pipeline's fixed reference areas, shrunk to the tiny model's (restored after)."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as module

    saved = module.VAE_IMAGE_SIZE, module.CONDITION_IMAGE_SIZE
    module.VAE_IMAGE_SIZE = module.CONDITION_IMAGE_SIZE = SIZE * SIZE
    try:
        yield
    finally:
        module.VAE_IMAGE_SIZE, module.CONDITION_IMAGE_SIZE = saved


def edit_pipeline(components: dict):
    from diffusers import QwenImageEditPlusPipeline

    pipe = QwenImageEditPlusPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe
