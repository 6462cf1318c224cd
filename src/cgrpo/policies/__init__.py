"""Generator backends behind one interface (:class:`cgrpo.policies.base.Policy`)."""

# Built-in backends register themselves in POLICIES on import.
from cgrpo.policies import flux, flux2, pocket, qwen_edit  # noqa: F401
from cgrpo.policies.base import POLICIES, Condition, LoraSettings, Policy, build_policy

__all__ = ["POLICIES", "Condition", "LoraSettings", "Policy", "build_policy"]
