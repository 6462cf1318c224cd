"""Tiny random FLUX.2 components, built offline from configs (no hub, no downloads).

Transformer: 1 double + 1 single block, 2 heads x 16, rope (4, 4, 4, 4). VAE: four levels
(scale factor 8) of 4 channels, 4 latent channels, so a 64 x 64 image is an 8 x 8 latent,
patchified to 4 x 4 = 16 tokens of 16 channels (the pipelines want references of at least
64 px). Text: a 3-layer Qwen3 of hidden size 16 (its 3 hidden states stacked: 48) and a
byte-level Qwen2 tokenizer with no merges and a minimal chat template.
"""

from __future__ import annotations

import torch

SIZE = 64
MAX_SEQ = 24
TEXT_LAYERS = (1, 2, 3)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_tokenizer(extra_special: tuple[str, ...] = ()):
    """A byte-level Qwen2 tokenizer (no merges) with the chat special tokens, any
    ``extra_special`` ones, and a minimal chat template."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    special = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", *extra_special]
    tok.add_special_tokens({"additional_special_tokens": special})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def mistral_text(seed: int = 3) -> dict:
    """FLUX.2-dev's text side, tiny: a 3-layer Mistral3 (1-layer Pixtral vision tower, unused
    for text) and the byte-level tokenizer with a template for content lists."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    tok = qwen_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
        "{{ c['text'] }}{% endfor %}<|im_end|>\n{% endfor %}"
    )
    text = {"model_type": "mistral", "hidden_size": 16, "intermediate_size": 32}
    text.update(num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    vision = {"model_type": "pixtral", "hidden_size": 16, "intermediate_size": 16}
    vision.update(num_hidden_layers=1, num_attention_heads=2, head_dim=8, image_size=28)
    config = Mistral3Config(
        text_config={**text, "vocab_size": len(tok), "max_position_embeddings": 512},
        vision_config={**vision, "patch_size": 14},
        image_token_index=1,
    )
    torch.manual_seed(seed)
    return {"text_encoder": Mistral3ForConditionalGeneration(config), "tokenizer": tok}


def tiny_transformer(seed: int = 0, guidance_embeds: bool = False, layers: int = 1):
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(seed)
    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=layers,
        num_single_layers=layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=48,
        timestep_guidance_channels=32,
        mlp_ratio=2.0,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    )


def tiny_vae(seed: int = 1):
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 4, 4),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=1,
        sample_size=SIZE,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
    )
    with torch.no_grad():  # non-trivial batch-norm statistics
        vae.bn.running_mean.normal_(0.0, 0.5)
        vae.bn.running_var.uniform_(0.5, 2.0)
    return vae


def tiny_components(seed: int = 0, guidance_embeds: bool = False) -> dict:
    """transformer, vae, text_encoder, tokenizer, scheduler (klein's layout)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from cgrpo.policies.flux2 import SCHEDULER_DEFAULTS

    tokenizer = qwen_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=64,
            tie_word_embeddings=True,
        )
    )
    return {
        "transformer": tiny_transformer(seed, guidance_embeds),
        "vae": tiny_vae(seed + 1),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": FlowMatchEulerDiscreteScheduler(**SCHEDULER_DEFAULTS),
    }


def tiny_options(**overrides) -> dict:
    opts = {
        "height": SIZE,
        "width": SIZE,
        "dtype": "fp32",
        "max_sequence_length": MAX_SEQ,
        "text_encoder_layers": list(TEXT_LAYERS),
    }
    opts.update(overrides)
    return opts


def tiny_policy(components: dict | None = None, **overrides):
    from cgrpo.policies.flux2 import Flux2Policy

    c = components or tiny_components()
    return Flux2Policy.from_components(
        **{k: c[k] for k in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")},
        options=tiny_options(**overrides),
    )


def klein_pipeline(components: dict):
    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe
