"""Sigma schedules, including parity with diffusers' FLUX set-up."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cgrpo.grpo import dynamic_sigma_schedule, flux_mu, sigma_schedule, time_shift

FAST = settings(max_examples=50, deadline=None)


def test_sigma_schedule_closed_form():
    out = sigma_schedule(4, shift=3.0)
    t = [1.0, 0.75, 0.5, 0.25, 0.0]
    expected = torch.tensor([3 * x / (1 + 2 * x) for x in t])
    torch.testing.assert_close(out, expected)
    assert out.dtype == torch.float32
    assert out[0].item() == 1.0 and out[-1].item() == 0.0


def test_shift_one_is_uniform():
    torch.testing.assert_close(sigma_schedule(10, shift=1.0), torch.linspace(1, 0, 11))


@FAST
@given(st.integers(1, 100), st.floats(0.1, 10.0))
def test_sigma_schedule_strictly_decreasing(n, shift):
    s = sigma_schedule(n, shift)
    assert s.shape == (n + 1,)
    assert (s[:-1] > s[1:]).all()
    assert s[0].item() == 1.0 and s[-1].item() == 0.0


def test_flux_mu_endpoints_and_midpoint():
    assert flux_mu(256) == pytest.approx(0.5)
    assert flux_mu(4096) == pytest.approx(1.15)
    assert flux_mu(1024) == pytest.approx(0.5 + 0.65 * 768 / 3840)


def test_time_shift_closed_form():
    s = torch.tensor([1.0, 0.5, 0.25, 0.0], dtype=torch.float64)
    mu = 0.7
    e = math.exp(mu)
    expected = torch.tensor([1.0, e / (e + 1), e / (e + 3), 0.0], dtype=torch.float64)
    torch.testing.assert_close(time_shift(s, mu), expected)


def _diffusers_flux_sigmas(n: int, image_seq_len: int) -> torch.Tensor:
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        base_shift=0.5,
        max_shift=1.15,
    )
    # FluxPipeline's own construction: N sigmas down to 1/N, shifted, then a terminal 0.
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=flux_mu(image_seq_len))
    return scheduler.sigmas


@pytest.mark.parametrize(("n", "seq"), [(1, 256), (4, 1024), (25, 1024), (28, 4096), (50, 64)])
def test_dynamic_schedule_matches_diffusers(n, seq):
    pytest.importorskip("diffusers")
    ours = dynamic_sigma_schedule(n, seq)
    theirs = _diffusers_flux_sigmas(n, seq)
    assert ours.shape == theirs.shape == (n + 1,)
    assert torch.allclose(ours, theirs.to(ours.dtype), atol=1e-6, rtol=0)
    assert ours[-1].item() == 0.0 and ours[0].item() == 1.0


@FAST
@given(st.integers(1, 60), st.integers(16, 8192))
def test_dynamic_schedule_property_parity(n, seq):
    pytest.importorskip("diffusers")
    ours = dynamic_sigma_schedule(n, seq)
    theirs = _diffusers_flux_sigmas(n, seq)
    assert torch.allclose(ours, theirs.to(ours.dtype), atol=1e-6, rtol=0)
    assert (ours[:-1] > ours[1:]).all()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: sigma_schedule(0), "num_steps"),
        (lambda: sigma_schedule(10, shift=0.0), "shift"),
        (lambda: flux_mu(1024, base_seq_len=4096), "differ"),
        (lambda: dynamic_sigma_schedule(10, 0), "image_seq_len"),
        (lambda: time_shift(torch.ones(2), math.inf), "mu"),
    ],
)
def test_schedule_argument_checks(call, match):
    with pytest.raises(ValueError, match=match):
        call()
