"""FLUX.1-Kontext and UNO (FLUX.1-dev + UNO LoRA) backends (``flux``), built on diffusers + peft.

* :mod:`~cgrpo.policies.flux.policy`: the shared FLUX step (:class:`FluxPolicy`: text and
  reference conditioning, the velocity forward, decoding) and the ``flux`` registry entry;
* :mod:`~cgrpo.policies.flux.variants`: what Kontext and UNO do differently (options, LoRA
  target sets, fusing the UNO LoRA, the diffusers pipeline each one mirrors);
* :mod:`~cgrpo.policies.flux.layout`: packed latents and the position ids of the target and
  the references under each variant's scheme.
"""

from cgrpo.policies.dit import ATTENTION_BACKENDS, resize_center_crop
from cgrpo.policies.flux.layout import (
    ID_SCHEMES,
    pack_latents,
    reference_position_ids,
    target_position_ids,
)
from cgrpo.policies.flux.policy import FluxPolicy  # registers "flux" in POLICIES
from cgrpo.policies.flux.variants import (
    KONTEXT_LORA_TARGETS,
    MODEL_PARTS,
    PAPER_LORA_TARGETS,
    VARIANTS,
    FluxOptions,
    check_model_dir,
    fuse_xlabs_lora,
)

__all__ = [
    "ATTENTION_BACKENDS",
    "FluxOptions",
    "FluxPolicy",
    "ID_SCHEMES",
    "KONTEXT_LORA_TARGETS",
    "MODEL_PARTS",
    "PAPER_LORA_TARGETS",
    "VARIANTS",
    "check_model_dir",
    "fuse_xlabs_lora",
    "pack_latents",
    "reference_position_ids",
    "resize_center_crop",
    "target_position_ids",
]
