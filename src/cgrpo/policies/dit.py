"""What the diffusers DiT backends (FLUX.1, FLUX.2, Qwen-Image-Edit) share.

* :class:`DiTOptions`: the ``model.options`` every such backend has (local path, sizes,
  dtype, the speed levers, the text-embedding cache, the VAE batch);
* :class:`EmbeddingCache`: text embeddings computed once per key (a prompt, or a prompt and
  its references for encoders that see the images), kept in a bounded in-memory LRU and
  optionally on disk as safetensors;
* :class:`DiTPolicy`: a :class:`Policy` around a diffusers transformer (+ VAE) that applies
  the speed levers of :mod:`cgrpo.policies.flux_blocks`, checks the image sizes, and saves
  adapters in the diffusers LoRA format of its pipeline (``pipeline.load_lora_weights``).

The sampler, the SDE step and the log-probs are not here: every backend returns a velocity
and :mod:`cgrpo.sampling` / :func:`cgrpo.grpo.sde_step` do the rest, the same for all.
Only the dynamic sigma shift is per model (:meth:`Policy.dynamic_sigmas`).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cgrpo.config import ConfigError, option
from cgrpo.policies.base import Policy
from cgrpo.policies.flux_blocks import COMPILE_BACKENDS, compile_blocks, enable_checkpointing

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# diffusers attention backends that need no download; "native" is torch SDPA (the default).
ATTENTION_BACKENDS = (
    "native",
    "_native_flash",
    "_native_efficient",
    "_native_math",
    "_native_cudnn",
    "flex",
    "flash",
    "_flash_3",
    "sage",
    "xformers",
)
IN_MEMORY = "(in-memory components)"


@dataclass
class DiTOptions:
    """``model.options`` shared by the diffusers DiT backends."""

    path: str = option(help="local diffusers-layout model directory (see the backend's layout)")
    height: int = option(512, "target image height in pixels", min=16)
    width: int = option(512, "target image width in pixels", min=16)
    reference_size: int | None = option(
        None,
        "references are resized (short side) and centre-cropped to this square; null = target size",
        min=16,
    )
    dtype: str = option(
        "bf16", "dtype of the base weights (LoRA stays fp32)", choices=tuple(DTYPES)
    )
    gradient_checkpointing: bool = option(
        False, "recompute transformer blocks in backward (less memory, about 1/3 more compute)"
    )
    checkpoint_fraction: float = option(
        1.0,
        "with gradient_checkpointing: share of the transformer blocks recomputed, spread evenly "
        "over the double then single blocks, rounded down (1 = all; lower = faster, more memory)",
        min=0.0,
        max=1.0,
        min_exclusive=True,
    )
    compile_blocks: str = option(
        "off",
        "regional torch.compile of each transformer block, compiled at first use: off, "
        "inductor (fused kernels), aot_eager (graph capture only, no code generation; for checks)",
        choices=COMPILE_BACKENDS,
    )
    attention: str = option(
        "native", "diffusers attention backend (native = torch SDPA)", choices=ATTENTION_BACKENDS
    )
    cudnn_sdpa: bool = option(
        False,
        "allow torch's cuDNN SDPA kernel on CUDA (off: its backward failed on H100, GUIDE §2)",
    )
    text_cache_dir: str | None = option(
        None, "directory for cached prompt embeddings (safetensors); null = memory only"
    )
    text_cache_size: int = option(256, "prompts kept in the in-memory embedding cache", min=1)
    text_encoder_device: str = option(
        "same",
        "where the text encoders run: same (as the transformer) or cpu",
        choices=("same", "cpu"),
    )
    vae_batch_size: int = option(4, "images per VAE encode/decode call", min=1)


# ----------------------------------------------------------------------------- helpers
def resize_center_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[N, 3, h, w]`` -> ``[N, 3, H, W]``: scale so the image covers ``H x W``, crop the centre.

    Bilinear with antialiasing (torch only; no torchvision). Already-sized images pass through.
    """
    height, width = size
    h, w = images.shape[-2:]
    if (h, w) == (height, width):
        return images
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    out = F.interpolate(
        images.float(), size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
    )
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return out[..., top : top + height, left : left + width].clamp(0.0, 1.0)


def reference_pixels(
    references: Sequence[torch.Tensor], size: tuple[int, int], backend: str
) -> tuple[torch.Tensor, int]:
    """``B`` tensors ``[R, 3, h, w]`` in [0, 1] -> ``([B * R, 3, H, W], R)``, every sample with
    the same number ``R >= 1`` of references (raises ValueError naming the counts)."""
    counts = [int(r.shape[0]) for r in references]
    if len(set(counts)) != 1 or 0 in counts:
        raise ValueError(
            f"every sample of a {backend} batch needs the same number (>= 1) of "
            f"reference images, got {counts}"
        )
    return torch.cat([resize_center_crop(r.float(), size) for r in references]), counts[0]


