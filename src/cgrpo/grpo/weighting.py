"""Reward weights as a function of the denoising step (TDW and simpler schedules).

Every schedule returns the pair ``(w_prompt, w_identity)`` with ``w_identity = 1 - w_prompt``.
``step`` is the *actual* denoising step ``i`` of the timestep being trained, ``0 <= i < N``
(``i = 0`` is pure noise), never a loop counter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass
from typing import Protocol, overload

import torch
from torch import Tensor

from ._checks import check_finite_float, check_positive_int, unknown_name

__all__ = [
    "WEIGHT_SCHEDULES",
    "FixedSchedule",
    "LinearSchedule",
    "ReversedTDWSchedule",
    "TDWSchedule",
    "WeightSchedule",
    "make_weight_schedule",
    "register_weight_schedule",
    "schedule_weights",
    "tdw_weights",
]

#: The step count TDW's breakpoints are written for; other N are rescaled onto it.
TDW_REFERENCE_STEPS = 25


def _check_step(step: int | Tensor, num_steps: int) -> None:
    check_positive_int("num_steps", num_steps)
    if isinstance(step, Tensor):
        if step.is_complex() or step.dtype == torch.bool:
            raise ValueError(f"step must be a real tensor, got dtype {step.dtype}")
        if step.numel() == 0:
            return
        lo, hi = float(step.min()), float(step.max())
    elif isinstance(step, int) and not isinstance(step, bool):
        lo = hi = step
    else:
        raise ValueError(f"step must be an int or a tensor, got {type(step).__name__}")
    if not (0 <= lo and hi < num_steps):
        raise ValueError(
            f"step must lie in [0, {num_steps}) for num_steps={num_steps}, got {step!r}"
        )


def _tdw_prompt_scalar(i: float) -> float:
    if i < 6:
        return 0.7
    if i < 22:
        return 0.3 + 0.4 * (1.0 - 1.0 / (1.0 + math.exp(-0.8 * (i - 10.0))))
    return 0.5


def _tdw_prompt_tensor(i: Tensor) -> Tensor:
    middle = 0.3 + 0.4 * (1.0 - torch.sigmoid(0.8 * (i - 10.0)))
    out = torch.where(i < 6, torch.full_like(i, 0.7), middle)
    return torch.where(i >= 22, torch.full_like(i, 0.5), out)


def _as_float_steps(step: Tensor) -> Tensor:
    # float64 so the rescaled step i*25/N lands exactly on integer breakpoints when it should.
    return step.to(torch.float64)


def _rescale(step: Tensor, num_steps: int) -> Tensor:
    # Multiply before dividing, like the int path, so both agree exactly at the breakpoints
    # (18 * (25/75) is 5.999..., 18 * 25 / 75 is 6.0).
    return step * TDW_REFERENCE_STEPS / num_steps


@overload
def tdw_weights(step: int, num_steps: int) -> tuple[float, float]: ...
@overload
def tdw_weights(step: Tensor, num_steps: int) -> tuple[Tensor, Tensor]: ...


def tdw_weights(step: int | Tensor, num_steps: int) -> tuple[float, float] | tuple[Tensor, Tensor]:
    """Time-Aware Dynamic Weighting: ``(w_prompt, w_identity)`` at denoising step ``step``.

    With ``i' = step * 25 / num_steps``::

        w_p = 0.7                                       if i' < 6
        w_p = 0.3 + 0.4 * (1 - sigmoid(0.8 * (i' - 10)))  if 6 <= i' < 22
        w_p = 0.5                                       if i' >= 22
        w_id = 1 - w_p

    Prompt following dominates early (layout), identity in the middle (details), balanced at
    the end. The schedule jumps at ``i' = 6`` and ``i' = 22``, as in the paper.

    Args:
        step: denoising step ``0 <= step < num_steps``; an ``int`` or a tensor of any shape.
        num_steps: ``N``, the number of denoising steps (>= 1).

    Returns:
        Two python floats for an ``int`` step; two float32 tensors shaped like ``step`` for a
        tensor step.
    """
    _check_step(step, num_steps)
    if isinstance(step, Tensor):
        i = _rescale(_as_float_steps(step), num_steps)
        w_p = _tdw_prompt_tensor(i)
        return w_p.float(), (1.0 - w_p).float()
    w_p = _tdw_prompt_scalar(step * TDW_REFERENCE_STEPS / num_steps)
    return w_p, 1.0 - w_p


def _stack(w_prompt: Tensor) -> Tensor:
    return torch.stack([w_prompt, 1.0 - w_prompt], dim=-1).float()


def _step_tensor(step: int | Tensor) -> Tensor:
    return (
        _as_float_steps(step)
        if isinstance(step, Tensor)
        else torch.tensor(float(step), dtype=torch.float64)
    )


class WeightSchedule(Protocol):
    """A reward-weight schedule: ``schedule(step, num_steps) -> [..., 2]`` float32 tensor.

    The last axis is ``(w_prompt, w_identity)``; the leading axes follow ``step``'s shape
    (``[2]`` for an int step, ``[B, 2]`` for a ``[B]`` tensor of steps).
    """

    def __call__(self, step: int | Tensor, num_steps: int) -> Tensor: ...


@dataclass(frozen=True)
class TDWSchedule:
    """The paper's TDW schedule (see :func:`tdw_weights`); takes no parameters."""

    def __call__(self, step: int | Tensor, num_steps: int) -> Tensor:
        _check_step(step, num_steps)
        i = _rescale(_step_tensor(step), num_steps)
        return _stack(_tdw_prompt_tensor(i))


@dataclass(frozen=True)
class ReversedTDWSchedule:
    """TDW in reverse step order: the weights TDW gives step ``N - 1 - i``, at step ``i``.

    Every step count gets TDW's weights, only their order in time is reversed (balanced at
    the start, identity-heavy next, prompt-heavy last), so each role's mean weight over the
    steps is TDW's. Against TDW it tells whether TDW's timing matters or only that the
    weights change over the steps. Takes no parameters.
    """

    def __call__(self, step: int | Tensor, num_steps: int) -> Tensor:
        _check_step(step, num_steps)
        i = _rescale((num_steps - 1) - _step_tensor(step), num_steps)
        return _stack(_tdw_prompt_tensor(i))


def _check_unit(name: str, value: float) -> float:
    value = check_finite_float(name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


@dataclass(frozen=True)
class FixedSchedule:
    """Static weights (naive GRPO): ``w_prompt`` at every step."""

    w_prompt: float = 0.5

    def __post_init__(self) -> None:
        _check_unit("w_prompt", self.w_prompt)

    def __call__(self, step: int | Tensor, num_steps: int) -> Tensor:
        _check_step(step, num_steps)
        return _stack(torch.full_like(_step_tensor(step), self.w_prompt))


@dataclass(frozen=True)
class LinearSchedule:
    """``w_prompt`` ramps linearly from ``start`` at step 0 to ``end`` at step ``N - 1``.

    With a single step (``N = 1``) the weight is ``start``.
    """

    start: float = 0.7
    end: float = 0.5

    def __post_init__(self) -> None:
        _check_unit("start", self.start)
        _check_unit("end", self.end)

    def __call__(self, step: int | Tensor, num_steps: int) -> Tensor:
        _check_step(step, num_steps)
        frac = _step_tensor(step) / max(num_steps - 1, 1)
        return _stack(self.start + (self.end - self.start) * frac)


#: Schedule name -> class; the class's fields are the schedule's parameters.
WEIGHT_SCHEDULES: dict[str, type[WeightSchedule]] = {
    "tdw": TDWSchedule,
    "fixed": FixedSchedule,
    "linear": LinearSchedule,
    "reversed-tdw": ReversedTDWSchedule,
}


def register_weight_schedule(name: str, schedule: type[WeightSchedule]) -> None:
    """Add ``advantage.schedule: name`` without editing cgrpo (tests/recipes/recipe_schedule.py).

    ``schedule`` is a dataclass whose fields are its parameters (the trainer builds it with
    their defaults) and whose ``__call__(step, num_steps)`` returns ``[..., 2]`` float32
    ``(w_prompt, w_identity)`` (:class:`WeightSchedule`). The name becomes a valid config value.

    Raises:
        ValueError: ``name`` is already a schedule, or ``schedule`` is not a dataclass.
    """
    from cgrpo.config.sections import WEIGHT_SCHEDULES as CONFIG_NAMES

    if name in WEIGHT_SCHEDULES:
        raise ValueError(f"weight schedule {name!r} is already registered")
    if not (isinstance(schedule, type) and is_dataclass(schedule)):
        raise ValueError(f"weight schedule {name!r} must be a dataclass, got {schedule!r}")
    WEIGHT_SCHEDULES[name] = schedule
    if name not in CONFIG_NAMES:
        CONFIG_NAMES.append(name)


def make_weight_schedule(name: str, **params: float) -> WeightSchedule:
    """Build the schedule registered as ``name`` with ``params`` (its dataclass fields).

    Raises:
        ValueError: unknown name (lists the choices), unknown parameter (lists the accepted
            ones), or an out-of-range parameter value.
    """
    try:
        cls = WEIGHT_SCHEDULES[name]
    except (KeyError, TypeError):
        raise unknown_name("weight schedule", name, WEIGHT_SCHEDULES) from None
    accepted = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    extra = sorted(set(params) - set(accepted))
    if extra:
        raise ValueError(
            f"weight schedule {name!r} got unknown parameter(s) {extra}; "
            f"it accepts: {accepted if accepted else 'no parameters'}"
        )
    return cls(**params)


def schedule_weights(name: str, step: int | Tensor, num_steps: int, **params: float) -> Tensor:
    """``make_weight_schedule(name, **params)(step, num_steps)``: a ``[..., 2]`` float32 tensor
    of ``(w_prompt, w_identity)`` at each step."""
    return make_weight_schedule(name, **params)(step, num_steps)
