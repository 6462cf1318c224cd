"""Generator backends behind one interface (:class:`cgrpo.policies.base.Policy`)."""

import importlib
import importlib.util

from cgrpo.policies.base import POLICIES, Condition, LoraSettings, Policy, build_policy

_BUILTIN_MODULES = ("pocket", "flux")
for _name in _BUILTIN_MODULES:
    if importlib.util.find_spec(f"cgrpo.policies.{_name}") is not None:
        importlib.import_module(f"cgrpo.policies.{_name}")

__all__ = ["POLICIES", "Condition", "LoraSettings", "Policy", "build_policy"]
