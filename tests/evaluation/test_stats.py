"""Bootstrap intervals: seeded, contain the mean, narrow with data, cover at about 95%."""

from __future__ import annotations

import numpy as np
import pytest

from cgrpo.evaluation.stats.bootstrap import (
    bootstrap_ci,
    cluster_bootstrap_means,
    hierarchical_bootstrap_ci,
    paired_bootstrap_ci,
)


@pytest.mark.parametrize("dist", ["normal", "uniform", "binary", "skewed"])
def test_interval_contains_the_sample_mean(dist):
    rng = np.random.default_rng(1)
    for _ in range(5):
        values = {
            "normal": lambda: rng.normal(3, 2, 40),
            "uniform": lambda: rng.uniform(0, 1, 25),
            "binary": lambda: (rng.random(60) < 0.3).astype(float),
            "skewed": lambda: rng.exponential(1.0, 50),
        }[dist]()
        est = bootstrap_ci(values, seed=0)
        assert est.low < values.mean() < est.high
        assert est.mean == pytest.approx(values.mean())
        assert est.n == values.size


def test_interval_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small = bootstrap_ci(rng.normal(0, 1, 20))
    large = bootstrap_ci(rng.normal(0, 1, 2000))
    # The width shrinks like 1/sqrt(n): 10x here; allow slack for the randomness.
    assert large.high - large.low < (small.high - small.low) / 5


def test_seeded_and_deterministic():
    values = np.random.default_rng(3).normal(0, 1, 30)
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7) != bootstrap_ci(values, seed=8)


def test_coverage_is_near_nominal():
    rng = np.random.default_rng(11)
    trials = 150
    hits = sum(
        bootstrap_ci(rng.normal(0, 1, 40), resamples=400, seed=i).contains(0.0)
        for i in range(trials)
    )
    assert 0.85 <= hits / trials <= 0.99


def test_degenerate_and_bad_inputs():
    one = bootstrap_ci([2.5])
    assert (one.mean, one.low, one.high, one.n) == (2.5, 2.5, 2.5, 1)
    with pytest.raises(ValueError, match="no values"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0, 2.0], confidence=1.5)


def test_paired_interval_is_tighter_than_unpaired_and_finds_a_small_gain():
    rng = np.random.default_rng(5)
    base = rng.normal(0, 1, 200)  # large per-pair spread, shared by both runs
    improved = base + 0.1 + rng.normal(0, 0.05, 200)
    paired = paired_bootstrap_ci(base, improved)
    assert paired.low > 0 and paired.contains(0.1)
    a, b = bootstrap_ci(base), bootstrap_ci(improved)
    assert a.high > b.low  # independent intervals overlap: no conclusion without pairing
    assert paired.high - paired.low < (b.high - b.low) / 5
    with pytest.raises(ValueError, match="3 values in a but 2 in b"):
        paired_bootstrap_ci([1, 2, 3], [1, 2])


def _clustered(n_clusters: int, per_cluster: int, between: float, within: float, seed: int):
    rng = np.random.default_rng(seed)
    effects = rng.normal(0, between, n_clusters)
    values = np.repeat(effects, per_cluster) + rng.normal(0, within, n_clusters * per_cluster)
    return values, np.repeat([f"subject{c}" for c in range(n_clusters)], per_cluster)


def test_cluster_interval_follows_the_standard_error_of_cluster_means():
    values, clusters = _clustered(40, 20, between=1.0, within=0.05, seed=0)
    means = values.reshape(40, 20).mean(axis=1)
    analytic = means.std(ddof=1) / np.sqrt(40)  # SE of the mean of cluster means
    est = bootstrap_ci(values, clusters=clusters, resamples=4000, seed=1)
    assert est.clusters == 40 and est.n == 800
    assert est.half_width / 1.96 == pytest.approx(analytic, rel=0.12)
    iid = bootstrap_ci(values, resamples=4000, seed=1)
    assert iid.clusters is None
    assert iid.half_width < est.half_width / 3  # independent resampling: far too narrow


