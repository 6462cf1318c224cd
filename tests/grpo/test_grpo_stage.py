"""The advantage stage: normalisations, the multi-reward baselines, invariants, K checks."""

from __future__ import annotations

import math

import pytest
import torch

from cgrpo.config import ConfigError, load_config
from cgrpo.config import sections as train_config
from cgrpo.grpo import (
    NORMALIZATIONS,
    STRATEGIES,
    WEIGHT_SCHEDULES,
    GateParams,
    batch_normalize,
    compute_advantages,
    group_normalize,
)

ROLES2 = ["prompt", "identity"]
ROLES3 = ["prompt", "identity", "identity"]


def test_config_choices_are_the_registries():
    assert set(train_config.ADVANTAGE_STRATEGIES) == set(STRATEGIES)
    assert set(train_config.WEIGHT_SCHEDULES) == set(WEIGHT_SCHEDULES)
    assert train_config.NORMALIZATIONS == NORMALIZATIONS


# ---------------------------------------------------------------- normalisations


def test_batch_std_and_no_std_by_hand():
    r = torch.tensor([[1.0], [3.0], [2.0], [2.0], [4.0], [9.0]])
    centred = torch.tensor([[-1.0], [1.0], [0.0], [-3.0], [-1.0], [4.0]])
    # the column's unbiased std over all six rows: squares sum to 41.5, / 5 = 8.3
    torch.testing.assert_close(
        group_normalize(r, 3, normalize="batch"), centred / (math.sqrt(8.3) + 1e-8)
    )
    torch.testing.assert_close(group_normalize(r, 3, normalize="none"), centred)
    flat = torch.tensor([[7.0], [7.0], [7.0], [1.0], [2.0], [3.0]])
    for how in NORMALIZATIONS:
        assert torch.equal(group_normalize(flat, 3, normalize=how)[:3], torch.zeros(3, 1))


def test_unknown_normalization_lists_choices():
    with pytest.raises(ValueError, match="'batch', 'group', 'none'"):
        group_normalize(torch.zeros(4, 1), 2, normalize="global")


def test_batch_normalize_pools_or_keeps_an_axis():
    x = torch.tensor([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0]])
    pooled = batch_normalize(x)
    assert abs(float(pooled.mean())) < 1e-6 and abs(float(pooled.std()) - 1) < 1e-6
    per_col = batch_normalize(x, dim=-1)
    torch.testing.assert_close(per_col[:, 0], per_col[:, 1])
    torch.testing.assert_close(per_col[:, 0], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(batch_normalize(torch.full((4,), 2.5)), torch.zeros(4))


# ---------------------------------------------------------------- the baselines by hand


def test_sum_normalize_z_scores_the_weighted_raw_sum():
    r = torch.tensor([[1.0, 5.0], [3.0, 5.0], [2.0, 0.0]])
    out = compute_advantages(r, [0.5, 0.5], "sum-normalize", group_size=3)
    # sums 3, 4, 1 (x0.5 cancels): mean 8/3, unbiased variance 7/3
    dev = torch.tensor([1 / 3, 4 / 3, -5 / 3])
    torch.testing.assert_close(out, dev / (math.sqrt(7 / 3) + 1e-8))
    # not the same as linear: the per-reward z-scores weigh each reward's spread out
    assert not torch.allclose(out, compute_advantages(r, [0.5, 0.5], "linear", group_size=3))


def test_gdpo_batch_normalises_the_linear_combination():
    r = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 1.0], [4.0, 1.0]])
    out = compute_advantages(r, [0.5, 0.5], "gdpo", group_size=2)
    # group z-scores of a pair are +-1/sqrt(2); the second group's column 1 is flat (0)
    linear = torch.tensor([-1.0, 1.0, 0.5, -0.5]) / math.sqrt(2)
    torch.testing.assert_close(out, linear / math.sqrt(1.25 / 3), rtol=1e-5, atol=1e-6)
    same = compute_advantages(r, [0.5, 0.5], "linear", group_size=2, batch_normalize=True)
    torch.testing.assert_close(out, same)


def test_gate_penalises_only_below_the_threshold():
    r = torch.tensor([[0.2, 0.9], [0.6, 0.3], [0.4, 0.5]])
    gate = GateParams(threshold=0.5, penalty=10.0)
    out = compute_advantages(r, [0.5, 0.5], "gate", group_size=3, roles=ROLES2, gate=gate)
    # 0.5 r_p - 10 * 0.5 * max(0, 0.5 - r_id)^2 = 0.1, 0.3 - 0.2, 0.2
    torch.testing.assert_close(
        out, torch.tensor([-1.0, -1.0, 2.0]) / math.sqrt(3), rtol=1e-5, atol=1e-6
    )
    above = r.clone()
    above[0, 1] = 0.6  # still above the threshold: nothing changes
    torch.testing.assert_close(
        compute_advantages(above, [0.5, 0.5], "gate", group_size=3, roles=ROLES2, gate=gate), out
    )
    no_penalty = compute_advantages(
        r, [0.5, 0.5], "gate", group_size=3, roles=ROLES2, gate=GateParams(0.5, 0.0)
    )
    torch.testing.assert_close(no_penalty, group_normalize(r[:, :1], 3)[:, 0])


