"""The procedural subject world: determinism, splits, masks, prompt grammar, toybench."""

import numpy as np
import pytest

from cgrpo.world import TEMPLATES, SubjectWorld, make_prompt, pair_batch, toybench
from cgrpo.world.core import Scene
from cgrpo.world.draw import _outline_colour
from cgrpo.world.vocab import (
    BACKGROUNDS,
    COLOURS,
    PALETTE_SECONDARY,
    PALETTES,
    PATTERNS,
    SHAPE_NOUNS,
    SHAPES,
)


@pytest.fixture(scope="module")
def world():
    return SubjectWorld(size=32, seed=0)


def test_identity_space_is_large_enough(world):
    assert len(SHAPES) >= 8 and len(PATTERNS) >= 4 and len(PALETTES) >= 8
    ids = world.identities("all")
    assert len(ids) == len(SHAPES) * len(PATTERNS) * len(PALETTES)
    assert len({i.key for i in ids}) == len(ids)
    assert len(set(SHAPE_NOUNS.values())) == len(SHAPES)  # nouns name shapes unambiguously
    assert len(BACKGROUNDS) - 1 >= 8


def test_split_is_disjoint_covering_and_seeded(world):
    train, held = world.identities("train"), world.identities("heldout")
    assert {i.key for i in train}.isdisjoint({i.key for i in held})
    assert len(train) + len(held) == len(world.identities("all"))
    assert 0.15 < len(held) / len(world.identities("all")) < 0.25
    # every attribute value is seen in training, so held-out identities are new combinations
    for attr, values in (("shape", SHAPES), ("pattern", PATTERNS), ("palette", PALETTES)):
        assert {getattr(i, attr) for i in train} == set(values)
    same = SubjectWorld(size=32, seed=0).identities("heldout")
    other = SubjectWorld(size=32, seed=1).identities("heldout")
    assert [i.key for i in same] == [i.key for i in held]
    assert [i.key for i in other] != [i.key for i in held]
    with pytest.raises(ValueError, match="split"):
        world.identities("valid")


def test_renders_are_deterministic(world):
    ident = world.identities("train")[7]

    def draw(seed):
        rng = np.random.default_rng(seed)
        scene = world.sample_scene(ident, rng)
        return scene, world.render(ident, scene, rng)

    (s1, r1), (s2, r2) = draw(5), draw(5)
    assert s1 == s2
    np.testing.assert_array_equal(r1.image, r2.image)
    np.testing.assert_array_equal(r1.mask, r2.mask)
    np.testing.assert_array_equal(world.reference(ident).image, world.reference(ident).image)
    assert r1.image.dtype == np.uint8 and r1.image.shape == (32, 32, 3)


@pytest.mark.parametrize("size", [32, 64])
def test_mask_is_exactly_the_subject(size):
    """Same jitter on two backgrounds: the masked pixels agree and only they do."""
    world = SubjectWorld(size=size, seed=0)
    for ident in world.identities("all")[::37]:
        renders = []
        for bg in ("snow", "jungle"):
            scene = Scene("recontext", bg, "center", "medium", (), "x")
            renders.append(world.render(ident, scene, np.random.default_rng(11)))
        a, b = renders
        np.testing.assert_array_equal(a.mask, b.mask)
        assert 0.08 < a.mask.mean() < 0.5, ident.key  # subject ~ half the side
        np.testing.assert_array_equal(a.image[a.mask], b.image[b.mask])
        assert (a.image[~a.mask] != b.image[~b.mask]).any(axis=-1).mean() > 0.9
        # masked pixels are drawn only in the identity's palette (or its outline colour)
        main = np.array(COLOURS[ident.palette], np.float32)
        allowed = {
            tuple(COLOURS[ident.palette]),
            tuple(COLOURS[PALETTE_SECONDARY[ident.palette]]),
            tuple(np.clip(np.rint(_outline_colour(main)), 0, 255).astype(int)),
        }
        assert {tuple(int(c) for c in p) for p in a.image[a.mask]} <= allowed


def test_reference_and_sizes(world):
    ident = world.identities("heldout")[0]
    ref = world.reference(ident)
    assert ref.scene.background == "plain" and ref.mask.any()
    assert world.requested(ref.prompt) == {"noun": ident.noun}
    ref.image[:] = 0  # callers may scribble on their copy without changing the world
    assert world.reference(ident).image.any()
    areas = {}
    for size in ("small", "medium", "big"):
        scene = Scene("recontext", "grass", "center", size, (), "x")
        areas[size] = world.render(ident, scene, np.random.default_rng(0)).mask.sum()
    assert areas["small"] < areas["medium"] < areas["big"]


