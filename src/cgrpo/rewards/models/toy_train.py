"""Train the two learned toy rewards and write them as packaged assets.

    python -m cgrpo.rewards.models.toy_train --out src/cgrpo/assets

writes ``toy_id.safetensors`` (segmenter + identity embedder), ``toy_prompt.safetensors``
(attribute classifier) and a JSON sidecar for each with the recipe and the metrics measured
on held-out identities (never seen in training). Everything is seeded; it takes a few
minutes on one or two CPU threads. See :mod:`cgrpo.rewards.models.toy` for how the networks score.

Training data: renders of *train* identities only, in fully random scenes (any background,
position and size), degraded the way a small generator's samples are (random Gaussian blur,
pixel noise, brightness), so the rewards judge blurry generations sensibly.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cgrpo.rewards.models.toy import (
    TOY_ID_FORMAT,
    TOY_PROMPT_FORMAT,
    ToyAttributeNet,
    ToyIdentityModel,
    attribute_score,
    crop_subjects,
    prompt_targets,
    save_weights,
)
from cgrpo.world.bench import toybench
from cgrpo.world.core import Identity, Scene, SubjectWorld
from cgrpo.world.templates import TEMPLATES
from cgrpo.world.vocab import ATTRIBUTE_VALUES, OVERRIDABLE, POSITION_NAMES, SIZE_NAMES

IDENTITY_ATTRS = ("shape", "pattern", "palette")


@dataclass
class Recipe:
    """Everything that determines the trained weights (recorded in the sidecars)."""

    seed: int = 0
    world_seed: int = 0
    world_size: int = 32
    pool_size: int = 24000
    seg_steps: int = 600
    seg_batch: int = 64
    id_steps: int = 1500
    id_batch: int = 96
    prompt_steps: int = 1500
    prompt_batch: int = 96
    lr: float = 2e-3
    cos_scale: float = 16.0
    cos_margin: float = 0.2
    threads: int = 1
    eval_queries: int = 5  # scene renders per held-out identity (toy-id metrics)
    eval_images: int = 25  # random-scene renders per held-out identity (toy-prompt metrics)
    eval_bench_every: int = 1  # score every k-th toybench item (1: all)


# --- data ----------------------------------------------------------------------------------


@dataclass
class Pool:
    """Pre-rendered training images: ``images`` uint8 [N, 3, S, S], ``masks`` bool [N, 1, S, S],
    ``labels`` {attribute: long [N]} (value indices), ``identity`` long [N] (index into ids)."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: dict[str, torch.Tensor]
    identity: torch.Tensor

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[idx].float() / 255.0, self.masks[idx].float()


def random_scene(rng: np.random.Generator) -> Scene:
    """A scene with every staging attribute drawn uniformly (backgrounds include plain)."""
    pick = lambda values: values[int(rng.integers(len(values)))]  # noqa: E731
    return Scene(
        "recontext",
        pick(ATTRIBUTE_VALUES["background"]),
        pick(POSITION_NAMES),
        pick(SIZE_NAMES),
        (),
        "",
    )


def build_pool(world: SubjectWorld, ids: list[Identity], n: int, rng) -> Pool:
    """``n`` renders of random ``ids`` in random scenes, plus each identity's reference shot."""
    images, masks, ident = [], [], []
    labels: dict[str, list[int]] = {a: [] for a in ATTRIBUTE_VALUES}
    picks = [(i, None) for i in range(len(ids))] + [
        (int(rng.integers(len(ids))), random_scene(rng)) for _ in range(n)
    ]
    for k, scene in picks:
        r = world.reference(ids[k]) if scene is None else world.render(ids[k], scene, rng)
        images.append(r.image)
        masks.append(r.mask)
        ident.append(k)
        for a, values in ATTRIBUTE_VALUES.items():
            labels[a].append(values.index(r.attributes[a]))
    return Pool(
        images=torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
        masks=torch.from_numpy(np.stack(masks))[:, None],
        labels={a: torch.tensor(v) for a, v in labels.items()},
        identity=torch.tensor(ident),
    )


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian blur of ``[B, C, H, W]`` with ``sigma`` ``[B]`` (pixels; 0 = none)."""
    b, c, h, w = x.shape
    r = torch.arange(-2, 3, dtype=x.dtype)
    s = sigma.clamp_min(1e-3)[:, None]
    k1 = torch.exp(-(r[None] ** 2) / (2 * s**2))
    k1 = k1 / k1.sum(dim=1, keepdim=True)  # [B, 5]
    k2 = (k1[:, :, None] * k1[:, None, :]).repeat_interleave(c, dim=0)[:, None]  # [B*C,1,5,5]
    xp = F.pad(x.reshape(1, b * c, h, w), (2, 2, 2, 2), mode="replicate")
    return F.conv2d(xp, k2, groups=b * c).reshape(b, c, h, w)


def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Generator-like corruption of ``[B, 3, H, W]`` in [0, 1]: blur, noise, brightness."""
    b = x.shape[0]
    u = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    sigma = torch.where(u(b) < 0.6, 0.3 + 0.9 * u(b), torch.zeros(b))
    x = blur(x, sigma)
    noise = torch.where(u(b) < 0.5, 0.05 * u(b), torch.zeros(b))[:, None, None, None]
    x = x + noise * torch.randn(x.shape, generator=gen)
    x = x * (0.93 + 0.14 * u(b))[:, None, None, None]
    return x.clamp(0, 1)


