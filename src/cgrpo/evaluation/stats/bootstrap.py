"""Bootstrap confidence intervals for benchmark means (pure numpy, seeded).

Every estimate in a report is the mean over evaluation *units* (a DreamBench
subject/prompt pair, its score averaged over seeds) with a percentile bootstrap interval:
draw ``resamples`` resamples, take the mean of each, and report the ``(1 - confidence) / 2``
and ``(1 + confidence) / 2`` quantiles.

Units cluster: the 25 prompts of one DreamBench subject (or toybench identity) share that
subject, so their scores are correlated and resampling units independently gives intervals
that are too narrow. With ``clusters`` (one label per unit) the bootstrap is two-stage:
draw the clusters with replacement, then, inside each drawn cluster, its units with
replacement; the resample's mean is over all drawn units. When clusters differ, the
interval's half-width follows the standard error of the mean of cluster means; when they do
not, it is at most about sqrt(2) times the independent one (the within-cluster spread
is counted by both stages), so it errs on the wide side.

Comparisons of two runs resample the *differences* on the units both runs share (paired
bootstrap, clustered the same way), which is much tighter than two independent intervals
when runs are correlated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap interval.

    Attributes:
        mean: the sample mean of the units.
        low, high: the interval bounds (equal to ``mean`` when ``n == 1``).
        n: number of units.
        confidence: the interval's nominal coverage, e.g. 0.95.
        clusters: number of clusters the bootstrap resampled (None: units independently).
    """

    mean: float
    low: float
    high: float
    n: int
    confidence: float = DEFAULT_CONFIDENCE
    clusters: int | None = None

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-ready (NaN becomes null, so the file stays strict JSON)."""

        def clean(v: float) -> float | None:
            return None if math.isnan(v) else v

        return {
            "mean": clean(self.mean),
            "low": clean(self.low),
            "high": clean(self.high),
            "n": self.n,
            "clusters": self.clusters,
            "confidence": self.confidence,
        }

    def format(self, digits: int | None = None) -> str:
        """``0.7123 [0.7011, 0.7230]``; ``digits`` None picks them from the magnitude."""
        if math.isnan(self.mean):
            return "n/a"
        d = auto_digits(self.mean) if digits is None else digits
        return f"{self.mean:.{d}f} [{self.low:.{d}f}, {self.high:.{d}f}]"


def auto_digits(value: float) -> int:
    """Decimals that show a score's meaningful digits: 2 for 10-100 scales, 4 below 1."""
    magnitude = abs(value)
    if magnitude >= 10:
        return 2
    if magnitude >= 1:
        return 3
    return 4


def _as_vector(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{what}: no values to estimate a mean from")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: values contain NaN or infinity")
    return arr


def _check(resamples: int, confidence: float) -> None:
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def bootstrap_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of ``resamples`` with-replacement resamples of ``values`` ``[n]`` -> ``[resamples]``.

    Resamples are drawn in blocks so memory stays bounded for large ``n``.
    """
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    block = max(1, min(resamples, 4_000_000 // max(n, 1)))
    out = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, block):
        stop = min(start + block, resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[idx].mean(axis=1)
    return out


def cluster_resample_weights(
    clusters: np.ndarray, resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Weights ``[resamples, n]`` (rows sum to 1) of two-stage resamples of ``n`` units
    grouped by ``clusters`` ``[n]`` (integer codes ``0..C-1``, every code used).

    Each resample draws ``C`` clusters with replacement, then ``n_c`` units with replacement
    inside each drawn cluster ``c``; a unit's weight is how often it was drawn over the
    total drawn. ``weights @ values`` are the resample means.
    """
    sizes = np.bincount(clusters)
    n_clusters, widest = sizes.size, int(sizes.max())
    order = np.argsort(clusters, kind="stable")
    starts = np.cumsum(sizes) - sizes
    drawn = rng.integers(0, n_clusters, size=(resamples, n_clusters))
    n_drawn = sizes[drawn][..., None]  # [b, C, 1]
    inside = (rng.random((resamples, n_clusters, widest)) * n_drawn).astype(np.int64)
    valid = np.arange(widest) < n_drawn
    unit = order[np.minimum(starts[drawn][..., None] + inside, clusters.size - 1)]
    rows = np.broadcast_to(np.arange(resamples)[:, None, None], unit.shape)
    counts = np.zeros((resamples, clusters.size))
    np.add.at(counts, (rows[valid], unit[valid]), 1.0)
    return counts / counts.sum(axis=1, keepdims=True)


