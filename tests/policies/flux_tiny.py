"""Tiny random FLUX components, built offline from configs (no hub, no downloads).

Sizes follow diffusers' own Flux tests (1 double + 1 single block, 2 heads x 16, rope
(4, 4, 8), joint dim 32, pooled 32, text encoders of hidden size 32). The VAE has two
levels (scale factor 2), so a 16 x 16 image is an 8 x 8 latent and 16 packed tokens.
Tokenizers: a byte-level CLIP BPE with an empty merge list, and ByT5 (needs no files).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HEIGHT = WIDTH = 16
MAX_SEQ = 12


def clip_tokenizer():
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    chars = list(bytes_to_unicode().values())
    for suffix in ("", "</w>"):
        for c in chars:
            vocab[c + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


def t5_tokenizer():
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer()


def tiny_transformer(seed: int = 0, num_layers: int = 1, num_single_layers: int = 1):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )


def tiny_components(seed: int = 0) -> dict:
    """transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, scheduler."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    transformer = tiny_transformer(seed)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(4, 4),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
        sample_size=32,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            projection_dim=32,
            max_position_embeddings=tokenizer.model_max_length,
        )
    )
    torch.manual_seed(seed + 3)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            is_encoder_decoder=False,
        )
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        base_shift=0.5,
        max_shift=1.15,
        shift=3.0,
    )
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tokenizer_2,
        "scheduler": scheduler,
    }


def tiny_options(**overrides) -> dict:
    opts = {"height": HEIGHT, "width": WIDTH, "dtype": "fp32", "max_sequence_length": MAX_SEQ}
    opts.update(overrides)
    return opts


def tiny_policy(components: dict | None = None, **overrides):
    from cgrpo.policies.flux import FluxPolicy

    c = components or tiny_components()
    return FluxPolicy.from_components(
        transformer=c["transformer"],
        vae=c["vae"],
        text_encoder=c["text_encoder"],
        tokenizer=c["tokenizer"],
        text_encoder_2=c["text_encoder_2"],
        tokenizer_2=c["tokenizer_2"],
        options=tiny_options(**overrides),
    )


def save_tiny_model(components: dict, root: Path) -> Path:
    """Write the components in diffusers' directory layout under ``root``."""
    root = Path(root)
    for name, part in components.items():
        part.save_pretrained(root / name)
    return root


def kontext_pipeline(components: dict):
    from diffusers import FluxKontextPipeline

    return FluxKontextPipeline(**components)


REWARDS = """
def both(images, prompts, references, **kwargs):
    return {"brightness": images.mean(dim=(1, 2, 3)),
            "redness": images[:, 0].mean(dim=(1, 2)) - images[:, 1:].mean(dim=(1, 2, 3))}
"""


def tiny_run_config(root: Path) -> dict:
    """A train config (dict) for the tiny model, written under ``root``: the model directory,
    two prompts with a 20x24 reference each (jsonl), a two-column custom reward (brightness
    for the prompt role, redness for the identity role); 2 steps of 1 group of 2."""
    root = Path(root)
    model = save_tiny_model(tiny_components(), root / "model")
    rng = np.random.default_rng(0)
    lines = []
    for i, prompt in enumerate(["a dog in the snow", "a red backpack"]):
        image = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / f"ref{i}.png")
        lines.append(json.dumps({"prompt": prompt, "references": [f"ref{i}.png"]}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    (root / "rewards.py").write_text(REWARDS)
    target = f"{root / 'rewards.py'}:both"
    reward = {"name": "custom", "options": {"target": target, "columns": ["brightness", "redness"]}}
    return {
        "model": {
            "backend": "flux",
            "options": {
                "path": str(model),
                "height": HEIGHT,
                "width": WIDTH,
                "dtype": "fp32",
                "max_sequence_length": MAX_SEQ,
            },
            "lora": {"rank": 4, "alpha": 4.0},
        },
        "data": {"name": "jsonl", "options": {"path": str(root / "data.jsonl")}},
        "rewards": [
            {**reward, "role": "prompt", "column": "brightness"},
            {**reward, "role": "identity", "column": "redness"},
        ],
        "sampling": {"num_steps": 4, "group_size": 2, "groups_per_step": 1},
        "train": {"steps": 2, "micro_batch": 3},
        "logging": {
            "sample_every": 0,
            "checkpoint_every": 0,
            "progress": False,
            "tensorboard": False,
        },
        "eval": {"before_after": False},
    }
