"""The pocket generator: a tiny in-context flow-matching transformer that runs on a laptop CPU.

It mirrors the structure of FLUX Kontext at toy scale, so the RL code paths it exercises are
the real ones:

* Pixel space, no VAE. A 32x32 RGB image is cut into ``patch x patch`` patches; the latent of
  one sample is ``(N, P)`` packed like FLUX: ``N = (size/patch)**2`` tokens in row-major
  order, each a ``P = 3*patch*patch`` vector ordered ``(channel, row-in-patch, col-in-patch)``,
  with pixel values scaled to [-1, 1]. ``x_s = (1 - s) * x0 + s * noise``; the model predicts
  ``v = noise - x0``.
* One joint sequence ``[text tokens, target patches, reference patches]``. Text tokens are
  MiniLM token states (real pretrained weights, :mod:`cgrpo.policies.text`) projected to the
  model width; target and reference patches share the patch embedding and the 2D sin-cos
  position grid and are told apart by a learned segment embedding (several references all use
  the reference segment: they form an unordered set of views). Padded text tokens and missing
  references are masked out of attention.
* The noise level and the pooled sentence embedding form one vector that modulates every
  block (adaLN: shift, scale and gate for attention and MLP). The velocity is read from the
  target tokens only.

The attention and MLP projections have stable names (``to_q``, ``to_k``, ``to_v``, ``to_out``,
``ff_in``, ``ff_out``) that LoRA targets by default.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cgrpo.config import ConfigError, option, parse
from cgrpo.policies.base import POLICIES, Condition, Policy
from cgrpo.policies.text import HIDDEN_SIZE, MiniLMTextEncoder

__all__ = [
    "ASSET_PATH",
    "PocketArch",
    "PocketOptions",
    "PocketPolicy",
    "PocketTransformer",
    "images_to_patches",
    "load_pocket_weights",
    "patches_to_images",
    "save_pocket_weights",
]

ASSET_PATH = Path(__file__).resolve().parent.parent / "assets" / "pocket.safetensors"
"""The committed pretrained weights (``python -m cgrpo.training.pocket_train`` writes them)."""

_META_KEY = "cgrpo.pocket.arch"
_SEG_TEXT, _SEG_TARGET, _SEG_REFERENCE = 0, 1, 2


# ----- configuration ---------------------------------------------------------------------
@dataclass(frozen=True)
class PocketArch:
    """The architecture; it must match the weights being loaded."""

    image_size: int = 32
    patch: int = 4
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 2

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def patch_dim(self) -> int:
        return 3 * self.patch * self.patch


_ARCH_FIELDS = tuple(PocketArch.__dataclass_fields__)


@dataclass
class PocketOptions:
    """``model.options`` of the ``pocket`` backend."""

    weights: str = option(
        "builtin",
        "safetensors file of pretrained weights; 'builtin' = the committed "
        "src/cgrpo/assets/pocket.safetensors, 'random' = random init (tests)",
    )
    image_size: int = option(32, "image side in pixels (must match the weights)", min=4)
    patch: int = option(4, "patch side in pixels; image_size must be a multiple", min=1)
    dim: int = option(128, "transformer width (must match the weights)", min=8)
    depth: int = option(4, "number of transformer blocks (must match the weights)", min=1)
    heads: int = option(
        4, "attention heads; dim must be a multiple (must match the weights)", min=1
    )
    mlp_ratio: int = option(2, "MLP hidden width / dim (must match the weights)", min=1)
    text_max_length: int = option(
        16,
        "MiniLM token positions per prompt, [CLS]/[SEP] included; longer prompts truncate",
        min=3,
        max=512,
    )
    seed: int = option(0, "seed of the random init (weights='random' only)", min=0)

    def validate(self, prefix: str) -> None:
        if self.image_size % self.patch:
            raise ConfigError(
                f"{prefix}.patch", self.patch, f"must divide image_size ({self.image_size})"
            )
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ConfigError(
                f"{prefix}.heads", self.heads, f"dim ({self.dim}) / heads must be an even integer"
            )
        if self.dim % 4:
            raise ConfigError(f"{prefix}.dim", self.dim, "must be a multiple of 4 (2D positions)")

    @property
    def arch(self) -> PocketArch:
        return PocketArch(**{k: getattr(self, k) for k in _ARCH_FIELDS})


# ----- packing ---------------------------------------------------------------------------
def images_to_patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, 3, H, W]`` -> ``[B, (H/p)*(W/p), 3*p*p]`` (row-major patches, (c, py, px) inside)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def patches_to_images(patches: torch.Tensor, patch: int, size: int) -> torch.Tensor:
    """Inverse of :func:`images_to_patches` for square ``size x size`` images."""
    b = patches.shape[0]
    g = size // patch
    x = patches.reshape(b, g, g, 3, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, 3, size, size)


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop ``[R, 3, h, w]`` to a square and resize it to ``size`` (antialiased)."""
    h, w = images.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    images = images[..., top : top + side, left : left + side]
    if side == size:
        return images
    return F.interpolate(
        images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )


