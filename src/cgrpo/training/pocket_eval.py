"""Flow matching of the pocket generator on the toy subject world, and how its weights are
measured (used by :mod:`cgrpo.training.pocket_train`).

* training noise levels (:func:`sample_sigmas`), the flow-matching loss
  (:func:`flow_matching_loss`) and batches of world triplets (:func:`world_triplets`);
* the loss on fixed triplets per prompt kind (:func:`heldout_loss`);
* toy-reward quality of deterministic Euler samples on toybench (:func:`sample_quality`),
  optionally with a PNG grid of reference | sample | ground truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cgrpo.policies.pocket import PocketPolicy

__all__ = [
    "flow_matching_loss",
    "heldout_loss",
    "sample_quality",
    "sample_sigmas",
    "world_triplets",
]


def sample_sigmas(n: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    """``[n]`` training noise levels in (0, 1): ``sigmoid(N(0, 1))`` or uniform."""
    if kind == "logit-normal":
        return torch.sigmoid(torch.randn(n, generator=generator))
    if kind == "uniform":
        return torch.rand(n, generator=generator)
    raise ValueError(f"unknown sigma sampling {kind!r}; choose logit-normal or uniform")


def flow_matching_loss(
    policy: PocketPolicy,
    x0: torch.Tensor,
    cond: Any,
    noise: torch.Tensor,
    sigma: torch.Tensor,
    per_sample: bool = False,
) -> torch.Tensor:
    """Mean squared velocity error at ``x_s = (1-s) x0 + s noise``; target ``noise - x0``.

    ``x0``/``noise``: ``[B, N, P]``; ``sigma``: ``[B]``. Returns a scalar, or ``[B]``
    with ``per_sample``.
    """
    s = sigma.view(-1, 1, 1)
    v = policy(((1 - s) * x0 + s * noise), sigma, cond).float()
    err = (v - (noise - x0)).square().flatten(1).mean(1)
    return err if per_sample else err.mean()


def world_triplets(
    policy: PocketPolicy, world: Any, n: int, rng: np.random.Generator, fraction: float, split: str
) -> tuple[Any, torch.Tensor, list[str]]:
    """(condition, clean target latents ``[n, N, P]``, kinds) of n world triplets."""
    from cgrpo.world import pair_batch

    batch = pair_batch(world, n, rng, property_fraction=fraction, split=split)
    t = batch.tensors()
    cond = policy.encode(batch.prompts, list(t["reference"][:, None]))
    return cond, policy.images_to_latents(t["target"]), batch.kinds


@torch.no_grad()
def heldout_loss(
    policy: PocketPolicy,
    world: Any,
    pairs_per_kind: int,
    seed: int,
    split: str = "heldout",
    chunk: int = 64,
) -> dict[str, float]:
    """Flow-matching loss per prompt kind on fixed triplets of ``split``'s identities.

    The triplets, noise and noise levels are fixed by ``seed``, so two models are compared
    on exactly the same draws.
    """
    out = {}
    for k, (kind, fraction) in enumerate((("recontext", 0.0), ("property", 1.0))):
        rng = np.random.default_rng([seed, k])
        gen = torch.Generator().manual_seed(seed * 2 + k)
        total, count = 0.0, 0
        for start in range(0, pairs_per_kind, chunk):
            n = min(chunk, pairs_per_kind - start)
            cond, x0, _ = world_triplets(policy, world, n, rng, fraction, split)
            noise = torch.randn(x0.shape, generator=gen)
            sigma = sample_sigmas(n, "uniform", gen)  # uniform: every noise level counts
            total += float(
                flow_matching_loss(policy, x0, cond, noise, sigma, per_sample=True).sum()
            )
            count += n
        out[kind] = total / count
    out["all"] = (out["recontext"] + out["property"]) / 2
    return out


@torch.no_grad()
def sample_quality(
    policy: PocketPolicy,
    world_seed: int,
    size: int,
    num_identities: int,
    steps: int,
    shift: float,
    grid: str = "",
) -> dict[str, Any]:
    """Toy rewards of deterministic Euler samples on toybench, split by prompt kind.

    ``num_identities`` held-out identities (0 = all) x the 25 toybench prompts. Also reports
    the mean squared pixel error to the ground-truth render. Rewards that are not installed
    are reported as unavailable instead of failing the run.
    """
    import cgrpo.data  # noqa: F401  (registers toyworld)
    from cgrpo.data.base import DATASETS
    from cgrpo.rewards import ScoreRequest, build_reward
    from cgrpo.sampling import generate

    data = DATASETS.get("toyworld")(
        {"size": size, "seed": world_seed, "source": "toybench"}, "heldout"
    )
    per_identity = 25
    n_items = len(data) if num_identities == 0 else min(len(data), num_identities * per_identity)
    if num_identities:
        # spread the chosen identities over the whole held-out list
        n_ids = len(data) // per_identity
        picks = np.linspace(0, n_ids - 1, min(num_identities, n_ids)).round().astype(int)
        index = [int(i) * per_identity + j for i in picks for j in range(per_identity)]
    else:
        index = list(range(n_items))
    examples = [data[i] for i in index]
    images = generate(
        policy,
        [e.prompt for e in examples],
        [e.references for e in examples],
        num_steps=steps,
        shift=shift,
        seed=0,
        batch_size=50,
    )
    truth = torch.stack(
        [torch.from_numpy(data.target(i).image).permute(2, 0, 1).float() / 255.0 for i in index]
    )
    kinds = [e.metadata["kind"] for e in examples]
    columns: dict[str, torch.Tensor] = {"pixel_mse": (images - truth).square().flatten(1).mean(1)}
    unavailable = {}
    request = ScoreRequest(
        images=images,
        prompts=[e.prompt for e in examples],
        references=[e.references for e in examples],
        reference_masks=[e.reference_masks for e in examples],
        metadata=[e.metadata for e in examples],
    )
    for name in ("toy-id", "toy-prompt"):
        try:
            reward = build_reward(name)
        except (ValueError, FileNotFoundError, OSError) as err:
            unavailable[name] = str(err).splitlines()[0]
            continue
        scores = reward.score(request)
        for col, values in scores.items():
            columns[col] = values
    result: dict[str, Any] = {
        "items": len(examples),
        "sampler": {"kind": "euler-ode", "steps": steps, "shift": shift},
    }
    for kind in ("recontext", "property"):
        rows = torch.tensor([k == kind for k in kinds])
        result[kind] = {col: round(float(v[rows].mean()), 4) for col, v in columns.items()}
        result[kind]["items"] = int(rows.sum())
    if unavailable:
        result["unavailable"] = unavailable
    if grid:
        _save_grid(grid, examples, images, truth, kinds)
    return result


def _save_grid(
    path: str,
    examples: list[Any],
    images: torch.Tensor,
    truth: torch.Tensor,
    kinds: list[str],
    per_kind: int = 8,
) -> None:
    """Columns of (reference, sample, ground truth) triples: recontext rows, then property."""
    from PIL import Image

    chosen = []
    for kind in ("recontext", "property"):
        rows = [i for i, k in enumerate(kinds) if k == kind]
        step = max(1, len(rows) // (per_kind * 2))
        chosen += rows[::step][: per_kind * 2]
    tiles = []
    for i in chosen:
        triple = torch.cat([examples[i].references[0], images[i], truth[i]], dim=2)
        tiles.append(triple)
    cols = 4
    rows = [torch.cat(tiles[r : r + cols], dim=2) for r in range(0, len(tiles), cols)]
    rows = [
        torch.nn.functional.pad(r, (0, tiles[0].shape[2] * cols - r.shape[2], 0, 2)) for r in rows
    ]
    sheet = (torch.cat(rows, dim=1).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    img = Image.fromarray(sheet)
    img = img.resize((img.width * 3, img.height * 3), Image.NEAREST)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
