"""Selection of trained timesteps: random subsets and the sliding window."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cgrpo.grpo import (
    StepWindow,
    num_trained_timesteps,
    select_timesteps_random,
    select_timesteps_window,
    sliding_window,
)

FAST = settings(max_examples=50, deadline=None)


@pytest.mark.parametrize(
    ("n", "fraction", "expected"),
    [(25, 0.6, 14), (25, 1.0, 24), (25, 0.01, 1), (2, 0.5, 1), (5, 0.625, 3), (5, 0.375, 2)],
)
def test_num_trained_timesteps(n, fraction, expected):
    # 0.625 * 4 = 2.5 and 0.375 * 4 = 1.5: halves round up, not to even.
    assert num_trained_timesteps(n, fraction) == expected


@FAST
@given(st.integers(2, 60), st.floats(0.01, 1.0), st.integers(1, 8), st.integers(0, 2**16))
def test_random_selection_is_distinct_sorted_and_in_range(n, fraction, b, seed):
    out = select_timesteps_random(n, fraction, b, generator=torch.Generator().manual_seed(seed))
    t = num_trained_timesteps(n, fraction)
    assert out.shape == (b, t) and out.dtype == torch.long
    assert (out >= 0).all() and (out < n - 1).all()
    assert (out[:, 1:] > out[:, :-1]).all()  # sorted and distinct


def test_random_selection_differs_per_sample_and_is_reproducible():
    g = torch.Generator().manual_seed(0)
    out = select_timesteps_random(25, 0.6, 16, generator=g)
    assert len({tuple(r.tolist()) for r in out}) > 1
    again = select_timesteps_random(25, 0.6, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_random_selection_covers_all_steps():
    out = select_timesteps_random(10, 0.3, 500, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(out.flatten(), minlength=9)
    assert counts.shape == (9,) and (counts > 0).all()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((1, 0.6, 2), "num_steps"),
        ((25, 0.0, 2), "fraction"),
        ((25, 1.5, 2), r"\(0, 1\]"),
        ((25, 0.6, 0), "batch_size"),
    ],
)
def test_random_selection_argument_checks(args, match):
    with pytest.raises(ValueError, match=match):
        select_timesteps_random(*args)


def test_sliding_window_moves_then_stops():
    starts = [sliding_window(25, 4, 2, step, shift_interval=3).start for step in range(0, 40, 3)]
    assert starts == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 20, 20, 20]
    w = sliding_window(25, 4, 2, 7, shift_interval=3)
    assert w == StepWindow(start=4, stop=8, num_steps=25)
    assert list(w.steps) == [4, 5, 6, 7] and len(w) == 4


def test_window_sde_ode_split():
    w = sliding_window(10, 3, 1, 2)
    mask = w.sde_mask()
    assert mask.tolist() == [False, False, True, True, True, False, False, False, False, False]
    assert [w.is_sde(i) for i in range(10)] == mask.tolist()
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        w.is_sde(10)


@FAST
@given(st.integers(2, 50), st.data())
def test_window_stays_inside_trainable_steps(n, data):
    size = data.draw(st.integers(1, n - 1))
    stride = data.draw(st.integers(0, 5))
    step = data.draw(st.integers(0, 10_000))
    interval = data.draw(st.integers(1, 10))
    b = data.draw(st.integers(1, 4))
    w = sliding_window(n, size, stride, step, interval)
    assert 0 <= w.start and w.stop <= n - 1 and len(w) == size
    assert not w.is_sde(n - 1)  # the final step is always an ODE step
    out = select_timesteps_window(n, size, stride, step, b, interval)
    assert out.shape == (b, size) and out.dtype == torch.long
    assert (out == torch.arange(w.start, w.stop)).all()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((25, 0, 1, 0), "window_size"),
        ((25, 25, 1, 0), "num_steps - 1 = 24"),
        ((25, 4, -1, 0), "stride"),
        ((25, 4, 1, -3), "global_step"),
        ((1, 1, 1, 0), "num_steps"),
    ],
)
def test_sliding_window_argument_checks(args, match):
    with pytest.raises(ValueError, match=match):
        sliding_window(*args)
    with pytest.raises(ValueError, match=match):
        select_timesteps_window(*args, batch_size=2)


def test_window_shift_interval_checked():
    with pytest.raises(ValueError, match="shift_interval"):
        sliding_window(25, 4, 1, 0, shift_interval=0)
