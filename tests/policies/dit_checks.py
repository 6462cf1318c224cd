"""Checks every diffusers DiT backend must pass (used by the FLUX.2 and Qwen-Image-Edit tests)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from cgrpo.grpo import ppo_clip_loss, sde_step
from cgrpo.policies import LoraSettings


def pil_references(n: int, size: int, seed: int = 0) -> tuple[list[Image.Image], torch.Tensor]:
    """``n`` random RGB images as PIL (for the pipelines) and as ``[n, 3, size, size]`` in [0, 1]."""
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    tensor = torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in arrays])
    return [Image.fromarray(a) for a in arrays], tensor


def euler(policy, cond, noise, sigmas) -> list[torch.Tensor]:
    """Deterministic sampling (noise level 0) through cgrpo's SDE step; every latent."""
    xs = [noise]
    for i in range(sigmas.shape[0] - 1):
        v = policy(xs[-1], sigmas[i].expand(noise.shape[0]), cond)
        xs.append(sde_step(v, xs[-1], sigmas, i, 0.0).prev_sample)
    return xs


def check_first_update(policy, cond, noise, sigmas, eta: float = 0.7, unused=()) -> None:
    """A rollout with SDE steps, then the update's recomputation: ratio 1 at the first update,
    finite non-zero gradients in the LoRA only, and the adapter can be switched off.
    ``unused``: LoRA parameters (name prefixes) whose layer cannot reach the image output."""
    steps = sigmas.shape[0] - 1
    gen = torch.Generator().manual_seed(3)
    states, old = [], []
    with torch.no_grad():
        x = noise
        for i in range(steps):
            v = policy(x, sigmas[i].expand(x.shape[0]), cond)
            level = eta if i < steps - 1 else 0.0
            step = sde_step(v, x, sigmas, i, level, generator=gen if level else None)
            states.append((x, step.prev_sample))
            old.append(step.log_prob)
            x = step.prev_sample
    policy.train()
    advantages = torch.linspace(1.0, -1.0, noise.shape[0])
    total = 0.0
    for i in range(steps - 1):  # the final step is deterministic and never trained
        x, prev = states[i]
        v = policy(x, sigmas[i].expand(x.shape[0]), cond)
        new = sde_step(v, x, sigmas, i, eta, prev_sample=prev).log_prob
        assert torch.allclose(new, old[i], atol=1e-5)
        loss, stats = ppo_clip_loss(new, old[i], advantages)
        assert abs(stats.ratio_mean - 1.0) < 1e-5
        total = total + loss
    total.backward()
    lora = dict(policy.named_trainable_parameters())
    dead = {n for n, p in lora.items() if p.grad is None}
    assert lora and dead == {n for n in lora if n.startswith(tuple(unused))}
    lora = {n: p for n, p in lora.items() if n not in dead}
    assert all(torch.isfinite(p.grad).all() for p in lora.values())
    assert any(p.grad.abs().sum() > 0 for p in lora.values())
    frozen = [p for n, p in policy.named_parameters() if "lora_" not in n]
    assert frozen and all(p.grad is None for p in frozen)
    with torch.no_grad():
        with policy.adapter_disabled():
            base = policy(states[0][0], sigmas[0].expand(noise.shape[0]), cond)
        adapted = policy(states[0][0], sigmas[0].expand(noise.shape[0]), cond)
    assert not torch.allclose(base, adapted)  # the adapter is live and can be switched off


def random_lora(policy, targets=None, rank: int = 4) -> None:
    """A LoRA with random A and B (so it changes the output) on ``policy``."""
    torch.manual_seed(7)
    policy.add_lora(LoraSettings(rank=rank, alpha=2.0 * rank, targets=targets, init_weights=False))


def adapted_modules(policy) -> set[str]:
    from peft.tuners.lora import LoraLayer

    return {n for n, m in policy.denoiser.named_modules() if isinstance(m, LoraLayer)}


# ----------------------------------------------------------------------------- speed levers
def rollout(policy, cond, steps: int = 4, eta: float = 0.7, group: int = 3):
    """A sampled group: SDE steps but the last (never trained), fixed seeds."""
    from cgrpo.grpo import sigma_schedule
    from cgrpo.sampling import sample_trajectory

    noise = torch.randn(group, *policy.latent_shape(), generator=torch.Generator().manual_seed(3))
    policy.eval()
    return sample_trajectory(
        policy,
        cond,
        noise,
        sigma_schedule(steps, 3.0),
        noise_level=eta,
        sde_steps=torch.arange(steps) < steps - 1,
        generator=torch.Generator().manual_seed(4),
    )


def recompute(policy, cond, traj, micro_batch: int, eta: float = 0.7):
    """The update's pass as Trainer.update runs it: every (sample, trained step) pair,
    sample-major, ``micro_batch`` pairs per forward/backward. Returns the recomputed log-probs
    ``[B, N - 1]`` and the LoRA gradients of ``sum(advantage * log_prob)``."""
    group, steps = traj.latents.shape[0], traj.latents.shape[1] - 1
    advantages = torch.linspace(1.0, -0.5, group)
    pairs = [(b, i) for b in range(group) for i in range(steps - 1)]
    log_probs = torch.zeros(group, steps - 1)
    policy.train()
    policy.zero_grad(set_to_none=True)
    for start in range(0, len(pairs), micro_batch):
        rows = torch.tensor([b for b, _ in pairs[start : start + micro_batch]])
        idx = torch.tensor([i for _, i in pairs[start : start + micro_batch]])
        x = traj.latents[rows, idx]
        v = policy(x, traj.sigmas[idx], cond.select(rows))
        res = sde_step(v, x, traj.sigmas, idx, eta, prev_sample=traj.latents[rows, idx + 1])
        (res.log_prob * advantages[rows]).sum().backward()
        log_probs[rows, idx] = res.log_prob.detach()
    # a layer that cannot reach the output (Qwen's last text-stream projection) has no gradient
    # on the plain path and a zero one under compile: compare both as zero
    grads = {
        n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
        for n, p in policy.named_trainable_parameters()
    }
    return log_probs, grads


def assert_same_grads(grads: dict, expected: dict) -> None:
    assert grads.keys() == expected.keys() and grads
    for name, g in grads.items():
        assert torch.allclose(g, expected[name], rtol=1e-4, atol=1e-6), name