def test_mgda_returns_each_rewards_advantage():
    r = torch.tensor([[1.0, 5.0], [3.0, 5.0], [2.0, 0.0], [0.0, 1.0]])
    out = compute_advantages(r, [0.9, 0.1], "mgda", group_size=2)
    torch.testing.assert_close(out, group_normalize(r, 2))
    steps = compute_advantages(r, torch.rand(4, 3, 2), "mgda", group_size=2)
    assert steps.shape == (4, 3, 2)
    torch.testing.assert_close(steps[:, 2], group_normalize(r, 2))


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_per_step_weights_match_one_call_per_step(strategy):
    torch.manual_seed(0)
    r = torch.randn(6, 2)
    w = torch.rand(6, 3, 2)
    out = compute_advantages(r, w, strategy, group_size=3, roles=ROLES2)
    for t in range(3):
        one = compute_advantages(r, w[:, t], strategy, group_size=3, roles=ROLES2)
        if STRATEGIES[strategy].batch_normalize:  # statistics pool the steps: compare shapes
            assert one.shape == out[:, t].shape
        else:
            torch.testing.assert_close(out[:, t], one)


# ---------------------------------------------------------------- invariants


def _rewards(seed: int, k: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(12, k, generator=g)  # 3 groups of 4, values like toy-id / toy-prompt


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_permuting_a_group_permutes_its_advantages(strategy, normalize):
    r = _rewards(1, 3)
    perm = torch.cat(
        [torch.randperm(4, generator=torch.Generator().manual_seed(q)) + 4 * q for q in range(3)]
    )
    kw = {"group_size": 4, "roles": ROLES3, "normalize": normalize}
    out = compute_advantages(r, [0.5, 0.25, 0.25], strategy, **kw)
    torch.testing.assert_close(
        compute_advantages(r[perm], [0.5, 0.25, 0.25], strategy, **kw),
        out[perm],
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_the_value_of_a_constant_reward_does_not_matter(strategy):
    r = _rewards(2, 3)
    kw = {"group_size": 4, "roles": ROLES3}
    a, b = r.clone(), r.clone()
    a[:, 2], b[:, 2] = 0.1, 0.8  # an identity reward that never varies (below / above 0.5)
    torch.testing.assert_close(
        compute_advantages(a, [0.5, 0.25, 0.25], strategy, **kw),
        compute_advantages(b, [0.5, 0.25, 0.25], strategy, **kw),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("strategy", ["linear", "gdpo", "sum-normalize", "gate"])
@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_a_constant_reward_contributes_nothing(strategy, normalize):
    r = _rewards(3, 3)
    r[:, 2] = 0.2
    kw = {"group_size": 4, "normalize": normalize}
    with_it = compute_advantages(r, [0.5, 0.25, 0.25], strategy, roles=ROLES3, **kw)
    without = compute_advantages(r[:, :2], [0.5, 0.25], strategy, roles=ROLES2, **kw)
    torch.testing.assert_close(with_it, without, rtol=1e-5, atol=1e-5)


def test_mgda_gives_a_constant_reward_a_zero_objective():
    r = _rewards(4, 2)
    r[:, 1] = 0.3
    assert torch.equal(compute_advantages(r, [1, 1], "mgda", group_size=4)[:, 1], torch.zeros(12))


# ---------------------------------------------------------------- K and names


@pytest.mark.parametrize("strategy", ["linear", "sum-normalize", "gdpo", "min", "product"])
def test_strategies_defined_for_one_reward_take_k_1(strategy):
    out = compute_advantages(_rewards(5, 1), [1.0], strategy, group_size=4, roles=["prompt"])
    assert out.shape == (12,) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize(
    ("strategy", "roles", "match"),
    [
        (
            "mgda",
            ["identity"],
            "'mgda' balances the gradients of several rewards and needs K >= 2 trained rewards, got K=1",
        ),
        (
            "gate",
            ["prompt", "prompt"],
            "'gate' needs rewards of both roles prompt and identity, got K=2",
        ),
        ("sars", ["identity"], "'sars' needs rewards of both roles .* K=1"),
    ],
)
def test_a_strategy_that_cannot_take_these_rewards_names_itself_and_k(strategy, roles, match):
    r = _rewards(6, len(roles))
    with pytest.raises(ValueError, match=match):
        compute_advantages(r, [1.0] * len(roles), strategy, group_size=4, roles=roles)
    names = ["toy-prompt", "toy-id"][: len(roles)]
    listed = ", ".join(f"{{name: {n}, role: {role}}}" for n, role in zip(names, roles))
    with pytest.raises(ConfigError, match=f"advantage.strategy = '{strategy}'.*K="):
        load_config(None, [f"advantage.strategy={strategy}", f"rewards=[{listed}]"])


def test_unknown_strategy_lists_every_choice():
    with pytest.raises(ValueError, match="unknown advantage strategy 'marble'.*'gdpo'.*'mgda'"):
        compute_advantages(torch.zeros(4, 2), [1, 1], "marble", group_size=2)


def test_gate_needs_the_roles():
    with pytest.raises(ValueError, match="'gate' needs the reward roles"):
        compute_advantages(_rewards(7, 2), [1, 1], "gate", group_size=4)


def test_non_finite_raw_reward_is_named():
    r = _rewards(8, 2)
    r[5, 1] = float("nan")
    with pytest.raises(ValueError, match="'toy-id' .* at row 5"):
        compute_advantages(r, [1, 1], "sum-normalize", group_size=4, column_names=["p", "toy-id"])


def test_mgda_with_fp16_is_refused():
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        load_config(None, ["advantage.strategy=mgda", "train.mixed_precision=fp16"])
