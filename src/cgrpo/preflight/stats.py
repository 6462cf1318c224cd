"""The pre-flight measures, as pure functions of score vectors.

Every function takes ``[B]`` scores of ``B = n * group_size`` samples whose groups are
contiguous rows, the layout of a training step. What matters to GRPO is how a reward
orders the samples *within* a group, so most measures are within-group ones:

* **spread**: the mean within-group std against the std of the group means (a reward
  that mostly tells items apart, not samples, gives advantages made of small differences);
* **noise std**: how much the within-group pattern moves under a perturbation: the
  pooled within-group std of ``score(perturbed) - score(clean)`` (a shift of a whole group
  changes no advantage, so it does not count);
* **rank agreement**: mean within-group Spearman correlation of two score vectors (of a
  reward before and after a perturbation, of two rewards, of a reward and a monitor);
* **signal share**: the share of groups whose std exceeds ``factor`` x the noise std;
* **conflict rate**: the share of samples whose group advantages under two rewards have
  opposite signs (both nonzero), as ``conflict_rate`` in the trainer's metrics.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from cgrpo.grpo import group_normalize


def groups(x: Tensor, group_size: int) -> Tensor:
    """``[B]`` -> ``[n, group_size]`` float64."""
    x = torch.as_tensor(x).double().flatten()
    if group_size < 2 or x.numel() % group_size:
        raise ValueError(f"{x.numel()} scores do not split into groups of {group_size} (>= 2)")
    return x.reshape(-1, group_size)


def spread(x: Tensor, group_size: int) -> dict[str, float]:
    """``within_std`` (mean over groups of the within-group std), ``between_std`` (std of
    the group means) and their ratio ``within / between`` (inf when the means agree)."""
    g = groups(x, group_size)
    within = float(g.std(dim=1, unbiased=True).mean())
    between = float(g.mean(dim=1).std(unbiased=True)) if g.shape[0] > 1 else 0.0
    ratio = within / between if between > 0 else math.inf
    return {"within_std": within, "between_std": between, "ratio": ratio}


def noise_std(clean: Tensor, perturbed: Tensor, group_size: int) -> float:
    """Pooled within-group std of ``perturbed - clean``: ``sqrt(mean_g var_g(d))``."""
    d = groups(perturbed, group_size) - groups(clean, group_size)
    return float(d.var(dim=1, unbiased=True).mean().sqrt())


def ranks(x: Tensor) -> Tensor:
    """Ranks along the last dimension (0-based), ties sharing their mean rank."""
    x = torch.as_tensor(x).double()
    order = x.argsort(dim=-1)
    r = torch.empty_like(x)
    r.scatter_(-1, order, torch.arange(x.shape[-1], dtype=torch.float64).expand_as(x).clone())
    # average the ranks of tied values
    flat_x, flat_r = x.reshape(-1, x.shape[-1]), r.reshape(-1, x.shape[-1])
    for row in range(flat_x.shape[0]):
        values, inverse, counts = torch.unique(flat_x[row], return_inverse=True, return_counts=True)
        if len(values) == flat_x.shape[1]:
            continue
        sums = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, flat_r[row])
        flat_r[row] = (sums / counts)[inverse]
    return flat_r.reshape(x.shape)


def _rowwise_pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each row of ``a`` and ``b`` ``[n, m]``; NaN where a row is flat."""
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    den = (a.square().sum(-1) * b.square().sum(-1)).sqrt()
    num = (a * b).sum(-1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, math.nan))


def group_spearman(a: Tensor, b: Tensor, group_size: int) -> Tensor:
    """``[n]``: Spearman correlation of ``a`` and ``b`` within each group (NaN where either
    is constant in the group)."""
    return _rowwise_pearson(ranks(groups(a, group_size)), ranks(groups(b, group_size)))


def nanmean(x: Tensor) -> float:
    """Mean of the finite entries (NaN when there are none)."""
    x = x[torch.isfinite(x)]
    return float(x.mean()) if x.numel() else math.nan


