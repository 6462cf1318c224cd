"""What the rest of a FLUX GRPO step costs: VAE decode/encode and the two paper rewards.

Random weights at the real sizes, forward only, the batch sizes the library uses:

* FLUX VAE (AutoencoderKL, 16 latent channels): decode the group's final latents,
  ``vae_batch_size`` images per call, and encode the one reference;
* DINOv2-base (``dino`` / ``dino-seg`` backbone, float32 as the option's default): the group's
  images and the reference at 224x224 (the segmenter of ``dino-seg`` is not timed);
* HPSv3: Qwen2-VL-7B-Instruct's architecture (:class:`cgrpo.rewards.models.hpsv3.HPSv3Model`, bf16)
  on 448x448 images (256 visual tokens) with the query's text, ``batch_size`` 4.

The query text length is an estimate (``--hps-text-tokens``; HPSv3's instruction is about
2,500 characters), as no Qwen tokenizer is available offline.
"""

from __future__ import annotations

import torch
from flux_parts import Timer, init_random_, parameter_gib

QWEN2VL_7B_TEXT = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
)
QWEN2VL_7B_VISION = dict(
    depth=32,
    embed_dim=1280,
    hidden_size=3584,
    num_heads=16,
    mlp_ratio=4,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
)
QWEN2VL_TINY_TEXT = dict(
    QWEN2VL_7B_TEXT,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
)
QWEN2VL_TINY_VISION = dict(QWEN2VL_7B_VISION, depth=1, embed_dim=16, hidden_size=32, num_heads=2)
QWEN_IDS = dict(  # Qwen2-VL's special token ids
    image_token_id=151655,
    video_token_id=151656,
    vision_start_token_id=151652,
    vision_end_token_id=151653,
)
REWARD_TOKEN_ID = 151657  # the token HPSv3 appends to the vocabulary
FLUX_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=16,
    norm_num_groups=32,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
TINY_VAE = dict(FLUX_VAE, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4)


def _timed(timer: Timer, fn, repeats: int = 2) -> dict:
    """Warm-up once, then the mean of ``repeats`` timed calls and their peak memory."""
    with torch.no_grad():
        fn()
        _, seconds, peak = timer.run(lambda: [fn() for _ in range(repeats)])
    return {"s": seconds / repeats, "peak_gib": peak}


def vae_cost(timer: Timer, images: int, size: int, vae_batch: int, tiny: bool) -> dict:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL

    device = timer.device
    with init_empty_weights():
        vae = AutoencoderKL(**(TINY_VAE if tiny else FLUX_VAE))
    dtype = torch.float32 if tiny else torch.bfloat16
    vae = init_random_(vae, dtype, device, seed=7)
    z = torch.randn(images, 16, size // 8, size // 8, device=device, dtype=dtype)
    ref = torch.rand(1, 3, size, size, device=device, dtype=dtype)

    def decode():
        return [vae.decode(z[i : i + vae_batch]).sample for i in range(0, images, vae_batch)]

    out = {
        "decode": _timed(timer, decode),
        "encode_reference": _timed(timer, lambda: vae.encode(ref).latent_dist.mode()),
        "weights_gib": parameter_gib(vae),
    }
    return out


def dino_cost(timer: Timer, images: int, tiny: bool) -> dict:
    from accelerate import init_empty_weights
    from transformers import Dinov2Config, Dinov2Model

    config = (
        Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
        if tiny
        else Dinov2Config()
    )
    with init_empty_weights():
        model = Dinov2Model(config)
    model = init_random_(model, torch.float32, timer.device, seed=8)
    pixels = torch.rand(images + 1, 3, 224, 224, device=timer.device)  # + the reference
    out = _timed(timer, lambda: model(pixel_values=pixels).pooler_output)
    out["weights_gib"] = parameter_gib(model)
    return out


def hpsv3_cost(timer: Timer, images: int, text_tokens: int, batch: int, tiny: bool) -> dict:
    from accelerate import init_empty_weights
    from transformers import Qwen2VLConfig

    from cgrpo.rewards.models.hpsv3 import HPSv3Model

    device = timer.device
    config = Qwen2VLConfig(
        text_config=QWEN2VL_TINY_TEXT if tiny else QWEN2VL_7B_TEXT,
        vision_config=QWEN2VL_TINY_VISION if tiny else QWEN2VL_7B_VISION,
        **QWEN_IDS,
    )
    with init_empty_weights():
        model = HPSv3Model(config)
    model = init_random_(model, torch.bfloat16, device, seed=9)
    model.rank_head.float()
    side, patch, merge = (56, 14, 2) if tiny else (448, 14, 2)
    grid = side // patch
    visual = grid * grid // merge**2
    gen = torch.Generator().manual_seed(10)
    text = torch.randint(0, 151000, (batch, text_tokens), generator=gen)
    ids = torch.cat(
        [
            text[:, :20],
            torch.full((batch, 1), QWEN_IDS["vision_start_token_id"]),
            torch.full((batch, visual), QWEN_IDS["image_token_id"]),
            torch.full((batch, 1), QWEN_IDS["vision_end_token_id"]),
            text[:, 20:],
            torch.full((batch, 1), REWARD_TOKEN_ID),
        ],
        dim=1,
    ).to(device)
    pixels = torch.randn(batch * grid * grid, 3 * 2 * patch * patch, device=device)
    grid_thw = torch.tensor([[1, grid, grid]] * batch, device=device)
    mask = torch.ones_like(ids)

    def score_all():
        for _ in range(0, images, batch):
            model(ids, mask, pixels.to(torch.bfloat16), grid_thw, REWARD_TOKEN_ID)

    out = _timed(timer, score_all)
    out.update(
        weights_gib=parameter_gib(model),
        tokens_per_query=int(ids.shape[1]),
        visual_tokens=visual,
    )
    return out


def reward_costs(
    timer: Timer, images: int, size: int, vae_batch: int, hps_text_tokens: int, tiny: bool
) -> dict:
    """Each part timed on its own; a part that fails records its error and the rest go on
    (the device machine's transformers may differ from ours)."""
    parts = {
        "vae": lambda: vae_cost(timer, images, size, vae_batch, tiny),
        "dino": lambda: dino_cost(timer, images, tiny),
        "hpsv3": lambda: hpsv3_cost(timer, images, hps_text_tokens, 4, tiny),
    }
    out = {}
    for name, fn in parts.items():
        try:
            out[name] = fn()
        except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
            out[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
        timer.free()
    seconds = [
        out["vae"].get("decode", {}).get("s"),
        out["dino"].get("s"),
        out["hpsv3"].get("s"),
    ]
    if all(s is not None for s in seconds):
        out["decode_and_score_s"] = sum(seconds)
    return out
