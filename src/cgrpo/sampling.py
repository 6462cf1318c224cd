"""Sampling a policy: the rollout loop shared by training, evaluation and ``cgrpo sample``.

The loop steps the sampler from noise (``sigma = 1``) to data (``sigma = 0``) with
:func:`cgrpo.grpo.sde_step`. Training rollouts keep every intermediate latent and the
log-probability of each stochastic transition; evaluation uses the deterministic
(noise level 0) Euler ODE.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from cgrpo.grpo import sde_step, sigma_schedule
from cgrpo.policies.base import Condition, Policy


def make_sigmas(
    policy: Policy, num_steps: int, shift: float = 3.0, dynamic_shift: bool = False
) -> torch.Tensor:
    """The ``[N + 1]`` sigma schedule (1 -> 0) for ``policy``: static ``shift`` or the model's
    own dynamic one (:meth:`Policy.dynamic_sigmas`; FLUX.1's by default)."""
    if dynamic_shift:
        return policy.dynamic_sigmas(num_steps)
    return sigma_schedule(num_steps, shift)


def initial_noise(
    policy: Policy,
    n: int,
    generator: torch.Generator,
    group_size: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``[n, *latent_shape]`` standard normal noise drawn on the CPU (device-independent).

    With ``group_size > 1`` each run of ``group_size`` consecutive rows shares one draw
    (GRPO's "same initial noise per group").
    """
    if n % group_size:
        raise ValueError(f"{n} samples do not split into groups of {group_size}")
    base = torch.randn((n // group_size, *policy.latent_shape()), generator=generator)
    noise = base.repeat_interleave(group_size, dim=0)
    return noise.to(device=device or "cpu", dtype=dtype)


@contextlib.contextmanager
def merged_lora(policy: Policy) -> Iterator[None]:
    """Run ``policy`` with every LoRA folded into its base weight and the adapter path off.

    Each adapted weight ``W`` is replaced, out of place, by ``W + scale * B @ A`` computed in
    float32 and rounded once to ``W``'s dtype, so a forward costs what the base model costs
    (no extra low-rank matmuls, no float32 LoRA path next to a bf16 base). At exit the
    original tensors are put back untouched: unlike merge-then-unmerge in place, a bf16 base
    never drifts. Costs one extra copy of the adapted weights while inside. For sampling
    only: the merged weights take no gradient to the LoRA parameters.
    """
    from peft.tuners.lora import LoraLayer

    swapped: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for layer in policy.denoiser.modules():
                if not isinstance(layer, LoraLayer):
                    continue
                adapters = [a for a in layer.active_adapters if a in layer.lora_A]
                if not adapters:
                    continue
                weight = layer.get_base_layer().weight
                merged = weight.to(torch.float32, copy=True)
                for name in adapters:
                    merged += layer.get_delta_weight(name).float()
                swapped.append((weight, weight.data))
                weight.data = merged.to(weight.dtype)
        with policy.adapter_disabled():
            yield
    finally:
        for weight, original in swapped:
            weight.data = original


@dataclass
class Trajectory:
    """A batch of sampler runs.

    Attributes:
        latents: ``[B, N + 1, *latent_shape]``; ``latents[:, 0]`` is the noise, ``[:, N]`` the
            final sample.
        log_probs: ``[B, N]`` float32 log-density of each transition (0 at ODE steps).
        sigmas: ``[N + 1]`` schedule used.
        sde_steps: ``[N]`` bool, True where the step was stochastic.
    """

    latents: torch.Tensor
    log_probs: torch.Tensor
    sigmas: torch.Tensor
    sde_steps: torch.Tensor

    @property
    def final(self) -> torch.Tensor:
        return self.latents[:, -1]


def _standard_normal(
    shape: torch.Size, generator: torch.Generator | Sequence[torch.Generator] | None
) -> torch.Tensor:
    if isinstance(generator, list | tuple):
        return torch.stack([torch.randn(shape[1:], generator=g) for g in generator])
    return torch.randn(shape, generator=generator)


@torch.no_grad()
def sample_trajectory(
    policy: Policy,
    cond: Condition,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise_level: float = 0.0,
    kind: str = "dance",
    sde_steps: torch.Tensor | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    chunk_size: int = 0,
) -> Trajectory:
    """Run the sampler on a batch, ``chunk_size`` images per forward (0 = all at once).

    ``sde_steps`` (``[N]`` bool) marks the stochastic steps (default: all when
    ``noise_level > 0``); the others are Euler ODE steps (MixGRPO outside its window).
    Chunks are visited in order at every step, so the random draws -- and hence the
    result -- do not depend on ``chunk_size``. ``generator`` is one generator for the batch
    or one per row; with one per row, a row's noise does not depend on the batch it is in
    (the trainer keys each sample's generator by its global position, so a run does not
    depend on how many processes share the groups).
    """
    if isinstance(generator, list | tuple) and len(generator) != noise.shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {noise.shape[0]}")
    num_steps = sigmas.shape[0] - 1
    if sde_steps is None:
        sde_steps = torch.full((num_steps,), noise_level > 0)
    b = noise.shape[0]
    chunk = chunk_size if chunk_size and chunk_size > 0 else b
    x = noise
    latents = [x]
    log_probs = torch.zeros(b, num_steps)
    sig = sigmas.to(x.device)
    for i in range(num_steps):
        level = noise_level if bool(sde_steps[i]) else 0.0
        step_noise = None
        if level > 0:
            # Drawn for the whole batch at once: results do not depend on the chunking.
            step_noise = _standard_normal(x.shape, generator).to(x.device, x.dtype)
        outs = []
        for start in range(0, b, chunk):
            sl = slice(start, min(start + chunk, b))
            v = policy(x[sl], sig[i].expand(sl.stop - sl.start), cond.select(sl))
            if step_noise is None:
                res = sde_step(v, x[sl], sig, i, 0.0, kind)
            else:
                # mean/std do not depend on prev_sample; draw x' ourselves (chunk-invariant,
                # no global RNG), then evaluate its log-density.
                moments = sde_step(v, x[sl], sig, i, level, kind, prev_sample=x[sl])
                std = moments.std.reshape(-1, *([1] * (x.ndim - 1)))
                prev = (moments.mean + std * step_noise[sl].float()).to(x.dtype)
                res = sde_step(v, x[sl], sig, i, level, kind, prev_sample=prev)
            log_probs[sl, i] = res.log_prob.float().cpu()
            outs.append(res.prev_sample)
        x = torch.cat(outs)
        latents.append(x)
    return Trajectory(
        torch.stack(latents, dim=1), log_probs, sigmas.cpu(), sde_steps.to(torch.bool).cpu()
    )


@torch.no_grad()
def generate(
    policy: Policy,
    prompts: Sequence[str],
    references: Sequence[torch.Tensor],
    *,
    num_steps: int = 20,
    shift: float = 3.0,
    dynamic_shift: bool = False,
    seed: int = 0,
    batch_size: int = 16,
) -> torch.Tensor:
    """Deterministic (ODE) generation: ``[B, 3, H, W]`` float images in [0, 1].

    Item ``i`` starts from noise drawn from ``seed + i``, so an image does not depend on the
    batch it was generated in; the same seed gives the same images.
    """
    if len(prompts) != len(references):
        raise ValueError(f"{len(prompts)} prompts for {len(references)} reference sets")
    sigmas = make_sigmas(policy, num_steps, shift, dynamic_shift)
    device = next(policy.parameters()).device
    images = []
    for start in range(0, len(prompts), batch_size):
        idx = range(start, min(start + batch_size, len(prompts)))
        cond = policy.encode([prompts[i] for i in idx], [references[i] for i in idx]).to(device)
        noise = torch.cat(
            [
                initial_noise(policy, 1, torch.Generator().manual_seed(seed + i), device=device)
                for i in idx
            ]
        )
        traj = sample_trajectory(policy, cond, noise, sigmas)
        images.append(policy.decode(traj.final).float().cpu())
    return torch.cat(images)
