"""Group normalisation and advantage combiners."""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cgrpo.grpo import ADVANTAGE_STRATEGIES, combine_advantages, group_normalize

FAST = settings(max_examples=50, deadline=None)
finite = st.floats(-50.0, 50.0, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def grouped_rewards(draw, max_groups: int = 4, max_group: int = 8, max_k: int = 3):
    n_groups = draw(st.integers(1, max_groups))
    group_size = draw(st.integers(2, max_group))
    k = draw(st.integers(1, max_k))
    arr = draw(hnp.arrays(np.float32, (n_groups * group_size, k), elements=finite))
    return torch.from_numpy(arr), group_size


# ---------------------------------------------------------------- group_normalize


def test_group_normalize_closed_form():
    rewards = torch.tensor(
        [[1.0, 5.0], [3.0, 5.0], [2.0, 0.0], [2.0, 4.0], [8.0, 2.0]] + [[0.0, 0.0]]
    )
    adv = group_normalize(rewards, 3)
    # group 0, column 0: values 1, 3, 2 -> mean 2, unbiased std 1.
    torch.testing.assert_close(adv[:3, 0], torch.tensor([-1.0, 1.0, 0.0]) / (1 + 1e-8))
    # group 0, column 1: 5, 5, 0 -> mean 10/3, std sqrt(25/3).
    expected = (torch.tensor([5.0, 5.0, 0.0]) - 10 / 3) / (math.sqrt(25 / 3) + 1e-8)
    torch.testing.assert_close(adv[:3, 1], expected)
    assert adv.dtype == torch.float32


def test_zero_variance_group_is_exactly_zero():
    rewards = torch.tensor(
        [[0.1, 1 / 3], [0.1, 1 / 3], [0.1, 1 / 3], [7.0, 1.0], [7.0, 2.0], [7.0, 3.0]]
    )
    adv = group_normalize(rewards, 3)
    assert torch.equal(adv[:3], torch.zeros(3, 2))
    assert torch.equal(adv[3:, 0], torch.zeros(3))
    assert adv[3, 1] < 0 < adv[5, 1]


@FAST
@given(grouped_rewards())
def test_group_advantages_sum_to_zero_per_group(case):
    rewards, g = case
    adv = group_normalize(rewards, g)
    assert adv.shape == rewards.shape
    assert torch.isfinite(adv).all()
    sums = adv.reshape(-1, g, rewards.shape[1]).sum(dim=1)
    assert torch.allclose(sums, torch.zeros_like(sums), atol=1e-4)


@FAST
@given(
    st.integers(2, 10),
    st.floats(-1e6, 1e6, allow_nan=False, width=32),
    st.integers(1, 3),
)
def test_constant_groups_give_exact_zero(group_size, value, k):
    rewards = torch.full((group_size, k), value, dtype=torch.float32)
    assert torch.equal(group_normalize(rewards, group_size), torch.zeros(group_size, k))


@FAST
@given(
    st.integers(1, 3),
    st.integers(2, 5),
    st.data(),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)
def test_non_finite_reward_names_column_and_row(n_groups, group_size, data, bad):
    b = n_groups * group_size
    row = data.draw(st.integers(0, b - 1))
    col = data.draw(st.integers(0, 2))
    rewards = torch.zeros(b, 3)
    rewards[row, col] = bad
    with pytest.raises(ValueError, match=rf"index {col}\).*row {row}\b|index {col} .*row {row}\b"):
        group_normalize(rewards, group_size)
    names = ["hpsv3", "dino_seg", "clip_t"]
    with pytest.raises(ValueError, match=rf"'{names[col]}' \(index {col}\).*at row {row}\b"):
        group_normalize(rewards, group_size, column_names=names)


@pytest.mark.parametrize(
    ("shape", "group_size", "match"),
    [((6, 2), 4, "not divisible"), ((6, 2), 1, "group_size"), ((6,), 2, r"\[B, K\]")],
)
def test_group_normalize_rejects_bad_layout(shape, group_size, match):
    with pytest.raises(ValueError, match=match):
        group_normalize(torch.zeros(shape), group_size)


def test_group_normalize_rejects_wrong_number_of_names():
    with pytest.raises(ValueError, match="K=2"):
        group_normalize(torch.zeros(4, 2), 2, column_names=["only_one"])


def test_group_normalize_upcasts_bf16():
    rewards = torch.tensor([[1.0], [2.0], [4.0], [4.0]], dtype=torch.bfloat16)
    adv = group_normalize(rewards, 2)
    assert adv.dtype == torch.float32
    assert torch.equal(adv[2:], torch.zeros(2, 1))


# ---------------------------------------------------------------- combiners


def sars_reference(ap: float, aid: float, wp: float, wid: float, g: float) -> float:
    bonus = g * math.tanh(ap * aid)
    return wp * ap + wid * aid + (bonus if (ap > 0 or aid > 0) else -bonus)


def test_linear_closed_form():
    adv = torch.tensor([[1.0, -2.0], [0.5, 0.5]])
    out = combine_advantages(adv, [0.7, 0.3], "linear")
    torch.testing.assert_close(out, torch.tensor([0.7 - 0.6, 0.5]))


@pytest.mark.parametrize(
    ("ap", "aid"), [(1.0, 2.0), (1.0, -2.0), (-1.0, 2.0), (-1.0, -0.5), (0.0, 0.0), (0.0, -1.0)]
)
def test_sars_closed_form_two_rewards(ap, aid):
    out = combine_advantages(torch.tensor([[ap, aid]]), torch.tensor([0.6, 0.4]), "sars", gamma=0.4)
    assert out.item() == pytest.approx(sars_reference(ap, aid, 0.6, 0.4, 0.4), abs=1e-6)


adv_value = st.floats(-4.0, 4.0, allow_nan=False, width=32)
positive = st.floats(1e-3, 4.0)


@FAST
@given(positive, positive, st.floats(0.0, 1.0), st.floats(0.01, 1.0))
def test_sars_sign_table(a, b, wp, gamma):
    w = [wp, 1 - wp]

    def bonus(ap, aid):
        adv = torch.tensor([[ap, aid]])
        return (
            combine_advantages(adv, w, "sars", gamma) - combine_advantages(adv, w, "linear")
        ).item()

    assert bonus(a, b) >= 0  # both good: reward the synergy
    assert bonus(a, -b) <= 0 and bonus(-a, b) <= 0  # mixed: penalty
    assert bonus(-a, -b) <= 0  # both bad: penalty despite a positive product
    assert bonus(a, b) == pytest.approx(gamma * math.tanh(a * b), abs=1e-5)
    assert bonus(-a, -b) == pytest.approx(-gamma * math.tanh(a * b), abs=1e-5)


@FAST
@given(st.lists(adv_value, min_size=2, max_size=2), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_sars_matches_reference_formula(pair, wp, gamma):
    ap, aid = pair
    out = combine_advantages(torch.tensor([pair]), [wp, 1 - wp], "sars", gamma).item()
    assert out == pytest.approx(sars_reference(ap, aid, wp, 1 - wp, gamma), abs=1e-5)


def test_sars_three_rewards_averages_pairs():
    a = [1.0, -0.5, 2.0]
    adv = torch.tensor([a])
    w = [0.2, 0.3, 0.5]
    pairs = [(0, 1), (0, 2), (1, 2)]
    synergy = sum(
        (1 if (a[i] > 0 or a[j] > 0) else -1) * math.tanh(a[i] * a[j]) for i, j in pairs
    ) / len(pairs)
    expected = sum(wi * ai for wi, ai in zip(w, a)) + 0.4 * synergy
    assert combine_advantages(adv, w, "sars").item() == pytest.approx(expected, abs=1e-6)


def test_harmonic_closed_form():
    adv = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    out = combine_advantages(adv, [0.5, 0.5], "harmonic", gamma=0.4)
    expected0 = 0.5 * 1 + 0.5 * 3 + 0.4 * 3.0 / (4.0 + 1e-6)
    torch.testing.assert_close(out, torch.tensor([expected0, 0.0]))


def test_harmonic_three_rewards_averages_pairs():
    a = [1.0, 2.0, 4.0]
    pair_terms = [a[i] * a[j] / (a[i] + a[j] + 1e-6) for i, j in [(0, 1), (0, 2), (1, 2)]]
    expected = sum(a) / 3 + 0.4 * sum(pair_terms) / 3
    out = combine_advantages(torch.tensor([a]), [1 / 3] * 3, "harmonic")
    assert out.item() == pytest.approx(expected, abs=1e-6)


def test_min_max_ignore_weights():
    adv = torch.tensor([[1.0, -2.0, 0.5], [3.0, 4.0, -1.0]])
    for w in ([1.0, 1.0, 1.0], [0.1, 0.0, 5.0]):
        torch.testing.assert_close(combine_advantages(adv, w, "min"), torch.tensor([-2.0, -1.0]))
        torch.testing.assert_close(combine_advantages(adv, w, "max"), torch.tensor([1.0, 4.0]))


def test_product_closed_form_group_of_two():
    adv = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
    out = combine_advantages(adv, [1.0, 1.0], "product", group_size=2)
    # Two distinct products in a group of two always z-score to -+1/sqrt(2).
    torch.testing.assert_close(out, torch.tensor([1.0, -1.0]) / math.sqrt(2), atol=1e-6, rtol=0)


@FAST
@given(grouped_rewards(max_k=3), st.booleans(), st.floats(0.0, 2.0))
def test_product_never_nan(case, flatten_first_group, w):
    rewards, g = case
    if flatten_first_group:
        rewards[:g] = rewards[0]
    adv = group_normalize(rewards, g)
    out = combine_advantages(adv, [w] * adv.shape[1], "product", group_size=g)
    assert out.shape == (rewards.shape[0],)
    assert torch.isfinite(out).all()
    if flatten_first_group:
        assert torch.equal(out[:g], torch.zeros(g))
    sums = out.reshape(-1, g).sum(dim=1)
    assert torch.allclose(sums, torch.zeros_like(sums), atol=1e-4)


def test_product_handles_extreme_advantages():
    adv = torch.tensor([[-1e4, 3.0], [1e4, 1e4], [0.0, 0.0], [-200.0, -200.0]])
    out = combine_advantages(adv, [1.0, 1.0], "product", group_size=2)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("strategy", "exponent"), [("product", 1), ("product-2w", 2)])
def test_product_exponents_by_hand(strategy, exponent):
    gen = torch.Generator().manual_seed(0)
    adv, w = torch.randn(8, 2, generator=gen), torch.rand(8, 2, generator=gen)
    p = (torch.nn.functional.softplus(adv.double()) ** (exponent * w.double())).prod(dim=1)
    groups = p.reshape(2, 4)
    z = (groups - groups.mean(dim=1, keepdim=True)) / (groups.std(dim=1, keepdim=True) + 1e-8)
    out = combine_advantages(adv, w, strategy, group_size=4)
    torch.testing.assert_close(out, z.flatten().float())


def test_product_requires_group_size():
    with pytest.raises(ValueError, match="group_size"):
        combine_advantages(torch.zeros(4, 2), [1.0, 1.0], "product")


@FAST
@given(grouped_rewards(max_k=3), st.sampled_from(sorted(ADVANTAGE_STRATEGIES)))
def test_every_strategy_is_finite_on_normalised_groups(case, strategy):
    rewards, g = case
    k = rewards.shape[1]
    assume(k >= 2 or strategy not in ("sars", "harmonic"))
    adv = group_normalize(rewards, g)
    out = combine_advantages(adv, torch.full((k,), 1.0 / k), strategy, group_size=g)
    assert out.shape == (rewards.shape[0],)
    # harmonic's pole at A1 + A2 = -1e-6 is the paper's; z-scores essentially never hit it.
    assert torch.isfinite(out).all()


def test_per_sample_weights_match_rowwise_calls():
    adv = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    w = torch.rand(6, 2, generator=torch.Generator().manual_seed(1))
    batched = combine_advantages(adv, w, "sars")
    rows = torch.cat([combine_advantages(adv[i : i + 1], w[i], "sars") for i in range(6)])
    torch.testing.assert_close(batched, rows)


def test_unknown_strategy_lists_choices():
    with pytest.raises(ValueError) as err:
        combine_advantages(torch.zeros(2, 2), [0.5, 0.5], "synergy")
    msg = str(err.value)
    assert "'synergy'" in msg
    for name in ADVANTAGE_STRATEGIES:
        assert repr(name) in msg


@pytest.mark.parametrize("weights", [[1.0], [0.2, 0.3, 0.5], torch.ones(3, 2), torch.ones(2, 2, 2)])
def test_wrong_weight_shape_names_expected_k(weights):
    with pytest.raises(ValueError, match="K=2"):
        combine_advantages(torch.zeros(4, 2), weights, "linear")


@pytest.mark.parametrize("strategy", ["sars", "harmonic"])
def test_pairwise_strategies_need_two_rewards(strategy):
    with pytest.raises(ValueError, match="K >= 2"):
        combine_advantages(torch.zeros(4, 1), [1.0], strategy)


def test_non_finite_advantages_rejected():
    with pytest.raises(ValueError, match="NaN or inf"):
        combine_advantages(torch.tensor([[math.nan, 0.0]]), [0.5, 0.5], "linear")
