"""One Customized-GRPO step on a FLUX.1-dev-size transformer: batched vs. per-sample.

The step at the paper's settings: a group of 12 samples from one (prompt, reference) pair,
25 SDE steps (dance, eta 0.4), a 512x512 target (1024 tokens) plus one 512x512 reference
(1024 tokens) and 512 text tokens; then the PPO update on a random 60% of the first 24
steps of every sample, LoRA only, gradient checkpointing on. Weights are random (created
on the meta device, materialised with ``to_empty`` and initialised in place), text and
reference embeddings are random tensors: nothing is downloaded, no encoder is needed.

Two implementations of the same step run in the same process and are timed apart:

* batched (this library): the whole group goes through the sampler together
  (:func:`cgrpo.sampling.sample_trajectory`, ``--chunk`` images per forward) and the update
  runs over (sample, timestep) pairs in micro-batches of ``--micro-batch``;
* per-sample (the public reference code's structure): each sample is denoised alone, then
  trained alone, one timestep per forward/backward.

Both see the same initial noise, SDE noise, trained timesteps and advantages, so their
final latents, log-probs and gradient norms must agree; the differences are reported.

Usage::

    python benchmarks/flux_step.py                       # full size, needs a large GPU
    python benchmarks/flux_step.py --tiny --json out.json  # tiny config, seconds on a CPU

MFU = model FLOPs / time / ``--peak-tflops`` (dense bf16; 989 for an H100 SXM). Model
FLOPs count every linear layer and attention matmul once in the forward; a training pair
counts forward + activation-gradient backward (2x linear, 3x attention) plus the LoRA
weight gradients. Recomputation by gradient checkpointing is not counted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

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
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    in_channels=16,
    guidance_embeds=True,
    axes_dims_rope=(4, 4, 8),
)
# Per mode: the paper's step at full size; a few seconds on a CPU for --tiny.
PRESETS = {
    "full": dict(
        group=12,
        steps=25,
        train_fraction=0.6,
        size=512,
        ref_size=512,
        text_tokens=512,
        rank=64,
        chunk=12,
        micro_batch=2,
        dtype="bf16",
    ),
    "tiny": dict(
        group=4,
        steps=6,
        train_fraction=0.6,
        size=64,
        ref_size=64,
        text_tokens=8,
        rank=4,
        chunk=4,
        micro_batch=2,
        dtype="fp32",
    ),
}


@dataclass
class Settings:
    tiny: bool
    group: int
    steps: int
    train_fraction: float
    size: int
    ref_size: int
    text_tokens: int
    rank: int
    chunk: int
    micro_batch: int
    dtype: str
    eta: float
    gradient_checkpointing: bool
    attention: str
    peak_tflops: float
    device: str
    seed: int
    skip_loop: bool


# ----------------------------------------------------------------------------- model
def random_transformer(config: dict, dtype: torch.dtype, device: torch.device, seed: int):
    """A FluxTransformer2DModel with random weights, never materialised in fp32 on the host."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    with init_empty_weights():
        model = FluxTransformer2DModel(patch_size=1, **config)
    # nn.Module.to: diffusers' override warns about every cast of a model
    model = torch.nn.Module.to(model, dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:  # RMSNorm / LayerNorm scales
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def build_policy(s: Settings, device: torch.device):
    from cgrpo.policies import LoraSettings
    from cgrpo.policies.flux import FluxPolicy

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[s.dtype]
    transformer = random_transformer(TINY_MODEL if s.tiny else FULL_MODEL, dtype, device, s.seed)
    policy = FluxPolicy.from_components(
        transformer=transformer,
        device=device,
        options={
            "height": s.size,
            "width": s.size,
            "reference_size": s.ref_size,
            "dtype": s.dtype,
            "gradient_checkpointing": s.gradient_checkpointing,
            "attention": s.attention,
            "guidance": 3.5,
        },
    )
    policy.add_lora(LoraSettings(rank=s.rank, alpha=float(s.rank)))
    return policy


def random_condition(policy, s: Settings, device: torch.device):
    """Random text / pooled / reference embeddings of the real shapes, repeated for the group."""
    cfg = policy.denoiser.config
    gen = torch.Generator(device=device).manual_seed(s.seed + 1)
    ref_tokens = (s.ref_size // 16) ** 2
    text = torch.randn(1, s.text_tokens, cfg.joint_attention_dim, generator=gen, device=device)
    pooled = torch.randn(1, cfg.pooled_projection_dim, generator=gen, device=device)
    refs = torch.randn(1, ref_tokens, cfg.in_channels, generator=gen, device=device)
    return policy.condition_from_embeddings(text, pooled, refs, 1).repeat_interleave(s.group)


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

    Returns ``forward`` (base + LoRA) and ``train`` (forward + backward as described in the
    module docstring), plus the parts.
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


# ----------------------------------------------------------------------------- the two steps
class Timer:
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
        return torch.cuda.max_memory_allocated(self.device) / 2**30

    def run(self, fn):
        self.sync()
        self.reset_peak()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - t0, self.peak_gib()


def step_noises(shape, num_steps: int, seed: int) -> list[torch.Tensor]:
    """The SDE draws :func:`sample_trajectory` makes from a CPU generator seeded ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(num_steps)]


def sample_per_sample(policy, cond, noise, sigmas, eta: float, xi: list[torch.Tensor]):
    """The reference structure: one sample at a time through all steps (batch 1)."""
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


def train_pairs(
    policy, cond, latents, old_log_probs, sigmas, timesteps, advantages, eta, micro_batch: int
) -> tuple[float, float]:
    """PPO update over every (sample, trained step) pair, ``micro_batch`` pairs per
    forward/backward (sample-major order, as the trainer does); one AdamW step at the end.

    Returns ``(loss, grad_norm)``.
    """
    from cgrpo.grpo import ppo_clip_loss, sde_step

    params = policy.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=2e-5, weight_decay=1e-4)
    pairs = [(b, j) for b in range(timesteps.shape[0]) for j in range(timesteps.shape[1])]
    device = latents.device
    total = 0.0
    policy.train()
    for start in range(0, len(pairs), micro_batch):
        chunk = pairs[start : start + micro_batch]
        rows = torch.tensor([p[0] for p in chunk])
        step = timesteps[rows, torch.tensor([p[1] for p in chunk])]
        x = latents[rows, step]
        v = policy(x, sigmas[step], cond.select(rows))
        res = sde_step(v, x, sigmas, step.to(device), eta, prev_sample=latents[rows, step + 1])
        loss, _ = ppo_clip_loss(
            res.log_prob, old_log_probs[rows, step].to(device), advantages[rows].to(device)
        )
        (loss * len(chunk) / len(pairs)).backward()
        total += float(loss.detach()) * len(chunk) / len(pairs)
    norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    policy.eval()
    return total, norm


def run(s: Settings) -> dict:
    from cgrpo.grpo import num_trained_timesteps, select_timesteps_random, sigma_schedule
    from cgrpo.sampling import sample_trajectory

    device = torch.device(s.device)
    torch.manual_seed(s.seed)
    timer = Timer(device)
    t0 = time.perf_counter()
    policy = build_policy(s, device)
    cond = random_condition(policy, s, device)
    timer.sync()
    build_s = time.perf_counter() - t0

    sigmas = sigma_schedule(s.steps, 3.0).to(device)
    shape = (s.group, *policy.latent_shape())
    noise = torch.randn(shape[1:], generator=torch.Generator().manual_seed(s.seed + 2))
    noise = noise.expand(shape).contiguous().to(device)  # GRPO: one noise per group
    timesteps = select_timesteps_random(
        s.steps, s.train_fraction, s.group, generator=torch.Generator().manual_seed(s.seed + 3)
    )
    advantages = torch.randn(s.group, generator=torch.Generator().manual_seed(s.seed + 4))
    n_trained = num_trained_timesteps(s.steps, s.train_fraction)
    snapshot = {n: p.detach().clone() for n, p in policy.named_trainable_parameters()}

    def restore() -> None:
        with torch.no_grad():
            for n, p in policy.named_trainable_parameters():
                p.copy_(snapshot[n])

    # Warm-up at the shapes used below (kernel selection, allocator), not timed.
    with torch.no_grad():
        policy(
            noise[: s.chunk],
            sigmas[0].expand(min(s.chunk, s.group)),
            cond.select(slice(0, s.chunk)),
        )
        policy(noise[:1], sigmas[0].expand(1), cond.select([0]))
    for b in sorted({s.micro_batch, 1}):
        rows = [i % s.group for i in range(b)]
        policy(noise[rows], sigmas[:1].expand(b), cond.select(rows)).float().mean().backward()
    policy.zero_grad(set_to_none=True)

    flops = step_flops(
        policy.denoiser, policy.latent_shape()[0] + (s.ref_size // 16) ** 2, s.text_tokens
    )
    sample_flops = flops["forward"] * s.group * s.steps
    train_flops = flops["train"] * s.group * n_trained

    results: dict = {}
    with torch.no_grad():
        traj, t_sample, m_sample = timer.run(
            lambda: sample_trajectory(
                policy,
                cond,
                noise,
                sigmas,
                noise_level=s.eta,
                kind="dance",
                generator=torch.Generator().manual_seed(s.seed + 5),
                chunk_size=s.chunk,
            )
        )
    (loss_b, norm_b), t_train, m_train = timer.run(
        lambda: train_pairs(
            policy,
            cond,
            traj.latents,
            traj.log_probs,
            sigmas,
            timesteps,
            advantages,
            s.eta,
            s.micro_batch,
        )
    )
    restore()
    results["batched"] = _phase(t_sample, t_train, m_sample, m_train, sample_flops, train_flops, s)
    results["batched"].update(loss=loss_b, grad_norm=norm_b)

    if not s.skip_loop:
        xi = step_noises(shape, s.steps, s.seed + 5)
        with torch.no_grad():
            (lat_l, lp_l), t_sample_l, m_sample_l = timer.run(
                lambda: sample_per_sample(policy, cond, noise, sigmas, s.eta, xi)
            )
        (loss_l, norm_l), t_train_l, m_train_l = timer.run(
            lambda: train_pairs(policy, cond, lat_l, lp_l, sigmas, timesteps, advantages, s.eta, 1)
        )
        restore()
        results["per_sample"] = _phase(
            t_sample_l, t_train_l, m_sample_l, m_train_l, sample_flops, train_flops, s
        )
        results["per_sample"].update(loss=loss_l, grad_norm=norm_l)
        results["speedup"] = {
            k: results["per_sample"][f"{k}_s"] / results["batched"][f"{k}_s"]
            for k in ("sampling", "training", "step")
        }
        results["agreement"] = {
            "max_abs_diff_final_latent": float((lat_l[:, -1] - traj.final).abs().max()),
            "max_abs_diff_log_prob": float((lp_l - traj.log_probs).abs().max()),
            "rel_diff_grad_norm": abs(norm_l - norm_b) / max(abs(norm_b), 1e-30),
        }
    results.update(
        settings=asdict(s),
        tokens={
            "target": policy.latent_shape()[0],
            "reference": (s.ref_size // 16) ** 2,
            "text": s.text_tokens,
            "trained_steps_per_sample": n_trained,
        },
        flops_per_image_step={k: v / 1e12 for k, v in flops.items()},  # TFLOP
        build_s=build_s,
        environment=_environment(device),
    )
    return results


def _phase(t_sample, t_train, m_sample, m_train, sample_flops, train_flops, s) -> dict:
    on_gpu = s.device.startswith("cuda")

    def mfu(flops, seconds):
        return flops / seconds / (s.peak_tflops * 1e12) if on_gpu else None

    step = t_sample + t_train
    return {
        "sampling_s": t_sample,
        "training_s": t_train,
        "step_s": step,
        "sampling_tflops": sample_flops / t_sample / 1e12,
        "training_tflops": train_flops / t_train / 1e12,
        "step_tflops": (sample_flops + train_flops) / step / 1e12,
        "sampling_mfu": mfu(sample_flops, t_sample),
        "training_mfu": mfu(train_flops, t_train),
        "step_mfu": mfu(sample_flops + train_flops, step),
        "sampling_peak_gib": m_sample,
        "training_peak_gib": m_train,
    }


def _environment(device: torch.device) -> dict:
    import diffusers

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    return {
        "device": name,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def markdown(results: dict) -> str:
    def f(v, fmt="{:.2f}"):
        return "-" if v is None else fmt.format(v)

    s = results["settings"]
    tok = results["tokens"]
    head = (
        f"FLUX step ({'tiny' if s['tiny'] else 'FLUX.1-dev size'}, {s['dtype']}, "
        f"{results['environment']['device']}): group {s['group']}, {s['steps']} steps, "
        f"{tok['trained_steps_per_sample']} trained/sample, tokens {tok['target']} target + "
        f"{tok['reference']} ref + {tok['text']} text, LoRA r{s['rank']}, "
        f"chunk {s['chunk']}, micro-batch {s['micro_batch']}, "
        f"forward {results['flops_per_image_step']['forward']:.3g} TFLOP/image-step"
    )
    rows = [
        "| phase | batched s | per-sample s | speed-up | batched TFLOP/s | batched MFU "
        "| batched peak GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    b, p = results["batched"], results.get("per_sample", {})
    sp = results.get("speedup", {})
    for phase in ("sampling", "training", "step"):
        tflops = b.get(f"{phase}_tflops")
        peak = b.get(f"{phase}_peak_gib")
        rows.append(
            f"| {phase} | {f(b[f'{phase}_s'])} | {f(p.get(f'{phase}_s'))} | "
            f"{f(sp.get(phase), '{:.2f}x')} | {f(tflops, '{:.3g}')} | "
            f"{f(b.get(f'{phase}_mfu'), '{:.1%}')} | {f(peak, '{:.1f}')} |"
        )
    out = [head, "", *rows]
    if "agreement" in results:
        a = results["agreement"]
        out += [
            "",
            f"batched vs per-sample: max |d latent| {a['max_abs_diff_final_latent']:.2e}, "
            f"max |d log-prob| {a['max_abs_diff_log_prob']:.2e}, "
            f"grad-norm rel. diff {a['rel_diff_grad_norm']:.2e}",
        ]
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny transformer and sizes (CPU, seconds)")
    p.add_argument("--group", type=int, help="samples per group (full: 12)")
    p.add_argument("--steps", type=int, help="sampler steps N (full: 25)")
    p.add_argument("--train-fraction", type=float, help="share of the first N-1 steps trained")
    p.add_argument("--size", type=int, help="target height = width in pixels (full: 512)")
    p.add_argument("--ref-size", type=int, help="reference side in pixels (full: 512)")
    p.add_argument("--text-tokens", type=int, help="T5 tokens (full: 512)")
    p.add_argument("--rank", type=int, help="LoRA rank (full: 64)")
    p.add_argument("--chunk", type=int, help="images per sampler forward (full: 12)")
    p.add_argument("--micro-batch", type=int, help="(sample, step) pairs per backward (full: 2)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="base weights (full: bf16)")
    p.add_argument("--eta", type=float, default=0.4, help="dance SDE noise level")
    p.add_argument("--no-checkpointing", action="store_true", help="disable gradient checkpointing")
    p.add_argument("--attention", default="native", help="diffusers attention backend")
    p.add_argument(
        "--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H100 SXM: 989)"
    )
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-loop", action="store_true", help="time only the batched step")
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args(argv)
    preset = PRESETS["tiny" if a.tiny else "full"]
    values = {k: getattr(a, k) if getattr(a, k) is not None else v for k, v in preset.items()}
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if values["size"] % 16 or values["ref_size"] % 16:
        p.error("--size and --ref-size must be multiples of 16")
    settings = Settings(
        tiny=a.tiny,
        eta=a.eta,
        gradient_checkpointing=not a.no_checkpointing,
        attention=a.attention,
        peak_tflops=a.peak_tflops,
        device=device,
        seed=a.seed,
        skip_loop=a.skip_loop,
        **values,
    )
    return settings, a.json


def main(argv: list[str] | None = None) -> dict:
    settings, out = parse_args(argv)
    results = run(settings)
    print(markdown(results))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