def _cosine_lr(opt: torch.optim.Optimizer, base: float, step: int, total: int) -> None:
    warm = max(1, total // 20)
    lr = base * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / total))
    for g in opt.param_groups:
        g["lr"] = lr


# --- training ------------------------------------------------------------------------------


def train_segmenter(model: ToyIdentityModel, pool: Pool, r: Recipe, gen, log) -> None:
    net = model.segmenter.train()
    opt = torch.optim.AdamW(net.parameters(), lr=r.lr, weight_decay=1e-4)
    n = pool.images.shape[0]
    for step in range(r.seg_steps):
        _cosine_lr(opt, r.lr, step, r.seg_steps)
        x, m = pool.batch(torch.randint(n, (r.seg_batch,), generator=gen))
        logits = net(degrade(x, gen))
        p = logits.sigmoid()
        dice = 1 - (2 * (p * m).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + m.sum((1, 2, 3)) + 1)
        loss = F.binary_cross_entropy_with_logits(logits, m) + dice.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == r.seg_steps - 1:
            log(f"segmenter step {step:5d} loss {loss.item():.4f}")
    net.eval()


class _IdentityHeads(nn.Module):
    """Training-only heads on the embedding: cosine classifier + identity attributes."""

    def __init__(self, dim: int, n_ids: int) -> None:
        super().__init__()
        self.centres = nn.Parameter(torch.randn(n_ids, dim) * 0.1)
        self.attrs = nn.ModuleDict(
            {a: nn.Linear(dim, len(ATTRIBUTE_VALUES[a])) for a in IDENTITY_ATTRS}
        )


@torch.no_grad()
def predicted_masks(model: ToyIdentityModel, pool: Pool, gen) -> torch.Tensor:
    """The segmenter's masks of degraded pool images, bool ``[N, 1, S, S]`` (computed once:
    cheaper than segmenting every training batch, and just as varied)."""
    out = []
    for i in range(0, pool.images.shape[0], 512):
        x, _ = pool.batch(torch.arange(i, min(i + 512, pool.images.shape[0])))
        out.append(model.segment(degrade(x, gen)) > 0.5)
    return torch.cat(out)