def test_positions_move_the_subject(world):
    ident = world.identities("train")[0]

    def centre(position):
        scene = Scene("recontext", "plain", position, "small", (), "x")
        ys, xs = np.nonzero(world.render(ident, scene, np.random.default_rng(0)).mask)
        return xs.mean(), ys.mean()

    cx, cy = centre("center")
    tlx, tly = centre("top_left")
    brx, bry = centre("bottom_right")
    assert tlx < cx - 5 and tly < cy - 5 and brx > cx + 5 and bry > cy + 5


def test_overrides_change_the_rendered_attribute(world):
    ident = next(i for i in world.identities("all") if i.palette != "red")
    scene = world.scene_from_prompt(ident, f"a red {ident.noun}")
    assert scene.kind == "property" and scene.overrides == (("palette", "red"),)
    img = world.render(ident, scene, np.random.default_rng(0))
    assert img.attributes["palette"] == "red"
    red = np.all(img.image == np.array(COLOURS["red"]), axis=-1)
    assert red[img.mask].mean() > 0.3 and not red[~img.mask].any()


def test_requested_round_trips_templates_and_sampled_prompts(world):
    assert len(TEMPLATES) == 25 and world.prompt_templates() == list(TEMPLATES)
    for ident in world.identities("all")[::11]:
        for t in TEMPLATES:
            prompt = t.format(noun=ident.noun)
            req = world.requested(prompt)
            assert req["noun"] == ident.noun
            scene = world.scene_from_prompt(ident, prompt)
            assert (
                make_prompt(
                    ident.noun, scene.background, scene.position, scene.size, scene.overrides
                )
                == prompt
            )
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(400):
        ident = world.identities("all")[int(rng.integers(400))]
        scene = world.sample_scene(ident, rng)
        kinds.add(scene.kind)
        req = world.requested(scene.prompt)
        expect = {"noun": ident.noun, **dict(scene.overrides)}
        for attr, default in (("background", "plain"), ("position", "center"), ("size", "medium")):
            if getattr(scene, attr) != default:
                expect[attr] = getattr(scene, attr)
        assert req == expect, scene.prompt
        if scene.kind == "property":  # property prompts conflict with the identity
            ((attr, value),) = scene.overrides
            assert getattr(ident, attr) != value
    assert kinds == {"recontext", "property"}


def test_requested_examples_and_errors(world):
    assert world.requested(
        "an orange striped cube shaped ball in the snow in the top left corner"
    ) == {
        "palette": "orange",
        "pattern": "striped",
        "shape": "cube",
        "noun": "ball",
        "background": "snow",
        "position": "top_left",
    }
    assert world.requested("A small box on the left.") == {
        "size": "small",
        "noun": "box",
        "position": "left",
    }
    for bad in (
        "a backpack in the jungle",
        "a ball in space",
        "the ball",
        "a red red ball",
        "a shiny ball",
        "",
    ):
        with pytest.raises(ValueError, match="not in the toy world's grammar") as err:
            world.requested(bad)
        assert repr(bad) in str(err.value)


def test_toybench(world):
    bench = toybench(world)
    held = world.identities("heldout")
    assert len(bench) == len(held) * 25
    assert {b.identity.key for b in bench} == {i.key for i in held}
    kinds = [b.kind for b in bench[:25]]
    assert kinds.count("recontext") == 17 and kinds.count("property") == 8
    assert all(b.prompt == TEMPLATES[b.prompt_index].format(noun=b.identity.noun) for b in bench)


def test_pair_batch(world):
    batch = pair_batch(world, 24, np.random.default_rng(0), property_fraction=0.5)
    assert len(batch) == 24 and batch.reference.shape == (24, 32, 32, 3)
    assert batch.target_mask.shape == (24, 32, 32) and batch.target_mask.any(axis=(1, 2)).all()
    train = {i.key for i in world.identities("train")}
    assert set(batch.identities) <= train
    assert set(batch.kinds) == {"recontext", "property"}
    for p, r in zip(batch.prompts, batch.requested):
        assert world.requested(p) == r
    t = batch.tensors()
    assert t["target"].shape == (24, 3, 32, 32) and 0 <= float(t["target"].min())
    assert float(t["target"].max()) <= 1 and t["reference_mask"].shape == (24, 1, 32, 32)
    with pytest.raises(ValueError, match="property_fraction"):
        pair_batch(world, 2, np.random.default_rng(0), property_fraction=2.0)
