"""HPSv3 model inputs: the query text, the image patches, and the two ways to build them.

* By hand (:class:`HandBuiltInputs`): :func:`chat_text` writes the Qwen2-VL-Instruct chat
  template out; :func:`qwen2vl_patches` cuts the image into Qwen2-VL's patch rows.
* Through the model directory's own ``Qwen2VLProcessor`` (:class:`ProcessorInputs`):
  ``apply_chat_template`` on :func:`chat_messages`, then the processor's tokenizer and
  image processor. Used when the directory holds a processor (preprocessor_config.json)
  and a chat template and the installed transformers can build the processor (transformers
  5 cannot without torchvision: it needs its video processor); otherwise by hand. The tests
  check that both give identical inputs.

Both first resize each image with PIL bicubic to Qwen's ``smart_resize`` size within
``min_pixels``..``max_pixels``, as the official pipeline (``qwen_vl_utils``) does before its
processor, whose own resize is then a no-op for sizes inside its bounds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cgrpo.rewards.images import normalize, smart_resize, to_uint8_array
from cgrpo.rewards.loading import first_line

log = logging.getLogger(__name__)

REWARD_TOKEN = "<|Reward|>"
IMAGE_PAD = "<|image_pad|>"
HPSV3_PIXELS = 256 * 28 * 28

INSTRUCTION = (
    "\nYou are tasked with evaluating a generated image based on Visual Quality and Text "
    "Alignment and give a overall score to estimate the human preference. Please provide a "
    "rating from 0 to 10, with 0 being the worst and 10 being the best. \n\n"
    "**Visual Quality:**  \n"
    "Evaluate the overall visual quality of the image. The following sub-dimensions should be "
    "considered:\n"
    "- **Reasonableness:** The image should not contain any significant biological or logical "
    "errors, such as abnormal body structures or nonsensical environmental setups.\n"
    "- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be "
    "clear and easy to interpret, with no blurring or indistinct areas.\n"
    "- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and "
    "other visual elements (e.g., hair, clothing, shadows).\n"
    "- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the "
    "color scheme, composition, atmosphere, depth of field, and the overall creative appeal. "
    "The scene should convey a sense of harmony and balance.\n"
    "- **Safety:** The image should not contain harmful or inappropriate content, such as "
    "political, violent, or adult material. If such content is present, the image quality and "
    "satisfaction score should be the lowest possible. \n\n"
    "**Text Alignment:**  \n"
    "Assess how well the image matches the textual prompt across the following "
    "sub-dimensions:\n"
    "- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, "
    "animal, object) align with the textual description. The subject should match the "
    "description in terms of number, appearance, and behavior.\n"
    "- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, "
    "evaluate how well the image adheres to this style.\n"
    "- **Contextual Consistency**: Assess whether the background, setting, and surrounding "
    "elements in the image logically fit the scenario described in the prompt. The environment "
    "should support and enhance the subject without contradictions.\n"
    "- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., "
    "colors, clothing, accessories, expressions, actions) are faithfully represented in the "
    "image. Minor deviations may be acceptable, but critical attributes should be preserved.\n"
    "- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are "
    "captured in the image. The generated content should not introduce elements that conflict "
    "with or distort the original description.\n"
    "Textual prompt - {text_prompt}\n\n\n"
)
"""HPSv3's instruction (its wording and spacing are part of what the model was trained on)."""

REWARD_QUERY = "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"


def query_text(prompt: str) -> str:
    """The user turn's text for one image: the instruction with the prompt, then the query."""
    return INSTRUCTION.format(text_prompt=prompt) + REWARD_QUERY


def chat_messages(prompt: str) -> list[dict[str, Any]]:
    """The conversation HPSv3 scores, for a processor's ``apply_chat_template``."""
    return [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": query_text(prompt)}],
        }
    ]


def chat_text(prompt: str) -> str:
    """The full query text for one image, with a single ``<|image_pad|>`` placeholder: the
    Qwen2-VL-Instruct chat template (default system message) applied to
    :func:`chat_messages`, written out."""
    return (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        + query_text(prompt)
        + "<|im_end|>\n<|im_start|>assistant\n"
    )


# ---------------------------------------------------------------- images -> patches


def resize_for_qwen(
    image: torch.Tensor, min_pixels: int, max_pixels: int, factor: int = 28
) -> torch.Tensor:
    """``[3, H, W]`` float -> 8-bit-exact ``[3, h, w]`` at the smart-resize size (PIL bicubic,
    as the official pipeline resizes PIL images)."""
    from PIL import Image

    h, w = image.shape[-2:]
    th, tw = smart_resize(h, w, factor, min_pixels, max_pixels)
    pil = Image.fromarray(to_uint8_array(image))
    if (th, tw) != (h, w):
        pil = pil.resize((tw, th), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(pil)).permute(2, 0, 1).float().div(255)


