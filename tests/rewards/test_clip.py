"""clip-i / clip-t on a tiny random CLIP with an offline byte-level tokenizer."""

from __future__ import annotations

import pytest
import torch

from cgrpo.config import ConfigError
from cgrpo.rewards import ScoreRequest, build_reward
from cgrpo.rewards.images import quantize, to_uint8_array, transform_from_dir
from cgrpo.rewards.models.clip import CLIP_TRANSFORM

PROMPTS = [
    "a dog on the beach",
    "a red backpack in the snow",
    "a cat",
    "a teapot on a table",
    "a vase",
    "a duck toy floating in a pool of water",
    "a sneaker",
    "a clock " * 40,
]


@pytest.fixture(scope="module")
def clip_i(tiny_clip_dir):
    return build_reward("clip-i", {"path": str(tiny_clip_dir), "batch_size": 3})


@pytest.fixture(scope="module")
def clip_t(tiny_clip_dir):
    return build_reward("clip-t", {"path": str(tiny_clip_dir), "batch_size": 3})


def req(images, refs, prompts=None):
    return ScoreRequest(
        images=images, prompts=prompts or PROMPTS[: images.shape[0]], references=refs
    )


def test_preprocessing_matches_transformers_clip_processor(tiny_clip_dir, make_images):
    from PIL import Image
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    ours = transform_from_dir(tiny_clip_dir, CLIP_TRANSFORM)
    proc = CLIPImageProcessorPil.from_pretrained(tiny_clip_dir)
    img = quantize(make_images(1, 250, 330, seed=1)[0])
    ref = proc(Image.fromarray(to_uint8_array(img)), return_tensors="pt")["pixel_values"][0]
    diff = (ours(img) - ref).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.05


def test_clip_i_identity_shape_and_batch_invariance(clip_i, make_images):
    imgs = make_images(8, 64, 96, seed=2)
    ref = make_images(1, 100, 60, seed=3)
    out = clip_i.score(req(imgs, [ref] * 8))
    assert list(out) == ["clip-i"] and out["clip-i"].shape == (8,)
    singles = torch.cat([clip_i.score(req(imgs[i : i + 1], [ref]))["clip-i"] for i in range(8)])
    assert torch.allclose(out["clip-i"], singles, atol=1e-4)
    same = clip_i.score(req(imgs[:2], [imgs[:1].clone(), torch.cat([imgs[1:2], imgs[1:2]])]))
    assert same["clip-i"].tolist() == pytest.approx([1.0, 1.0], abs=1e-5)  # raw cosine
    assert torch.equal(out["clip-i"], clip_i.score(req(imgs, [ref] * 8))["clip-i"])


def test_clip_t_scores_text_alignment_batch_invariant(clip_t, make_images):
    imgs = make_images(8, 80, 80, seed=4)
    refs = [imgs[:1]] * 8
    out = clip_t.score(req(imgs, refs))["clip-t"]
    assert out.shape == (8,) and out.min() >= 0.0 and out.max() <= 1.0
    singles = torch.cat(
        [clip_t.score(req(imgs[i : i + 1], refs[:1], [PROMPTS[i]]))["clip-t"] for i in range(8)]
    )
    assert torch.allclose(out, singles, atol=1e-4)
    assert (out > 0).any()  # tiny random CLIP: some pairs align, others clip to 0
    other = clip_t.embed_texts(["something else entirely", PROMPTS[0]])
    assert not torch.allclose(other[0], other[1])  # the prompt matters


def test_clip_t_equals_manual_cosine(clip_t, tiny_clip_dir, make_images):
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_clip_dir)
    img = make_images(1, 224, 224, seed=5)
    norm = transform_from_dir(tiny_clip_dir, CLIP_TRANSFORM)(img[0])[None]
    with torch.no_grad():
        i = model.get_image_features(pixel_values=norm)
        t = model.get_text_features(**tok(["a dog"], return_tensors="pt"))
    i = i if isinstance(i, torch.Tensor) else i.pooler_output
    t = t if isinstance(t, torch.Tensor) else t.pooler_output
    want = torch.nn.functional.cosine_similarity(i, t).clamp(min=0)
    got = clip_t.score(req(img, [img], ["a dog"]))["clip-t"]
    assert got.item() == pytest.approx(want.item(), abs=1e-6)


def test_clip_t_is_clipped_at_zero(clip_t, make_images, monkeypatch):
    imgs = make_images(3, 64, 64, seed=6)
    # Text embeddings pointing away from (or along) the images: cosines -1, 1 and 0.
    img = clip_t.embed_images(list(imgs))
    away = torch.stack([-img[0], img[1], torch.zeros_like(img[2])])
    away[2, 0] = -img[2, 1]
    away[2, 1] = img[2, 0]
    monkeypatch.setattr(clip_t, "embed_texts", lambda texts: away)
    out = clip_t.score(req(imgs, [imgs[:1]] * 3))["clip-t"]
    assert out[0].item() == 0.0 and out[1].item() == pytest.approx(1.0, abs=1e-5)
    assert out[2].item() == pytest.approx(0.0, abs=1e-5)


def test_clip_bad_inputs(tmp_path, tiny_clip_dir):
    with pytest.raises(
        FileNotFoundError, match=r"rewards\.clip-t\.options\.path.*tokenizer\.json or vocab\.json"
    ):
        d = tmp_path / "no_tok"
        d.mkdir()
        for f in ("config.json", "model.safetensors"):
            (d / f).write_bytes((tiny_clip_dir / f).read_bytes())
        build_reward("clip-t", {"path": str(d)})
    with pytest.raises(ConfigError, match=r"rewards\.clip-i\.options\.scale = 100: unknown key"):
        build_reward("clip-i", {"path": str(tiny_clip_dir), "scale": 100})


def test_clip_refuses_other_model_types_and_misfit_weights(
    tiny_clip_dir, tiny_dino_dir, tmp_path, copy_model_dir
):
    with pytest.raises(
        ValueError, match=r"clip-i\.options\.path = .*model_type 'dinov2'; expected 'clip'"
    ):
        build_reward("clip-i", {"path": str(tiny_dino_dir)})
    d = copy_model_dir(tiny_clip_dir, tmp_path / "clip_short", drop=["visual_projection.weight"])
    with pytest.raises(
        ValueError, match=r"do not fit CLIPModel: missing 1 keys \['visual_projection"
    ):
        build_reward("clip-i", {"path": str(d)})
    # Buffers older checkpoints saved (position ids) are not weights: they still load.
    old = copy_model_dir(
        tiny_clip_dir,
        tmp_path / "clip_old",
        add={"text_model.embeddings.position_ids": torch.arange(77)[None]},
    )
    assert build_reward("clip-i", {"path": str(old)}).name == "clip-i"
