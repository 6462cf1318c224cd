"""Generation + scoring: seeds independent of batching, resume, rescoring, other systems' images."""

from __future__ import annotations

import shutil

import pytest
import torch

from cgrpo.evaluation.harness import EvalItem, evaluate_policy, image_relpath, image_seed, save_png
from cgrpo.evaluation.resumable import find_images, run_evaluation


def _never():
    raise AssertionError("the policy must not be built when every image exists")


def test_evaluate_policy_is_independent_of_batch_size(tiny_policy, items_factory, mean_match):
    items = items_factory(n_subjects=2, n_prompts=3)
    gen = {"num_steps": 3, "shift": 3.0}
    a = evaluate_policy(
        tiny_policy, items, [mean_match()], gen_kwargs=gen, seeds=2, batch_size=2
    ).records
    b = evaluate_policy(
        tiny_policy, items, [mean_match()], gen_kwargs=gen, seeds=2, batch_size=5
    ).records
    assert len(a) == 12
    assert [(r["key"], r["seed"], r["scores"]) for r in a] == [
        (r["key"], r["seed"], r["scores"]) for r in b
    ]
    by = {(r["key"], r["seed"]): r["scores"]["mean-match"] for r in a}
    assert by[("subj0/00", 0)] != by[("subj0/00", 1)]  # seeds give different images


def test_seeds_follow_the_item_index(items_factory):
    items = items_factory()
    assert image_seed(items[4], 0, 10) == 14
    assert image_seed(items[4], 2, 10) == 10 + 2 * 100_000 + 4
    assert image_relpath(items[4], 1) == "images/subj1/01_1.png"


def test_from_example_wraps_trainer_items(tiny_policy, mean_match):
    from cgrpo.data.base import Example

    meta = {"kind": "property", "identity": "round-plain-red"}
    ex = Example("a red ball", torch.rand(1, 3, 4, 4), metadata=meta, key="toy/ball")
    records = evaluate_policy(
        tiny_policy, [ex, ex], [mean_match()], gen_kwargs={"num_steps": 2}
    ).records
    assert [r["key"] for r in records] == ["toy/ball", "toy/ball"]
    assert records[0]["kind"] == "property" and records[0]["subject"] == "round-plain-red"
    assert records[0]["scores"] != records[1]["scores"]  # index 0 and 1: different noise


def test_resume_skips_done_work_and_matches_a_straight_run(
    tiny_policy, items_factory, mean_match, tmp_path
):
    items = items_factory(n_subjects=2, n_prompts=3)
    gen = {"num_steps": 3}
    straight = run_evaluation(
        items,
        tmp_path / "straight",
        [mean_match()],
        policy_factory=lambda: tiny_policy,
        seeds=2,
        gen_kwargs=gen,
        batch_size=4,
        progress=False,
    )
    out = tmp_path / "resumed"
    # first an interrupted run: only the first 2 items
    run_evaluation(
        items[:2],
        out,
        [mean_match()],
        policy_factory=lambda: tiny_policy,
        seeds=2,
        gen_kwargs=gen,
        batch_size=4,
        progress=False,
    )
    metric = mean_match()
    resumed = run_evaluation(
        items,
        out,
        [metric],
        policy_factory=lambda: tiny_policy,
        seeds=2,
        gen_kwargs=gen,
        batch_size=4,
        progress=False,
    )
    assert metric.scored == 8  # the 4 new items x 2 seeds, not the finished ones
    assert [(r["key"], r["seed"], r["scores"]) for r in resumed] == [
        (r["key"], r["seed"], r["scores"]) for r in straight
    ]
    # a finished folder: no policy, no reward model is built
    again = run_evaluation(
        items,
        out,
        lambda: pytest.fail("rewards were built"),
        policy_factory=_never,
        seeds=2,
        gen_kwargs=gen,
        progress=False,
        expected_columns=["mean-match"],
    )
    assert len(again) == 12
    # a new metric later: only its column is computed, for every image, no regeneration
    extra = mean_match("second")
    run_evaluation(
        items, out, [metric, extra], policy_factory=_never, seeds=2, gen_kwargs=gen, progress=False
    )
    assert extra.scored == 12 and metric.scored == 8
    # a lost image is regenerated alone, identical to before
    lost = out / image_relpath(items[3], 1)
    before = lost.read_bytes()
    lost.unlink()
    calls = []
    run_evaluation(
        items,
        out,
        [metric],
        policy_factory=lambda: calls.append(1) or tiny_policy,
        seeds=2,
        gen_kwargs=gen,
        progress=False,
    )
    assert calls == [1] and lost.read_bytes() == before


def test_other_systems_images_are_found_and_scored(items_factory, mean_match, tmp_path):
    items = items_factory(n_subjects=2, n_prompts=2)
    system = tmp_path / "system"
    for it in items:
        for seed in (0, 3):
            # unpadded prompt index; the reference colour (up to 8-bit rounding)
            save_png(it.references[0], system / it.subject / f"{it.prompt_index}_{seed}.png")
    (system / "subj0" / "notes.txt").parent.mkdir(exist_ok=True)
    (system / "subj0" / "notes.txt").write_text("ignored")
    found = find_images(system, items)
    assert len(found) == 8 and ("subj1/01", 3) in found
    records = run_evaluation(
        items, tmp_path / "out", [mean_match()], images_dir=system, progress=False
    )
    assert len(records) == 8
    assert all(r["scores"]["mean-match"] == pytest.approx(1.0, abs=2e-3) for r in records)
    shutil.rmtree(system / "subj1")
    with pytest.raises(FileNotFoundError, match="2 of 4 pairs have no image.*subj1/00"):
        find_images(system, items)


def test_reference_scored_against_itself_is_the_maximum_for_dino(
    tiny_dino_dir, tmp_path, dreambench_root
):
    """Through the whole --images path: the harness pairs each image with its own reference."""
    from cgrpo.data.base import load_image
    from cgrpo.rewards import build_reward

    refs = {s: load_image(dreambench_root / s / "00.jpg") for s in ("dog", "teapot")}
    items = [
        EvalItem(
            index=i,
            key=f"{s}/00",
            subject=s,
            prompt_index=0,
            prompt=f"a {s}",
            kind="",
            references=refs[s][None],
        )
        for i, s in enumerate(refs)
    ]
    system = tmp_path / "system"
    for it in items:
        save_png(refs[it.subject], system / it.subject / "00_0.png")
        save_png(refs["teapot" if it.subject == "dog" else "dog"], system / it.subject / "00_1.png")
    dino = build_reward("dino", {"path": str(tiny_dino_dir)})
    records = run_evaluation(items, tmp_path / "out", [dino], images_dir=system, progress=False)
    score = {(r["key"], r["seed"]): r["scores"]["dino"] for r in records}
    for key in ("dog/00", "teapot/00"):
        assert score[(key, 0)] == pytest.approx(1.0, abs=5e-4)  # raw cosine; PNG rounding only
        assert score[(key, 1)] < score[(key, 0)] - 0.005
