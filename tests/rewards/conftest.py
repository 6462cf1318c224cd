"""Tiny random reward models built from configs, saved like real checkpoints (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
DREAMBENCH = REPO.parent / "shared" / "dreambench"


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


@pytest.fixture
def make_images():
    """The :func:`random_images` maker (tests import no helpers from conftest)."""
    return random_images


@pytest.fixture
def dreambench():
    """The :func:`dreambench_image` loader."""
    return dreambench_image


def random_images(n: int, h: int = 64, w: int = 80, seed: int = 0) -> torch.Tensor:
    """``[n, 3, h, w]`` smooth-ish random images in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, max(2, h // 8), max(2, w // 8), generator=g)
    up = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return (0.8 * up + 0.2 * torch.rand(n, 3, h, w, generator=g)).clamp(0, 1)


def clip_tokenizer():
    """A CLIP BPE tokenizer over single bytes (no merges): offline and complete."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("clip")
    tok = clip_tokenizer()
    bos, eos = tok.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=224,
            patch_size=32,
        ),
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    (d / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "do_resize": True,
                "size": {"shortest_edge": 224},
                "do_center_crop": True,
                "crop_size": {"height": 224, "width": 224},
                "resample": 3,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
            }
        )
    )
    return d


def dreambench_image(subject: str = "dog", index: int = 0) -> torch.Tensor | None:
    """A real DreamBench image ``[3, H, W]``, or None where the data is absent."""
    from cgrpo.data.base import load_image

    folder = DREAMBENCH / subject
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return load_image(files[index]) if len(files) > index else None


QWEN_SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def qwen_tokenizer():
    """A Qwen2 byte-level tokenizer without merges plus Qwen2-VL's special tokens (offline)."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token=None,
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS})
    return tok


def tiny_qwen2vl_config(vocab_size: int, ids: dict[str, int]):
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=8192,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            rope_parameters={
                "rope_type": "default",
                "mrope_section": [2, 3, 3],
                "rope_theta": 10000.0,
            },
        ),
        vision_config=dict(
            depth=1,
            embed_dim=16,
            hidden_size=32,
            num_heads=2,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


@pytest.fixture(scope="session")
def tiny_hpsv3(tmp_path_factory) -> tuple[Path, Path]:
    """(base model dir, HPSv3-style checkpoint written with the official key names)."""
    from safetensors.torch import save_file

    from cgrpo.rewards.hpsv3 import HPSv3Model, official_key_names

    d = tmp_path_factory.mktemp("qwen2vl")
    tok = qwen_tokenizer()
    tok.save_pretrained(d)
    ids = dict(
        zip(
            ["<|endoftext|>"] + QWEN_SPECIALS,
            tok.convert_tokens_to_ids(["<|endoftext|>"] + QWEN_SPECIALS),
        )
    )
    tiny_qwen2vl_config(len(tok), ids).save_pretrained(d)
    torch.manual_seed(0)
    model = HPSv3Model(tiny_qwen2vl_config(len(tok) + 1, ids))  # + <|Reward|>, as HPSv3 resizes
    with torch.no_grad():  # a random head on a random model scores ~0: spread the outputs
        for p in model.rank_head.parameters():
            p.normal_(0, 0.5)
    ours = model.state_dict()
    state = {k: v.contiguous() for k, v in zip(official_key_names(list(ours)), ours.values())}
    state["lm_head.weight"] = torch.randn(len(tok) + 1, 32)
    ckpt = d / "HPSv3.safetensors"
    save_file(state, str(ckpt))
    return d, ckpt
