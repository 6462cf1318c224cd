"""Ground-truth edit checks gt-pattern and gt-shape: they prefer the requested value."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cgrpo.evaluation.benchmarks.check_accuracy import DEGRADATIONS, check_accuracy, degrade
from cgrpo.evaluation.benchmarks.edit_checks import GroundTruthEdit, gaussian_blur
from cgrpo.evaluation.benchmarks.ground_truth import _world_and_scene
from cgrpo.evaluation.benchmarks.toybench import ground_truth_image, heldout_metric, toybench_items
from cgrpo.rewards.base import ScoreRequest


@pytest.fixture(scope="module")
def bench():
    return toybench_items({"size": 32, "seed": 0})


def _score(check, items, images):
    request = ScoreRequest(
        images,
        [it.prompt for it in items],
        [it.references for it in items],
        metadata=[it.metadata for it in items],
    )
    return check.score(request)[check.name]


def _with(world, item, attribute, value, seed=5):
    ident, scene = _world_and_scene(world, item.metadata)
    overrides = {**dict(scene.overrides), attribute: value}
    alt = dataclasses.replace(scene, overrides=tuple(overrides.items()))
    image = world.render(ident, alt, np.random.default_rng(seed)).image
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("name,attribute", [("gt-pattern", "pattern"), ("gt-shape", "shape")])
def test_truth_scores_high_and_each_wrong_value_low(bench, name, attribute):
    items, world = bench
    check = heldout_metric(name, world)
    assert isinstance(check, GroundTruthEdit) and check.columns == (name,)
    chosen = items[::40][:6]
    truth = torch.stack([ground_truth_image(world, it) for it in chosen])
    right = _score(check, chosen, truth)
    # a small plain ball and a small dotted one differ in a few pixels: less sure, still right
    assert right.min() > 0.5 and right.mean() > 0.8
    for it, r in zip(chosen, right):
        ident, scene = _world_and_scene(world, it.metadata)
        wanted = world.attributes(ident, scene)[attribute]
        wrong = [v for v in check.values() if v != wanted]
        imgs = torch.stack([_with(world, it, attribute, v) for v in wrong])
        scores = _score(check, [it] * len(wrong), imgs)
        assert scores.max() < r  # every wrong value scores below the requested one
        assert scores.mean() < 0.2


def test_a_pattern_edit_is_checked_against_the_override(bench):
    items, world = bench
    check = heldout_metric("gt-pattern", world)
    edit = next(it for it in items if "pattern" in it.metadata["scene"]["overrides"])
    # the reference shows the identity's own pattern, not the requested one
    assert _score(check, [edit], edit.references)[0] < 0.2
    assert _score(check, [edit], ground_truth_image(world, edit)[None])[0] > 0.8


def test_accuracy_on_clean_and_degraded_renders(bench):
    items, world = bench
    metas = [it.metadata for it in items[::25][:10]]
    for name, attribute in (("gt-pattern", "pattern"), ("gt-shape", "shape")):
        acc = check_accuracy(heldout_metric(name, world), world, metas, attribute)
        assert set(acc) == set(DEGRADATIONS)
        assert min(acc.values()) >= 0.9, (name, acc)


def test_blur_and_degradations_keep_shape_and_range():
    x = torch.rand(2, 3, 32, 32)
    y = gaussian_blur(x, 1.0)
    assert y.shape == x.shape and y.std() < x.std()
    assert torch.allclose(gaussian_blur(x, 0.0), x)
    rng = np.random.default_rng(0)
    for kind in DEGRADATIONS:
        d = degrade(x[0], kind, rng)
        assert d.shape == x[0].shape and 0.0 <= float(d.min()) and float(d.max()) <= 1.0
    with pytest.raises(ValueError, match="choose clean"):
        degrade(x[0], "smudge", rng)


def test_unknown_edit_check(bench):
    with pytest.raises(ValueError, match="choose one of gt-pattern, gt-shape"):
        GroundTruthEdit(bench[1], "gt-size")
