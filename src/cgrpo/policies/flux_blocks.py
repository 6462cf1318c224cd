"""How the DiT (FLUX.1, FLUX.2, Qwen-Image) transformer blocks run: selective gradient checkpointing, regional compile.

Both act per block of :func:`transformer_blocks` (19 double then 38 single blocks at
FLUX.1-dev size) and leave the module tree, parameter names and numerics unchanged, so
adapters save and load the same and log-probs and gradients agree with the plain path
(``tests/policies/test_flux_speed.py``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

#: ``model.options.compile_blocks`` values: off, or the torch.compile backend to use.
COMPILE_BACKENDS = ("off", "inductor", "aot_eager")


def evenly_spaced(n: int, fraction: float) -> list[int]:
    """``floor(fraction * n)`` indices of ``range(n)``, spread evenly: ``i`` is chosen when
    ``floor((i + 1) * fraction) > floor(i * fraction)`` (1 -> all, 0.5 -> every second)."""
    return [i for i in range(n) if int((i + 1) * fraction) > int(i * fraction)]


def transformer_blocks(transformer: nn.Module) -> list[nn.Module]:
    """The blocks of a diffusers DiT in forward order: FLUX.1 / FLUX.2's double then single
    blocks, Qwen-Image's (double-stream) blocks."""
    return [*transformer.transformer_blocks, *getattr(transformer, "single_transformer_blocks", [])]


def enable_checkpointing(transformer: nn.Module, fraction: float = 1.0) -> list[int]:
    """Turn on diffusers' gradient checkpointing for ``floor(fraction * blocks)`` blocks
    (:func:`evenly_spaced` over :func:`transformer_blocks`); the others keep their activations
    for the backward. Returns the indices of the recomputed blocks."""
    from torch.utils.checkpoint import checkpoint

    blocks = transformer_blocks(transformer)
    chosen = evenly_spaced(len(blocks), fraction)
    if len(chosen) == len(blocks):
        transformer.enable_gradient_checkpointing()  # diffusers' own function, every block
        return chosen
    recomputed = {blocks[i] for i in chosen}

    def checkpoint_some(block: nn.Module, *args: Any) -> Any:
        # diffusers routes every block through this while gradients are enabled
        if block in recomputed:
            return checkpoint(block.__call__, *args, use_reentrant=False)
        return block(*args)

    transformer.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint_some)
    return chosen


def compile_blocks(transformer: nn.Module, backend: str) -> None:
    """Regional compilation: ``torch.compile`` each block on its own (one graph per block
    class, reused by all its instances), compiled lazily at the first forward. Adapters
    injected afterwards are traced with the block; a new batch size recompiles once with
    dynamic shapes."""
    if backend not in COMPILE_BACKENDS[1:]:
        raise ValueError(f"unknown compile backend {backend!r}; choose one of {COMPILE_BACKENDS}")
    for block in transformer_blocks(transformer):
        block.compile(backend=backend)
