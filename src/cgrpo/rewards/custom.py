"""User-defined rewards from a plain Python function (``custom`` and ``python:...``).

The function's contract::

    fn(images: Tensor[B, 3, H, W] float in [0, 1], prompts: list[str],
       references: list[Tensor[R_i, 3, h, w]], **kwargs)
        -> Tensor[B] | list[float] | dict[str, Tensor[B] | list[float]]

Higher is better. Images and references arrive on the reward's device. ``kwargs`` come from
the ``kwargs`` option. Where it is found (``target``):

* ``"package.module:function"`` - imported like any module (must be importable), or
* ``"path/to/file.py:function"`` - loaded from that file (relative to the working directory).

Two ways to name it in a config: the registered reward ``custom`` with
``options: {target: ...}``, or the reward name itself as ``"python:<target>"``
(:func:`resolve_custom`, which ``build_reward`` can call for names with that prefix).

Columns: one column named ``column`` (default: the function's name); a function returning a
dict declares its keys in ``columns`` (they must be known before the first call, so the
trainer can lay out its logs).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cgrpo.config import option, parse
from cgrpo.rewards.base import REWARDS, Reward, RewardContext, ScoreRequest

PREFIX = "python:"


@dataclass
class CustomOptions:
    target: str = option(
        help='the function: "package.module:function" or "path/to/file.py:function"'
    )
    column: str | None = option(
        None, "name of the single score column (default: the function's name)"
    )
    columns: list[str] = option(
        help="column names when the function returns a dict", default_factory=list
    )
    kwargs: dict[str, Any] = option(
        help="extra keyword arguments passed to the function", default_factory=dict
    )


def load_callable(target: str, what: str = "target") -> Callable[..., Any]:
    """Import ``"module:function"`` or ``"file.py:function"``; errors name ``what`` and target."""
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise ValueError(
            f"{what} = {target!r}: expected 'package.module:function' or 'path/to/file.py:function'"
        )
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        path = Path(module_part).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"{what} = {target!r}: file {path} not found")
        name = f"cgrpo_custom_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses and pickling look modules up by name
            try:
                spec.loader.exec_module(module)
            except Exception:
                del sys.modules[name]
                raise
    else:
        try:
            module = importlib.import_module(module_part)
        except ImportError as e:
            raise ValueError(f"{what} = {target!r}: cannot import {module_part!r}: {e}") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ValueError(f"{what} = {target!r}: {module_part} has no callable {attr!r}")
    return fn


def _as_scores(value: Any, n: int, where: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(
            value if not isinstance(value, torch.Tensor) else value.detach(), dtype=torch.float32
        )
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{where} returned {type(value).__name__}, not numbers: {e}") from None
    if t.numel() != n:
        raise ValueError(f"{where} returned {t.numel()} scores for {n} images")
    return t.reshape(n)


class CustomReward(Reward):
    """Wraps a user function as a :class:`Reward` (contract in the module docstring)."""

    def __init__(
        self,
        options: CustomOptions,
        context: RewardContext,
        name: str = "custom",
        prefix: str = "rewards.custom.options",
    ) -> None:
        super().__init__()
        self.options = options
        self.fn = load_callable(options.target, f"{prefix}.target")
        self.name = name
        if options.columns and options.column:
            raise ValueError(f"{prefix}: give column (one score) or columns (a dict), not both")
        fn_name = getattr(self.fn, "__name__", "custom")
        self.columns = tuple(options.columns) or (options.column or fn_name,)
        self.to(context.device)

    def _score(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        where = f"reward {self.name!r} ({self.options.target})"
        out = self.fn(
            request.images.to(self.device),
            list(request.prompts),
            [r.to(self.device) for r in request.references],
            **self.options.kwargs,
        )
        n = len(request)
        if isinstance(out, dict):
            if not self.options.columns:
                raise TypeError(
                    f"{where} returned a dict with keys {sorted(out)}; declare them "
                    f"with the columns option"
                )
            missing = [c for c in self.columns if c not in out]
            if missing:
                raise KeyError(f"{where} returned keys {sorted(out)}, missing {missing}")
            return {c: _as_scores(out[c], n, f"{where}[{c!r}]") for c in self.columns}
        if self.options.columns:
            raise TypeError(
                f"{where} returned {type(out).__name__}, but columns "
                f"{list(self.columns)} were declared (expected a dict)"
            )
        return {self.columns[0]: _as_scores(out, n, where)}


def resolve_custom(
    spec: str, options: dict[str, Any] | None = None, context: RewardContext | None = None
) -> CustomReward:
    """Build the reward named ``"python:<module-or-file>:<function>"``.

    ``options`` may hold ``column``, ``columns`` and ``kwargs`` (``target`` comes from the
    spec). The reward keeps the spec as its name.
    """
    if not spec.startswith(PREFIX):
        raise ValueError(f"custom reward spec {spec!r} must start with {PREFIX!r}")
    opts = dict(options or {})
    if "target" in opts:
        raise ValueError(f"rewards.{spec}.options.target: the target is already in the name")
    opts["target"] = spec[len(PREFIX) :]
    prefix = f"rewards.{spec}.options"
    return CustomReward(
        parse(CustomOptions, opts, prefix=prefix),
        context or RewardContext(),
        name=spec,
        prefix=prefix,
    )


def is_custom_spec(name: str) -> bool:
    return name.startswith(PREFIX)


@REWARDS.register("custom")
def _build_custom(options: dict, context: RewardContext) -> CustomReward:
    return CustomReward(parse(CustomOptions, options, prefix="rewards.custom.options"), context)


__all__ = ["CustomOptions", "CustomReward", "load_callable", "resolve_custom", "is_custom_spec"]
