"""The FLUX.2 and Qwen-Image-Edit backends through the real trainer (2 GRPO steps, tiny models)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")

import flux2_tiny  # noqa: E402
import qwen_tiny  # noqa: E402
from flux_tiny import tiny_run_config  # noqa: E402


def _train(tmp_path, backend: str, options: dict):
    from cgrpo.config.train import config_from_dict
    from cgrpo.training.runs import load_run_policy
    from cgrpo.training.trainer import Trainer

    torch.set_num_threads(1)
    raw = tiny_run_config(tmp_path)  # data, rewards, 2 steps of one group of 2
    raw["model"] = {"backend": backend, "options": options, "lora": {"rank": 4, "alpha": 4.0}}
    raw["sampling"]["dynamic_shift"] = True
    trainer = Trainer(config_from_dict(raw), tmp_path / "run")
    trainer.train()
    log = (tmp_path / "run" / "metrics.jsonl").read_text()
    metrics = [json.loads(line) for line in log.splitlines()]
    assert len(metrics) == 2
    assert all(m["first_update_ratio_dev"] < 1e-5 and m["grad_norm"] > 0 for m in metrics)
    return trainer, load_run_policy


def test_flux2_klein_trains_from_a_model_directory_and_reloads(tmp_path):
    root = tmp_path / "flux2"
    for name, part in flux2_tiny.tiny_components().items():
        part.save_pretrained(root / name)
    trainer, load_run_policy = _train(
        tmp_path, "flux2", {"path": str(root), **flux2_tiny.tiny_options(guidance=2.0)}
    )
    _, reloaded = load_run_policy(tmp_path / "run")
    policy = trainer.policy.eval()
    refs = torch.rand(2, 3, flux2_tiny.SIZE, flux2_tiny.SIZE)
    with torch.no_grad():
        cond = policy.encode(["a dog in the snow"], [refs])
        x, s = torch.randn(1, *policy.latent_shape()), torch.tensor([0.5])
        assert torch.allclose(reloaded(x, s, cond), policy(x, s, cond), atol=1e-6)
        with policy.adapter_disabled():
            assert not torch.allclose(policy(x, s, cond), reloaded(x, s, cond), atol=1e-7)


def test_qwen_image_edit_trains(tmp_path, monkeypatch):
    from cgrpo.policies.qwen_edit import QwenEditPolicy

    # transformers' Qwen2VLProcessor does not load without torchvision: build the tiny policy
    # from in-memory components where the registry would load a directory
    comps = qwen_tiny.tiny_components()
    monkeypatch.setattr(
        QwenEditPolicy,
        "from_pretrained",
        classmethod(lambda cls, options, device="cpu": qwen_tiny.tiny_policy(comps)),
    )
    trainer, _ = _train(tmp_path, "qwen-image-edit", {"path": "unused"})
    assert isinstance(trainer.policy, QwenEditPolicy) and trainer.policy.options.true_cfg
    saved = trainer.policy.adapter_state_dict()
    assert saved and all(torch.isfinite(v).all() for v in saved.values())
