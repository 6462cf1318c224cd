"""The FLUX.2 and Qwen-Image-Edit presets load and carry the paper's GRPO settings."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("diffusers")

from cgrpo.config import parse  # noqa: E402
from cgrpo.config.train import load_config  # noqa: E402
from cgrpo.policies.flux2 import Flux2Options  # noqa: E402
from cgrpo.policies.qwen_edit import QwenEditOptions  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(
    "name,backend,options,expected",
    [
        ("flux2-klein", "flux2", Flux2Options, {"variant": "klein", "true_cfg": True}),
        ("flux2-dev", "flux2", Flux2Options, {"variant": "dev", "true_cfg": False}),
        ("qwen-image-edit", "qwen-image-edit", QwenEditOptions, {"true_cfg": True}),
    ],
)
def test_presets_load_and_carry_the_paper_grpo_settings(name, backend, options, expected):
    text = (CONFIGS / f"{name}.yaml").read_text()
    assert "ESTIMATE" in text and "launch_8gpu.sh" in text  # memory estimate + 8-GPU launch
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.model.backend == backend
    opts = parse(options, cfg.model.options, "model.options")
    assert (opts.height, opts.width, opts.guidance, opts.gradient_checkpointing) == (
        512,
        512,
        4.0,
        True,
    )
    assert {k: getattr(opts, k) for k in expected} == expected
    lora = cfg.model.lora
    assert (lora.rank, lora.alpha, lora.targets, lora.dropout) == (64, 64, "paper", 0.0)
    s, t = cfg.sampling, cfg.train
    assert (s.num_steps, s.dynamic_shift, s.noise_level, s.sde_kind, s.group_size) == (
        25,
        True,
        0.4,
        "dance",
        12,
    )
    assert (t.lr, t.weight_decay, t.grad_clip, t.timestep_fraction, t.clip_range) == (
        2e-5,
        1e-4,
        1.0,
        0.6,
        1e-4,
    )
    assert (cfg.advantage.strategy, cfg.advantage.gamma, cfg.advantage.schedule) == (
        "sars",
        0.4,
        "tdw",
    )
    assert {(r.name, r.role) for r in cfg.rewards} == {
        ("hpsv3", "prompt"),
        ("dino-seg", "identity"),
    }
