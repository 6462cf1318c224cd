"""dino / dino-seg on tiny random DINO v1 (ViT) and DINOv2 models; preprocessing parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgrpo.config import ConfigError
from cgrpo.rewards import ScoreRequest, build_reward
from cgrpo.rewards.images import (
    ImageTransform,
    center_crop,
    quantize,
    shortest_edge_size,
    to_uint8_array,
    transform_from_dir,
)


def request_for(images, refs, masks=None, prompts=None):
    b = images.shape[0]
    return ScoreRequest(
        images=images,
        prompts=prompts or ["a dog"] * b,
        references=refs,
        reference_masks=masks or [],
    )


@pytest.fixture(scope="module")
def dino(tiny_dino_dir):
    return build_reward("dino", {"path": str(tiny_dino_dir), "batch_size": 5})


def test_preprocessing_matches_transformers_processor(tiny_dino_dir, make_images):
    from PIL import Image
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    ours = transform_from_dir(tiny_dino_dir, ImageTransform(shortest_edge=1, crop=(1, 1)))
    assert ours.shortest_edge == 256 and ours.crop == (224, 224) and ours.resample == "bicubic"
    proc = BitImageProcessorPil.from_pretrained(tiny_dino_dir)
    for h, w in [(300, 401), (120, 90)]:  # shrink (antialiased) and enlarge
        img = quantize(make_images(1, h, w, seed=h)[0])
        ref = proc(Image.fromarray(to_uint8_array(img)), return_tensors="pt")["pixel_values"][0]
        got = ours(img)
        assert got.shape == ref.shape == (3, 224, 224)
        diff = (got - ref).abs()
        # PIL rounds to 8 bits after resizing; that rounding (1/255/std ~ 0.017) bounds the gap.
        assert diff.mean() < 0.01 and diff.max() < 0.05, (h, w, diff.mean(), diff.max())


def test_geometry_helpers_follow_transformers_rules():
    assert shortest_edge_size(300, 400, 256) == (256, 341)
    assert shortest_edge_size(400, 300, 256) == (341, 256)
    x = torch.arange(5 * 6).float().view(1, 5, 6)
    assert center_crop(x, (3, 4)).tolist() == x[:, 1:4, 1:5].tolist()
    assert center_crop(x, (7, 6)).shape == (1, 7, 6)  # pads when smaller
    y = torch.arange(11).float().view(1, 1, 11)
    assert center_crop(y, (1, 4)).flatten().tolist() == [3, 4, 5, 6]  # offset floors 3.5


def test_dino_scores_shape_determinism_and_identity(dino, make_images):
    imgs = make_images(3, 96, 128, seed=1)
    refs = [make_images(1, 70, 50, seed=2)[0:1], imgs[1:2].clone(), make_images(2, 64, 64, seed=3)]
    req = request_for(imgs, refs)
    out = dino.score(req)
    assert (
        list(out) == ["dino"] and out["dino"].shape == (3,) and out["dino"].dtype == torch.float32
    )
    assert torch.equal(out["dino"], dino.score(req)["dino"])
    assert out["dino"][1].item() == pytest.approx(1.0, abs=1e-5)  # identical pair: raw cosine
    assert out["dino"][0] < 0.999 and out["dino"][2] < 0.999


def test_dino_multiple_references_is_mean_over_references(dino, make_images):
    img = make_images(1, 64, 64, seed=4)
    r1, r2 = make_images(2, 64, 64, seed=5).split(1)
    both = dino.score(request_for(img, [torch.cat([r1, r2])]))["dino"]
    one = dino.score(request_for(img, [r1]))["dino"]
    two = dino.score(request_for(img, [r2]))["dino"]
    assert both.item() == pytest.approx(((one + two) / 2).item(), abs=1e-4)


def test_dino_batch_invariance(dino, make_images):
    imgs = make_images(8, 64, 72, seed=6)
    ref = make_images(1, 80, 80, seed=7)
    refs = [ref] * 8  # one shared object, as a group has
    full = dino.score(request_for(imgs, refs))["dino"]
    singles = torch.cat([dino.score(request_for(imgs[i : i + 1], [ref]))["dino"] for i in range(8)])
    assert torch.allclose(full, singles, atol=1e-4)


def test_dino_real_dreambench_images_any_size(dino, dreambench):
    a, b = dreambench("dog", 0), dreambench("dog", 1)
    if a is None or b is None:
        pytest.skip("DreamBench data not present")
    s = dino.score(request_for(a[None], [torch.stack([a])]))["dino"]
    assert s.item() == pytest.approx(1.0, abs=1e-5)
    s2 = dino.score(request_for(b[None], [a[None]]))["dino"]
    assert -1.0 <= s2.item() < 0.9999


def test_dino_seg_uses_reference_masks(tiny_dino_dir, make_images):
    reward = build_reward(
        "dino-seg", {"path": str(tiny_dino_dir), "segmenter": "background-difference"}
    )
    h = w = 96
    subject = make_images(1, 32, 32, seed=8)[0]
    gen = torch.ones(1, 3, h, w)
    gen[0, :, 32:64, 32:64] = subject  # subject on white: the segmenter isolates it
    mask = torch.zeros(1, 1, h, w)
    mask[..., 32:64, 32:64] = 1
    noisy = make_images(1, h, w, seed=9)
    noisy[0, :, 32:64, 32:64] = subject  # same subject, busy background, masked out
    out = reward.score(request_for(gen, [noisy], masks=[mask]))
    assert list(out) == ["dino-seg"]
    assert out["dino-seg"].item() == pytest.approx(1.0, abs=1e-5)
    plain_dino = build_reward("dino", {"path": str(tiny_dino_dir)})
    assert plain_dino.score(request_for(gen, [noisy]))["dino"].item() < 0.999


def test_dino_seg_identical_and_batch_invariant(tiny_dino_dir, make_images):
    reward = build_reward("dino-seg", {"path": str(tiny_dino_dir), "background_fill": "gray"})
    imgs = make_images(8, 64, 64, seed=10)
    ref = imgs[:1].clone()
    full = reward.score(request_for(imgs, [ref] * 8))["dino-seg"]
    singles = torch.cat(
        [reward.score(request_for(imgs[i : i + 1], [ref]))["dino-seg"] for i in range(8)]
    )
    assert torch.allclose(full, singles, atol=1e-4)
    assert full[0].item() == pytest.approx(1.0, abs=1e-5)


def test_bad_paths_and_options_name_the_culprit(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"rewards\.dino\.options\.path.*config\.json"):
        build_reward("dino", {"path": str(tmp_path / "nowhere")})
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(
        FileNotFoundError, match=r"lacks model\.safetensors or .*found: config\.json"
    ):
        build_reward("dino", {"path": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"rewards\.dino\.options\.path"):
        build_reward("dino", {})
    with pytest.raises(ConfigError, match=r"rewards\.dino-seg\.options\.segmenter"):
        build_reward("dino-seg", {"path": str(tmp_path), "segmenter": "magic"})


def test_fill_keeps_subject_pixels_exactly():
    from cgrpo.rewards.images import fill_background

    img = torch.rand(3, 10, 12)
    mask = torch.zeros(1, 5, 6)
    mask[..., :, :3] = 1  # nearest upsampling: left half of the image is subject
    out = fill_background(img, mask, "black")
    assert torch.equal(out[:, :, :6], img[:, :, :6]) and out[:, :, 6:].abs().max() == 0
    assert np.allclose(to_uint8_array(out)[:, 6:], 0)


def test_to_and_offload_move_the_model(dino, make_images):
    moved = []
    hook = dino.model.register_forward_pre_hook(
        lambda m, a, kw: moved.append(kw["pixel_values"].device.type), with_kwargs=True
    )
    dino.to("cpu")
    dino.score(request_for(make_images(1, 32, 32), [make_images(1, 32, 32, seed=1)]))
    hook.remove()
    dino.offload()
    assert moved == ["cpu"] and dino.device.type == "cpu"
    assert {p.device.type for p in dino.model.parameters()} == {"cpu"}


def test_dino_v1_is_a_vit_read_at_the_cls_token(tiny_dino_v1_dir, make_images):
    from transformers import ViTModel

    reward = build_reward("dino", {"path": str(tiny_dino_v1_dir)})
    assert type(reward.model) is ViTModel and reward.model.pooler is None
    imgs = make_images(2, 80, 96, seed=12)
    ref = make_images(1, 70, 70, seed=13)
    got = reward.score(request_for(imgs, [ref, imgs[1:2].clone()]))["dino"]
    full = ViTModel.from_pretrained(tiny_dino_v1_dir).eval()  # with its trained pooler
    x = reward.transform.batch([imgs[0], ref[0]])
    with torch.no_grad():
        cls = full(pixel_values=x).last_hidden_state[:, 0]
    want = torch.nn.functional.cosine_similarity(cls[:1], cls[1:]).item()
    assert got[0].item() == pytest.approx(want, abs=1e-5)
    assert got[1].item() == pytest.approx(1.0, abs=1e-5)


def test_dinov2_cls_is_its_pooler_output(dino, tiny_dino_dir, make_images):
    from transformers import Dinov2Model

    assert type(dino.model) is Dinov2Model
    x = dino.transform.batch(list(make_images(2, 64, 64, seed=14)))
    with torch.no_grad():
        out = dino.model(pixel_values=x)
    assert torch.equal(out.last_hidden_state[:, 0], out.pooler_output)


def test_dino_refuses_checkpoints_that_do_not_fit(
    tiny_dino_dir, tiny_dino_v1_dir, tiny_clip_dir, tmp_path, copy_model_dir
):
    import json

    with pytest.raises(ValueError, match=r"config\.json is model_type 'clip'; expected 'vit'"):
        build_reward("dino", {"path": str(tiny_clip_dir)})
    short = copy_model_dir(tiny_dino_dir, tmp_path / "short", drop=["layernorm.weight"])
    with pytest.raises(
        ValueError, match=r"path = .*short.*do not fit Dinov2Model: missing 1 keys \['layernorm"
    ):
        build_reward("dino", {"path": str(short)})
    extra = copy_model_dir(tiny_dino_dir, tmp_path / "extra", add={"head.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"unexpected 1 keys \['head\.weight'\]"):
        build_reward("dino-seg", {"path": str(extra)})
    # A DINO v1 checkpoint whose config claims DINOv2: nothing fits.
    lying = copy_model_dir(tiny_dino_v1_dir, tmp_path / "lying")
    cfg = json.loads((tiny_dino_dir / "config.json").read_text())
    (lying / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"do not fit Dinov2Model: missing \d+ keys"):
        build_reward("dino", {"path": str(lying)})
