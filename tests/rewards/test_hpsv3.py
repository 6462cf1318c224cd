"""hpsv3 on a tiny random Qwen2-VL with an offline tokenizer and a synthetic checkpoint.

What these verify offline: image patches equal transformers' Qwen2-VL processor, the prompt
template, the reward-token read-out, official-name checkpoint loading (both key layouts),
determinism and batch invariance. Score parity with the official package needs the real
checkpoint and is out of reach here.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
from safetensors.torch import load_file, save_file

from cgrpo.config import ConfigError
from cgrpo.rewards import ScoreRequest, build_reward
from cgrpo.rewards.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize, smart_resize
from cgrpo.rewards.models.hpsv3 import rename_official_keys
from cgrpo.rewards.models.hpsv3_inputs import (
    INSTRUCTION,
    REWARD_TOKEN,
    chat_text,
    qwen2vl_patches,
    resize_for_qwen,
)

# Tiny images keep the tests fast: 100x150 inputs become 56x84 (2x3 merged visual tokens).
PIX_MIN, PIX_MAX = 56 * 56, 5204

PROMPTS = [
    "a dog on the beach",
    "a red backpack",
    "a cat wearing a hat",
    "a teapot",
    "a vase of flowers on a wooden table",
    "a duck toy",
    "a sneaker",
    "a clock",
]


@pytest.fixture(scope="module")
def hps(tiny_hpsv3):
    base, ckpt = tiny_hpsv3
    return build_reward(
        "hpsv3",
        {
            "path": str(base),
            "checkpoint": str(ckpt),
            "dtype": "float32",
            "batch_size": 4,
            "min_pixels": PIX_MIN,
            "max_pixels": PIX_MAX,
        },
    )


def req(images, prompts):
    return ScoreRequest(images=images, prompts=prompts, references=[images[:1]] * len(prompts))


def test_smart_resize_matches_transformers_and_hpsv3_sizes():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf

    pix = 256 * 28 * 28
    assert smart_resize(512, 512, 28, pix, pix) == (448, 448)  # 256 visual tokens
    for h, w in [(512, 512), (1024, 768), (300, 1200), (77, 91), (2000, 1500)]:
        assert smart_resize(h, w, 28, pix, pix) == hf(h, w, 28, pix, pix)


def test_patches_match_transformers_qwen2vl_processor(make_images):
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from cgrpo.rewards.images import to_uint8_array

    image = resize_for_qwen(make_images(1, 100, 150, seed=1)[0], PIX_MIN, PIX_MAX)
    assert image.shape == (3, 56, 84)
    proc = Qwen2VLImageProcessorPil(min_pixels=PIX_MIN, max_pixels=PIX_MAX)
    want = proc(Image.fromarray(to_uint8_array(image)), return_tensors="pt")
    rows, grid = qwen2vl_patches(normalize(image, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))
    assert grid == tuple(want["image_grid_thw"][0].tolist()) == (1, 4, 6)
    assert rows.shape == want["pixel_values"].shape
    assert torch.allclose(rows, want["pixel_values"], atol=1e-5)


def test_chat_text_follows_the_hpsv3_template():
    text = chat_text("a dog")
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>\nYou are tasked" in text
    assert (
        "Textual prompt - a dog\n\n\n\nPlease provide the overall ratings of this image: "
        "<|Reward|>\n\nEND\n<|im_end|>\n<|im_start|>assistant\n" in text
    )
    assert text.count(REWARD_TOKEN) == 1 and INSTRUCTION.count("{text_prompt}") == 1


def test_hpsv3_shape_determinism_batch_invariance(hps, make_images):
    imgs = make_images(8, 64, 64, seed=2)
    out = hps.score(req(imgs, PROMPTS))
    assert list(out) == ["hpsv3"] and out["hpsv3"].shape == (8,)
    assert torch.equal(out["hpsv3"], hps.score(req(imgs, PROMPTS))["hpsv3"])
    singles = torch.cat(
        [hps.score(req(imgs[i : i + 1], PROMPTS[i : i + 1]))["hpsv3"] for i in range(8)]
    )
    assert torch.allclose(out["hpsv3"], singles, atol=1e-4)
    assert out["hpsv3"].std() > 1e-3  # images/prompts change the score


def test_reward_read_at_the_reward_token_of_the_last_hidden_state(hps, make_images):
    imgs = make_images(2, 100, 150, seed=3)
    batch = hps.encode(imgs, PROMPTS[:2])
    ids = batch["input_ids"]
    assert (ids == hps.reward_id).sum(1).tolist() == [1, 1]
    assert hps.reward_id == len(hps.tokenizer) - 1  # added by the reward, like HPSv3 does
    n_img = (ids == hps.model.config.image_token_id).sum(1)
    assert n_img.tolist() == [6, 6]  # 56x84 -> 4x6 patches -> 2x3 merged tokens
    with torch.no_grad():
        b, length = ids.shape
        pos = torch.arange(length).view(1, 1, -1).expand(3, b, -1)
        hidden = hps.model.backbone(
            **{k: v for k, v in batch.items()}, position_ids=pos, use_cache=False
        ).last_hidden_state
        at = (ids == hps.reward_id).int().argmax(1)
        want = hps.model.rank_head(hidden[torch.arange(b), at])
    assert torch.allclose(hps.raw(imgs, PROMPTS[:2]), want, atol=1e-5)


def test_tokens_after_the_reward_token_do_not_matter(hps, make_images, monkeypatch):
    import cgrpo.rewards.models.hpsv3_inputs as mod

    imgs = make_images(2, 64, 64, seed=4)
    base = hps.score(req(imgs, PROMPTS[:2]))["hpsv3"]
    monkeypatch.setattr(mod, "REWARD_QUERY", mod.REWARD_QUERY.replace("END", "FIN!"))
    assert torch.allclose(hps.score(req(imgs, PROMPTS[:2]))["hpsv3"], base, atol=1e-5)
    monkeypatch.setattr(mod, "REWARD_QUERY", mod.REWARD_QUERY.replace("overall", "global"))
    assert not torch.allclose(hps.score(req(imgs, PROMPTS[:2]))["hpsv3"], base, atol=1e-5)


def test_official_key_names_and_new_layout_load_identically(tiny_hpsv3, tmp_path, hps, make_images):
    base, ckpt = tiny_hpsv3
    state = load_file(str(ckpt))
    for name in [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.norm.weight",
        "visual.patch_embed.proj.weight",
        "visual.blocks.0.attn.qkv.weight",
        "visual.merger.mlp.0.weight",
        "rm_head.0.weight",
        "rm_head.3.bias",
        "rm_head.5.weight",
        "lm_head.weight",
    ]:
        assert name in state, name
    renamed = rename_official_keys(state)
    assert "lm_head.weight" not in renamed and "rank_head.out.weight" in renamed
    newer = {
        (
            "model.language_model." + k[len("model.") :]
            if k.startswith("model.")
            else "model." + k
            if k.startswith("visual.")
            else k
        ): v
        for k, v in state.items()
    }
    alt = tmp_path / "newer.pt"
    torch.save({"model": newer}, alt)  # a .pt with a "model" wrapper, read with weights_only
    other = build_reward(
        "hpsv3",
        {
            "path": str(base),
            "checkpoint": str(alt),
            "dtype": "float32",
            "min_pixels": PIX_MIN,
            "max_pixels": PIX_MAX,
        },
    )
    imgs = make_images(3, 50, 90, seed=5)
    assert torch.equal(
        other.score(req(imgs, PROMPTS[:3]))["hpsv3"], hps.score(req(imgs, PROMPTS[:3]))["hpsv3"]
    )


def test_checkpoint_errors_name_file_and_keys(tiny_hpsv3, tmp_path):
    base, ckpt = tiny_hpsv3
    opts = {"path": str(base), "dtype": "float32"}
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        build_reward("hpsv3", {**opts, "checkpoint": str(tmp_path / "nope.safetensors")})
    state = load_file(str(ckpt))
    bad = dict(state, **{"text_head.weight": torch.zeros(1)})
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"not HPSv3 weights.*text_head\.weight"):
        build_reward("hpsv3", {**opts, "checkpoint": str(tmp_path / "bad.safetensors")})
    short = {k: v for k, v in state.items() if k != "rm_head.5.bias"}
    save_file(short, str(tmp_path / "short.safetensors"))
    with pytest.raises(
        ValueError, match=r"do not fit HPSv3.*missing 1 keys \['rank_head\.out\.bias'\]"
    ):
        build_reward("hpsv3", {**opts, "checkpoint": str(tmp_path / "short.safetensors")})
    with pytest.raises(FileNotFoundError, match=r"rewards\.hpsv3\.options\.path.*config\.json"):
        build_reward("hpsv3", {"path": str(tmp_path), "checkpoint": str(ckpt)})
    with pytest.raises(ConfigError, match=r"rewards\.hpsv3\.options\.checkpoint"):
        build_reward("hpsv3", {"path": str(base)})


def test_official_package_adapter_takes_mu(monkeypatch, make_images, tmp_path):
    calls = {}

    class FakeInferencer:
        def __init__(self, config_path=None, checkpoint_path=None, device="cuda"):
            calls["init"] = (config_path, checkpoint_path, device)

        def reward(self, image_paths, prompts):
            calls["reward"] = (len(image_paths), image_paths[0].size, list(prompts))
            return torch.tensor([[1.5, -2.0], [3.0, 0.1]])

    monkeypatch.setitem(
        sys.modules, "hpsv3", types.SimpleNamespace(HPSv3RewardInferencer=FakeInferencer)
    )
    ckpt = tmp_path / "HPSv3.safetensors"
    ckpt.write_bytes(b"x")
    reward = build_reward("hpsv3-official", {"checkpoint": str(ckpt)})
    out = reward.score(req(make_images(2, 40, 30, seed=6), ["a", "b"]))
    assert out["hpsv3"].tolist() == [1.5, 3.0]
    assert calls["init"] == (None, str(ckpt), "cpu")
    assert calls["reward"] == (2, (30, 40), ["a", "b"])


# A chat template with the Qwen2-VL-Instruct format (default system turn, image then text).
QWEN2VL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _processor(monkeypatch, base):
    """A Qwen2VLProcessor over the base directory's tokenizer, built in memory."""
    from transformers import AutoTokenizer, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )
    from transformers.processing_utils import ProcessorMixin

    # transformers 5 type-checks the (absent) video processor against a class that exists
    # only with torchvision installed; let an absent one through.
    check = ProcessorMixin.check_argument_for_proper_class
    monkeypatch.setattr(
        ProcessorMixin,
        "check_argument_for_proper_class",
        lambda self, name, arg: None if arg is None else check(self, name, arg),
    )
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=PIX_MIN, max_pixels=PIX_MAX),
        tokenizer=AutoTokenizer.from_pretrained(base),
        video_processor=None,
        chat_template=QWEN2VL_TEMPLATE,
    )


