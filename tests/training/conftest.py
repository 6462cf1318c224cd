"""A tiny end-to-end training config: random-init pocket model, the toy world and rewards."""

from __future__ import annotations

import pytest

from cgrpo.config import load_config

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


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)
