"""Pieces of the FLUX step benchmark (``flux_step.py``): model, FLOPs, timing, the two loops.

A FLUX.1-dev-size transformer with random weights (built on the meta device, materialised
with ``to_empty`` and initialised in place), random text and reference embeddings; the
batched sampler and update of this library next to the per-sample structure of the public
reference code; timing that synchronises the device and records peak memory.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

FULL_MODEL = dict(
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    in_channels=64,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
TINY_MODEL = dict(
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    in_channels=16,
    guidance_embeds=True,
    axes_dims_rope=(4, 4, 8),
)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


# ----------------------------------------------------------------------------- model
def random_transformer(config: dict, dtype: torch.dtype, device: torch.device, seed: int):
    """A FluxTransformer2DModel with random weights, never materialised in fp32 on the host."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    with init_empty_weights():
        model = FluxTransformer2DModel(patch_size=1, **config)
    return init_random_(model, dtype, device, seed)


def init_random_(model: torch.nn.Module, dtype: torch.dtype, device: torch.device, seed: int):
    """Materialise a ``model`` built under ``init_empty_weights()`` (parameters on the meta
    device, buffers real) on ``device``: weights N(0, 0.02) in ``dtype``, biases 0, 1-d
    scales 1 (norms); buffers (rotary tables) keep the values they were built with."""
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model = torch.nn.Module.to(model, dtype).to_empty(device=device)  # no diffusers cast warning
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    return model.eval()


def build_policy(
    model: dict, options: dict, rank: int, targets: str, device: torch.device, seed: int
):
    """A FluxPolicy around a random transformer with a fresh rank-``rank`` LoRA on the
    ``targets`` preset (alpha = rank, Gaussian A, B = 0: the presets' adapter)."""
    from cgrpo.policies import LoraSettings
    from cgrpo.policies.flux import FluxPolicy

    transformer = random_transformer(model, DTYPES[options["dtype"]], device, seed)
    policy = FluxPolicy.from_components(transformer=transformer, device=device, options=options)
    torch.manual_seed(seed)
    settings = LoraSettings(rank=rank, alpha=float(rank), targets=targets, init_weights="gaussian")
    policy.add_lora(settings)
    return policy


