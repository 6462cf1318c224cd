"""Optional extras: import a library that only one feature needs, or say which extra to install.

``wandb`` (W&B logging), ``hf`` (``data.name: hf``) and ``app`` (``cgrpo app``) are extras of
the package; nothing imports them until the feature that needs them runs, so ``import cgrpo``
and every other command stay as fast as without them.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError, ValueError):
    """An optional extra is not installed. An ImportError by nature; also a ValueError so that
    the command line reports it as one line like any other bad setting."""


def require_extra(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtra` naming ``what`` needs it and the extra
    (``pip install 'cgrpo[extra]'``) that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(
            f"{what} needs the optional extra '{extra}' (module {module} is missing: {e}); "
            f"install it with: pip install 'cgrpo[{extra}]'"
        ) from None


__all__ = ["MissingExtra", "require_extra"]
