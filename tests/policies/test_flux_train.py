"""The FLUX backend through the real trainer: a tiny model directory, a jsonl dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")

from flux_tiny import MAX_SEQ, kontext_pipeline, save_tiny_model, tiny_components  # noqa: E402

REWARDS = """
def both(images, prompts, references, **kwargs):
    return {"brightness": images.mean(dim=(1, 2, 3)),
            "redness": images[:, 0].mean(dim=(1, 2)) - images[:, 1:].mean(dim=(1, 2, 3))}
"""


def test_grpo_steps_on_tiny_flux_save_an_adapter_diffusers_and_cgrpo_reload(tmp_path):
    from cgrpo.config.train import config_from_dict
    from cgrpo.training.runs import load_run_policy
    from cgrpo.training.trainer import Trainer

    torch.set_num_threads(1)
    model = save_tiny_model(tiny_components(), tmp_path / "model")
    rng = np.random.default_rng(0)
    lines = []
    for i, prompt in enumerate(["a dog in the snow", "a red backpack"]):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
            tmp_path / f"ref{i}.png"
        )
        lines.append(json.dumps({"prompt": prompt, "references": [f"ref{i}.png"]}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "rewards.py").write_text(REWARDS)
    target = f"{tmp_path / 'rewards.py'}:both"
    reward = {"name": "custom", "options": {"target": target, "columns": ["brightness", "redness"]}}
    cfg = config_from_dict(
        {
            "model": {
                "backend": "flux",
                "options": {
                    "path": str(model),
                    "height": 16,
                    "width": 16,
                    "dtype": "fp32",
                    "max_sequence_length": MAX_SEQ,
                },
                "lora": {"rank": 4, "alpha": 4.0},
            },
            "data": {"name": "jsonl", "options": {"path": str(tmp_path / "data.jsonl")}},
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
    )
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.train()
    log = (tmp_path / "run" / "metrics.jsonl").read_text()
    metrics = [json.loads(line) for line in log.splitlines()]
    assert len(metrics) == 2
    assert all(m["first_update_ratio_dev"] < 1e-5 and m["grad_norm"] > 0 for m in metrics)

    _, reloaded = load_run_policy(tmp_path / "run")
    policy = trainer.policy.eval()
    cond = policy.encode(["a dog in the snow"], [torch.rand(1, 3, 16, 16)])
    x, s = torch.randn(1, *policy.latent_shape()), torch.tensor([0.5])
    with torch.no_grad():
        ours = policy(x, s, cond)
        assert torch.allclose(reloaded(x, s, cond), ours, atol=1e-6)
        pipe = kontext_pipeline(tiny_components())
        pipe.load_lora_weights(tmp_path / "run" / "final")
        t = cond.tensors
        theirs = pipe.transformer(
            hidden_states=torch.cat([x, t["reference_latents"]], dim=1),
            encoder_hidden_states=t["prompt_embeds"],
            pooled_projections=t["pooled_prompt_embeds"],
            timestep=s,
            img_ids=t["img_ids"][0],
            txt_ids=torch.zeros(MAX_SEQ, 3),
            guidance=torch.tensor([3.5]),
            return_dict=False,
        )[0][:, : x.shape[1]]
        with policy.adapter_disabled():
            base = policy(x, s, cond)
    assert torch.allclose(theirs, ours, atol=1e-5)
    assert not torch.allclose(base, ours, atol=1e-7)  # training moved the adapter off zero