def _blocks(resamples: int, width: int):
    block = max(1, min(resamples, 2_000_000 // max(width, 1)))
    for start in range(0, resamples, block):
        yield start, min(start + block, resamples)


def cluster_bootstrap_means(
    values: np.ndarray, clusters: np.ndarray, resamples: int, seed: int
) -> np.ndarray:
    """Two-stage resample means of ``values`` ``[n]`` grouped by ``clusters`` ``[n]`` (integer
    codes ``0..C-1``, every code used) -> ``[resamples]`` (:func:`cluster_resample_weights`)."""
    rng = np.random.default_rng(seed)
    widest = int(np.bincount(clusters).max()) * int(clusters.max() + 1)
    out = np.empty(resamples, dtype=np.float64)
    for start, stop in _blocks(resamples, widest):
        out[start:stop] = cluster_resample_weights(clusters, stop - start, rng) @ values
    return out


def hierarchical_bootstrap_ci(
    scores: Sequence[Sequence[float]] | np.ndarray,
    clusters: Sequence[object] | np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """Mean over repeats of the mean over units, with a repeats x clusters x units interval.

    ``scores`` is ``[S, n]``: repeat ``s`` (a training seed) scored on the same ``n`` units
    (held-out items), which fall into ``clusters`` (one label per unit). Each resample draws
    ``S`` repeats with replacement and one two-stage resample of the units
    (:func:`cluster_resample_weights`), shared by the drawn repeats because every repeat
    scored the same units. With ``S == 1`` this is :func:`bootstrap_ci` with ``clusters``.
    """
    _check(resamples, confidence)
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(
            f"hierarchical_bootstrap_ci: scores must be [repeats, units], got {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError("hierarchical_bootstrap_ci: scores contain NaN or infinity")
    codes = _cluster_codes(clusters, arr.shape[1], "hierarchical_bootstrap_ci")
    n_repeats, n_units = arr.shape
    mean = float(arr.mean())
    if arr.size == 1:
        return Estimate(mean, mean, mean, 1, confidence, 1)
    rng = np.random.default_rng(seed)
    out = np.empty(resamples, dtype=np.float64)
    for start, stop in _blocks(resamples, n_units * int(np.bincount(codes).max())):
        b = stop - start
        repeat_w = rng.multinomial(n_repeats, np.full(n_repeats, 1.0 / n_repeats), b) / n_repeats
        unit_w = cluster_resample_weights(codes, b, rng)
        out[start:stop] = np.einsum("bs,sn,bn->b", repeat_w, arr, unit_w)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(out, [alpha, 1.0 - alpha])
    return Estimate(mean, float(low), float(high), n_units, confidence, int(codes.max()) + 1)


def _cluster_codes(clusters: Sequence[object] | np.ndarray, n: int, what: str) -> np.ndarray:
    labels = np.asarray(clusters, dtype=object).reshape(-1)
    if labels.size != n:
        raise ValueError(f"{what}: {labels.size} cluster labels for {n} values")
    return np.unique(labels.astype(str), return_inverse=True)[1].reshape(-1)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    clusters: Sequence[object] | np.ndarray | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """Mean of ``values`` ``[n]`` with a seeded percentile-bootstrap interval.

    ``clusters``: one label per value (e.g. the DreamBench subject); the bootstrap then
    resamples clusters, then values within them (module docstring). None resamples values
    independently. The same inputs and ``seed`` always give the same interval.
    """
    _check(resamples, confidence)
    arr = _as_vector(values, "bootstrap_ci")
    codes = None if clusters is None else _cluster_codes(clusters, arr.size, "bootstrap_ci")
    n_clusters = None if codes is None else int(codes.max()) + 1
    mean = float(arr.mean())
    if arr.size == 1:
        return Estimate(mean, mean, mean, 1, confidence, n_clusters)
    if codes is None:
        means = bootstrap_means(arr, resamples, seed)
    else:
        means = cluster_bootstrap_means(arr, codes, resamples, seed)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Estimate(mean, float(low), float(high), int(arr.size), confidence, n_clusters)


def paired_bootstrap_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    clusters: Sequence[object] | np.ndarray | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """Mean of ``b - a`` over paired units ``[n]`` with a bootstrap interval.

    ``a[i]`` and ``b[i]`` must be the same unit (same pair) under two systems;
    ``clusters`` as in :func:`bootstrap_ci`.
    """
    va = _as_vector(a, "paired_bootstrap_ci(a)")
    vb = _as_vector(b, "paired_bootstrap_ci(b)")
    if va.shape != vb.shape:
        raise ValueError(f"paired_bootstrap_ci: {va.size} values in a but {vb.size} in b")
    return bootstrap_ci(
        vb - va, clusters=clusters, resamples=resamples, confidence=confidence, seed=seed
    )


__all__ = [
    "DEFAULT_CONFIDENCE",
    "DEFAULT_RESAMPLES",
    "Estimate",
    "auto_digits",
    "bootstrap_ci",
    "bootstrap_means",
    "cluster_bootstrap_means",
    "cluster_resample_weights",
    "hierarchical_bootstrap_ci",
    "paired_bootstrap_ci",
]
