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

Failures: a target that cannot be imported (missing file or module, a syntax error, an
exception at import, no such function) is a :class:`~cgrpo.config.schema.ConfigError` when
the reward is built. A function that raises, or returns something other than the scores
declared, raises :class:`~cgrpo.rewards.base.RewardFailure` naming the function.
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
from cgrpo.config.schema import ConfigError
from cgrpo.rewards.base import REWARDS, Reward, RewardContext, RewardFailure, ScoreRequest

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
    """Import ``"module:function"`` or ``"file.py:function"``.

    Raises ConfigError naming ``what``, the target and why it cannot be used.
    """
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise ConfigError(
            what, target, "expected 'package.module:function' or 'path/to/file.py:function'"
        )
    try:
        module = _import(module_part)
    except FileNotFoundError:
        raise ConfigError(
            what, target, f"file {Path(module_part).expanduser().resolve()} not found"
        ) from None
    except Exception as e:  # the user's module: a syntax error or anything it raised
        raise ConfigError(
            what, target, f"cannot import {module_part!r} for {attr!r}: {type(e).__name__}: {e}"
        ) from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ConfigError(what, target, f"{module_part} has no callable {attr!r}")
    return fn


def _import(module_part: str) -> Any:
    """A module by dotted name, or from a ``.py`` file (cached under a name of its path)."""
    if not (module_part.endswith(".py") or "/" in module_part or "\\" in module_part):
        return importlib.import_module(module_part)
    path = Path(module_part).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(path)
    name = f"cgrpo_custom_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up by name
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return module


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
        target = self.options.target
        try:
            out = self.fn(
                request.images.to(self.device),
                list(request.prompts),
                [r.to(self.device) for r in request.references],
                **self.options.kwargs,
            )
        except RewardFailure:
            raise  # the function already names what failed
        except Exception as e:
            raise RewardFailure(self.name, f"{target} raised {type(e).__name__}: {e}") from e
        n = len(request)
        if isinstance(out, dict):
            if not self.options.columns:
                raise RewardFailure(
                    self.name,
                    f"{target} returned a dict with keys {sorted(map(str, out))}; "
                    f"declare them with the columns option",
                )
            missing = [c for c in self.columns if c not in out]
            if missing:
                raise RewardFailure(
                    self.name, f"{target} returned keys {sorted(map(str, out))}, missing {missing}"
                )
            return {c: self._as_scores(out[c], n, f"{target}[{c!r}]") for c in self.columns}
        if self.options.columns:
            raise RewardFailure(
                self.name,
                f"{target} returned {type(out).__name__}, but columns "
                f"{list(self.columns)} were declared (expected a dict)",
            )
        return {self.columns[0]: self._as_scores(out, n, target)}

    def _as_scores(self, value: Any, n: int, where: str) -> torch.Tensor:
        """``value`` as ``n`` float scores; a RewardFailure naming ``where`` otherwise."""
        try:
            t = torch.as_tensor(
                value.detach() if isinstance(value, torch.Tensor) else value, dtype=torch.float32
            )
        except (TypeError, ValueError, RuntimeError) as e:
            raise RewardFailure(
                self.name, f"{where} returned {type(value).__name__}, not numbers: {e}"
            ) from None
        if t.numel() != n:
            raise RewardFailure(self.name, f"{where} returned {t.numel()} scores for {n} images")
        return t.reshape(n)


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
        raise ConfigError(
            f"rewards.{spec}.options.target", opts["target"], "the target is already in the name"
        )
    opts["target"] = spec[len(PREFIX) :]
    prefix = f"rewards.{spec}.options"
    return CustomReward(
        parse(CustomOptions, opts, prefix=prefix),
        context or RewardContext(),
        name=spec,
        prefix=prefix,
    )


@REWARDS.register("custom")
def _build_custom(options: dict, context: RewardContext) -> CustomReward:
    return CustomReward(parse(CustomOptions, options, prefix="rewards.custom.options"), context)


__all__ = ["CustomOptions", "CustomReward", "load_callable", "resolve_custom"]