def random_condition(policy, text_tokens: int, ref_tokens: int, group: int, seed: int):
    """Random text / pooled / reference embeddings of the real shapes, repeated for the group."""
    cfg = policy.denoiser.config
    device = next(policy.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    text = torch.randn(1, text_tokens, cfg.joint_attention_dim, generator=gen, device=device)
    pooled = torch.randn(1, cfg.pooled_projection_dim, generator=gen, device=device)
    refs = torch.randn(1, ref_tokens, cfg.in_channels, generator=gen, device=device)
    return policy.condition_from_embeddings(text, pooled, refs, 1).repeat_interleave(group)


def perturb_lora_(policy, relative: float, seed: int) -> None:
    """Give every LoRA a random ``B`` scaled so that ``std(scale * B @ A) = relative *
    std(W)`` per layer: a trained-looking adapter (a fresh one is zero, which merging
    reproduces exactly, so it would show no merge rounding at all)."""
    from peft.tuners.lora import LoraLayer

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in policy.denoiser.modules():
            if not isinstance(layer, LoraLayer):
                continue
            weight = layer.get_base_layer().weight
            for name in layer.active_adapters:
                b = layer.lora_B[name].weight
                b.copy_(torch.randn(b.shape, generator=gen).to(b.device, b.dtype))
                delta = layer.get_delta_weight(name).float()
                b.mul_(relative * weight.float().std() / delta.std())


def set_checkpointing(policy, fraction: float) -> None:
    """Gradient checkpointing of ``fraction`` of the blocks (0 = off), as the policy option does."""
    from cgrpo.policies.flux_blocks import enable_checkpointing

    transformer = policy.denoiser
    transformer.disable_gradient_checkpointing()
    if fraction > 0:
        enable_checkpointing(transformer, fraction)


def gib(n_bytes: float) -> float:
    return n_bytes / 2**30


def parameter_gib(module: torch.nn.Module, trainable: bool | None = None) -> float:
    return gib(
        sum(
            p.numel() * p.element_size()
            for p in module.parameters()
            if trainable is None or p.requires_grad == trainable
        )
    )


# ----------------------------------------------------------------------------- FLOPs
def _tokens_of(name: str, s_img: int, s_txt: int) -> int:
    """How many tokens the linear layer ``name`` of a FLUX transformer processes per sample."""
    if ".norm" in name and name.endswith(".linear"):
        return 1  # AdaLayerNorm modulation: computed from the timestep embedding per sample
    if name.startswith("single_transformer_blocks."):
        return s_img + s_txt
    if name.startswith("transformer_blocks."):
        text_side = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff_context")
        return s_txt if any(t in name for t in text_side) else s_img
    if name.startswith(("x_embedder", "proj_out")):
        return s_img
    if name.startswith("context_embedder"):
        return s_txt
    return 1  # time/guidance/pooled embedders and the output AdaNorm: once per sample


def step_flops(transformer, s_img: int, s_txt: int) -> dict[str, float]:
    """Model FLOPs of one image through the transformer at one timestep.

    ``forward`` = base + LoRA linears + attention matmuls; ``train`` = forward +
    activation-gradient backward (2x linear, 3x attention) + LoRA weight gradients.
    Recomputation by gradient checkpointing is not counted.
    """
    base = lora = 0.0
    for name, m in transformer.named_modules():
        if not isinstance(m, torch.nn.Linear):
            continue
        flops = 2.0 * m.in_features * m.out_features * _tokens_of(name, s_img, s_txt)
        if ".lora_A." in name or ".lora_B." in name:
            lora += flops
        else:
            base += flops
    cfg = transformer.config
    blocks = cfg.num_layers + cfg.num_single_layers
    seq = s_img + s_txt
    attention = blocks * 2.0 * 2.0 * seq * seq * cfg.num_attention_heads * cfg.attention_head_dim
    return {
        "linear": base,
        "lora": lora,
        "attention": attention,
        "forward": base + lora + attention,
        "train": 2 * base + 3 * attention + 3 * lora,
    }


# ----------------------------------------------------------------------------- timing
class Timer:
    """Wall time with the device synchronised, and the peak memory allocated since reset."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return gib(torch.cuda.max_memory_allocated(self.device))

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def run(self, fn):
        """``(fn(), seconds, peak GiB)``."""
        self.reset_peak()
        t0 = self.now()
        out = fn()
        return out, self.now() - t0, self.peak_gib()

    def free(self) -> None:
        """Return cached blocks after an out-of-memory error (the next config starts clean)."""
        import gc

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def autocast(device: torch.device, mode: str):
    """The update's autocast (``train.mixed_precision``): bf16 or none."""
    if mode == "no":
        return nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[mode])