def train_identity(model: ToyIdentityModel, pool: Pool, n_ids: int, r: Recipe, gen, log):
    pred_masks = predicted_masks(model, pool, gen)
    emb = model.embedder.train()
    heads = _IdentityHeads(emb.proj.out_features, n_ids)
    params = list(emb.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=r.lr, weight_decay=1e-4)
    n = pool.images.shape[0]
    for step in range(r.id_steps):
        _cosine_lr(opt, r.lr, step, r.id_steps)
        idx = torch.randint(n, (r.id_batch,), generator=gen)
        x, m = pool.batch(idx)
        x = degrade(x, gen)
        # Half the masks come from the segmenter, as they will for generated images.
        use_pred = (torch.rand(r.id_batch, generator=gen) < 0.5)[:, None, None, None]
        z = emb(crop_subjects(x, torch.where(use_pred, pred_masks[idx].float(), m)))
        y = pool.identity[idx]
        cos = z @ F.normalize(heads.centres, dim=-1).T
        logits = r.cos_scale * (cos - r.cos_margin * F.one_hot(y, n_ids))
        loss = F.cross_entropy(logits, y)
        for a in IDENTITY_ATTRS:
            loss = loss + 0.3 * F.cross_entropy(heads.attrs[a](z), pool.labels[a][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == r.id_steps - 1:
            acc = (logits.argmax(-1) == y).float().mean().item()
            log(f"identity step {step:5d} loss {loss.item():.4f} train-acc {acc:.3f}")
    emb.eval()


def train_prompt(net: ToyAttributeNet, pool: Pool, r: Recipe, gen, log) -> None:
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=r.lr, weight_decay=1e-4)
    n = pool.images.shape[0]
    for step in range(r.prompt_steps):
        _cosine_lr(opt, r.lr, step, r.prompt_steps)
        idx = torch.randint(n, (r.prompt_batch,), generator=gen)
        x, _ = pool.batch(idx)
        out = net(degrade(x, gen))
        loss = sum(F.cross_entropy(out[a], pool.labels[a][idx]) for a in ATTRIBUTE_VALUES)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == r.prompt_steps - 1:
            log(f"prompt step {step:5d} loss {loss.item():.4f}")
    net.eval()


# --- held-out evaluation ----------------------------------------------------------------------


def _auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(a random positive scores above a random negative), ties counted half."""
    d = pos[:, None] - neg[None, :]
    return float(((d > 0).float() + 0.5 * (d == 0).float()).mean())


def _tensor(imgs: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0


BLUR_EVAL = 0.8  # pixels; the "blurry generation" condition of the held-out metrics


@torch.no_grad()
def evaluate_identity(model: ToyIdentityModel, world: SubjectWorld, seed: int, queries: int = 5):
    """Held-out identities: retrieval, same-vs-different AUC, segmentation IoU, and how much
    a property modification lowers the score."""
    rng = np.random.default_rng(seed + 1000)
    ids = world.identities("heldout")
    refs = [world.reference(i) for i in ids]
    ref_z = model.embed(_tensor([r.image for r in refs]), _tensor_mask([r.mask for r in refs]))
    found, owner = [], []
    for k, ident in enumerate(ids):
        for _ in range(queries):
            found.append(world.render(ident, world.sample_scene(ident, rng, ("recontext",)), rng))
            owner.append(k)
    q = _tensor([r.image for r in found])
    gt = _tensor_mask([r.mask for r in found])
    owner_t = torch.tensor(owner)
    out: dict = {"heldout_identities": len(ids), "queries": len(found)}
    for cond, images in (
        ("clean", q),
        (f"blur{BLUR_EVAL}", blur(q, torch.full((len(q),), BLUR_EVAL))),
    ):
        pred = model.segment(images)
        inter = (pred * gt).sum((1, 2, 3))
        union = ((pred + gt) > 0).float().sum((1, 2, 3))
        sims = model.embed(images, None) @ ref_z.T  # [Q, n_ids]
        same = sims[torch.arange(len(q)), owner_t]
        diff = sims[F.one_hot(owner_t, len(ids)) == 0]
        out[cond] = {
            "segmenter_iou": round(float((inter / union).mean()), 4),
            "retrieval_top1": round(float((sims.argmax(1) == owner_t).float().mean()), 4),
            "auc_same_vs_different": round(_auc(same, diff), 4),
            "mean_same": round(float(same.mean()), 4),
            "mean_different": round(float(diff.mean()), 4),
        }
    # The same held-out subject with one identity attribute changed (what "a red X" does).
    for attr in OVERRIDABLE:
        imgs, ks = [], []
        for k, ident in enumerate(ids):
            values = [v for v in ATTRIBUTE_VALUES[attr] if v != getattr(ident, attr)]
            value = values[int(rng.integers(len(values)))]
            scene = Scene("property", "plain", "center", "medium", ((attr, value),), "")
            imgs.append(world.render(ident, scene, rng).image)
            ks.append(k)
        z = model.embed(_tensor(imgs), None)
        out["clean"][f"mean_{attr}_changed"] = round(float((z * ref_z[ks]).sum(-1).mean()), 4)
    return out


def _tensor_mask(masks: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(masks))[:, None].float()


@torch.no_grad()
def evaluate_prompt(
    net: ToyAttributeNet, world: SubjectWorld, seed: int, images: int = 25, bench_every: int = 1
) -> dict:
    """Held-out identities: per-attribute accuracy in random scenes (clean and blurred), and
    toybench ground truth scored with its own prompt vs another template's prompt."""
    rng = np.random.default_rng(seed + 2000)
    ids = world.identities("heldout")
    renders = [world.render(i, random_scene(rng), rng) for i in ids for _ in range(images)]
    x = _tensor([r.image for r in renders])
    out: dict = {"heldout_images": len(renders)}
    for cond, images in (
        ("clean", x),
        (f"blur{BLUR_EVAL}", blur(x, torch.full((len(x),), BLUR_EVAL))),
    ):
        logits = net(images)
        out[cond] = {
            a: round(float(np.mean([
                int(logits[a][j].argmax()) == ATTRIBUTE_VALUES[a].index(r.attributes[a])
                for j, r in enumerate(renders)
            ])), 4)
            for a in ATTRIBUTE_VALUES
        }  # fmt: skip
    bench = toybench(world)[::bench_every]
    gt = _tensor([world.render(b.identity, b.scene, rng).image for b in bench])
    probs = {k: v.softmax(-1) for k, v in net(gt).items()}
    own = attribute_score(probs, [prompt_targets(b.prompt) for b in bench])
    other_prompts = []
    for b in bench:
        j = (b.prompt_index + 1 + int(rng.integers(len(TEMPLATES) - 1))) % len(TEMPLATES)
        other_prompts.append(TEMPLATES[j].format(noun=b.identity.noun))
    other = attribute_score(probs, [prompt_targets(p) for p in other_prompts])
    out["toybench_ground_truth"] = {
        "items": len(bench),
        "mean_own_prompt": round(float(own.mean()), 4),
        "mean_other_prompt": round(float(other.mean()), 4),
        "own_above_other": round(float((own > other).float().mean()), 4),
    }
    return out


# --- entry point ---------------------------------------------------------------------------------


def train_all(out_dir: Path, r: Recipe, log=print) -> dict:
    """Train both rewards with recipe ``r``; write weights and sidecars into ``out_dir``."""
    torch.manual_seed(r.seed)
    torch.set_num_threads(r.threads)
    gen = torch.Generator().manual_seed(r.seed)
    world = SubjectWorld(size=r.world_size, seed=r.world_seed)
    train_ids = world.identities("train")
    t0 = time.time()
    pool = build_pool(world, train_ids, r.pool_size, np.random.default_rng(r.seed))
    t_pool = time.time() - t0
    log(
        f"pool: {pool.images.shape[0]} renders of {len(train_ids)} train identities in {t_pool:.1f}s"
    )

    t1 = time.time()
    id_model = ToyIdentityModel()
    train_segmenter(id_model, pool, r, gen, log)
    train_identity(id_model, pool, len(train_ids), r, gen, log)
    t_id = time.time() - t1
    id_metrics = evaluate_identity(id_model.eval(), world, r.seed, r.eval_queries)
    log(json.dumps(id_metrics))

    t2 = time.time()
    prompt_net = ToyAttributeNet()
    train_prompt(prompt_net, pool, r, gen, log)
    t_prompt = time.time() - t2
    prompt_metrics = evaluate_prompt(prompt_net, world, r.seed, r.eval_images, r.eval_bench_every)
    log(json.dumps(prompt_metrics))

    out_dir.mkdir(parents=True, exist_ok=True)
    common = {
        "command": "python -m cgrpo.rewards.models.toy_train --out <dir>"
        + (f" --seed {r.seed}" if r.seed != Recipe.seed else ""),
        "recipe": asdict(r),
        "data": (
            f"{pool.images.shape[0]} renders ({r.pool_size} random scenes + references) of the "
            f"{len(train_ids)} train identities of SubjectWorld(size={r.world_size}, "
            f"seed={r.world_seed}); augmentation: blur p=0.6 sigma 0.3-1.2, noise p=0.5 "
            f"std<=0.05, brightness 0.93-1.07; metrics on the {len(world.identities('heldout'))} "
            "held-out identities"
        ),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    results = {}
    for name, model, fmt, metrics, secs in (
        ("toy_id", id_model, TOY_ID_FORMAT, id_metrics, t_id),
        ("toy_prompt", prompt_net, TOY_PROMPT_FORMAT, prompt_metrics, t_prompt),
    ):
        path = out_dir / f"{name}.safetensors"
        save_weights(model, path, fmt, {"image_size": str(r.world_size)})
        card = {
            "format": fmt,
            **common,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(secs + t_pool, 1),
            "heldout_metrics": metrics,
        }
        path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
        results[name] = card
        log(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="directory for weights and sidecars")
    p.add_argument("--seed", type=int, default=Recipe.seed)
    p.add_argument("--threads", type=int, default=Recipe.threads)
    p.add_argument(
        "--scale", type=float, default=1.0, help="multiply pool size and steps (quick checks)"
    )
    a = p.parse_args(argv)
    r = Recipe(seed=a.seed, threads=a.threads)
    if a.scale != 1.0:
        for f in ("pool_size", "seg_steps", "id_steps", "prompt_steps"):
            setattr(r, f, max(1, int(getattr(r, f) * a.scale)))
    t = time.time()
    train_all(a.out, r)
    print(f"total {time.time() - t:.1f}s")


if __name__ == "__main__":
    main()
