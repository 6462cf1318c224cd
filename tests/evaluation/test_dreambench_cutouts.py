"""DreamBench evaluation finds the paper's reference cut-outs (``<ref>_seg.png``) for dino-seg.

The real dataset has no cut-outs, so the tests copy its files into a temporary DreamBench
folder (subject folders linked, ``dog`` copied) and write ``dog/02_seg.png`` (``02.jpg`` is
dog's protocol reference) beside the photo, as a user who made the cut-outs would.
"""

from __future__ import annotations

import argparse
import csv
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from cgrpo.evaluation.benchmarks.dreambench import dreambench_items, load_dreambench
from cgrpo.evaluation.cli import add_eval_arguments, run_eval

PROTOCOL = "customized_grpo_singleip.json"
SUBJECT, REFERENCE = "dog", "02.jpg"  # the protocol's reference of every dog pair


@pytest.fixture
def root_with_cutout(dreambench_root, tmp_path):
    """A DreamBench folder whose ``dog/02.jpg`` has a cut-out: the middle square of the
    photo on white (an RGB image, not a mask)."""
    root = tmp_path / "dreambench"
    root.mkdir()
    for name in ("prompts_and_classes.txt", PROTOCOL):
        shutil.copy(dreambench_root / name, root / name)
    for folder in dreambench_root.iterdir():
        if folder.is_dir() and folder.name != SUBJECT:
            (root / folder.name).symlink_to(folder, target_is_directory=True)
    shutil.copytree(dreambench_root / SUBJECT, root / SUBJECT)
    photo = np.asarray(Image.open(root / SUBJECT / REFERENCE).convert("RGB"))
    cutout = np.full_like(photo, 255)
    h, w = photo.shape[:2]
    box = (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))
    cutout[box] = photo[box]
    Image.fromarray(cutout).save(root / SUBJECT / "02_seg.png")
    return root


def test_cutouts_are_not_subject_photos(dreambench_root, root_with_cutout):
    """A cut-out beside a photo is neither a reference choice nor counted among the photos."""
    real = load_dreambench(dreambench_root).subjects[SUBJECT].images
    copy = load_dreambench(root_with_cutout).subjects[SUBJECT].images
    assert [p.name for p in copy] == [p.name for p in real]
    assert "02_seg.png" not in {p.name for p in copy}
    third = load_dreambench(root_with_cutout, "index:3")  # after 02.jpg comes 03.jpg
    assert {p.references for p in third.pairs if p.subject == SUBJECT} == {
        (root_with_cutout / SUBJECT / "03.jpg",)
    }


def test_dreambench_items_lead_the_precomputed_segmenter_to_the_cutout(root_with_cutout):
    from cgrpo.rewards.base import ScoreRequest
    from cgrpo.rewards.segmentation.segment import SegmenterOptions
    from cgrpo.rewards.segmentation.subject import SubjectIsolation

    bench = load_dreambench(root_with_cutout, f"protocol:{PROTOCOL}")
    items = dreambench_items(bench, {SUBJECT, "teapot"})
    dog = next(it for it in items if it.subject == SUBJECT)
    teapot = next(it for it in items if it.subject == "teapot")
    assert dog.metadata["reference_paths"] == [str(root_with_cutout / SUBJECT / REFERENCE)]
    request = ScoreRequest(
        images=dog.references[:1].expand(2, -1, -1, -1),
        prompts=[dog.prompt, teapot.prompt],
        references=[dog.references, teapot.references],
        reference_masks=[None, None],
        metadata=[dog.metadata, teapot.metadata],
    )
    views = SubjectIsolation(SegmenterOptions()).views(request)  # precomputed: the default
    assert views[0].reference_sources == [f"cut-out {root_with_cutout / SUBJECT / '02_seg.png'}"]
    assert views[1].reference_sources == ["raw"]  # no cut-out: the reference as it is
    assert views[0].image_mask is None  # the generated image is not segmented


def _eval(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    return run_eval(parser.parse_args([*argv, "--no-progress", "--resamples", "200"]))


def test_cgrpo_eval_scores_dino_seg_against_the_cutout(root_with_cutout, tiny_dino_dir, tmp_path):
    """`cgrpo eval --protocol paper` over the DreamBench folder, scoring given images: an
    image equal to dog's cut-out scores 1, one equal to dog's raw photo does not."""
    images = tmp_path / "images" / SUBJECT
    images.mkdir(parents=True)
    for prompt_index in range(25):
        shutil.copy(root_with_cutout / SUBJECT / REFERENCE, images / f"{prompt_index:02d}_0.jpg")
    shutil.copy(root_with_cutout / SUBJECT / "02_seg.png", images / "00_0.png")
    (images / "00_0.jpg").unlink()
    options = tmp_path / "metrics.yaml"
    options.write_text(yaml.safe_dump({"dino-seg": {"path": str(tiny_dino_dir)}}))
    out = tmp_path / "eval"
    argv = ["--protocol", "paper", "--data", str(root_with_cutout), "--metrics", "dino-seg"]
    argv += ["--metric-options", str(options), "--subjects", SUBJECT]
    assert _eval(*argv, "--images", str(images.parent), "--out", str(out), "--no-report") == 0
    with (out / "pairs.csv").open() as f:
        scores = {r["key"]: float(r["dino-seg"]) for r in csv.DictReader(f)}
    assert len(scores) == 25
    assert scores[f"{SUBJECT}/00"] == pytest.approx(1.0, abs=1e-4)  # the cut-out itself
    raw = [scores[f"{SUBJECT}/{i:02d}"] for i in range(1, 25)]
    assert max(raw) < 1.0 - 1e-3  # the raw photo is not what dog's images are compared with


def test_generated_dreambench_images_meet_the_cutout(root_with_cutout, tiny_dino_dir, tmp_path):
    """The generating path of `cgrpo eval --protocol paper` (a tiny backend): each dog
    image's dino-seg is the DINO cosine of the whole image with the cut-out."""
    import torch

    from cgrpo.data.base import load_image
    from cgrpo.rewards.base import ScoreRequest
    from cgrpo.rewards.build import build_reward

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": {"backend": "eval-tiny-guided"}}))
    options = tmp_path / "metrics.yaml"
    options.write_text(yaml.safe_dump({"dino-seg": {"path": str(tiny_dino_dir)}}))
    out = tmp_path / "eval"
    argv = ["--protocol", "paper", "--data", str(root_with_cutout), "--config", str(config)]
    argv += ["--metrics", "dino-seg", "--metric-options", str(options), "--subjects", SUBJECT]
    assert _eval(*argv, "--num-steps", "3", "--out", str(out), "--no-report") == 0
    with (out / "pairs.csv").open() as f:
        rows = list(csv.DictReader(f))
    generated = torch.stack([load_image(out / r["image"], "generated") for r in rows])
    dino = build_reward("dino", {"path": str(tiny_dino_dir)})

    def cosine(reference: str) -> torch.Tensor:
        image = load_image(root_with_cutout / SUBJECT / reference, "reference")
        n = len(rows)
        request = ScoreRequest(generated, [""] * n, [image[None]] * n, [None] * n, [{}] * n)
        return dino.score(request)["dino"]

    scored = torch.tensor([float(r["dino-seg"]) for r in rows])
    assert torch.allclose(scored, cosine("02_seg.png"), atol=1e-5)
    assert not torch.allclose(scored, cosine(REFERENCE), atol=1e-3)
