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

    from cgrpo.rewards.models.hpsv3 import HPSv3Model, official_key_names

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


@pytest.fixture(scope="session")
def tiny_dino_v1_dir(tmp_path_factory) -> Path:
    """A tiny random DINO v1 (transformers ViTModel, pooler included as on the hub)."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(1)
    d = tmp_path_factory.mktemp("dino_v1")
    cfg = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=224,
        patch_size=16,
    )
    ViTModel(cfg, add_pooling_layer=True).save_pretrained(d)
    return d


@pytest.fixture
def copy_model_dir():
    """``copy(src, dst, drop=(), add=None)``: a copy of a saved model directory whose
    model.safetensors lacks the keys ``drop`` and holds the extra tensors ``add``."""
    from safetensors.torch import load_file, save_file

    def copy(src: Path, dst: Path, drop=(), add=None) -> Path:
        dst.mkdir(parents=True)
        for f in src.iterdir():
            (dst / f.name).write_bytes(f.read_bytes())
        state = load_file(str(dst / "model.safetensors"))
        for key in drop:
            state.pop(key)
        state.update(add or {})
        save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
        return dst

    return copy


@pytest.fixture(scope="session")
def tiny_grounded_sam(tmp_path_factory) -> tuple[Path, Path]:
    """(Grounding DINO dir, SAM dir): tiny random models with their processors, offline."""
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SamConfig,
        SamModel,
        SamProcessor,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    torch.manual_seed(2)
    det = tmp_path_factory.mktemp("grounding_dino")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "dog", "cat", "backpack", "toy"]
    (det / "vocab.txt").write_text("\n".join(words) + "\n")
    cfg = GroundingDinoConfig(
        backbone_config=dict(
            model_type="swin",
            embed_dim=8,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1],
            window_size=7,
            image_size=64,
            out_indices=[2, 3, 4],
        ),
        text_config=dict(
            model_type="bert",
            vocab_size=len(words),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            max_position_embeddings=64,
        ),
        d_model=32,  # GroupNorm(32, d_model) in the input projections
        encoder_layers=1,
        decoder_layers=2,  # the box heads of layers 1.. are tied to layer 0's
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=10,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=32,
    )
    GroundingDinoForObjectDetection(cfg).save_pretrained(det)
    GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(
            size={"shortest_edge": 64, "longest_edge": 96}
        ),
        tokenizer=BertTokenizer(str(det / "vocab.txt")),
    ).save_pretrained(det)
    sam = tmp_path_factory.mktemp("sam")
    cfg = SamConfig(
        vision_config=dict(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            image_size=64,
            patch_size=16,
            output_channels=8,
            global_attn_indexes=[0],
            window_size=4,
            mlp_dim=16,
            num_pos_feats=4,  # 2 x num_pos_feats = the prompt encoder's width
        ),
        prompt_encoder_config=dict(
            hidden_size=8, image_size=64, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=dict(
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            mlp_dim=16,
            iou_head_hidden_dim=8,
        ),
    )
    SamModel(cfg).save_pretrained(sam)
    SamProcessor(
        image_processor=SamImageProcessorPil(
            size={"longest_edge": 64},
            pad_size={"height": 64, "width": 64},
            mask_size={"longest_edge": 16},
            mask_pad_size={"height": 16, "width": 16},
        )
    ).save_pretrained(sam)
    return det, sam


TINY_MATTE_CODE = '''
"""A BiRefNet-shaped toy: a 1x1 conv whose logits come last in a list of side outputs."""
import torch
from transformers import PretrainedConfig, PreTrainedModel


class TinyMatteConfig(PretrainedConfig):
    model_type = "tiny-matte"


class TinyMatte(PreTrainedModel):
    config_class = TinyMatteConfig

    def __init__(self, config):
        super().__init__(config)
        self.head = torch.nn.Conv2d(3, 1, 1)
        self.post_init()

    def forward(self, x):
        logits = self.head(x)
        return [logits.sigmoid(), logits]
'''


@pytest.fixture(scope="session")
def tiny_foreground_dir(tmp_path_factory) -> Path:
    """A model directory with its own code, as BiRefNet / RMBG ship: foreground = red pixels
    (logit 10 (R - G) - 2), inputs 64x64 in [0, 1]."""
    import importlib.util
    import sys

    d = tmp_path_factory.mktemp("tiny_matte")
    code = tmp_path_factory.mktemp("tiny_matte_src") / "modeling_tiny_matte.py"
    code.write_text(TINY_MATTE_CODE)
    spec = importlib.util.spec_from_file_location("modeling_tiny_matte", code)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # save_pretrained copies the class's source file
    spec.loader.exec_module(module)
    module.TinyMatteConfig.register_for_auto_class()
    module.TinyMatte.register_for_auto_class("AutoModelForImageSegmentation")
    model = module.TinyMatte(module.TinyMatteConfig())
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([10.0, -10.0, 0.0]).view(1, 3, 1, 1))
        model.head.bias.fill_(-2.0)
    model.save_pretrained(d)
    (d / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "size": {"height": 64, "width": 64},
                "image_mean": [0.0, 0.0, 0.0],
                "image_std": [1.0, 1.0, 1.0],
            }
        )
    )
    return d


@pytest.fixture
def hf_modules_in_tmp(tmp_path, monkeypatch):
    """Remote model code is copied under a temporary folder, not ~/.cache."""
    import transformers.dynamic_module_utils as dmu

    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