def test_processor_built_inputs_equal_hand_built(tiny_hpsv3, hps, monkeypatch, make_images):
    import cgrpo.rewards.models.hpsv3 as mod
    from cgrpo.rewards.models.hpsv3_inputs import HandBuiltInputs, ProcessorInputs

    base, ckpt = tiny_hpsv3
    processor = _processor(monkeypatch, base)
    monkeypatch.setattr(mod, "load_processor", lambda path, what: processor)
    via = build_reward(
        "hpsv3",
        {
            "path": str(base),
            "checkpoint": str(ckpt),
            "dtype": "float32",
            "min_pixels": PIX_MIN,
            "max_pixels": PIX_MAX,
        },
    )
    assert isinstance(via.encode, ProcessorInputs) and isinstance(hps.encode, HandBuiltInputs)
    assert via.reward_id == hps.reward_id
    imgs = torch.cat([make_images(2, 100, 150, seed=7), make_images(1, 100, 150, seed=8)])
    prompts = ["a dog on the beach", "a red backpack in the snow, photographed at dusk", "x"]
    hand, proc = hps.encode(imgs, prompts), via.encode(imgs, prompts)
    assert set(proc) == set(hand)
    for key in ("input_ids", "attention_mask", "image_grid_thw"):
        assert torch.equal(proc[key], hand[key]), key
    assert proc["pixel_values"].shape == hand["pixel_values"].shape
    assert torch.allclose(proc["pixel_values"], hand["pixel_values"], atol=1e-6)
    assert torch.equal(via.raw(imgs, prompts), hps.raw(imgs, prompts))