def check_model_dir(
    path: str | Path, parts: dict[str, str], needs_config: Sequence[str], label: str
) -> Path:
    """Raise FileNotFoundError naming every missing part of a diffusers model directory."""
    root = Path(path).expanduser()
    layout = "; ".join(f"{k}/ ({v})" for k, v in parts.items())
    if not root.is_dir():
        raise FileNotFoundError(
            f"model.options.path: {label} model directory not found: {root} "
            f"(expected the diffusers layout: {layout})"
        )
    missing = []
    for part in parts:
        sub = root / part
        if not sub.is_dir():
            missing.append(f"{part}/")
        elif part in needs_config and not (sub / "config.json").is_file():
            missing.append(f"{part}/config.json")
    if missing:
        raise FileNotFoundError(
            f"{label} model directory {root} is missing {', '.join(missing)}; "
            f"expected the diffusers layout: {layout}; scheduler/ is optional"
        )
    return root


def place(module: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move ``module`` to ``device`` and ``dtype``, casting only when needed (diffusers warns on
    every dtype cast of a loaded model)."""
    if next(module.parameters()).dtype != dtype:
        module.to(dtype=dtype)
    module.to(device)


def fingerprint(*parts: Any) -> str:
    """A short stable hash of the things an embedding depends on (source, encoder configs...)."""
    text = "|".join(p.to_json_string() if hasattr(p, "to_json_string") else str(p) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_scheduler(root: Path | None, defaults: dict[str, Any]) -> Any:
    """The model's ``FlowMatchEulerDiscreteScheduler``: from ``root/scheduler`` when that
    directory has a config, else from ``defaults`` (the released model's values)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    folder = root / "scheduler" if root is not None else None
    if folder is not None and (folder / "scheduler_config.json").is_file():
        return FlowMatchEulerDiscreteScheduler.from_pretrained(folder, local_files_only=True)
    return FlowMatchEulerDiscreteScheduler(**defaults)


def scheduler_sigmas(scheduler: Any, num_steps: int, mu: float | None) -> torch.Tensor:
    """The ``[N + 1]`` float32 sigmas (1 -> 0) the pipelines hand ``scheduler`` (``sigmas =
    linspace(1, 1/N, N)`` plus ``mu``); the scheduler applies its own shifts (dynamic,
    terminal stretch) and appends the final 0."""
    import numpy as np

    grid = np.linspace(1.0, 1.0 / num_steps, num_steps)
    scheduler.set_timesteps(sigmas=grid, mu=mu, device="cpu")
    return scheduler.sigmas.detach().to("cpu", torch.float32).clone()


class EmbeddingCache:
    """Embeddings (a dict of CPU tensors per key) computed once per key.

    A bounded in-memory LRU (``size`` keys), and, with ``directory``, one safetensors file per
    key under ``directory/<fingerprint>/`` (written atomically, so concurrent writers of the
    same key cannot tear it). The fingerprint names what the embeddings depend on, so a
    changed encoder or source never reads stale files.
    """

    def __init__(self, size: int, directory: str | Path | None = None) -> None:
        self.size = int(size)
        self.directory = Path(directory).expanduser() if directory else None
        self._items: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def get(
        self,
        keys: Sequence[str],
        encode: Callable[[list[str]], list[dict[str, torch.Tensor]]],
        fingerprint: str,
        dtype: torch.dtype,
    ) -> list[dict[str, torch.Tensor]]:
        """The embeddings of ``keys`` (in order); ``encode`` gets the distinct missing keys
        once. Returned rows are the cached CPU tensors in ``dtype``."""
        found: dict[str, dict[str, torch.Tensor]] = {}
        to_encode = []
        for key in dict.fromkeys(keys):
            if key in self._items:
                self._items.move_to_end(key)
                found[key] = self._items[key]
                continue
            hit = self._read(fingerprint, key, dtype) if self.directory else None
            if hit is None:
                to_encode.append(key)
            else:
                found[key] = hit
                self._remember(key, hit)
        if to_encode:
            for key, item in zip(to_encode, encode(to_encode), strict=True):
                item = {k: v.to("cpu", dtype).clone() for k, v in item.items()}
                found[key] = item
                self._remember(key, item)
                if self.directory:
                    self._write(fingerprint, key, item)
        return [found[k] for k in keys]  # not the LRU: a large batch may evict its own rows

    def _remember(self, key: str, item: dict[str, torch.Tensor]) -> None:
        self._items[key] = item
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def _file(self, fingerprint: str, key: str) -> Path:
        digest = hashlib.sha256(f"{fingerprint}|{key}".encode()).hexdigest()
        return self.directory / fingerprint / f"{digest}.safetensors"

    def _read(self, fingerprint: str, key: str, dtype: torch.dtype):
        from safetensors.torch import load_file

        file = self._file(fingerprint, key)
        if not file.is_file():
            return None
        return {k: v.to(dtype) for k, v in load_file(str(file)).items()}

    def _write(self, fingerprint: str, key: str, item: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        file = self._file(fingerprint, key)
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".{os.getpid()}.tmp")
        save_file({k: v.contiguous() for k, v in item.items()}, str(tmp), metadata={"key": key})
        os.replace(tmp, file)


# ----------------------------------------------------------------------------- the policy
class DiTPolicy(Policy):
    """A :class:`Policy` around a diffusers transformer (``self.denoiser``) and VAE.

    Subclasses set :attr:`backend`, the LoRA presets, :meth:`pipeline_class` (whose LoRA
    format adapters are saved in) and :meth:`vae_scale`, and implement the Policy methods.
    """

    options: DiTOptions

    def __init__(
        self, options: DiTOptions, transformer: nn.Module, vae: nn.Module | None, source: str
    ) -> None:
        super().__init__()
        self.options = options
        self.source = source
        self.denoiser = transformer
        self.vae = vae
        self.vae_scale_factor = self.vae_scale(vae) if vae is not None else 8
        multiple = 2 * self.vae_scale_factor
        sizes = {
            "height": options.height,
            "width": options.width,
            "reference_size": options.reference_size,
        }
        for name, value in sizes.items():
            if value is not None and value % multiple:
                raise ConfigError(
                    f"model.options.{name}",
                    value,
                    f"must be a multiple of {multiple} (VAE factor x 2x2 packing)",
                )
        self.dtype = DTYPES[options.dtype]
        if options.gradient_checkpointing:
            enable_checkpointing(transformer, options.checkpoint_fraction)
        if options.compile_blocks != "off":
            compile_blocks(transformer, options.compile_blocks)
        if options.attention != "native":
            transformer.set_attention_backend(options.attention)
        self.requires_grad_(False)

    @staticmethod
    def vae_scale(vae: nn.Module) -> int:
        """Pixels per latent cell of ``vae`` (2 ** (levels - 1) for the 2-D KL autoencoders)."""
        return 2 ** (len(vae.config.block_out_channels) - 1)

    def pipeline_class(self) -> Any:
        raise NotImplementedError

    @staticmethod
    def prepare(
        options: DiTOptions,
        transformer: nn.Module,
        vae: nn.Module | None,
        device: torch.device,
    ) -> None:
        """Place the transformer and VAE; on CUDA switch cuDNN SDPA off unless allowed."""
        dtype = DTYPES[options.dtype]
        place(transformer, device, dtype)
        if vae is not None:
            place(vae, device, dtype)
        if device.type == "cuda" and not options.cudnn_sdpa:
            # Process-wide switch: cuDNN SDPA's backward failed for FLUX shapes (GUIDE §2).
            torch.backends.cuda.enable_cudnn_sdp(False)

    @staticmethod
    def place_text(options: DiTOptions, device: torch.device, *encoders: nn.Module) -> torch.device:
        """Put the text encoders where ``text_encoder_device`` says; returns that device."""
        where = device if options.text_encoder_device == "same" else torch.device("cpu")
        for encoder in encoders:
            place(encoder, where, DTYPES[options.dtype])
        return where

    def _device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def _grid(self, height: int, width: int) -> tuple[int, int]:
        """Packed ``(rows, cols)`` of an image of ``height x width`` pixels (2x2 patches)."""
        f = 2 * self.vae_scale_factor
        return height // f, width // f

    def latent_shape(self) -> tuple[int, int]:
        rows, cols = self._grid(self.options.height, self.options.width)
        return rows * cols, int(self.denoiser.config.in_channels)

    def vae_chunks(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """``x`` in pieces of ``vae_batch_size`` images, on the VAE's device and dtype."""
        vae = self._need_vae()
        for start in range(0, x.shape[0], self.options.vae_batch_size):
            yield x[start : start + self.options.vae_batch_size].to(self._device(), vae.dtype)

    @property
    def reference_hw(self) -> tuple[int, int]:
        s = self.options.reference_size
        return (s, s) if s else (self.options.height, self.options.width)

    def _need_vae(self) -> nn.Module:
        if self.vae is None:
            raise RuntimeError(f"this {type(self).__name__} was built without a VAE")
        return self.vae

    # ----- adapters -----------------------------------------------------------------------
    def save_adapter(self, directory: str | Path) -> None:
        """Write ``adapter.safetensors`` in diffusers' LoRA format (keys ``transformer.*`` plus
        the peft config as metadata), so that the model's diffusers pipeline
        ``.load_lora_weights(directory)`` loads it as well as :meth:`load_adapter`."""
        config = getattr(self, "_lora_config", None)
        if config is None:
            raise RuntimeError("no LoRA adapter to save; call add_lora() first")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.pipeline_class().save_lora_weights(
            directory,
            transformer_lora_layers=self.adapter_state_dict(),
            weight_name="adapter.safetensors",
            transformer_lora_adapter_metadata=config.to_dict(),
        )

    def load_adapter(self, directory: str | Path) -> None:
        from safetensors.torch import load_file

        path = Path(directory) / "adapter.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"no adapter at {path}")
        state = load_file(str(path))
        self.load_adapter_state_dict({k.removeprefix("transformer."): v for k, v in state.items()})
