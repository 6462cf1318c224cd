"""Fixtures shared by several test folders: tiny random models saved like real checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cgrpo.config import load_config


@pytest.fixture(scope="session")
def tiny_dino_dir(tmp_path_factory) -> Path:
    """A randomly initialised, tiny DINOv2 (+ its image processor config), offline."""
    from transformers import Dinov2Config, Dinov2Model
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("dinov2")
    cfg = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=224,
        patch_size=16,
    )
    Dinov2Model(cfg).save_pretrained(d)
    BitImageProcessorPil(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(d)
    return d


# A tiny end-to-end training config: random-init pocket model, the toy world and rewards.
TINY = [
    "model.options={weights: random, dim: 32, depth: 1, heads: 2, text_max_length: 8}",
    "model.lora.rank=4",
    "sampling.num_steps=4",
    "sampling.group_size=3",
    "sampling.groups_per_step=2",
    "train.steps=3",
    "train.micro_batch=8",
    "train.lr=0.01",
    "logging.sample_every=1",
    "logging.checkpoint_every=2",
    "logging.progress=false",
    "eval.before_after=false",
]


@pytest.fixture
def tiny_config():
    def make(*extra: str):
        return load_config(None, [*TINY, *extra])

    return make


@pytest.fixture(scope="session")
def tiny_overrides() -> tuple[str, ...]:
    return tuple(TINY)
