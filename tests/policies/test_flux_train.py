"""The FLUX backend through the real trainer: a tiny model directory, a jsonl dataset."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")

from flux_tiny import MAX_SEQ, kontext_pipeline, tiny_components, tiny_run_config  # noqa: E402


def test_grpo_steps_on_tiny_flux_save_an_adapter_diffusers_and_cgrpo_reload(tmp_path):
    from cgrpo.config.train import config_from_dict
    from cgrpo.training.runs import load_run_policy
    from cgrpo.training.trainer import Trainer

    torch.set_num_threads(1)
    cfg = config_from_dict(tiny_run_config(tmp_path))
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
