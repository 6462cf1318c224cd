"""Strict weight loading, shared by every reward that reads a checkpoint.

A checkpoint that does not fit the network it is loaded into must never turn into a model
with randomly initialised layers (transformers only warns about those). Two entry points:

* :func:`check_fit` -- the rule itself: missing, unexpected or wrongly shaped keys raise one
  ``ValueError`` line naming the option, the path and a few of the keys.
* :func:`load_pretrained` -- a transformers ``from_pretrained`` from a local directory with
  a model-type check first (a CLIP directory given to a DINO reward is named as such) and
  :func:`check_fit` on transformers' own loading report.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from cgrpo.rewards.images import require_model_dir

SHOWN_KEYS = 4


class DependencyError(ImportError, ValueError):
    """An installed library is missing or too old for a reward.

    An ImportError by nature; also a ValueError so that the command line reports it as one
    line like any other bad setting.
    """


def require_transformers(minimum: str, what: str, reason: str) -> None:
    """Raise :class:`DependencyError` if the installed transformers is older than ``minimum``.

    Args:
        minimum: the first release that has what ``what`` needs, e.g. ``"4.52"``.
        what: who needs it (``"the hpsv3 reward"``).
        reason: what that release brought, for the message.
    """
    import transformers
    from packaging.version import Version

    found = transformers.__version__
    if Version(found) < Version(minimum):
        raise DependencyError(
            f"{what} needs transformers >= {minimum} ({reason}); installed: {found}"
        )


def _few(keys: Iterable[Any]) -> str:
    keys = sorted(str(k) for k in keys)
    more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return f"{keys[:SHOWN_KEYS]}{more}"


def check_fit(
    what: str,
    source: str | Path,
    missing: Collection[Any] = (),
    unexpected: Collection[Any] = (),
    mismatched: Collection[Any] = (),
    network: str = "the network",
) -> None:
    """Refuse a checkpoint whose keys do not match the network exactly.

    Args:
        what: the option that named the weights, e.g. ``rewards.dino.options.path``.
        source: the file or directory read.
        missing: network keys the checkpoint lacks (they would stay random).
        unexpected: checkpoint keys the network has no place for.
        mismatched: keys (or ``(key, shape, shape)`` tuples) present with another shape.
        network: what was being loaded, for the message (``Dinov2Model``).
    Raises ValueError (one line) if any of the three is non-empty.
    """
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} keys {_few(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} keys {_few(unexpected)}")
    if mismatched:
        names = [m[0] if isinstance(m, tuple) else m for m in mismatched]
        parts.append(f"{len(names)} keys of another shape {_few(names)}")
    if parts:
        raise ValueError(
            f"{what} = {str(source)!r}: the weights do not fit {network}: {'; '.join(parts)}"
        )


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (transformers errors run to many)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def model_type_of(path: str | Path, what: str, trust_remote_code: bool = False) -> str:
    """``model_type`` from a local directory's config.json (clear error when unreadable)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(
            f"{what} = {str(path)!r}: config.json unreadable: {first_line(e)}"
        ) from None
    return str(getattr(config, "model_type", ""))


def load_pretrained(
    loader: Any,
    path: str | Path | None,
    what: str,
    model_types: Collection[str] | None = None,
    ignore_unexpected: tuple[str, ...] = (),
    needs: list[Any] | None = None,
    **kwargs: Any,
) -> Any:
    """``loader.from_pretrained(path)`` from local files only, refusing weights that do not fit.

    Args:
        loader: a transformers model class or ``AutoModel*`` class.
        path: the local model directory (checked with :func:`require_model_dir`).
        what: the option naming it, for messages.
        model_types: accepted ``config.model_type`` values (None: any, e.g. remote code).
        ignore_unexpected: key prefixes the checkpoint may hold that the network leaves out
            on purpose (a ViT pooler the reward never reads); nothing else is tolerated.
        needs: files the directory must hold (default: config.json and weights).
        kwargs: passed to ``from_pretrained`` (``trust_remote_code``, ``add_pooling_layer``).
    Returns the model in eval mode.
    """
    directory = (
        require_model_dir(path, what) if needs is None else require_model_dir(path, what, needs)
    )
    name = getattr(loader, "__name__", str(loader))
    if model_types is not None:
        found = model_type_of(directory, what, bool(kwargs.get("trust_remote_code")))
        if found not in model_types:
            raise ValueError(
                f"{what} = {str(path)!r}: config.json is model_type {found!r}; "
                f"expected {' or '.join(repr(t) for t in model_types)}"
            )
    try:
        model, info = loader.from_pretrained(
            directory, local_files_only=True, output_loading_info=True, **kwargs
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ValueError(
            f"{what} = {str(path)!r}: not loadable as {name}: {first_line(e)}"
        ) from None
    unexpected = [k for k in info.get("unexpected_keys", ()) if not k.startswith(ignore_unexpected)]
    check_fit(
        what,
        path,
        info.get("missing_keys", ()),
        unexpected,
        info.get("mismatched_keys", ()),
        type(model).__name__,
    )
    return model.eval()


__all__ = [
    "DependencyError",
    "check_fit",
    "first_line",
    "load_pretrained",
    "model_type_of",
    "require_transformers",
]
