"""toybench items and its held-out ground-truth measures."""

from __future__ import annotations

import pytest
import torch

from cgrpo.evaluation.benchmarks.toybench import (
    calibrate,
    ground_truth_image,
    heldout_metric,
    toybench_items,
)
from cgrpo.rewards.base import ScoreRequest


@pytest.fixture(scope="module")
def bench():
    return toybench_items({"size": 32, "seed": 0})


def _score(metric, items, images):
    return metric.score(
        ScoreRequest(
            images,
            [it.prompt for it in items],
            [it.references for it in items],
            metadata=[it.metadata for it in items],
        )
    )[metric.name]


def test_items_are_heldout_identities_times_25_prompts(bench):
    items, world = bench
    heldout = {i.key for i in world.identities("heldout")}
    assert len(items) == len(heldout) * 25
    assert {it.subject for it in items} == heldout
    assert len({it.key for it in items}) == len(items)
    assert [it.index for it in items] == list(range(len(items)))
    first = items[0]
    assert first.references.shape == (1, 3, 32, 32) and first.reference_masks.shape == (
        1,
        1,
        32,
        32,
    )
    assert {"identity", "scene", "requested", "kind"} <= set(first.metadata)
    assert {it.kind for it in items} == {"recontext", "property"}


def test_ground_truth_scores_high_and_wrong_images_low(bench):
    items, world = bench
    chosen = items[:25] + items[25 * 7 : 25 * 8]  # two identities, all 25 prompts each
    truth = torch.stack([ground_truth_image(world, it) for it in chosen])
    grey = torch.full_like(truth, 0.5)
    refs = torch.stack([it.references[0] for it in chosen])
    colour, scene = heldout_metric("gt-colour", world), heldout_metric("gt-scene", world)
    assert _score(colour, chosen, truth).mean() > 0.9
    assert _score(colour, chosen, grey).max() == 0.0  # neutral greys never count
    assert _score(scene, chosen, truth).mean() > 0.93
    assert _score(scene, chosen, grey).mean() < 0.85
    # the unchanged reference shot misses what recontext prompts ask for ...
    recontext = [i for i, it in enumerate(chosen) if it.metadata["scene"]["background"] != "plain"]
    assert (
        _score(scene, [chosen[i] for i in recontext], refs[recontext]).mean()
        < _score(scene, [chosen[i] for i in recontext], truth[recontext]).mean() - 0.05
    )
    # ... and the identity's own colours miss "a purple/yellow/red <noun>" requests
    recolour = [i for i, it in enumerate(chosen) if "palette" in it.metadata["scene"]["overrides"]]
    assert recolour
    assert _score(colour, [chosen[i] for i in recolour], refs[recolour]).mean() < 0.5


def test_images_of_another_size_are_resized(bench):
    items, world = bench
    big = torch.nn.functional.interpolate(
        ground_truth_image(world, items[3])[None], scale_factor=4, mode="nearest"
    )
    assert _score(heldout_metric("gt-colour", world), items[3:4], big)[0] > 0.9


def test_unknown_heldout_metric(bench):
    with pytest.raises(ValueError, match="choose one of gt-colour, gt-pattern, gt-shape, gt-scene"):
        heldout_metric("gt-nothing", bench[1])


def test_calibration_orders_ground_truth_copy_and_grey(bench):
    items, world = bench
    table = calibrate(items[:25], world)
    colour = {system: kinds["all"]["gt-colour"] for system, kinds in table.items()}
    assert colour["ground truth"] > colour["copy reference"] > colour["flat grey"] == 0.0
    scene = table["copy reference"]
    assert scene["recontext"]["gt-scene"] < table["ground truth"]["recontext"]["gt-scene"]
