"""The pre-flight measures and verdicts on hand-made scores."""

from __future__ import annotations

import math

import pytest
import torch

from cgrpo.preflight.stats import (
    conflict_rate,
    group_spearman,
    mean_group_spearman,
    noise_std,
    ranks,
    sign_flip_rate,
    signal_share,
    spread,
    summarize,
)
from cgrpo.preflight.verdict import verdict

G = 8


def items_plus(noise: float, n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-item offsets (shared by a group) and ``noise`` per sample; returns
    (offsets repeated per sample, a fresh draw of the per-sample noise)."""
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.randn(n, generator=gen).repeat_interleave(G)
    return offsets, noise * torch.randn(n * G, generator=gen)


def test_spread_within_and_between_by_hand():
    x = torch.tensor([0.0, 2.0, 10.0, 12.0])
    s = spread(x, 2)
    assert s["within_std"] == pytest.approx(math.sqrt(2))
    assert s["between_std"] == pytest.approx(math.sqrt(50))  # std of (1, 11)
    assert s["ratio"] == pytest.approx(math.sqrt(2) / math.sqrt(50))


def test_ranks_share_ties():
    assert ranks(torch.tensor([3.0, 1.0, 2.0, 2.0])).tolist() == [3.0, 0.0, 1.5, 1.5]


def test_noise_std_ignores_a_shift_of_a_whole_group():
    x, e = items_plus(0.1)
    clean = x + e
    offset = torch.arange(64.0).repeat_interleave(G)  # every group moved by its own constant
    assert noise_std(clean, clean + offset, G) < 1e-5  # float32 rounding only
    assert noise_std(clean, clean + 0.05 * torch.randn(len(clean)), G) == pytest.approx(
        0.05, rel=0.15
    )


def test_pure_noise_reward_has_no_signal_and_gets_the_no_signal_verdict():
    offsets, e = items_plus(0.1)
    _, e2 = items_plus(0.1, seed=1)
    clean, moved = offsets + e, offsets + e2  # a perturbation redraws the whole spread
    noise = noise_std(clean, moved, G)
    assert signal_share(clean, G, noise) < 0.05
    m = summarize(
        {"r": clean, "gt": torch.randn(len(clean))},
        {"shift": {"r": moved}},
        {"r": "prompt", "gt": "ground-truth"},
        G,
        ("shift",),
    )["rewards"]["r"]
    assert m["signal_share"] < 0.05
    label, line = verdict("r", m, ())
    assert label == "NO SIGNAL"
    assert line.startswith("r: NO SIGNAL — ") and "of groups have spread above noise" in line


def test_a_reward_with_spread_far_above_its_noise_is_ok():
    offsets, e = items_plus(1.0)
    clean = offsets + e
    moved = clean + 0.01 * torch.randn(len(clean), generator=torch.Generator().manual_seed(3))
    out = summarize(
        {"r": clean, "gt": clean.clone()},
        {"jpeg": {"r": moved}, "shift": {"r": moved}},
        {"r": "identity", "gt": "ground-truth"},
        G,
        ("jpeg", "shift"),
    )
    m = out["rewards"]["r"]
    assert m["signal_share"] == 1.0
    assert m["noise"]["jpeg"]["rank_agreement"] > 0.95
    assert m["monitors"] == {"gt": pytest.approx(1.0)}  # a reward equal to a monitor
    assert verdict("r", m, ("jpeg",))[0] == "OK"


def test_ranks_that_flip_under_a_shift_make_it_unstable():
    offsets, e = items_plus(1.0)
    clean = offsets + e
    flipped = offsets - e  # the within-group order reversed
    m = summarize({"r": clean}, {"shift": {"r": flipped}}, {"r": "prompt"}, G, ())["rewards"]["r"]
    assert m["noise"]["shift"]["rank_agreement"] == pytest.approx(-1.0)
    assert m["noise"]["shift"]["sign_flips"] == 1.0
    label, line = verdict("r", m, ())
    assert label == "UNSTABLE" and "1-px shift" in line


def test_reward_equal_to_a_monitor_has_spearman_one_and_its_negation_minus_one():
    x = torch.randn(4 * G)
    assert mean_group_spearman(x, x, G) == pytest.approx(1.0)
    assert mean_group_spearman(x, 3 * x + 1, G) == pytest.approx(1.0)  # ranks only
    assert mean_group_spearman(x, -x, G) == pytest.approx(-1.0)


def test_spearman_of_a_flat_group_is_undefined_and_skipped():
    x = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    y = torch.tensor([1.0, 3.0, 2.0, 1.0, 2.0, 3.0])
    per_group = group_spearman(x, y, 3)
    assert per_group[0] == pytest.approx(0.5) and math.isnan(per_group[1])
    assert mean_group_spearman(x, y, 3) == pytest.approx(0.5)


def test_conflict_rate_of_a_reward_and_its_negation_is_one():
    a = torch.randn(8 * G)
    assert conflict_rate(a, -a, G) == 1.0
    assert conflict_rate(a, a, G) == 0.0
    assert sign_flip_rate(a, -a, G) == 1.0 and sign_flip_rate(a, a + 5.0, G) == 0.0


def test_summarize_pairs_every_two_rewards_and_leaves_ground_truth_out():
    a, b = torch.randn(2 * G), torch.randn(2 * G)
    out = summarize(
        {"a": a, "b": -a, "m": b, "gt": b},
        {},
        {"a": "prompt", "b": "identity", "m": "monitor", "gt": "ground-truth"},
        G,
        (),
    )
    assert set(out["rewards"]) == {"a", "b", "m"}
    assert set(out["rewards"]["a"]["monitors"]) == {"m", "gt"}
    assert "m" not in out["rewards"]["m"]["monitors"]
    ab = next(p for p in out["pairs"] if (p["a"], p["b"]) == ("a", "b"))
    assert ab["conflict_rate"] == 1.0
    assert ab["pearson"] == pytest.approx(-1.0) and ab["within_spearman"] == pytest.approx(-1.0)
    assert len(out["pairs"]) == 3
