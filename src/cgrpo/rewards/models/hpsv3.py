"""HPSv3 human-preference score on current transformers' Qwen2-VL (``hpsv3``).

HPSv3 (MizzenAI, 2025) is Qwen2-VL-7B-Instruct fine-tuned as a preference model. A query is
one chat turn holding the image and a fixed instruction that ends with an added special token
``<|Reward|>``; the backbone's final hidden state (after the last norm) at that token goes
through a small fp32 MLP, the rank head,
``Linear(hidden, 1024) - ReLU - Dropout(0.05) - Linear(1024, 16) - ReLU - Linear(16, 2)``,
whose two outputs are (mu, log-sigma) of the Bradley-Terry-with-uncertainty training loss.
The score is mu (column ``hpsv3``; higher is better; typical values roughly 0-15).

What this module reproduces from the official package (inputs in
:mod:`cgrpo.rewards.models.hpsv3_inputs`, built with the model directory's ``Qwen2VLProcessor``
and chat template where transformers can build it, else written out identically by hand):

* Prompt: the Qwen2-VL-Instruct chat template with its default system message, one user turn
  ``<|vision_start|><|image_pad|><|vision_end|>`` + ``INSTRUCTION`` (prompt substituted)
  + ``REWARD_QUERY``, then the generation prompt ``<|im_start|>assistant\\n``.
* Images: converted to 8-bit RGB, resized with PIL bicubic to Qwen's ``smart_resize`` size
  with ``min_pixels = max_pixels = 256 * 28 * 28`` (a 512x512 image becomes 448x448, 256
  visual tokens), then rescaled, normalised with the OpenAI CLIP mean/std and cut into
  Qwen2-VL's 14x14x2 patches in its 2x2-merge order, exactly as its image processor does.
* Needs transformers >= 4.52 (earlier ``Qwen2VLModel`` lacks the vision tower); older
  releases are refused with that reason before any weights are read.
* Positions: plain sequential positions for every token, image tokens included (the
  official forward bypasses Qwen2-VL's 3-D M-RoPE index computation).
* Dtypes: backbone in bfloat16 (option ``dtype``), rank head kept in float32.

Checkpoint loading (``checkpoint``: the official ``HPSv3.safetensors``, or a ``.pt``/``.bin``
state dict read with ``torch.load(weights_only=True)``; a top-level ``"model"`` entry is
unwrapped). Official key names -> ours (:func:`rename_official_keys`):

===================================  =====================================
official (transformers < 4.52)       ours
===================================  =====================================
``model.embed_tokens|layers|norm.*``  ``backbone.language_model.*``
``visual.*``                          ``backbone.visual.*``
``rm_head.0.*``                       ``rank_head.fc1.*``
``rm_head.3.*``                       ``rank_head.fc2.*``
``rm_head.5.*``                       ``rank_head.out.*``
``lm_head.weight``                    dropped (the score never uses the LM head)
===================================  =====================================

Newer layouts (``model.language_model.*``, ``model.visual.*``) map the same way. The
embedding's row count in the checkpoint (base vocabulary + ``<|Reward|>``) sets the vocab
size. ``path`` is the base model directory (Qwen2-VL-7B-Instruct's config.json and tokenizer
files; its weights are not read, the checkpoint holds the whole model).

Verified offline (tests, on a tiny random Qwen2-VL and an offline tokenizer): patch tensors
equal transformers' Qwen2-VL image processor; the reward token is found once per row at the
right position and read from the last hidden state; renaming a synthetic checkpoint written
with the official names round-trips to identical scores; determinism; batch invariance.
NOT verifiable here without the 16 GB checkpoint: numerical parity with the official package
(expected up to bf16 noise and PIL-vs-qwen_vl_utils resizing, both matched by construction).

Out of process: the official ``hpsv3`` package pins an older transformers. Install it with
cgrpo in a separate environment and serve it with
``cgrpo serve-reward hpsv3-official --options '{"checkpoint": "HPSv3.safetensors"}'``
(registered below; it calls the package's own ``HPSv3RewardInferencer``), then train with the
``remote`` reward pointed at that server. The in-process ``hpsv3`` reward can be served the
same way to keep the 7B model off the training GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cgrpo.config import option, parse
from cgrpo.rewards.base import REWARDS, Reward, RewardContext, ScoreRequest
from cgrpo.rewards.images import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ImageTransform,
    require_model_dir,
    to_uint8_array,
    torch_dtype,
    transform_from_dir,
)
from cgrpo.rewards.loading import check_fit, first_line, require_transformers
from cgrpo.rewards.models.hpsv3_inputs import (
    HPSV3_PIXELS,
    IMAGE_PAD,
    REWARD_TOKEN,
    HandBuiltInputs,
    ProcessorInputs,
    load_processor,
)

# ---------------------------------------------------------------- model


class RankHead(nn.Module):
    """HPSv3's rank head: hidden -> 1024 -> 16 -> 2 (mu, log-sigma); always float32."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, 1024)
        self.fc2 = nn.Linear(1024, 16)
        self.out = nn.Linear(16, 2)
        self.dropout = nn.Dropout(0.05)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``[B, hidden]`` -> ``[B, 2]`` float32."""
        h = self.dropout(torch.relu(self.fc1(h.float())))
        return self.out(torch.relu(self.fc2(h)))


def require_qwen2vl_with_vision() -> None:
    """Refuse transformers releases whose ``Qwen2VLModel`` is the text decoder alone (before
    4.52 the vision tower sat in ``Qwen2VLForConditionalGeneration``): the model would be
    built without it and every checkpoint would look like a misfit."""
    require_transformers(
        "4.52",
        "the hpsv3 reward",
        "Qwen2VLModel holds the vision tower from 4.52 on; or serve the official package "
        "out of process with 'cgrpo serve-reward hpsv3-official'",
    )


def _text_config(config: Any) -> Any:
    return getattr(config, "text_config", config)


class HPSv3Model(nn.Module):
    """A Qwen2-VL backbone (vision tower + language model, no LM head) and the rank head."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        require_qwen2vl_with_vision()
        from transformers import Qwen2VLModel

        self.config = config
        self.backbone = Qwen2VLModel(config)
        self.rank_head = RankHead(_text_config(config).hidden_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.Tensor,
        reward_token_id: int,
    ) -> torch.Tensor:
        """Rank-head outputs ``[B, 2]`` (float32) read at the one reward token of each row.

        Args:
            input_ids, attention_mask: ``[B, L]`` (right padded).
            pixel_values: ``[sum_i N_i, 3*2*14*14]`` patch rows of the B images, in order.
            image_grid_thw: ``[B, 3]``.
        """
        found = input_ids == reward_token_id
        counts = found.sum(1)
        if not torch.all(counts == 1):
            raise ValueError(
                f"every query must hold exactly one {REWARD_TOKEN} token; "
                f"counts per row: {counts.tolist()}"
            )
        # HPSv3's own forward embeds the tokens itself and never builds Qwen2-VL's 3-D M-RoPE
        # indices, so the model was trained (and must be run) with plain positions 0..L-1 on
        # all three rotary sections; right padding keeps those equal to the masked cumsum.
        b, length = input_ids.shape
        positions = torch.arange(length, device=input_ids.device).view(1, 1, -1).expand(3, b, -1)
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            position_ids=positions,
            use_cache=False,
        )
        pos = found.int().argmax(1)
        hidden = out.last_hidden_state[torch.arange(input_ids.shape[0], device=pos.device), pos]
        return self.rank_head(hidden)


