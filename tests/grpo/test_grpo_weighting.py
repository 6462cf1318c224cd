"""TDW and the other reward-weight schedules."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cgrpo.grpo import (
    WEIGHT_SCHEDULES,
    FixedSchedule,
    LinearSchedule,
    TDWSchedule,
    make_weight_schedule,
    schedule_weights,
    tdw_weights,
)

FAST = settings(max_examples=50, deadline=None)


def paper_w_prompt(i: float) -> float:
    """The paper's TDW prompt weight written out independently (N = 25 scale)."""
    if i < 6:
        return 0.7
    if i >= 22:
        return 0.5
    return 0.3 + 0.4 * (1 - 1 / (1 + math.exp(-0.8 * (i - 10))))


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.7),
        (5, 0.7),
        (6, 0.3 + 0.4 * (1 - 1 / (1 + math.exp(3.2)))),
        (10, 0.5),
        (21, 0.3 + 0.4 * (1 - 1 / (1 + math.exp(-8.8)))),
        (22, 0.5),
        (24, 0.5),
    ],
)
def test_tdw_exact_values_at_25_steps(step, expected):
    w_p, w_id = tdw_weights(step, 25)
    assert isinstance(w_p, float)
    assert w_p == pytest.approx(expected, abs=1e-12)
    assert w_id == pytest.approx(1 - expected, abs=1e-12)


def test_tdw_tensor_matches_scalar():
    steps = torch.arange(25)
    w_p, w_id = tdw_weights(steps, 25)
    assert w_p.shape == w_id.shape == (25,)
    assert w_p.dtype == torch.float32
    expected = torch.tensor([paper_w_prompt(i) for i in range(25)])
    torch.testing.assert_close(w_p, expected)
    torch.testing.assert_close(w_p + w_id, torch.ones(25))


@FAST
@given(st.integers(1, 200), st.data())
def test_tdw_rescales_other_step_counts(num_steps, data):
    step = data.draw(st.integers(0, num_steps - 1))
    w_p, w_id = tdw_weights(step, num_steps)
    assert w_p == pytest.approx(paper_w_prompt(step * 25 / num_steps), abs=1e-12)
    assert w_p + w_id == pytest.approx(1.0)
    # Scalar and vectorised paths agree, also on the breakpoints of rescaled grids.
    t_p, _ = tdw_weights(torch.tensor([step]), num_steps)
    assert t_p.item() == pytest.approx(w_p, abs=1e-6)


@FAST
@given(st.integers(1, 200), st.data())
def test_tdw_limits(num_steps, data):
    step = data.draw(st.integers(0, num_steps - 1))
    i = step * 25 / num_steps
    w_p, _ = tdw_weights(step, num_steps)
    if i < 6:
        assert w_p == 0.7
    elif i >= 22:
        assert w_p == 0.5
    else:
        assert 0.3 < w_p < 0.7


def test_tdw_doubled_steps_hit_same_weights():
    for i in range(25):
        assert tdw_weights(2 * i, 50) == tdw_weights(i, 25)


@FAST
@given(st.floats(6.0, 21.99), st.floats(-0.01, 0.01))
def test_tdw_continuous_inside_sigmoid_phase(i, di):
    j = min(max(i + di, 6.0), 21.999)
    # A continuous step index through the tensor path (N = 25 keeps i' = i).
    w = tdw_weights(torch.tensor([i, j], dtype=torch.float64), 25)[0]
    # |d w_p / d i'| <= 0.4 * 0.8 / 4 = 0.08 on the sigmoid.
    assert abs(w[0].item() - w[1].item()) <= 0.08 * abs(i - j) + 1e-6


@pytest.mark.parametrize("step", [-1, 25, 100])
def test_tdw_rejects_out_of_range_steps(step):
    with pytest.raises(ValueError, match=r"\[0, 25\)"):
        tdw_weights(step, 25)
    with pytest.raises(ValueError, match=r"\[0, 25\)"):
        tdw_weights(torch.tensor([0, step]), 25)


def test_tdw_schedule_interface_matches_function():
    steps = torch.tensor([[0, 6], [13, 24]])
    out = schedule_weights("tdw", steps, 25)
    assert out.shape == (2, 2, 2)
    w_p, w_id = tdw_weights(steps, 25)
    torch.testing.assert_close(out, torch.stack([w_p, w_id], dim=-1))
    single = TDWSchedule()(6, 25)
    assert single.shape == (2,)
    assert single[0].item() == pytest.approx(tdw_weights(6, 25)[0], abs=1e-7)


def test_fixed_schedule():
    out = schedule_weights("fixed", torch.arange(4), 4, w_prompt=0.8)
    torch.testing.assert_close(out, torch.tensor([[0.8, 0.2]] * 4))
    torch.testing.assert_close(FixedSchedule()(0, 1), torch.tensor([0.5, 0.5]))


def test_linear_schedule_ramps_from_start_to_end():
    out = schedule_weights("linear", torch.arange(5), 5, start=0.9, end=0.1)
    torch.testing.assert_close(out[:, 0], torch.tensor([0.9, 0.7, 0.5, 0.3, 0.1]))
    torch.testing.assert_close(out.sum(-1), torch.ones(5))
    assert LinearSchedule(start=0.6)(0, 1)[0].item() == pytest.approx(0.6)


def test_unknown_schedule_lists_choices():
    with pytest.raises(ValueError) as err:
        schedule_weights("cosine", 0, 25)
    for name in WEIGHT_SCHEDULES:
        assert repr(name) in str(err.value)


def test_unknown_schedule_parameter_is_named():
    with pytest.raises(ValueError, match=r"\['w_prompt'\]"):
        make_weight_schedule("fixed", w_identity=0.3)
    with pytest.raises(ValueError, match="no parameters"):
        make_weight_schedule("tdw", gamma=0.4)


@pytest.mark.parametrize(
    ("name", "params"), [("fixed", {"w_prompt": 1.5}), ("linear", {"end": -0.1})]
)
def test_schedule_parameters_are_range_checked(name, params):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_weight_schedule(name, **params)


# ---------------------------------------------------------------- reversed TDW


@pytest.mark.parametrize("n", [25, 10, 7])
def test_reversed_tdw_is_tdw_in_reverse_step_order(n):
    steps = torch.arange(n)
    tdw = make_weight_schedule("tdw")(steps, n)
    rev = make_weight_schedule("reversed-tdw")(steps, n)
    torch.testing.assert_close(rev, tdw.flip(0))
    # the same weights over the steps, so each role's mean weight is TDW's
    torch.testing.assert_close(rev.mean(dim=0), tdw.mean(dim=0))


def test_reversed_tdw_by_hand_at_25_steps():
    rev = make_weight_schedule("reversed-tdw")
    assert rev(0, 25).tolist() == pytest.approx([0.5, 0.5])  # TDW's last step
    assert rev(24, 25).tolist() == pytest.approx([0.7, 0.3])  # TDW's first step
    middle = 0.3 + 0.4 * (1 - 1 / (1 + math.exp(-0.8 * (14 - 10))))  # TDW at step 14
    assert float(rev(10, 25)[0]) == pytest.approx(middle, abs=1e-6)
    with pytest.raises(ValueError, match="no parameters"):
        make_weight_schedule("reversed-tdw", w_prompt=0.5)