# ----- the transformer -------------------------------------------------------------------
def _sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """``[N]`` positions -> ``[N, dim]`` sin/cos features (dim even)."""
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = positions.to(torch.float64)[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def _sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """``[grid*grid, dim]`` 2D sin-cos positions: half the features per axis, row-major."""
    coords = torch.arange(grid)
    rows = coords.repeat_interleave(grid)
    cols = coords.repeat(grid)
    return torch.cat([_sincos_1d(rows, dim // 2), _sincos_1d(cols, dim // 2)], dim=1)


def sigma_features(sigma: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """``[B]`` noise levels in [0, 1] -> ``[B, dim]`` sinusoidal features (on a 0-1000 scale)."""
    return _sincos_1d(sigma.float().cpu() * 1000.0, dim).to(sigma.device)


class Block(nn.Module):
    """Pre-norm transformer block with adaLN modulation from the conditioning vector."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        head_dim = dim // heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        # normalised queries/keys keep attention logits bounded in a small fp16/bf16 model
        self.q_norm = nn.RMSNorm(head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(head_dim, eps=1e-6)
        self.to_out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff_in = nn.Linear(dim, dim * mlp_ratio)
        self.ff_out = nn.Linear(dim * mlp_ratio, dim)
        self.modulation = nn.Linear(dim, 6 * dim)

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        mask: torch.Tensor | None,
        queries: slice | None = None,
    ) -> torch.Tensor:
        """``x [B, S, D]``, ``c [B, D]`` (already SiLU'd), ``mask [B, 1, 1, S]`` bool or None.

        ``queries`` restricts the output to those positions (``[B, S', D]``); the last block
        only needs the target tokens, which saves most of its cost.
        """
        b, s, d = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)[:, None].chunk(6, dim=-1)
        h = torch.addcmul(shift1, self.norm1(x), 1 + scale1)
        if queries is not None:
            x, hq = x[:, queries], h[:, queries]
        else:
            hq = h
        sq = hq.shape[1]
        q = self.q_norm(self.to_q(hq).view(b, sq, self.heads, -1)).transpose(1, 2)
        k = self.k_norm(self.to_k(h).view(b, s, self.heads, -1)).transpose(1, 2)
        v = self.to_v(h).view(b, s, self.heads, -1).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = torch.addcmul(x, gate1, self.to_out(a.transpose(1, 2).reshape(b, sq, d)))
        h = torch.addcmul(shift2, self.norm2(x), 1 + scale2)
        return torch.addcmul(x, gate2, self.ff_out(F.gelu(self.ff_in(h))))


class PocketTransformer(nn.Module):
    """The denoiser: ``[text, target, references]`` in, target velocities out."""

    def __init__(self, arch: PocketArch, text_dim: int = HIDDEN_SIZE) -> None:
        super().__init__()
        self.arch = arch
        d = arch.dim
        self.patch_in = nn.Linear(arch.patch_dim, d)
        self.text_in = nn.Linear(text_dim, d)
        self.segment = nn.Embedding(3, d)
        self.sigma_in = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.pooled_in = nn.Linear(text_dim, d)
        self.blocks = nn.ModuleList(Block(d, arch.heads, arch.mlp_ratio) for _ in range(arch.depth))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Linear(d, 2 * d)
        self.proj_out = nn.Linear(d, arch.patch_dim)
        self.register_buffer("pos", _sincos_2d(arch.grid, d), persistent=False)

    def init_for_training(self) -> None:
        """DiT-style start: every block is the identity and the output is zero.

        The default (PyTorch) init is kept for ``weights='random'`` so that random test models
        compute a non-trivial function of all their inputs.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.segment.weight, std=0.02)
        for m in [*(blk.modulation for blk in self.blocks), self.modulation_out, self.proj_out]:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
        pooled: torch.Tensor,
        ref_tokens: torch.Tensor,
        ref_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Velocity of the target tokens.

        Args:
            latents: ``[B, N, P]`` noisy target patches.
            sigma: ``[B]`` noise levels in [0, 1].
            text_states: ``[B, L, 384]`` MiniLM token states; text_mask ``[B, L]`` bool.
            pooled: ``[B, 384]`` sentence embeddings.
            ref_tokens: ``[B, R*N, P]`` clean reference patches in [-1, 1]; ref_mask
                ``[B, R*N]`` bool (False for padding references).

        Returns:
            ``[B, N, P]``.
        """
        n = latents.shape[1]
        r = ref_tokens.shape[1] // n
        # text positions padded in every row change nothing (masked keys, unread outputs)
        used = int(text_mask.sum(1).max())
        text_states, text_mask = text_states[:, :used], text_mask[:, :used]
        seg = self.segment.weight
        text = self.text_in(text_states) + seg[_SEG_TEXT]
        target = self.patch_in(latents) + self.pos + seg[_SEG_TARGET]
        refs = self.patch_in(ref_tokens) + self.pos.repeat(r, 1) + seg[_SEG_REFERENCE]
        x = torch.cat([text, target, refs], dim=1)
        keep = torch.cat(
            [text_mask, torch.ones_like(latents[..., 0], dtype=torch.bool), ref_mask], dim=1
        )
        mask = None if bool(keep.all()) else keep[:, None, None, :]
        c = self.sigma_in(sigma_features(sigma).to(x.dtype)) + self.pooled_in(pooled)
        c = F.silu(c)
        for block in self.blocks[:-1]:
            x = block(x, c, mask)
        x = self.blocks[-1](x, c, mask, queries=slice(used, used + n))
        shift, scale = self.modulation_out(c)[:, None].chunk(2, dim=-1)
        return self.proj_out(torch.addcmul(shift, self.norm_out(x), 1 + scale))


# ----- weights ---------------------------------------------------------------------------
def save_pocket_weights(
    model: PocketTransformer, path: str | Path, dtype: torch.dtype = torch.float16
) -> Path:
    """Write the denoiser's weights (``dtype``) with its architecture in the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={_META_KEY: json.dumps(asdict(model.arch))})
    return path


def load_pocket_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, architecture dict) from a pocket safetensors file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pocket weights not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if _META_KEY not in meta:
            raise ValueError(f"{path} has no {_META_KEY!r} metadata; not a pocket weights file")
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    return state, json.loads(meta[_META_KEY])


def check_arch(options: PocketOptions, saved: dict[str, Any], path: Path, prefix: str) -> None:
    """Raise ConfigError naming the first architecture field that differs from the weights."""
    for name in _ARCH_FIELDS:
        if name not in saved:
            raise ValueError(f"{path} does not record the architecture field {name!r}")
        trained = saved[name]
        if trained != getattr(options, name):
            raise ConfigError(
                f"{prefix}.{name}",
                getattr(options, name),
                f"the weights {path} were trained with {name} = {trained!r}; set it to that "
                f"or point {prefix}.weights elsewhere",
            )


# ----- the policy ------------------------------------------------------------------------
class PocketPolicy(Policy):
    """The ``pocket`` backend (see the module docstring for the design)."""

    backend = "pocket"
    default_lora_targets = ("to_q", "to_k", "to_v", "to_out", "ff_in", "ff_out")

    def __init__(
        self,
        arch: PocketArch,
        text_max_length: int = 16,
        text_encoder: MiniLMTextEncoder | None = None,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.denoiser = PocketTransformer(arch)
        self.text_encoder = text_encoder or MiniLMTextEncoder(text_max_length)

    @property
    def _param(self) -> torch.Tensor:
        return self.denoiser.patch_in.weight

    def latent_shape(self) -> tuple[int, ...]:
        """``(N, P)``: ``N = (size/patch)^2`` patch tokens of ``P = 3*patch^2`` values in [-1, 1]."""
        return (self.arch.num_patches, self.arch.patch_dim)

    def images_to_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Clean latents ``x0 [B, N, P]`` of images ``[B, 3, H, W]`` in [0, 1] (resized if needed)."""
        images = resize_square(images.float(), self.arch.image_size)
        return images_to_patches(images * 2.0 - 1.0, self.arch.patch)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], references: Sequence[torch.Tensor]) -> Condition:
        """Condition for B pairs; ``references[i]`` is ``[R_i, 3, h, w]`` in [0, 1], R_i >= 1.

        References are centre-cropped to squares and resized to the model's image size;
        samples with fewer references than the batch maximum get masked padding.
        """
        prompts = list(prompts)
        if len(prompts) != len(references):
            raise ValueError(f"{len(prompts)} prompts but {len(references)} reference sets")
        if not prompts:
            raise ValueError("encode() needs at least one prompt")
        per_sample = []
        for i, ref in enumerate(references):
            if not isinstance(ref, torch.Tensor) or ref.ndim != 4 or ref.shape[1] != 3:
                shape = tuple(ref.shape) if isinstance(ref, torch.Tensor) else type(ref).__name__
                raise ValueError(f"references[{i}] must be [R, 3, h, w] with R >= 1, got {shape}")
            if ref.shape[0] < 1:
                raise ValueError(f"references[{i}] is empty: each sample needs >= 1 reference")
            tokens = self.images_to_latents(ref.detach().cpu())  # [R, N, P]
            per_sample.append(tokens.reshape(-1, self.arch.patch_dim))
        longest = max(t.shape[0] for t in per_sample)
        ref_tokens = torch.zeros(len(prompts), longest, self.arch.patch_dim)
        ref_mask = torch.zeros(len(prompts), longest, dtype=torch.bool)
        for i, t in enumerate(per_sample):
            ref_tokens[i, : t.shape[0]] = t
            ref_mask[i, : t.shape[0]] = True
        text = self.text_encoder.encode(prompts)
        device, dtype = self._param.device, self._param.dtype
        return Condition(
            {
                "text_states": text.states.to(device, dtype),
                "text_mask": text.mask.to(device),
                "pooled": text.pooled.to(device, dtype),
                "ref_tokens": ref_tokens.to(device, dtype),
                "ref_mask": ref_mask.to(device),
            }
        )

    def forward(self, latents: torch.Tensor, sigma: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Velocity ``[B, N, P]`` for latents ``[B, N, P]`` at ``sigma`` ``[B]`` (or a scalar)."""
        if tuple(latents.shape[1:]) != self.latent_shape():
            raise ValueError(
                f"latents must be [B, {self.latent_shape()}], got {tuple(latents.shape)}"
            )
        b = latents.shape[0]
        sigma = torch.as_tensor(sigma, device=latents.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(b)
        if sigma.shape != (b,):
            raise ValueError(f"sigma must be [B] = [{b}], got {tuple(sigma.shape)}")
        if len(cond) != b:
            raise ValueError(f"condition has batch {len(cond)}, latents have {b}")
        t = cond.tensors
        return self.denoiser(
            latents.to(self._param.dtype),
            sigma,
            t["text_states"],
            t["text_mask"],
            t["pooled"],
            t["ref_tokens"],
            t["ref_mask"],
        )

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] (float32, clamped) from latents ``[B, N, P]``."""
        images = patches_to_images(latents.float(), self.arch.patch, self.arch.image_size)
        return ((images + 1.0) / 2.0).clamp(0.0, 1.0)


def build_pocket(
    options: dict[str, Any],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    prefix: str = "model.options",
) -> PocketPolicy:
    """The ``pocket`` factory: parse ``options`` (:class:`PocketOptions`) and load the weights."""
    opts = parse(PocketOptions, options, prefix)
    if opts.weights == "random":
        state = None
    else:
        path = ASSET_PATH if opts.weights == "builtin" else Path(opts.weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"{prefix}.weights", opts.weights, f"no weights file at {path}")
        state, saved_arch = load_pocket_weights(path)
        check_arch(opts, saved_arch, path, prefix)
    rng_state = torch.random.get_rng_state()  # seeding the init must not disturb the caller
    try:
        if state is None:
            torch.manual_seed(opts.seed)
        policy = PocketPolicy(opts.arch, opts.text_max_length)
    finally:
        torch.random.set_rng_state(rng_state)
    if state is not None:
        own = policy.denoiser.state_dict()
        state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
        policy.denoiser.load_state_dict(state, strict=True)
    return policy.to(device=torch.device(device), dtype=dtype).eval()


POLICIES.register("pocket", build_pocket)
