"""Sampler and update cost of the FLUX.2 and Qwen-Image-Edit backends at full size.

The GRPO step at the presets' settings: a group of 12 from one (prompt, reference) pair at
512x512 (1024 target + 1024 reference tokens, 512 text tokens), LoRA rank 64 on the
``paper`` layers, bf16 weights with random values (meta-device init), random embeddings:
nothing is downloaded, no encoder runs. Guidance as each model uses it: FLUX.2-klein and
Qwen-Image-Edit run true CFG (two passes per forward, batched), FLUX.2-dev embeds it.

Per model, written to ``--out`` (JSON + markdown) as it goes:

* **sampling**: one sampler forward of the whole group (``--chunk`` images per call), timed
  over ``--timed-steps`` steps; the projected 25-step rollout; peak memory.
* **update**: forward + backward of (sample, step) pairs with the SDE log-prob loss, per
  micro-batch size x checkpointed share of blocks (1, 0.5, 0); seconds per pair, the
  projected update (12 x 14 pairs), peak memory with the AdamW state. Out-of-memory
  configs are recorded as such.

The transformer config is the library's default for the class (FLUX.2-dev: 32.2 B,
Qwen-Image: 20.4 B) or ``--transformer-config`` (a model's ``transformer/config.json``,
e.g. a FLUX.2-klein one; no weights needed). Usage::

    python benchmarks/dit_step.py --model flux2-dev --out runs/bench-dit         # one GPU
    python benchmarks/dit_step.py --model qwen-image-edit --tiny --out /tmp/dit  # a CPU, seconds
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flux_parts import DTYPES, Timer, adamw, autocast, gib, init_random_  # noqa: E402

MODELS = ("flux2-dev", "flux2-klein", "qwen-image-edit")
TINY = {
    "flux2": dict(
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=48,
        timestep_guidance_channels=32,
        in_channels=16,
        axes_dims_rope=(4, 4, 4, 4),
    ),
    "qwen-image-edit": dict(
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=16,
        in_channels=16,
        out_channels=4,
        axes_dims_rope=(8, 4, 4),
    ),
}


def build(model: str, args, device: torch.device):
    """``(policy, condition of the group)`` with a fresh LoRA (Gaussian A, random small B)."""
    from accelerate import init_empty_weights

    from cgrpo.policies import LoraSettings

    family = "flux2" if model.startswith("flux2") else "qwen-image-edit"
    config = TINY[family] if args.tiny else {}
    if args.transformer_config:
        config = json.loads(Path(args.transformer_config).read_text())
        config = {k: v for k, v in config.items() if not k.startswith("_")}
    size = 64 if args.tiny else 512
    options = {"height": size, "width": size, "dtype": args.dtype, "guidance": 4.0}
    if family == "flux2":
        from diffusers import Flux2Transformer2DModel as cls

        from cgrpo.policies.flux2 import Flux2Policy as policy_cls

        variant = model.removeprefix("flux2-")
        options["variant"] = variant
        config = {**config, "guidance_embeds": variant == "dev"}
    else:
        from diffusers import QwenImageTransformer2DModel as cls

        from cgrpo.policies.qwen_edit import QwenEditPolicy as policy_cls
    with init_empty_weights():
        transformer = cls(**config)
    transformer = init_random_(transformer, DTYPES[args.dtype], device, args.seed)
    policy = policy_cls.from_components(transformer=transformer, options=options, device=device)
    torch.manual_seed(args.seed)
    rank = 4 if args.tiny else args.rank
    policy.add_lora(
        LoraSettings(rank=rank, alpha=float(rank), targets="paper", init_weights="gaussian")
    )
    with torch.no_grad():
        for name, p in policy.named_trainable_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 1e-4)
    g = torch.Generator(device=device).manual_seed(args.seed)
    dim = transformer.config.joint_attention_dim
    tokens, channels = policy.latent_shape()
    text = 16 if args.tiny else args.text_tokens
    refs = torch.randn(1, tokens, channels, generator=g, device=device)
    pos, neg = (torch.randn(1, text, dim, generator=g, device=device) for _ in "pn")
    if family == "flux2":
        cond = policy.condition_from_embeddings(pos, refs, 1, neg)
    else:
        cond = policy.condition_from_embeddings([pos[0]], refs, 1, [neg[0]])
    return policy, cond.repeat_interleave(args.group)


def sampling(policy, cond, args, timer: Timer) -> dict:
    from cgrpo.grpo import sde_step, sigma_schedule

    sigmas = sigma_schedule(25, 3.0).to(timer.device)
    x = torch.randn(args.group, *policy.latent_shape(), device=timer.device)
    policy.eval()

    def steps():
        y = x
        for i in range(args.timed_steps):
            with torch.no_grad():
                parts = []
                for s in range(0, args.group, args.chunk):
                    sl = slice(s, s + args.chunk)
                    v = policy(y[sl], sigmas[i].expand(y[sl].shape[0]), cond.select(sl))
                    parts.append(sde_step(v, y[sl], sigmas, i, 0.4, prev_sample=y[sl]).mean)
            y = torch.cat(parts)

    steps()  # warm-up
    _, seconds, peak = timer.run(steps)
    per_step = seconds / args.timed_steps
    return {"s_per_step": per_step, "rollout_s": per_step * 25, "peak_gib": peak}


def update(policy, cond, args, timer: Timer, micro_batch: int, fraction: float) -> dict:
    from cgrpo.grpo import sde_step, sigma_schedule
    from cgrpo.policies.flux_blocks import enable_checkpointing

    policy.denoiser.disable_gradient_checkpointing()
    if fraction > 0:
        enable_checkpointing(policy.denoiser, fraction)
    optimizer = adamw(policy)
    sigmas = sigma_schedule(25, 3.0).to(timer.device)
    x = torch.randn(micro_batch, *policy.latent_shape(), device=timer.device)
    step = torch.arange(micro_batch, device=timer.device) % 24
    sub = cond.select(list(range(micro_batch)))
    amp = autocast(timer.device, args.mixed_precision)
    policy.train()

    def passes():
        for _ in range(args.timed_passes):
            with amp:
                v = policy(x, sigmas[step], sub)
                lp = sde_step(v, x, sigmas, step, 0.4, prev_sample=x * 0.99).log_prob
            lp.float().sum().backward()
        optimizer.zero_grad(set_to_none=True)

    try:
        passes()  # warm-up
        _, seconds, peak = timer.run(passes)
    except torch.OutOfMemoryError:
        timer.free()
        return {"micro_batch": micro_batch, "checkpointed": fraction, "status": "out of memory"}
    per_pair = seconds / (args.timed_passes * micro_batch)
    pairs = args.group * 14  # 60% of the first 24 steps of every sample
    return {
        "micro_batch": micro_batch,
        "checkpointed": fraction,
        "s_per_pair": per_pair,
        "update_s": per_pair * pairs,
        "peak_gib": peak,
        "status": "ok",
    }


def markdown(res: dict) -> str:
    s = res["sampling"]
    lines = [
        f"## {res['model']} ({res['parameters_b']:.2f} B parameters, {res['device']})",
        "",
        f"Sampling: {s['s_per_step']:.3f} s per step of the group of {res['group']}, "
        f"{s['rollout_s']:.1f} s per 25-step rollout, peak {s['peak_gib'] or 0:.1f} GiB.",
        "",
        "| micro-batch | checkpointed | s / pair | update (s) | peak GiB |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in res["update"]:
        if r["status"] != "ok":
            lines.append(f"| {r['micro_batch']} | {r['checkpointed']} | {r['status']} | | |")
            continue
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        lines.append(
            f"| {r['micro_batch']} | {r['checkpointed']} | {r['s_per_pair']:.3f} | "
            f"{r['update_s']:.1f} | {peak} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=MODELS, required=True)
    p.add_argument("--out", required=True, help="folder for dit_step_<model>.json / .md")
    p.add_argument("--tiny", action="store_true", help="tiny random transformer (a CPU check)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bf16", choices=tuple(DTYPES))
    p.add_argument("--mixed-precision", default="bf16", choices=("bf16", "no"))
    p.add_argument("--transformer-config", help="a transformer/config.json to size the model")
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--group", type=int, default=12)
    p.add_argument("--chunk", type=int, default=12, help="images per sampler forward")
    p.add_argument("--text-tokens", type=int, default=512)
    p.add_argument("--timed-steps", type=int, default=3)
    p.add_argument("--timed-passes", type=int, default=2)
    p.add_argument("--micro-batches", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--checkpointed", type=float, nargs="+", default=[1.0, 0.5, 0.0])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.tiny:
        args.dtype, args.mixed_precision = "fp32", "no"
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)  # its backward failed on H100 (GUIDE §2)
    timer = Timer(device)
    policy, cond = build(args.model, args, device)
    res = {
        "model": args.model,
        "device": str(torch.cuda.get_device_name(device)) if device.type == "cuda" else "cpu",
        "parameters_b": sum(p.numel() for p in policy.denoiser.parameters()) / 1e9,
        "lora_gib": gib(sum(p.numel() * 4 for p in policy.trainable_parameters())),
        "group": args.group,
        "sampling": sampling(policy, cond, args, timer),
        "update": [],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for fraction in args.checkpointed:
        for mb in args.micro_batches:
            res["update"].append(update(policy, cond, args, timer, mb, fraction))
            (out / f"dit_step_{args.model}.json").write_text(json.dumps(res, indent=2))
    (out / f"dit_step_{args.model}.md").write_text(markdown(res))
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