def test_cluster_interval_without_between_cluster_variance_is_at_most_sqrt2_wider():
    values, clusters = _clustered(40, 20, between=0.0, within=1.0, seed=2)
    est = bootstrap_ci(values, clusters=clusters, resamples=4000, seed=3)
    iid = bootstrap_ci(values, resamples=4000, seed=3)
    assert 1.0 < est.half_width / iid.half_width < 1.6


def test_clusters_of_unequal_size_weigh_by_their_units():
    # cluster a: one unit at 0; cluster b: three units at 1. Drawing two clusters gives
    # (a, a) -> 0, (a, b) or (b, a) -> 3/4, (b, b) -> 1, with chances 1/4, 1/2, 1/4.
    means = cluster_bootstrap_means(np.array([0.0, 1.0, 1.0, 1.0]), np.array([0, 1, 1, 1]), 4000, 0)
    values, counts = np.unique(np.round(means, 9), return_counts=True)
    assert values.tolist() == [0.0, 0.75, 1.0]
    assert counts / 4000 == pytest.approx([0.25, 0.5, 0.25], abs=0.03)


def test_paired_cluster_interval_and_label_checks():
    base, clusters = _clustered(30, 25, between=1.0, within=0.3, seed=4)
    rng = np.random.default_rng(5)
    gain = np.repeat(rng.normal(0.1, 0.1, 30), 25)  # the gain itself varies by subject
    paired = paired_bootstrap_ci(base, base + gain, clusters=clusters, seed=0)
    assert paired.clusters == 30 and paired.contains(gain.mean())
    iid = paired_bootstrap_ci(base, base + gain, seed=0)
    assert iid.half_width < paired.half_width / 3
    one = bootstrap_ci([1.0, 2.0, 4.0], clusters=["x", "x", "x"], seed=0)
    assert one.clusters == 1 and one.low < one.mean < one.high  # one cluster: items only
    with pytest.raises(ValueError, match="2 cluster labels for 3 values"):
        bootstrap_ci([1.0, 2.0, 3.0], clusters=["a", "b"])
    assert bootstrap_ci(base, clusters=clusters, seed=9) == bootstrap_ci(
        base, clusters=clusters, seed=9
    )


def clustered(n_clusters: int, per_cluster: int, tau: float, sigma: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, tau, n_clusters)
    scores = np.repeat(centres, per_cluster) + rng.normal(0.0, sigma, n_clusters * per_cluster)
    return scores, np.repeat(np.arange(n_clusters), per_cluster)


def test_interval_follows_between_cluster_variance():
    # 40 clusters whose means differ (tau = 1), items close to their cluster mean: the
    # standard error of the grand mean is about tau / sqrt(40), not sd / sqrt(200 items).
    scores, clusters = clustered(40, 5, tau=1.0, sigma=0.1, seed=0)
    est = hierarchical_bootstrap_ci(scores[None], clusters, resamples=4000, seed=1)
    cluster_means = np.array([scores[clusters == c].mean() for c in range(40)])
    expected_half = 1.96 * cluster_means.std(ddof=1) / np.sqrt(40)
    assert est.half_width == pytest.approx(expected_half, rel=0.2)
    iid = hierarchical_bootstrap_ci(scores[None], np.arange(200), resamples=4000, seed=1)
    assert est.half_width > 1.8 * iid.half_width
    assert est.mean == pytest.approx(scores.mean())
    assert est.low < est.mean < est.high


def test_seed_variance_widens_the_interval():
    scores, clusters = clustered(30, 4, tau=0.1, sigma=0.1, seed=2)
    one = hierarchical_bootstrap_ci(np.stack([scores] * 3), clusters, seed=0)
    offsets = np.array([-0.5, 0.0, 0.5])[:, None]
    spread = hierarchical_bootstrap_ci(np.stack([scores] * 3) + offsets, clusters, seed=0)
    assert spread.mean == pytest.approx(one.mean)
    assert spread.half_width > 3 * one.half_width


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="repeats, units"):
        hierarchical_bootstrap_ci(np.zeros(4), [0, 0, 1, 1])
    with pytest.raises(ValueError, match="3 cluster labels for 4 values"):
        hierarchical_bootstrap_ci(np.zeros((1, 4)), [0, 0, 1])
    with pytest.raises(ValueError, match="NaN"):
        hierarchical_bootstrap_ci(np.array([[0.0, np.nan]]), [0, 1])