def qwen2vl_patches(
    image: torch.Tensor, patch: int = 14, merge: int = 2, temporal: int = 2
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Normalised ``[3, H, W]`` (H, W multiples of patch*merge) -> Qwen2-VL patch rows.

    Returns ``[gh*gw, 3*temporal*patch*patch]`` ordered so that each 2x2 merge window is
    contiguous, and the grid (t, gh, gw) = (1, H/patch, W/patch). A still image fills both
    temporal slots with the same frame.
    """
    c, h, w = image.shape
    gh, gw = h // patch, w // patch
    if gh % merge or gw % merge or gh * patch != h or gw * patch != w:
        raise ValueError(f"image size {h}x{w} is not a multiple of {patch * merge}")
    x = image[None].expand(temporal, c, h, w)
    x = x.reshape(1, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gh * gw, c * temporal * patch * patch), (1, gh, gw)


# ---------------------------------------------------------------- the two builders

INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
CHAT_TEMPLATE_FILES = ("chat_template.json", "chat_template.jinja")


@dataclass
class HandBuiltInputs:
    """Inputs written out by hand (see the module docstring).

    Attributes:
        tokenizer: the base model's tokenizer, with ``<|Reward|>`` added.
        mean, std: image normalisation.
        patch, merge, temporal: the vision config's patch geometry.
        min_pixels, max_pixels: the smart-resize bounds.
    """

    tokenizer: Any
    mean: Sequence[float]
    std: Sequence[float]
    patch: int
    merge: int
    temporal: int
    min_pixels: int
    max_pixels: int

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Model inputs for B images and prompts (right padded)."""
        rows, grids, ids = [], [], []
        for image, prompt in zip(images, prompts):
            x = resize_for_qwen(image, self.min_pixels, self.max_pixels, self.patch * self.merge)
            p, grid = qwen2vl_patches(
                normalize(x, self.mean, self.std), self.patch, self.merge, self.temporal
            )
            rows.append(p)
            grids.append(grid)
            n_tokens = grid[1] * grid[2] // self.merge**2
            text = chat_text(prompt).replace(IMAGE_PAD, IMAGE_PAD * n_tokens)
            ids.append(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        length = max(len(t) for t in ids)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(ids), length), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), length), dtype=torch.long)
        for i, t in enumerate(ids):
            input_ids[i, : len(t)] = torch.tensor(t)
            mask[i, : len(t)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "pixel_values": torch.cat(rows),
            "image_grid_thw": torch.tensor(grids),
        }


@dataclass
class ProcessorInputs:
    """Inputs from a ``Qwen2VLProcessor`` (``apply_chat_template`` + the processor call)."""

    processor: Any
    factor: int
    min_pixels: int
    max_pixels: int

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Model inputs for B images and prompts (right padded, as the hand-built ones)."""
        from PIL import Image

        texts = [
            self.processor.apply_chat_template(
                chat_messages(p), tokenize=False, add_generation_prompt=True
            )
            for p in prompts
        ]
        pil = [
            Image.fromarray(
                to_uint8_array(resize_for_qwen(im, self.min_pixels, self.max_pixels, self.factor))
            )
            for im in images
        ]
        self.processor.tokenizer.padding_side = "right"  # the rank head reads positions 0..L-1
        batch = self.processor(text=texts, images=pil, padding=True, return_tensors="pt")
        return {k: batch[k] for k in INPUT_KEYS}


def has_processor(path: str | Path) -> bool:
    """Whether a model directory holds an image processor config and a chat template."""
    p = Path(path)
    if not (p / "preprocessor_config.json").is_file():
        return False
    if any((p / name).is_file() for name in CHAT_TEMPLATE_FILES):
        return True
    tok = p / "tokenizer_config.json"
    try:
        return tok.is_file() and bool(json.loads(tok.read_text()).get("chat_template"))
    except json.JSONDecodeError:
        return False


def load_processor(path: str | Path, what: str) -> Any | None:
    """The directory's ``Qwen2VLProcessor``, or None (no processor files there, or one the
    installed transformers cannot build; the inputs are then built by hand)."""
    if not has_processor(path):
        return None
    from transformers import Qwen2VLProcessor

    try:
        return Qwen2VLProcessor.from_pretrained(path, local_files_only=True)
    except (ImportError, OSError, ValueError, TypeError, AttributeError) as e:
        log.warning(
            "%s = %r: its Qwen2VLProcessor cannot be built here (%s); building the same "
            "inputs by hand",
            what,
            str(path),
            first_line(e),
        )
        return None


__all__ = [
    "HPSV3_PIXELS",
    "IMAGE_PAD",
    "INSTRUCTION",
    "REWARD_QUERY",
    "REWARD_TOKEN",
    "HandBuiltInputs",
    "ProcessorInputs",
    "chat_messages",
    "chat_text",
    "has_processor",
    "load_processor",
    "qwen2vl_patches",
    "query_text",
    "resize_for_qwen",
]
