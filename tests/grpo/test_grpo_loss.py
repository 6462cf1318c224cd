"""Clipped policy loss and Gaussian KL."""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cgrpo.grpo import PPOStats, gaussian_kl, ppo_clip_loss

FAST = settings(max_examples=50, deadline=None)
values = st.floats(-20.0, 20.0, width=32)


@FAST
@given(
    hnp.arrays(np.float32, st.integers(1, 16), elements=values),
    st.data(),
    st.floats(1e-5, 0.5),
)
def test_ratio_is_one_when_log_probs_equal(logp, data, eps):
    adv = data.draw(hnp.arrays(np.float32, logp.shape, elements=values))
    lp = torch.from_numpy(logp).requires_grad_(True)
    a = torch.from_numpy(adv)
    loss, stats = ppo_clip_loss(lp, lp.detach().clone(), a, clip_range=eps)
    assert stats == PPOStats(clip_fraction=0.0, ratio_mean=1.0, ratio_min=1.0, ratio_max=1.0)
    # At ratio 1 the loss is -mean(clipped A) and its gradient is -clipped A / n.
    clipped = a.clamp(-5, 5)
    assert loss.item() == pytest.approx(-clipped.mean().item(), abs=1e-5)
    loss.backward()
    torch.testing.assert_close(lp.grad, -clipped / len(a))


def test_closed_form_clipping():
    eps = 0.1
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.5, 1.5, 0.5, 1.05]))
    adv = torch.tensor([1.0, -1.0, 1.0, 7.0])
    loss, stats = ppo_clip_loss(new, old, adv, clip_range=eps)
    # A>0, r>1+eps: clipped at 1.1 -> -1.1; A<0, r>1+eps: unclipped wins -> 1.5;
    # A>0, r<1-eps: unclipped -> -0.5; A=7 clipped to 5, r inside -> -5.25.
    expected = (-1.1 + 1.5 - 0.5 - 5.25) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats.clip_fraction == pytest.approx(0.75)
    assert stats.ratio_min == pytest.approx(0.5)
    assert stats.ratio_max == pytest.approx(1.5)
    assert stats.ratio_mean == pytest.approx((1.5 + 1.5 + 0.5 + 1.05) / 4, abs=1e-6)


def test_per_sample_advantage_broadcasts_over_timesteps():
    new = torch.randn(3, 5, generator=torch.Generator().manual_seed(0)) * 1e-3
    old = torch.zeros(3, 5)
    adv = torch.tensor([1.0, -2.0, 0.5])
    loss_b, _ = ppo_clip_loss(new, old, adv)
    loss_full, _ = ppo_clip_loss(new, old, adv[:, None].expand(3, 5))
    assert loss_b.item() == pytest.approx(loss_full.item())


def test_old_log_prob_gets_no_gradient():
    new = torch.zeros(3, requires_grad=True)
    old = torch.zeros(3, requires_grad=True)
    loss, _ = ppo_clip_loss(new, old, torch.ones(3))
    loss.backward()
    assert old.grad is None and new.grad is not None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip_range": 0.0}, "clip_range"),
        ({"clip_range": -1e-4}, "clip_range"),
        ({"adv_clip": 0.0}, "adv_clip"),
        ({"old_log_prob": torch.zeros(4)}, "old_log_prob shape"),
        ({"advantages": torch.zeros(2)}, "advantages shape"),
    ],
)
def test_ppo_argument_checks(kwargs, match):
    args = {
        "log_prob": torch.zeros(3),
        "old_log_prob": torch.zeros(3),
        "advantages": torch.zeros(3),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ppo_clip_loss(**args)


def test_gaussian_kl_closed_form_and_std_shapes():
    mean = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    ref = torch.tensor([[0.0, 0.0], [3.0, 1.0]])
    # sum of squared gaps per sample: 5 and 10, averaged over 2 elements.
    torch.testing.assert_close(gaussian_kl(mean, ref, 1.0), torch.tensor([1.25, 2.5]))
    torch.testing.assert_close(gaussian_kl(mean, ref, torch.tensor(0.5)), torch.tensor([5.0, 10.0]))
    torch.testing.assert_close(
        gaussian_kl(mean, ref, torch.tensor([1.0, 0.5])), torch.tensor([1.25, 10.0])
    )
    torch.testing.assert_close(
        gaussian_kl(mean, ref, torch.tensor([[1.0], [0.5]])), torch.tensor([1.25, 10.0])
    )


@FAST
@given(hnp.arrays(np.float32, (2, 3), elements=values), st.floats(0.05, 3.0))
def test_gaussian_kl_equals_torch_kl(arr, std):
    mean = torch.from_numpy(arr)
    ref = torch.flip(mean, dims=[1])
    p = torch.distributions.Normal(mean, std)
    q = torch.distributions.Normal(ref, std)
    expected = torch.distributions.kl_divergence(p, q).mean(dim=1)
    torch.testing.assert_close(gaussian_kl(mean, ref, std), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(gaussian_kl(mean, mean, std), torch.zeros(2))


@pytest.mark.parametrize(
    ("std", "match"),
    [
        (0.0, "> 0"),
        (torch.tensor([1.0, -1.0]), "> 0"),
        (torch.ones(2, 2, 2), "broadcast"),
        (math.nan, "> 0"),
    ],
)
def test_gaussian_kl_rejects_bad_std(std, match):
    with pytest.raises(ValueError, match=match):
        gaussian_kl(torch.zeros(2, 2), torch.zeros(2, 2), std)
