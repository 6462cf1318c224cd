"""Pretraining recipe of the pocket generator on the toy subject world.

    python -m cgrpo.training.pocket_train --out src/cgrpo/assets/pocket.safetensors \
        [--steps 5000 --seed 0 --max-minutes 16 --grid /tmp/pocket.png]

Each step draws (reference, prompt, target) triplets of *training* identities
(:func:`cgrpo.world.pair_batch`): the reference is the identity's neutral shot, the target
the same identity rendered in the prompt's scene. The loss is plain flow matching,
``|| v(x_s, s | prompt, reference) - (noise - x0) ||^2`` with ``x_s = (1-s) x0 + s noise``
and ``s`` drawn logit-normal (or uniform).

The base model is meant to behave like real subject-driven generators: it copies identity
well and follows property-modification prompts ("a red ball") poorly, which leaves the RL
stage something to fix. So training is almost only recontextualisation (background, position,
size): property-modification prompts make up ``property_fraction`` = 5% of the pairs by
default, and when they appear their target still shows the requested change, so the model
has seen the words without being drilled on them.

The run is bounded twice: by ``steps`` and by a wall-clock budget (``max_minutes``, 16 by
default, so the whole command stays under 20 minutes on a shared 2-core CPU). The cosine
learning-rate decay follows whichever bound is nearer, so a slow machine trains fewer steps
but still anneals; on an idle machine the step bound decides and the run is reproducible
from its seed. The sidecar records the steps actually done.

Outputs: the weights (fp16 safetensors, architecture in the metadata) and a JSON sidecar
``<out>.json`` with the recipe, timing and measured quality: the flow-matching loss on
held-out identities (split by prompt kind) and, when the toy rewards are installed, the
``toy-id`` / ``toy-prompt`` means of deterministic Euler samples on toybench (held-out
identities x 25 prompts), split by prompt kind. Quality is measured on the weights as
saved (fp16, reloaded).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cgrpo.config import ConfigError, describe, option, parse, to_dict
from cgrpo.policies.pocket import ASSET_PATH, PocketPolicy, build_pocket, save_pocket_weights
from cgrpo.training.pocket_eval import (
    flow_matching_loss,
    heldout_loss,
    sample_quality,
    sample_sigmas,
    world_triplets,
)

__all__ = ["PretrainOptions", "lr_factor", "main", "pretrain", "training_progress"]


@dataclass
class PretrainOptions:
    """Options of ``python -m cgrpo.training.pocket_train`` (flags: ``--steps``, ...)."""

    out: str = option(
        str(ASSET_PATH), "where to write the weights; the JSON sidecar goes next to it"
    )
    steps: int = option(10000, "optimizer steps", min=1)
    batch_size: int = option(32, "triplets per step", min=1)
    lr: float = option(1e-3, "AdamW peak learning rate", min=0.0, min_exclusive=True)
    weight_decay: float = option(0.01, "AdamW weight decay", min=0.0)
    warmup_steps: int = option(500, "linear warm-up steps, then cosine decay to 10% of lr", min=0)
    grad_clip: float = option(1.0, "max gradient norm (0 = off)", min=0.0)
    ema_decay: float = option(
        0.999, "EMA of the weights that gets saved (0 = no EMA)", min=0.0, max=0.99999
    )
    sigma_sampling: str = option(
        "logit-normal",
        "noise-level distribution during training",
        choices=("logit-normal", "uniform"),
    )
    property_fraction: float = option(
        0.1, "share of property-modification prompts", min=0.0, max=1.0
    )
    seed: int = option(0, "seed of the data stream, noise and init", min=0)
    init: str = option(
        "",
        "start from these pocket weights instead of a random init ('builtin' = the committed "
        "asset); the architecture options must match them",
    )
    world_seed: int = option(
        0, "SubjectWorld seed (fixes the train/held-out identity split)", min=0
    )
    threads: int = option(2, "torch CPU threads", min=1)
    bf16: bool = option(
        False,
        "bf16 autocast for the training forward (fp32 weights); no gain "
        "measured on a busy 2-core CPU",
    )
    max_minutes: float = option(
        55.0,
        "wall-clock budget of the training loop (0 = none); the schedule follows "
        "max(step/steps, elapsed/budget), so a slow machine still anneals and stops in time",
        min=0.0,
    )
    eval_pairs: int = option(256, "held-out triplets per prompt kind for the held-out loss", min=1)
    eval_identities: int = option(20, "held-out identities sampled on toybench (0 = all 80)", min=0)
    sample_steps: int = option(10, "Euler steps of the quality measurement", min=1)
    sample_shift: float = option(
        3.0, "schedule shift of the quality measurement", min=0.0, min_exclusive=True
    )
    grid: str = option("", "also save a PNG grid reference | sample | ground truth here")
    snapshot_every: int = option(
        0,
        "every N steps also write the (EMA) weights to <out>.snapshot.safetensors, so a long "
        "run can be tried out, or kept, before it ends (0 = never)",
        min=0,
    )
    dim: int = option(128, "architecture: width", min=8)
    depth: int = option(4, "architecture: blocks", min=1)
    heads: int = option(4, "architecture: attention heads", min=1)
    mlp_ratio: int = option(2, "architecture: MLP width / dim", min=1)
    patch: int = option(4, "architecture: patch side", min=1)
    image_size: int = option(32, "architecture and world: image side", min=16)
    text_max_length: int = option(16, "MiniLM token positions per prompt", min=3)
    progress: bool = option(True, "show a progress bar")

    def model_options(self, weights: str = "random") -> dict[str, Any]:
        keys = ("dim", "depth", "heads", "mlp_ratio", "patch", "image_size", "text_max_length")
        return {"weights": weights, "seed": self.seed, **{k: getattr(self, k) for k in keys}}


# ----- the schedule ---------------------------------------------------------------------
def lr_factor(step: int, warmup: int, progress: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to 0.1 as progress goes 0 -> 1."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def training_progress(step: int, steps: int, warmup: int, elapsed: float, budget: float) -> float:
    """Share of the post-warm-up schedule done: by steps, or by wall clock if that is further.

    On an idle machine the step count decides and the run is reproducible; on a busy one the
    time budget does, and the learning rate still anneals before the run stops.
    """
    by_steps = (step - warmup) / max(1, steps - warmup)
    by_time = elapsed / budget if budget > 0 else 0.0
    return max(0.0, by_steps, by_time)


# ----- the recipe ------------------------------------------------------------------------
def pretrain(opts: PretrainOptions) -> dict[str, Any]:
    """Train, save the weights and the sidecar, return the sidecar's content.

    Uses ``opts.threads`` torch threads and restores the caller's setting afterwards.
    """
    threads = torch.get_num_threads()
    try:
        return _pretrain(opts)
    finally:
        torch.set_num_threads(threads)


def _pretrain(opts: PretrainOptions) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from cgrpo.world import SubjectWorld

    # bf16 autocast feeds bf16 activations to the fp32 RMSNorm weights: correct, just unfused
    warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
    torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    started = time.time()
    world = SubjectWorld(size=opts.image_size, seed=opts.world_seed)
    if opts.init:
        policy = build_pocket(opts.model_options(opts.init))
    else:
        policy = build_pocket(opts.model_options("random"))
        policy.denoiser.init_for_training()
    policy.train()
    ema = None
    if opts.ema_decay > 0:
        ema = {k: v.detach().clone() for k, v in policy.denoiser.state_dict().items()}
    params = list(policy.denoiser.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": opts.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=opts.lr,
        betas=(0.9, 0.99),
    )
    rng = np.random.default_rng([opts.seed, 1])
    gen = torch.Generator().manual_seed(opts.seed)
    losses: list[float] = []
    stopped_early = False
    bar = tqdm(
        range(opts.steps), desc="pocket pretrain", disable=not opts.progress, dynamic_ncols=True
    )
    budget = opts.max_minutes * 60
    step = 0
    for step in bar:
        progress = training_progress(
            step, opts.steps, opts.warmup_steps, time.time() - started, budget
        )
        if progress >= 1.0 and step >= opts.warmup_steps:
            stopped_early = True
            break
        for group in optimizer.param_groups:
            group["lr"] = opts.lr * lr_factor(step, opts.warmup_steps, progress)
        cond, x0, _ = world_triplets(
            policy, world, opts.batch_size, rng, opts.property_fraction, "train"
        )
        noise = torch.randn(x0.shape, generator=gen)
        sigma = sample_sigmas(opts.batch_size, opts.sigma_sampling, gen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=opts.bf16):
            loss = flow_matching_loss(policy, x0, cond, noise, sigma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if opts.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
        optimizer.step()
        if ema is not None:
            d = min(opts.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for k, v in policy.denoiser.state_dict().items():
                    ema[k].lerp_(v, 1 - d)
        losses.append(float(loss.detach()))
        if opts.snapshot_every and (step + 1) % opts.snapshot_every == 0:
            snapshot = ema if ema is not None else policy.denoiser.state_dict()
            _write_snapshot(policy, snapshot, Path(opts.out).with_suffix(".snapshot.safetensors"))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
    steps_done = len(losses)
    train_seconds = time.time() - started
    if ema is not None:
        policy.denoiser.load_state_dict(ema)

    out = save_pocket_weights(policy.denoiser, opts.out, dtype=torch.float16)
    # measure the weights exactly as shipped: fp16 file, reloaded into an fp32 model
    saved = build_pocket(opts.model_options(str(out)))
    heldout = heldout_loss(saved, world, opts.eval_pairs, seed=1234)
    train_split = heldout_loss(saved, world, opts.eval_pairs, seed=1234, split="train")
    quality = sample_quality(
        saved,
        opts.world_seed,
        opts.image_size,
        opts.eval_identities,
        opts.sample_steps,
        opts.sample_shift,
        opts.grid,
    )
    report = {
        "format": "cgrpo-pocket-v1",
        "command": "python -m cgrpo.training.pocket_train " + " ".join(sys.argv[1:]),
        "recipe": to_dict(opts),
        "architecture": dataclasses.asdict(saved.arch),
        "parameters": sum(p.numel() for p in saved.denoiser.parameters()),
        "steps": steps_done,
        "stopped_early": stopped_early,
        "seed": opts.seed,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - started, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": opts.threads,
        },
        "train_loss_last100": round(float(np.mean(losses[-100:])), 5),
        "flow_matching_loss": {
            "heldout_identities": {k: round(v, 5) for k, v in heldout.items()},
            "train_identities": {k: round(v, 5) for k, v in train_split.items()},
            "sigma": "uniform",
            "pairs_per_kind": opts.eval_pairs,
        },
        "toybench_samples": quality,
    }
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _write_snapshot(policy: PocketPolicy, state: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``state`` (a denoiser state dict) as pocket weights, atomically."""
    from cgrpo.policies.pocket import PocketTransformer

    model = PocketTransformer(policy.arch)
    model.load_state_dict(state)
    tmp = path.with_name(path.name + ".tmp")
    save_pocket_weights(model, tmp, dtype=torch.float16)
    tmp.replace(path)


# ----- command line ----------------------------------------------------------------------
def _arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cgrpo.training.pocket_train",
        description="Pretrain the pocket generator on the toy subject world.",
    )
    hints = typing.get_type_hints(PretrainOptions)
    for key, _tp, default, help_text in describe(PretrainOptions):
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        flag = "--" + key.replace("_", "-")
        tp = hints[key]
        if tp is bool:
            parser.add_argument(
                flag,
                dest=key,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{help_text} (default: {default})",
            )
        else:
            parser.add_argument(
                flag, dest=key, type=tp, default=None, help=f"{help_text} (default: {default})"
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _arg_parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    try:
        opts = parse(PretrainOptions, given, prefix="pocket_train")
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    report = pretrain(opts)
    print(
        json.dumps(
            {
                k: report[k]
                for k in ("steps", "train_seconds", "flow_matching_loss", "toybench_samples")
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