def test_processor_files_are_detected_and_unbuildable_ones_fall_back(tiny_hpsv3, tmp_path, caplog):
    import json

    from cgrpo.rewards.models.hpsv3_inputs import has_processor, load_processor

    base, _ = tiny_hpsv3
    assert not has_processor(base) and load_processor(base, "p") is None
    d = tmp_path / "with_processor"
    d.mkdir()
    for f in base.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    (d / "preprocessor_config.json").write_text(
        json.dumps({"image_processor_type": "Qwen2VLImageProcessor"})
    )
    assert not has_processor(d)  # no chat template yet
    (d / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2VL_TEMPLATE}))
    assert has_processor(d)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with caplog.at_level("WARNING"):
            assert load_processor(d, "rewards.hpsv3.options.path") is None
        assert "cannot be built here" in caplog.text and "by hand" in caplog.text
    else:
        assert type(load_processor(d, "p")).__name__ == "Qwen2VLProcessor"


def test_old_transformers_is_refused_with_the_reason(tiny_hpsv3, monkeypatch):
    import transformers

    from cgrpo.rewards.loading import DependencyError

    base, ckpt = tiny_hpsv3
    monkeypatch.setattr(transformers, "__version__", "4.51.3")
    with pytest.raises(DependencyError, match=r"transformers >= 4\.52 .*vision tower.*4\.51\.3"):
        build_reward("hpsv3", {"path": str(base), "checkpoint": str(ckpt)})