# ----------------------------------------------------------------------------- the two loops
def step_noises(shape, num_steps: int, seed: int) -> list[torch.Tensor]:
    """The SDE draws :func:`cgrpo.sampling.sample_trajectory` makes from a CPU generator."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(num_steps)]


def sample_per_sample(policy, cond, noise, sigmas, eta: float, xi: list[torch.Tensor]):
    """The reference structure: one sample at a time through all steps (batch 1).

    ``xi[i]`` is step ``i``'s draw for the whole group; sample ``g`` uses row ``g``.
    Returns latents ``[n, N + 1, ...]`` and log-probs ``[n, N]``.
    """
    from cgrpo.grpo import sde_step

    latents, log_probs = [], []
    n = sigmas.shape[0] - 1
    for g in range(noise.shape[0]):
        x = noise[g : g + 1]
        c = cond.select([g])
        row, lps = [x], []
        for i in range(n):
            v = policy(x, sigmas[i].expand(1), c)
            moments = sde_step(v, x, sigmas, i, eta, prev_sample=x)
            prev = (moments.mean + moments.std * xi[i][g : g + 1].to(x.device)).to(x.dtype)
            res = sde_step(v, x, sigmas, i, eta, prev_sample=prev)
            lps.append(res.log_prob.float().cpu())
            x = res.prev_sample
            row.append(x)
        latents.append(torch.stack(row, dim=1))
        log_probs.append(torch.cat(lps))
    return torch.cat(latents), torch.stack(log_probs)


@dataclass
class Rollout:
    """What the update needs: the group's condition, latents, old log-probs, the trained
    step of each (sample, j) pair and the advantages."""

    cond: object
    latents: torch.Tensor  # [G, N + 1, L, C]
    log_probs: torch.Tensor  # [G, N]
    sigmas: torch.Tensor
    timesteps: torch.Tensor  # [G, T]
    advantages: torch.Tensor  # [G]
    eta: float

    def pairs(self) -> list[tuple[int, int]]:
        """Every (sample, trained step) pair, sample-major, as Trainer.update orders them."""
        g, t = self.timesteps.shape
        return [(b, j) for b in range(g) for j in range(t)]


def pair_loss(policy, r: Rollout, chunk: list[tuple[int, int]]):
    """The PPO loss of a micro-batch of pairs (mean over the pairs) and its ratio stats."""
    from cgrpo.grpo import ppo_clip_loss, sde_step

    device = r.latents.device
    rows = torch.tensor([p[0] for p in chunk])
    step = r.timesteps[rows, torch.tensor([p[1] for p in chunk])]
    x = r.latents[rows, step]
    v = policy(x, r.sigmas[step], r.cond.select(rows))
    res = sde_step(v, x, r.sigmas, step.to(device), r.eta, prev_sample=r.latents[rows, step + 1])
    return ppo_clip_loss(
        res.log_prob, r.log_probs[rows, step].to(device), r.advantages[rows].to(device)
    )


@dataclass
class Backward:
    """What :func:`backward_pairs` did: pairs done, summed weighted loss, and the largest
    ``|ratio - 1|`` seen (0 when the old log-probs came from the same weights)."""

    pairs: int = 0
    loss: float = 0.0
    ratio_dev: float = 0.0


def backward_pairs(policy, r: Rollout, pairs, micro_batch: int, amp, n_total: int, stop=None):
    """Forward + backward of ``pairs`` in micro-batches, each loss weighted by its share of
    ``n_total`` pairs (gradient accumulation as in Trainer.update). ``stop()`` is asked after
    each micro-batch."""
    out = Backward()
    for start in range(0, len(pairs), micro_batch):
        chunk = pairs[start : start + micro_batch]
        with amp:
            loss, stats = pair_loss(policy, r, chunk)
        (loss * len(chunk) / n_total).backward()
        out.loss += float(loss.detach()) * len(chunk) / n_total
        out.pairs += len(chunk)
        out.ratio_dev = max(out.ratio_dev, stats.ratio_max - 1, 1 - stats.ratio_min)
        if stop is not None and stop():
            break
    return out


def adamw(policy, lr: float = 2e-5) -> torch.optim.AdamW:
    """The trainer's optimizer on the LoRA, its state allocated now (as after a first step)
    so that peak memory counts it; the weights are not changed."""
    params = policy.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    for p in params:
        p.grad = torch.zeros_like(p)
    lr_was = optimizer.param_groups[0]["lr"]
    optimizer.param_groups[0]["lr"] = 0.0
    optimizer.step()
    optimizer.param_groups[0]["lr"] = lr_was
    optimizer.zero_grad(set_to_none=True)
    return optimizer


def optimizer_step(policy, optimizer) -> float:
    """Clip to norm 1 and step, as the trainer does; returns the gradient norm."""
    norm = float(torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), 1.0))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def train_pairs(policy, r: Rollout, micro_batch: int, amp, optimizer) -> tuple[Backward, float]:
    """The whole update: every pair, then one AdamW step. Returns the pass and the grad norm."""
    pairs = r.pairs()
    policy.train()
    done = backward_pairs(policy, r, pairs, micro_batch, amp, len(pairs))
    norm = optimizer_step(policy, optimizer)
    policy.eval()
    return done, norm
