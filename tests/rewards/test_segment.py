"""Segmenters and the subject views dino-seg compares (tiny random models, offline)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from cgrpo.config import ConfigError, parse
from cgrpo.rewards import RewardFailure, ScoreRequest, build_reward
from cgrpo.rewards.segmentation.segment import (
    BackgroundDifference,
    SegmenterOptions,
    cutout_path,
    subject_noun,
)
from cgrpo.rewards.segmentation.segment_models import build_segmenter
from cgrpo.rewards.segmentation.subject import SubjectIsolation


def seg_options(**values) -> SegmenterOptions:
    return parse(SegmenterOptions, values, "rewards.dino-seg.options")


def save_png(path, image: torch.Tensor):
    arr = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(path)
    return path


def iou(mask, truth):
    return float((mask * truth).sum() / ((mask + truth) > 0).sum())


def red_square(n=2, h=48, w=64):
    """Grey images with a red square; returns (images, true masks)."""
    img = torch.full((n, 3, h, w), 0.5)
    truth = torch.zeros(n, 1, h, w)
    img[:, :, 12:36, 20:44] = torch.tensor([0.9, 0.1, 0.1]).view(1, 3, 1, 1)
    truth[..., 12:36, 20:44] = 1
    return img, truth


def test_background_difference_recovers_subject_on_plain_backdrop():
    img = torch.full((1, 3, 80, 100), 0.92)
    img += 0.01 * torch.randn(img.shape, generator=torch.Generator().manual_seed(0))
    img[0, :, 20:60, 30:70] = torch.tensor([0.8, 0.2, 0.1]).view(3, 1, 1)
    mask = BackgroundDifference()(img.clamp(0, 1))
    truth = torch.zeros(1, 1, 80, 100)
    truth[..., 20:60, 30:70] = 1
    iou = (mask * truth).sum() / ((mask + truth) > 0).sum()
    assert mask.shape == (1, 1, 80, 100) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert iou > 0.95


def test_background_difference_handles_a_two_colour_scene():
    g = torch.Generator().manual_seed(1)
    img = torch.empty(1, 3, 120, 160)
    img[0, :, :60] = torch.tensor([0.55, 0.75, 0.95]).view(3, 1, 1)  # sky
    img[0, :, 60:] = torch.tensor([0.45, 0.3, 0.15]).view(3, 1, 1)  # floor
    img += 0.03 * torch.randn(img.shape, generator=g)
    img[0, :, 40:90, 60:110] = torch.tensor([0.9, 0.1, 0.5]).view(3, 1, 1)  # subject
    mask = BackgroundDifference()(img.clamp(0, 1))
    truth = torch.zeros(1, 1, 120, 160)
    truth[..., 40:90, 60:110] = 1
    assert (mask * truth).sum() / ((mask + truth) > 0).sum() > 0.9


def test_background_difference_keeps_everything_when_it_cannot_split():
    flat = torch.full((1, 3, 40, 40), 0.5)
    assert BackgroundDifference()(flat).min() == 1.0


def test_segmenter_none_warns_once_and_keeps_all(caplog):
    with caplog.at_level(logging.WARNING):
        seg = build_segmenter(seg_options(segmenter="none"), who="dino-seg")
    assert "not removed" in caplog.text
    assert seg(torch.rand(2, 3, 8, 8)).min() == 1.0


def test_semantic_segmenter_contract(tmp_path, make_images):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    for labels in (3, 1):
        d = tmp_path / f"seg{labels}"
        cfg = SegformerConfig(
            num_channels=3,
            num_encoder_blocks=1,
            depths=[1],
            sr_ratios=[1],
            hidden_sizes=[8],
            patch_sizes=[7],
            strides=[4],
            num_attention_heads=[1],
            mlp_ratios=[2],
            decoder_hidden_size=8,
            num_labels=labels,
        )
        SegformerForSemanticSegmentation(cfg).save_pretrained(d)
        seg = build_segmenter(seg_options(segmenter="semantic", segmenter_path=str(d)))
        masks = seg(make_images(2, 50, 70, seed=11))
        assert masks.shape == (2, 1, 50, 70)
        assert set(masks.unique().tolist()) <= {0.0, 1.0}


def test_model_segmenters_need_their_paths():
    for kind, field in [
        ("grounded-sam", "detector_path"),
        ("foreground", "segmenter_path"),
        ("semantic", "segmenter_path"),
    ]:
        with pytest.raises(ConfigError, match=rf"rewards\.dino-seg\.options\.{field}.*{kind}"):
            seg_options(segmenter=kind)
    with pytest.raises(ConfigError, match=r"options\.sam_path = None: required"):
        seg_options(segmenter="grounded-sam", detector_path="/x")


def test_subject_noun_prefers_class_noun_then_category_then_option():
    assert subject_noun({"class_noun": "stuffed animal", "category": "toy"}) == "stuffed animal"
    assert subject_noun({"category": " dog "}) == "dog"
    assert subject_noun({}, "cat") == "cat" and subject_noun({"class_noun": ""}) is None


# ---------------------------------------------------------------- foreground (matting)


def test_foreground_model_with_its_own_code_finds_the_subject(
    tiny_foreground_dir, hf_modules_in_tmp
):
    seg = build_segmenter(
        seg_options(
            segmenter="foreground",
            segmenter_path=str(tiny_foreground_dir),
            trust_remote_code=True,
        )
    )
    img, truth = red_square()
    masks = seg(img)
    assert masks.shape == truth.shape and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert iou(masks, truth) > 0.9
    # The first side output holds probabilities already: read it without a sigmoid.
    probs = build_segmenter(
        seg_options(
            segmenter="foreground",
            segmenter_path=str(tiny_foreground_dir),
            trust_remote_code=True,
            foreground_output=[0],
            foreground_activation="none",
        )
    )
    assert torch.equal(probs(img), masks)


def test_foreground_refuses_remote_code_unless_trusted_and_bad_output_paths(
    tiny_foreground_dir, hf_modules_in_tmp
):
    opts = dict(segmenter="foreground", segmenter_path=str(tiny_foreground_dir))
    with pytest.raises(
        ValueError, match=r"segmenter_path = .* ships its own model code .*; set trust_remote_code"
    ):
        build_segmenter(seg_options(**opts))
    with pytest.raises(ValueError, match=r"output at \[\] has no element 5"):
        build_segmenter(seg_options(**opts, trust_remote_code=True, foreground_output=[5]))(
            red_square()[0]
        )


def test_select_output_shapes():
    from cgrpo.rewards.segmentation.segment_models import select_output

    maps = torch.zeros(2, 1, 4, 4)
    assert select_output(([maps * 2], [maps]), [0, 0], "w") is not None
    assert select_output(maps[:, 0], [-1], "w").shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4, 4\); expected \[N, 1, h, w\]"):
        select_output(torch.zeros(2, 3, 4, 4), [-1], "w")


# ---------------------------------------------------------------- grounded-sam


@pytest.fixture(scope="module")
def grounded(tiny_grounded_sam):
    det, sam = tiny_grounded_sam
    return build_segmenter(
        seg_options(
            segmenter="grounded-sam",
            detector_path=str(det),
            sam_path=str(sam),
            box_threshold=0.0,
            text_threshold=0.0,
        )
    )


def test_grounded_sam_prompts_with_the_noun_and_masks_the_best_box(
    grounded, make_images, monkeypatch
):
    images = make_images(2, 50, 70, seed=20)
    seen = {}
    detect, segment = grounded.detector_processor.__call__, grounded.sam_processor.__call__
    monkeypatch.setattr(
        type(grounded.detector_processor),
        "__call__",
        lambda self, **kw: seen.setdefault("text", kw["text"]) and detect(**kw),
    )
    monkeypatch.setattr(
        type(grounded.sam_processor),
        "__call__",
        lambda self, **kw: seen.setdefault("boxes", kw["input_boxes"]) and segment(**kw),
    )
    masks = grounded(images, ["Dog", "backpack"])
    assert seen["text"] == ["dog.", "backpack."]
    pil = [Image.fromarray((im * 255).round().byte().permute(1, 2, 0).numpy()) for im in images]
    boxes = grounded.boxes(pil, ["dog", "backpack"])
    assert seen["boxes"] == [[b] for b in boxes]
    for box in boxes:  # inside the image
        assert 0 <= box[0] <= box[2] <= 70 and 0 <= box[1] <= box[3] <= 50
    assert masks.shape == (2, 1, 50, 70) and set(masks.unique().tolist()) <= {0.0, 1.0}


def test_grounded_sam_keeps_the_whole_image_when_nothing_is_found(
    tiny_grounded_sam, make_images, caplog
):
    det, sam = tiny_grounded_sam
    strict = build_segmenter(
        seg_options(
            segmenter="grounded-sam", detector_path=str(det), sam_path=str(sam), box_threshold=1.0
        )
    )
    with caplog.at_level(logging.WARNING):
        masks = strict(make_images(2, 40, 40, seed=21), ["dog", "dog"])
    assert masks.min() == 1.0 and strict.missed == 2
    assert "no 'dog' box scored over box_threshold 1.0" in caplog.text


def test_grounded_sam_refuses_swapped_directories(tiny_grounded_sam):
    det, sam = tiny_grounded_sam
    with pytest.raises(
        ValueError, match=r"sam_path = .*model_type 'grounding-dino'; expected 'sam'"
    ):
        build_segmenter(
            seg_options(segmenter="grounded-sam", detector_path=str(det), sam_path=str(det))
        )


def test_grounded_sam_without_a_noun_is_a_reward_failure(grounded, make_images):
    isolation = SubjectIsolation.__new__(SubjectIsolation)
    isolation.options = seg_options(segmenter="grounded-sam", detector_path="d", sam_path="s")
    isolation.who, isolation.segmenter = "dino-seg", grounded
    isolation.device, isolation._warned_no_paths = torch.device("cpu"), False
    imgs = make_images(1, 50, 70)  # the tiny detector's last level needs > 1 pixel
    request = ScoreRequest(images=imgs, prompts=["a dog"], references=[imgs])
    with pytest.raises(
        RewardFailure, match=r"reward 'dino-seg': .*class noun: metadata 'class_noun' or 'category'"
    ):
        isolation.views(request)
    request.metadata[0]["class_noun"] = "dog"
    (view,) = isolation.views(request)
    assert view.noun == "dog" and view.reference_sources == ["segmenter grounded-sam"]


# ---------------------------------------------------------------- precomputed (official)


def test_precomputed_uses_cutouts_and_never_segments_generated_images(tmp_path, make_images):
    refs = make_images(2, 40, 50, seed=30)
    paths = [save_png(tmp_path / f"ref{i}.png", refs[i]) for i in range(2)]
    cut = torch.ones(3, 36, 30)
    cut[:, 8:28, 5:25] = torch.tensor([0.2, 0.6, 0.3]).view(3, 1, 1)
    save_png(cutout_path(paths[0]), cut)  # ref0_seg.png: an RGB cut-out, not a mask
    assert cutout_path(paths[0]).name == "ref0_seg.png"
    gen = make_images(3, 64, 64, seed=31)
    mask = torch.zeros(2, 1, 40, 50)
    mask[..., 10:30, 10:40] = 1
    request = ScoreRequest(
        images=gen,
        prompts=["a", "b", "c"],
        references=[refs, refs, refs[1:]],
        reference_masks=[None, mask, None],
        metadata=[
            {"reference_paths": [str(p) for p in paths]},
            {"reference_paths": [str(p) for p in paths]},
            {},
        ],
    )
    views = SubjectIsolation(seg_options()).views(request)
    for v, g in zip(views, gen):
        assert v.image_mask is None and torch.equal(v.image, g)
    first = views[0]
    assert first.reference_sources == [f"cut-out {cutout_path(paths[0])}", "raw"]
    assert torch.allclose(first.references[0], cut, atol=1 / 255)
    assert torch.equal(first.references[1], refs[1])
    # No cut-out for ref1: the mask that came with the data is applied (white fill).
    second = views[1]
    assert second.reference_sources[1] == "mask from data"
    assert torch.equal(second.references[1][:, 10:30, 10:40], refs[1][:, 10:30, 10:40])
    assert second.references[1][:, :10].min() == 1.0
    assert views[2].reference_sources == ["raw"]


def test_precomputed_warns_once_when_requests_name_no_files(make_images, caplog):
    isolation = SubjectIsolation(seg_options())
    imgs = make_images(2, 32, 32)
    request = ScoreRequest(images=imgs, prompts=["a", "b"], references=[imgs[:1], imgs[1:]])
    with caplog.at_level(logging.WARNING):
        isolation.views(request)
        isolation.views(request)
    assert caplog.text.count("names no reference files") == 1


def test_dino_seg_default_is_the_official_precomputed_comparison(
    tiny_dino_dir, tmp_path, make_images
):
    reward = build_reward("dino-seg", {"path": str(tiny_dino_dir)})
    assert reward.isolation.segmenter is None  # precomputed: nothing runs at score time
    raw = make_images(1, 48, 48, seed=32)[0]
    subject = make_images(1, 48, 48, seed=33)[0]
    ref = save_png(tmp_path / "00.jpg.png", raw)
    save_png(cutout_path(ref), subject)
    gen = torch.stack([subject, raw])
    request = ScoreRequest(
        images=gen,
        prompts=["a dog", "a dog"],
        references=[raw[None]] * 2,
        metadata=[{"reference_paths": [str(ref)]}] * 2,
    )
    out = reward.score(request)["dino-seg"]
    # The generated image that equals the cut-out matches; the raw reference does not.
    assert out[0].item() == pytest.approx(1.0, abs=1e-4) and out[1].item() < 0.999
    plain = build_reward("dino", {"path": str(tiny_dino_dir)}).score(request)["dino"]
    assert plain[1].item() == pytest.approx(1.0, abs=1e-5)


def test_file_data_names_references_for_cutouts_and_reads_no_mask_from_them(tmp_path, make_images):
    from cgrpo.data import build_dataset

    raw = make_images(1, 40, 40, seed=34)[0]
    save_png(tmp_path / "a.png", raw)
    save_png(tmp_path / "a_seg.png", torch.ones(3, 40, 40))
    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": "a dog", "references": ["a.png"]}))
    example = build_dataset("jsonl", {"path": str(tmp_path / "d.jsonl")}, "train")[0]
    assert example.reference_masks is None
    request = ScoreRequest(
        images=raw[None],
        prompts=[example.prompt],
        references=[example.references],
        metadata=[example.metadata],
    )
    (view,) = SubjectIsolation(seg_options()).views(request)
    assert view.reference_sources == [f"cut-out {tmp_path / 'a_seg.png'}"]
    assert view.references[0].min() == 1.0


def test_dino_seg_model_segmenters_fill_both_sides(
    tiny_dino_dir, tiny_foreground_dir, hf_modules_in_tmp
):
    reward = build_reward(
        "dino-seg",
        {
            "path": str(tiny_dino_dir),
            "segmenter": "foreground",
            "segmenter_path": str(tiny_foreground_dir),
            "trust_remote_code": True,
        },
    )
    img, truth = red_square(1)
    busy = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(3)) * 0.4
    ref = busy.clone()
    ref[:, :, 12:36, 20:44] = img[:, :, 12:36, 20:44]  # same subject, other background
    request = ScoreRequest(images=img, prompts=["x"], references=[ref])
    (view,) = reward.isolation.views(request)
    assert iou(view.image_mask[None], truth) > 0.9 and view.reference_sources == [
        "segmenter foreground"
    ]
    seg = reward.score(request)["dino-seg"].item()
    plain = build_reward("dino", {"path": str(tiny_dino_dir)}).score(request)["dino"].item()
    # Same subject on two backgrounds: near 1 once both are filled (edge pixels differ).
    assert seg > 0.99 and 1 - seg < (1 - plain) / 5, (seg, plain)


@pytest.mark.parametrize("preset", ["flux-uno.yaml", "flux-kontext.yaml"])
def test_paper_presets_use_the_official_precomputed_dino_seg(preset):
    import yaml

    from cgrpo.rewards.models.dino import DinoSegOptions

    configs = Path(__file__).resolve().parents[2] / "configs"
    rewards = yaml.safe_load((configs / preset).read_text())["rewards"]
    (entry,) = [r for r in rewards if r["name"] == "dino-seg"]
    options = parse(DinoSegOptions, entry["options"], "rewards.dino-seg.options")
    assert options.segmenter == "precomputed"