# ---------------------------------------------------------------- checkpoint


_RENAMES = (
    ("model.language_model.", "backbone.language_model."),
    ("model.visual.", "backbone.visual."),
    ("model.embed_tokens.", "backbone.language_model.embed_tokens."),
    ("model.layers.", "backbone.language_model.layers."),
    ("model.norm.", "backbone.language_model.norm."),
    ("visual.", "backbone.visual."),
    ("rm_head.0.", "rank_head.fc1."),
    ("rm_head.3.", "rank_head.fc2."),
    ("rm_head.5.", "rank_head.out."),
)
_DROPPED = ("lm_head.",)


def rename_official_keys(
    state: dict[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Official HPSv3 state-dict names -> :class:`HPSv3Model` names (table in the module doc).

    Raises ValueError listing keys that match no rule (a different model, or a LoRA-only save).
    """
    out, unknown = {}, []
    for key, value in state.items():
        k = key.removeprefix("module.")  # saved from a DDP/DeepSpeed wrapper
        if k.startswith(_DROPPED):
            continue
        for old, new in _RENAMES:
            if k.startswith(old):
                out[new + k[len(old) :]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"{source}: {len(unknown)} keys are not HPSv3 weights, e.g. "
            f"{unknown[:5]}; expected names starting with model., visual., rm_head."
        )
    return out


def official_key_names(ours: list[str]) -> list[str]:
    """Our names -> the official (transformers < 4.52) names; the inverse of the renaming."""
    inverse = (
        ("backbone.language_model.", "model."),
        ("backbone.visual.", "visual."),
        ("rank_head.fc1.", "rm_head.0."),
        ("rank_head.fc2.", "rm_head.3."),
        ("rank_head.out.", "rm_head.5."),
    )
    names = []
    for k in ours:
        for old, new in inverse:
            if k.startswith(old):
                names.append(new + k[len(old) :])
                break
        else:
            raise ValueError(f"not an HPSv3Model key: {k}")
    return names


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only=True``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"{what} = {str(path)!r} not found; expected the HPSv3 state dict "
            f"file (HPSv3.safetensors, or a .pt/.bin/.pth)"
        )
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        state = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{what} = {str(path)!r} is not a flat state dict of tensors")
    return state


def load_hpsv3(
    path: str | Path, checkpoint: str | Path, prefix: str = "rewards.hpsv3.options"
) -> HPSv3Model:
    """Build :class:`HPSv3Model` from the base config at ``path`` and load ``checkpoint``.

    Parameters are created empty and replaced by the checkpoint tensors, so a 7B model is
    not first initialised at random.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    require_qwen2vl_with_vision()  # before reading a 16 GB checkpoint

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if getattr(config, "model_type", "") != "qwen2_vl":
        raise ValueError(
            f"{prefix}.path = {str(path)!r}: config.json is model_type "
            f"{getattr(config, 'model_type', None)!r}; HPSv3 needs a Qwen2-VL base"
        )
    state = rename_official_keys(
        read_state_dict(checkpoint, f"{prefix}.checkpoint"), f"{prefix}.checkpoint"
    )
    emb = state.get("backbone.language_model.embed_tokens.weight")
    if emb is None:
        raise ValueError(f"{prefix}.checkpoint = {str(checkpoint)!r} has no token embedding")
    _text_config(config).vocab_size = emb.shape[0]
    with init_empty_weights(include_buffers=False):
        model = HPSv3Model(config)
    expected = set(model.state_dict())
    check_fit(
        f"{prefix}.checkpoint",
        checkpoint,
        sorted(expected - set(state)),
        sorted(set(state) - expected),
        network=f"HPSv3 on the Qwen2-VL config at {str(path)!r}",
    )
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:  # shapes: the config and the checkpoint disagree
        raise ValueError(f"{prefix}.checkpoint = {str(checkpoint)!r}: {first_line(e)}") from None
    return model.eval()


# ---------------------------------------------------------------- reward


@dataclass
class HPSv3Options:
    path: str = option(
        help="local Qwen2-VL-7B-Instruct directory (config.json + tokenizer "
        "files; weights are not read)"
    )
    checkpoint: str = option(help="HPSv3 state dict: HPSv3.safetensors (or .pt/.bin)")
    dtype: str = option(
        "bfloat16",
        "backbone dtype (the rank head stays float32)",
        choices=("bfloat16", "float32", "float16"),
    )
    batch_size: int = option(4, "images per forward pass", min=1)
    min_pixels: int = option(HPSV3_PIXELS, "smart-resize lower bound on pixels", min=1)
    max_pixels: int = option(HPSV3_PIXELS, "smart-resize upper bound on pixels", min=1)


class HPSv3Reward(Reward):
    """``hpsv3``: the HPSv3 preference score (mu) of each image for its prompt."""

    name = "hpsv3"
    columns = ("hpsv3",)

    def __init__(self, options: HPSv3Options, context: RewardContext) -> None:
        super().__init__()
        from transformers import AutoTokenizer

        self.options = options
        prefix = "rewards.hpsv3.options"
        path = require_model_dir(
            options.path, f"{prefix}.path", ["config.json", ("tokenizer.json", "vocab.json")]
        )
        self.processor = load_processor(path, f"{prefix}.path")
        self.tokenizer = (
            self.processor.tokenizer
            if self.processor is not None
            else AutoTokenizer.from_pretrained(path, local_files_only=True)
        )
        if REWARD_TOKEN not in self.tokenizer.get_vocab():
            self.tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
        self.reward_id = self.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
        self.model = load_hpsv3(path, options.checkpoint, prefix)
        cfg = self.model.config
        pad_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        if pad_id != cfg.image_token_id:
            raise ValueError(
                f"{prefix}.path: the tokenizer's {IMAGE_PAD} id {pad_id} differs "
                f"from config image_token_id {cfg.image_token_id}"
            )
        vocab = _text_config(cfg).vocab_size
        if self.reward_id >= vocab:
            raise ValueError(
                f"{prefix}.checkpoint: {REWARD_TOKEN} has id {self.reward_id} but the "
                f"embedding has {vocab} rows; tokenizer and checkpoint disagree"
            )
        self.model.to(torch_dtype(options.dtype))
        self.model.rank_head.float()
        self.model.requires_grad_(False)
        vc = cfg.vision_config
        clip = ImageTransform(None, None, None, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        norm = transform_from_dir(path, clip)
        factor = vc.patch_size * vc.spatial_merge_size
        self.encode = (
            ProcessorInputs(self.processor, factor, options.min_pixels, options.max_pixels)
            if self.processor is not None
            else HandBuiltInputs(
                self.tokenizer,
                norm.mean,
                norm.std,
                vc.patch_size,
                vc.spatial_merge_size,
                vc.temporal_patch_size,
                options.min_pixels,
                options.max_pixels,
            )
        )
        self.to(context.device)

    def to(self, device: torch.device | str) -> HPSv3Reward:
        super().to(device)
        self.model.to(self.device)
        return self

    def raw(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Rank-head outputs ``[B, 2]`` (mu, log-sigma), float32."""
        dtype = next(self.model.backbone.parameters()).dtype
        outs = []
        for i in range(0, len(prompts), self.options.batch_size):
            batch = self.encode(
                images[i : i + self.options.batch_size], prompts[i : i + self.options.batch_size]
            )
            batch = {k: v.to(self.device) for k, v in batch.items()}
            batch["pixel_values"] = batch["pixel_values"].to(dtype)
            outs.append(self.model(**batch, reward_token_id=self.reward_id))
        return torch.cat(outs)

    def _score(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        return {"hpsv3": self.raw(request.images, request.prompts)[:, 0]}


# ---------------------------------------------------------------- official package adapter


@dataclass
class OfficialHPSv3Options:
    checkpoint: str = option(
        help="HPSv3.safetensors path (the official loader would otherwise "
        "download it; we never download at run time)"
    )
    config_path: str | None = option(
        None, "the official package's model YAML (default: its bundled HPSv3_7B.yaml)"
    )


class OfficialHPSv3Reward(Reward):
    """``hpsv3-official``: the official ``hpsv3`` package's ``HPSv3RewardInferencer``.

    For an environment with that package installed (it pins an older transformers); serve
    it with ``cgrpo serve-reward hpsv3-official`` and score through the ``remote`` reward.
    """

    name = "hpsv3-official"
    columns = ("hpsv3",)

    def __init__(self, options: OfficialHPSv3Options, context: RewardContext) -> None:
        super().__init__()
        try:
            from hpsv3 import HPSv3RewardInferencer
        except ImportError as e:
            raise ImportError(
                "hpsv3-official needs the official 'hpsv3' package in this "
                "environment (pip install hpsv3); see cgrpo.rewards.models.hpsv3"
            ) from e
        if not Path(options.checkpoint).expanduser().is_file():
            raise FileNotFoundError(
                f"rewards.hpsv3-official.options.checkpoint = {options.checkpoint!r} not found"
            )
        self.device = torch.device(context.device)
        self.inferencer = HPSv3RewardInferencer(
            config_path=options.config_path,
            checkpoint_path=options.checkpoint,
            device=str(self.device),
        )

    def to(self, device: torch.device | str) -> OfficialHPSv3Reward:
        super().to(device)
        self.inferencer.model.to(self.device)
        self.inferencer.device = str(self.device)
        return self

    def _score(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        from PIL import Image

        pil = [Image.fromarray(to_uint8_array(im)) for im in request.images]
        out = self.inferencer.reward(image_paths=pil, prompts=list(request.prompts))
        return {"hpsv3": torch.as_tensor(out).float().reshape(len(pil), -1)[:, 0]}


@REWARDS.register("hpsv3")
def _build_hpsv3(options: dict, context: RewardContext) -> HPSv3Reward:
    return HPSv3Reward(parse(HPSv3Options, options, prefix="rewards.hpsv3.options"), context)


@REWARDS.register("hpsv3-official")
def _build_official(options: dict, context: RewardContext) -> OfficialHPSv3Reward:
    opts = parse(OfficialHPSv3Options, options, prefix="rewards.hpsv3-official.options")
    return OfficialHPSv3Reward(opts, context)


__all__ = [
    "HPSv3Model",
    "HPSv3Options",
    "HPSv3Reward",
    "OfficialHPSv3Reward",
    "RankHead",
    "load_hpsv3",
    "official_key_names",
    "rename_official_keys",
]