def mean_group_spearman(a: Tensor, b: Tensor, group_size: int) -> float:
    """Mean within-group Spearman correlation over the groups where it is defined."""
    return nanmean(group_spearman(a, b, group_size))


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation over all samples (NaN if either is constant)."""
    a, b = torch.as_tensor(a).double().flatten(), torch.as_tensor(b).double().flatten()
    return float(_rowwise_pearson(a[None], b[None])[0])


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman correlation over all samples (NaN if either is constant)."""
    a, b = torch.as_tensor(a).double().flatten(), torch.as_tensor(b).double().flatten()
    return float(_rowwise_pearson(ranks(a)[None], ranks(b)[None])[0])


def advantages(x: Tensor, group_size: int) -> Tensor:
    """``[B]`` group z-scores, exactly as training computes them."""
    return group_normalize(torch.as_tensor(x).double().reshape(-1, 1), group_size)[:, 0]


def conflict_rate(a: Tensor, b: Tensor, group_size: int) -> float:
    """Share of samples whose advantages under ``a`` and ``b`` are both nonzero and of
    opposite sign."""
    sa, sb = torch.sign(advantages(a, group_size)), torch.sign(advantages(b, group_size))
    return float(((sa * sb) < 0).double().mean())


def sign_flip_rate(clean: Tensor, perturbed: Tensor, group_size: int) -> float:
    """Share of the samples with a nonzero advantage whose advantage changes sign."""
    a, b = advantages(clean, group_size), advantages(perturbed, group_size)
    nonzero = a != 0
    if not bool(nonzero.any()):
        return 0.0
    return float(((torch.sign(a) != torch.sign(b)) & nonzero).double().sum() / nonzero.sum())


def signal_share(x: Tensor, group_size: int, noise: float, factor: float = 2.0) -> float:
    """Share of groups whose within-group std exceeds ``factor * noise``."""
    std = groups(x, group_size).std(dim=1, unbiased=True)
    return float((std > factor * noise).double().mean())


def summarize(
    scores: dict[str, Tensor],
    perturbed: dict[str, dict[str, Tensor]],
    roles: dict[str, str],
    group_size: int,
    noise_from: tuple[str, ...],
    factor: float = 2.0,
) -> dict[str, Any]:
    """Every measure of the check as plain data (the ``rewards`` and ``pairs`` of
    ``preflight.json``).

    ``scores``: column -> ``[B]`` clean scores, rewards and monitors; ``perturbed``:
    perturbation -> column -> ``[B]`` (reward columns only); ``roles``: column -> role
    (``prompt``, ``identity``, ``monitor`` or ``ground-truth``; every column but the
    ground-truth ones is a reward). A reward's ``noise_std`` is the largest of its noise
    stds under the perturbations ``noise_from``; ``signal_share`` uses ``factor`` x it.
    """
    rewards = [c for c, r in roles.items() if r != "ground-truth" and c in scores]
    monitors = [c for c, r in roles.items() if r in ("monitor", "ground-truth") and c in scores]
    out: dict[str, Any] = {}
    for c in rewards:
        x = scores[c]
        noise = {
            p: {
                "std": noise_std(x, cols[c], group_size),
                "rank_agreement": mean_group_spearman(x, cols[c], group_size),
                "sign_flips": sign_flip_rate(x, cols[c], group_size),
            }
            for p, cols in perturbed.items()
            if c in cols
        }
        floor = max((noise[p]["std"] for p in noise_from if p in noise), default=0.0)
        out[c] = {
            "role": roles[c],
            "mean": float(x.double().mean()),
            **spread(x, group_size),
            "noise": noise,
            "noise_std": floor,
            "signal_share": signal_share(x, group_size, floor, factor),
            "monitors": {
                m: mean_group_spearman(x, scores[m], group_size) for m in monitors if m != c
            },
        }
    pairs = [
        {
            "a": a,
            "b": b,
            "pearson": pearson(scores[a], scores[b]),
            "spearman": spearman(scores[a], scores[b]),
            "within_spearman": mean_group_spearman(scores[a], scores[b], group_size),
            "conflict_rate": conflict_rate(scores[a], scores[b], group_size),
        }
        for i, a in enumerate(rewards)
        for b in rewards[i + 1 :]
    ]
    return {"rewards": out, "pairs": pairs}


__all__ = [
    "advantages",
    "conflict_rate",
    "group_spearman",
    "groups",
    "mean_group_spearman",
    "nanmean",
    "noise_std",
    "pearson",
    "ranks",
    "sign_flip_rate",
    "signal_share",
    "spearman",
    "spread",
    "summarize",
]
