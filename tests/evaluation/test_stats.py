"""Bootstrap intervals: seeded, contain the mean, narrow with data, cover at about 95%."""

from __future__ import annotations

import numpy as np
import pytest

from cgrpo.evaluation.stats import bootstrap_ci, paired_bootstrap_ci


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
