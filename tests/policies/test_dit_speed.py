"""The speed levers on FLUX.2 and Qwen-Image-Edit give the plain path's log-probs and gradients.

As tests/policies/test_flux_speed.py does for FLUX.1: tiny random transformers (2 + 2 FLUX.2
blocks, 2 Qwen blocks), a random LoRA, ready embeddings (true CFG on, so every forward runs
the conditional and unconditional halves; Qwen's prompt and negative prompt of different
lengths, so padding masks are exercised), the same seeds for every policy: only the lever
differs.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

import flux2_tiny  # noqa: E402
import qwen_tiny  # noqa: E402
from dit_checks import assert_same_grads, random_lora, recompute, rollout  # noqa: E402

from cgrpo.policies.flux_blocks import transformer_blocks  # noqa: E402
from cgrpo.sampling import merged_lora  # noqa: E402

GROUP = 3


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def make(backend: str, targets=None, **options):
    """(policy, condition) with no VAE (scale factor 8: 64 px = 16 tokens) nor text encoder."""
    g = torch.Generator().manual_seed(2)
    opts = {"height": 64, "width": 64, "dtype": "fp32", "guidance": 3.0, **options}
    if backend == "flux2":
        from cgrpo.policies.flux2 import Flux2Policy

        policy = Flux2Policy.from_components(
            transformer=flux2_tiny.tiny_transformer(0, layers=2), options=opts
        )
        text, neg = torch.randn(1, 6, 48, generator=g), torch.randn(1, 6, 48, generator=g)
        refs = torch.randn(1, 16, 16, generator=g)
        cond = policy.condition_from_embeddings(text, refs, 1, neg)
    else:
        from cgrpo.policies.qwen_edit import QwenEditPolicy

        policy = QwenEditPolicy.from_components(
            transformer=qwen_tiny.tiny_transformer(0), options=opts
        )
        text, neg = [torch.randn(5, 16, generator=g)], [torch.randn(3, 16, generator=g)]
        refs = torch.randn(1, 16, 16, generator=g)
        cond = policy.condition_from_embeddings(text, refs, 1, neg)
    random_lora(policy, targets)
    return policy, cond.repeat_interleave(GROUP)


@pytest.fixture(scope="module", params=["flux2", "qwen-image-edit"])
def plain(request):
    """The plain path: no checkpointing, no compile, one pair per backward."""
    policy, cond = make(request.param)
    traj = rollout(policy, cond, group=GROUP)
    log_probs, grads = recompute(policy, cond, traj, micro_batch=1)
    assert torch.allclose(log_probs, traj.log_probs[:, :-1], atol=1e-6)  # ratio 1
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    return request.param, traj, log_probs, grads


@pytest.mark.parametrize(
    "options,micro_batch",
    [
        ({"gradient_checkpointing": True}, 1),
        ({"gradient_checkpointing": True}, 4),
        ({"gradient_checkpointing": True, "checkpoint_fraction": 0.5}, 3),
        ({}, 4),
        ({"gradient_checkpointing": True, "compile_blocks": "aot_eager"}, 9),
    ],
    ids=["checkpointed", "checkpointed-mb4", "selective-half-mb3", "no-checkpoint-mb4", "compiled"],
)
def test_lever_gives_the_plain_log_probs_and_gradients(plain, options, micro_batch):
    """Compile: traced by dynamo + AOT autograd (aot_eager, no code generation), inside
    checkpointing as in training, one micro-batch size so each block class traces once."""
    backend, traj, expected_lp, expected_grads = plain
    policy, cond = make(backend, **options)
    if options.get("compile_blocks"):
        assert all(b._compiled_call_impl is not None for b in transformer_blocks(policy.denoiser))
    log_probs, grads = recompute(policy, cond, traj, micro_batch)
    assert torch.allclose(log_probs, expected_lp, atol=1e-5)
    assert_same_grads(grads, expected_grads)


@pytest.mark.parametrize("backend", ["flux2", "qwen-image-edit"])
def test_merged_sampling_matches_unmerged_and_puts_the_weights_back(backend):
    policy, cond = make(backend, targets="paper")  # q/k/v share one down-projection
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    unmerged = rollout(policy, cond, group=GROUP)
    with merged_lora(policy):
        merged = rollout(policy, cond, group=GROUP)
    assert torch.allclose(merged.latents, unmerged.latents, atol=1e-5)
    assert torch.allclose(merged.log_probs, unmerged.log_probs, atol=1e-5)
    for name, value in policy.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert torch.equal(rollout(policy, cond, group=GROUP).latents, unmerged.latents)
