"""Min-norm weights and the balanced direction of MGDA."""

from __future__ import annotations

import math

import pytest
import torch

from cgrpo.grpo import mgda_direction, min_norm_weights
from cgrpo.grpo.mgda import project_to_simplex


def _gram(vectors: torch.Tensor) -> torch.Tensor:
    return vectors.double() @ vectors.double().T


def test_two_gradients_closed_form():
    # g1 = (1, 0), g2 = (0, 2): min |a g1 + (1-a) g2|^2 at a = 4/5
    alpha = min_norm_weights(_gram(torch.tensor([[1.0, 0.0], [0.0, 2.0]])))
    torch.testing.assert_close(alpha, torch.tensor([0.8, 0.2], dtype=torch.float64))
    # one gradient inside the other's half-space past it: the shorter one alone
    alpha = min_norm_weights(_gram(torch.tensor([[1.0, 0.0], [3.0, 1.0]])))
    torch.testing.assert_close(alpha, torch.tensor([1.0, 0.0], dtype=torch.float64))
    # equal gradients: half each, not NaN
    same = min_norm_weights(_gram(torch.tensor([[1.0, 1.0], [1.0, 1.0]])))
    torch.testing.assert_close(same, torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_unit_gradients_of_two_rewards_always_split_evenly():
    for angle in (0.3, 1.5, 2.9):
        u = torch.tensor([[1.0, 0.0], [math.cos(angle), math.sin(angle)]], dtype=torch.float64)
        torch.testing.assert_close(min_norm_weights(_gram(u)), torch.full((2,), 0.5).double())


def test_orthonormal_gradients_get_equal_weights():
    torch.testing.assert_close(min_norm_weights(torch.eye(4)), torch.full((4,), 0.25).double())


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [3, 5])
def test_solver_meets_the_optimality_conditions(seed, k):
    g = torch.randn(k, 6, generator=torch.Generator().manual_seed(seed))
    m = _gram(g)
    alpha = min_norm_weights(m)
    assert float(alpha.min()) >= 0 and abs(float(alpha.sum()) - 1) < 1e-12
    grad = m @ alpha
    value = float(alpha @ grad)
    # KKT on the simplex: (M a)_i = a^T M a where a_i > 0, and >= it everywhere
    assert float(grad.min()) >= value - 1e-6
    active = alpha > 1e-6
    torch.testing.assert_close(
        grad[active], torch.full_like(grad[active], value), atol=1e-6, rtol=0
    )
    # no vertex or random simplex point does better
    for trial in torch.distributions.Dirichlet(torch.ones(k)).sample((200,)).double():
        assert float(trial @ m @ trial) >= value - 1e-9


def test_projection_onto_the_simplex():
    torch.testing.assert_close(
        project_to_simplex(torch.tensor([0.2, 0.3, 0.5])), torch.tensor([0.2, 0.3, 0.5])
    )
    torch.testing.assert_close(
        project_to_simplex(torch.tensor([2.0, 0.0, 0.0])), torch.tensor([1.0, 0.0, 0.0])
    )
    torch.testing.assert_close(
        project_to_simplex(torch.tensor([1.0, 1.0, -5.0])), torch.tensor([0.5, 0.5, 0.0])
    )


def _params(*vectors):
    """One reward's gradient split over two parameters (a [2] and a [1] tensor)."""
    return [[torch.tensor(v[:2]), torch.tensor(v[2:])] for v in vectors]


def test_direction_is_the_weighted_unit_gradients_times_the_mean_norm():
    grads = _params([3.0, 0.0, 0.0], [0.0, 0.0, 1.0])  # norms 3 and 1, orthogonal
    step = mgda_direction(grads)
    torch.testing.assert_close(step.alpha, torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(step.norms, torch.tensor([3.0, 1.0], dtype=torch.float64))
    # 0.5 * (1, 0, 0) + 0.5 * (0, 0, 1), times the mean norm 2
    torch.testing.assert_close(step.direction[0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(step.direction[1], torch.tensor([1.0]))


def test_the_direction_does_not_oppose_any_reward():
    grads = _params([1.0, 0.0, 0.0], [-0.9, 0.3, 0.0], [0.0, -0.2, 1.0])
    step = mgda_direction(grads)
    d = torch.cat(step.direction)
    for g in grads:
        assert float(d @ torch.cat(g)) >= -1e-6


def test_a_zero_gradient_takes_no_part():
    grads = _params([0.0, 2.0, 0.0], [0.0, 0.0, 0.0])
    step = mgda_direction(grads)
    torch.testing.assert_close(step.alpha, torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(torch.cat(step.direction), torch.tensor([0.0, 2.0, 0.0]))
    nothing = mgda_direction(_params([0.0] * 3, [0.0] * 3), previous=torch.tensor([0.7, 0.3]))
    assert torch.equal(torch.cat(nothing.direction), torch.zeros(3))
    torch.testing.assert_close(nothing.alpha, torch.tensor([0.7, 0.3], dtype=torch.float64))


def test_ema_smooths_alpha():
    grads = _params([1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0])
    raw = mgda_direction(grads).alpha
    prev = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    step = mgda_direction(grads, previous=prev, ema=0.9)
    torch.testing.assert_close(step.raw_alpha, raw)
    torch.testing.assert_close(step.alpha, 0.9 * prev + 0.1 * raw)
    with pytest.raises(ValueError, match="ema"):
        mgda_direction(grads, ema=1.0)
