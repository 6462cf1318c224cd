"""The stochastic sampler step and its log-probability."""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cgrpo.grpo import SDE_NOISE_SCALES, SDEStepResult, sde_step, sigma_schedule

FAST = settings(max_examples=50, deadline=None)
SHAPE = (3, 2, 2, 2)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def euler_maruyama_mean(x, v, s, s_next, g):
    """The reverse SDE written out from the flow-matching convention, independently.

    x_s = (1-s) x0 + s eps and v = eps - x0 give eps = x + (1-s) v, so the score of x_s is
    -(x + (1-s) v) / s. The reverse-time SDE sharing the ODE's marginals is
    dx = [v - (g^2 / 2) * score] ds + g dW, integrated with ds < 0. One Euler-Maruyama step
    from s to s_next has ds = s_next - s.
    """
    score = -(x + (1 - s) * v) / s
    drift = v - 0.5 * g**2 * score
    return x + drift * (s_next - s)


noise_levels = st.floats(0.01, 1.5)


@st.composite
def step_case(draw):
    n = draw(st.integers(2, 30))
    shift = draw(st.floats(1.0, 5.0))
    index = draw(st.integers(0, n - 1))
    seed = draw(st.integers(0, 2**16))
    return n, shift, index, seed


@FAST
@given(step_case(), noise_levels, st.sampled_from(sorted(SDE_NOISE_SCALES)))
def test_mean_is_euler_maruyama_step_of_reverse_sde(case, eta, kind):
    n, shift, index, seed = case
    sigmas = sigma_schedule(n, shift)
    x, v = randn(*SHAPE, seed=seed), randn(*SHAPE, seed=seed + 1)
    out = sde_step(v, x, sigmas, index, eta, kind=kind)
    s, s_next = sigmas[index].item(), sigmas[index + 1].item()
    if kind == "dance":
        g = eta
    else:
        denom = 1 - (sigmas[1].item() if s == 1.0 else s)
        g = eta * math.sqrt(s / denom)
    expected = euler_maruyama_mean(x.double(), v.double(), s, s_next, g)
    torch.testing.assert_close(out.mean.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(out.std, torch.full_like(out.std, g * math.sqrt(s - s_next)), rtol=1e-5)


@FAST
@given(step_case(), noise_levels, st.sampled_from(sorted(SDE_NOISE_SCALES)))
def test_log_prob_matches_torch_normal(case, eta, kind):
    n, shift, index, seed = case
    sigmas = sigma_schedule(n, shift)
    x, v = randn(*SHAPE, seed=seed), randn(*SHAPE, seed=seed + 1)
    out = sde_step(
        v, x, sigmas, index, eta, kind=kind, generator=torch.Generator().manual_seed(seed)
    )
    normal = torch.distributions.Normal(out.mean, out.std.expand_as(out.mean))
    expected = normal.log_prob(out.prev_sample).flatten(1).mean(dim=1)
    assert out.log_prob.shape == (SHAPE[0],)
    torch.testing.assert_close(out.log_prob, expected, rtol=1e-5, atol=1e-4)
    # Recomputing at the sampled point reproduces the sampling-time value exactly.
    again = sde_step(v, x, sigmas, index, eta, kind=kind, prev_sample=out.prev_sample)
    assert torch.equal(again.log_prob, out.log_prob)


def test_closed_form_single_element():
    sigmas = torch.tensor([1.0, 0.5, 0.0])
    x, v = torch.tensor([[2.0]]), torch.tensor([[1.0]])
    out = sde_step(v, x, sigmas, 1, 0.4, prev_sample=torch.tensor([[1.0]]))
    # s = 0.5, D = 0.5, x1_hat = 2 + 0.5 = 2.5; mean = 2 - 0.5 - (0.16*0.5/1.0)*2.5 = 1.3
    assert out.mean.item() == pytest.approx(1.3, abs=1e-6)
    std = 0.4 * math.sqrt(0.5)
    assert out.std.item() == pytest.approx(std, abs=1e-7)
    expected = -((1.0 - 1.3) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    assert out.log_prob.item() == pytest.approx(expected, abs=1e-5)


def test_flow_kind_is_finite_at_pure_noise():
    sigmas = sigma_schedule(10, 3.0)
    assert sigmas[0].item() == 1.0
    x, v = randn(*SHAPE, seed=0), randn(*SHAPE, seed=1)
    out = sde_step(v, x, sigmas, 0, 0.7, kind="flow", generator=torch.Generator().manual_seed(0))
    expected_g = 0.7 * math.sqrt(1.0 / (1.0 - sigmas[1].item()))
    assert out.std.flatten()[0].item() == pytest.approx(
        expected_g * math.sqrt(1 - sigmas[1].item()), rel=1e-5
    )
    for t in (out.mean, out.std, out.log_prob, out.prev_sample):
        assert torch.isfinite(t).all()


@FAST
@given(st.integers(2, 25), st.integers(0, 2**16), st.sampled_from(sorted(SDE_NOISE_SCALES)))
def test_per_sample_index_equals_looping(n, seed, kind):
    sigmas = sigma_schedule(n, 3.0)
    b = 4
    idx = torch.randint(0, n, (b,), generator=torch.Generator().manual_seed(seed))
    x, v = randn(b, 3, 2, seed=seed), randn(b, 3, 2, seed=seed + 1)
    target = randn(b, 3, 2, seed=seed + 2)
    batched = sde_step(v, x, sigmas, idx, 0.4, kind=kind, prev_sample=target)
    for i in range(b):
        single = sde_step(
            v[i : i + 1],
            x[i : i + 1],
            sigmas,
            int(idx[i]),
            0.4,
            kind=kind,
            prev_sample=target[i : i + 1],
        )
        torch.testing.assert_close(batched.mean[i : i + 1], single.mean)
        torch.testing.assert_close(batched.std[i : i + 1], single.std)
        torch.testing.assert_close(batched.log_prob[i : i + 1], single.log_prob)


def test_sampling_statistics():
    sigmas = sigma_schedule(10, 3.0)
    x = torch.zeros(1, 20000)
    v = torch.ones(1, 20000)
    out = sde_step(v, x, sigmas, 4, 0.5, generator=torch.Generator().manual_seed(3))
    resid = out.prev_sample - out.mean
    std = out.std.item()
    assert abs(resid.mean().item()) < 4 * std / math.sqrt(20000)
    assert resid.std().item() == pytest.approx(std, rel=0.03)


def test_generator_makes_draws_reproducible():
    sigmas = sigma_schedule(10)
    x, v = randn(*SHAPE, seed=0), randn(*SHAPE, seed=1)
    a = sde_step(v, x, sigmas, 2, 0.4, generator=torch.Generator().manual_seed(9))
    b = sde_step(v, x, sigmas, 2, 0.4, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a.prev_sample, b.prev_sample)


def test_given_prev_sample_is_not_resampled():
    sigmas = sigma_schedule(10)
    x, v = randn(*SHAPE, seed=0), randn(*SHAPE, seed=1)
    target = randn(*SHAPE, seed=2)
    out = sde_step(v, x, sigmas, 3, 0.4, prev_sample=target)
    assert torch.equal(out.prev_sample, target)


def test_zero_noise_is_deterministic_euler():
    sigmas = sigma_schedule(8)
    x, v = randn(*SHAPE, seed=0), randn(*SHAPE, seed=1)
    idx = torch.tensor([0, 3, 7])
    for kind in SDE_NOISE_SCALES:
        out = sde_step(v, x, sigmas, idx, 0.0, kind=kind)
        d = (sigmas[idx] - sigmas[idx + 1]).view(-1, 1, 1, 1)
        torch.testing.assert_close(out.prev_sample, x - d * v)
        assert torch.equal(out.prev_sample, out.mean)
        assert torch.equal(out.std, torch.zeros(3, 1, 1, 1))
        assert torch.equal(out.log_prob, torch.zeros(3))


def test_bf16_inputs_compute_in_float32():
    sigmas = sigma_schedule(10)
    x = randn(*SHAPE, seed=0).bfloat16()
    v = randn(*SHAPE, seed=1).bfloat16()
    out = sde_step(v, x, sigmas, 2, 0.4, generator=torch.Generator().manual_seed(0))
    assert out.prev_sample.dtype == torch.bfloat16
    assert out.log_prob.dtype == out.mean.dtype == out.std.dtype == torch.float32
    ref = sde_step(v.float(), x.float(), sigmas, 2, 0.4, prev_sample=out.prev_sample.float())
    torch.testing.assert_close(out.mean, ref.mean)
    torch.testing.assert_close(out.log_prob, ref.log_prob)
    # The stored bf16 latent reproduces the sampling-time log-prob.
    again = sde_step(v, x, sigmas, 2, 0.4, prev_sample=out.prev_sample)
    assert torch.equal(again.log_prob, out.log_prob)


def test_log_prob_is_differentiable_in_velocity():
    sigmas = sigma_schedule(10)
    x = randn(*SHAPE, seed=0)
    v = randn(*SHAPE, seed=1).requires_grad_(True)
    out = sde_step(v, x, sigmas, 2, 0.4, generator=torch.Generator().manual_seed(0))
    assert not out.prev_sample.requires_grad
    out.log_prob.sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


def test_result_is_frozen():
    sigmas = sigma_schedule(4)
    out = sde_step(torch.zeros(1, 2), torch.zeros(1, 2), sigmas, 0, 0.4)
    assert isinstance(out, SDEStepResult)
    with pytest.raises(AttributeError):
        out.mean = torch.zeros(1)  # type: ignore[misc]


@FAST
@given(hnp.arrays(np.float32, (2, 5), elements=st.floats(-3, 3, width=32)), st.integers(0, 9))
def test_log_prob_is_maximal_at_the_mean(arr, index):
    sigmas = sigma_schedule(10)
    x = torch.from_numpy(arr)
    v = torch.ones_like(x)
    at_mean = sde_step(v, x, sigmas, index, 0.4)
    best = sde_step(v, x, sigmas, index, 0.4, prev_sample=at_mean.mean)
    assert (best.log_prob >= at_mean.log_prob - 1e-5).all()


def test_unknown_kind_lists_choices():
    with pytest.raises(ValueError) as err:
        sde_step(torch.zeros(1, 2), torch.zeros(1, 2), sigma_schedule(4), 0, 0.4, kind="ddim")
    for name in SDE_NOISE_SCALES:
        assert repr(name) in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"index": 4}, r"\[0, 4\)"),
        ({"index": torch.tensor([0, -1])}, r"\[0, 4\)"),
        ({"index": torch.tensor([0, 1, 2])}, r"shape \[2\]"),
        ({"index": torch.tensor([0.0, 1.0])}, "integer dtype"),
        ({"noise_level": -0.1}, ">= 0"),
        ({"noise_level": math.nan}, "finite"),
        ({"sigmas": torch.tensor([1.0, 1.0, 0.0])}, "strictly decrease"),
        ({"prev_sample": torch.zeros(2, 3)}, "prev_sample shape"),
    ],
)
def test_argument_checks(kwargs, match):
    args = {
        "velocity": torch.zeros(2, 2),
        "sample": torch.zeros(2, 2),
        "sigmas": sigma_schedule(4),
        "index": 0,
        "noise_level": 0.4,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sde_step(**args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sample_with_cpu_generator():
    sigmas = sigma_schedule(10)
    x = randn(*SHAPE, seed=0).cuda().bfloat16()
    v = randn(*SHAPE, seed=1).cuda().bfloat16()
    idx = torch.tensor([0, 4, 9], device="cuda")
    out = sde_step(v, x, sigmas, idx, 0.4, kind="flow", generator=torch.Generator().manual_seed(0))
    assert out.prev_sample.device.type == "cuda" and out.prev_sample.dtype == torch.bfloat16
    again = sde_step(
        v.cpu(), x.cpu(), sigmas, idx.cpu(), 0.4, kind="flow", prev_sample=out.prev_sample.cpu()
    )
    torch.testing.assert_close(out.log_prob.cpu(), again.log_prob, rtol=1e-4, atol=1e-4)
