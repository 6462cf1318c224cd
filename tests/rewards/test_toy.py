"""The learned toy rewards (toy-id, toy-prompt) with the committed weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cgrpo.config import ConfigError
from cgrpo.rewards import ScoreRequest, build_reward
from cgrpo.rewards.models.toy import (
    TOY_ID_WEIGHTS,
    TOY_PROMPT_WEIGHTS,
    ToyIdentityModel,
    crop_subjects,
    load_weights,
    prompt_targets,
)
from cgrpo.world import SubjectWorld
from cgrpo.world.core import Scene

N = 12  # examples per ordering check: a majority over several, not one cherry-pick


@pytest.fixture(scope="module")
def world():
    return SubjectWorld(size=32, seed=0)


@pytest.fixture(scope="module")
def toy_id():
    return build_reward("toy-id")


@pytest.fixture(scope="module")
def toy_prompt():
    return build_reward("toy-prompt")


def _img(rendered) -> torch.Tensor:
    return torch.from_numpy(rendered.image).permute(2, 0, 1).float() / 255.0


def _mask(rendered) -> torch.Tensor:
    return torch.from_numpy(rendered.mask)[None].float()


def _request(world, gens, refs_of, prompts, masks=True) -> ScoreRequest:
    refs = [world.reference(i) for i in refs_of]
    return ScoreRequest(
        images=torch.stack([_img(g) for g in gens]),
        prompts=list(prompts),
        references=[_img(r)[None] for r in refs],
        reference_masks=[_mask(r)[None] if masks else None for r in refs],
    )


def _cases(world, n=N, seed=0):
    rng = np.random.default_rng(seed)
    held = world.identities("heldout")
    pick = rng.choice(len(held), size=n, replace=False)
    return [held[int(k)] for k in pick], rng


def test_registry_names_and_options():
    for name in ("toy-id", "toy-prompt"):
        reward = build_reward(name)
        assert reward.name == name and reward.columns == (name,)
    with pytest.raises(ConfigError, match="rewards.toy-id.options.nope"):
        build_reward("toy-id", {"nope": 1})
    with pytest.raises(FileNotFoundError, match="toy_train"):
        build_reward("toy-prompt", {"weights": "/nonexistent/toy_prompt.safetensors"})


def test_weights_are_small_safetensors_with_a_recipe():
    for path in (TOY_ID_WEIGHTS, TOY_PROMPT_WEIGHTS):
        assert path.stat().st_size < 2_000_000
        card = json.loads(path.with_suffix(".json").read_text())
        assert card["recipe"]["seed"] == 0 and "toy_train" in card["command"]
        assert card["heldout_metrics"]
    # a file of the other reward is refused by its format tag
    with pytest.raises(ValueError, match="expected 'cgrpo-toy-id-v1'"):
        load_weights(ToyIdentityModel(), TOY_PROMPT_WEIGHTS, "cgrpo-toy-id-v1")


def test_toy_id_prefers_the_right_identity(world, toy_id):
    idents, rng = _cases(world)
    others = world.identities("heldout")
    gens_right, gens_wrong = [], []
    for ident in idents:
        scene = world.sample_scene(ident, rng, kinds=("recontext",))
        wrong = next(o for o in others[int(rng.integers(len(others))) :] + others if o != ident)
        gens_right.append(world.render(ident, scene, rng))
        gens_wrong.append(world.render(wrong, scene, rng))
    prompts = [g.prompt for g in gens_right]
    right = toy_id.score(_request(world, gens_right, idents, prompts))["toy-id"]
    wrong = toy_id.score(_request(world, gens_wrong, idents, prompts))["toy-id"]
    assert (right > wrong).float().mean() >= 0.9
    assert right.mean() > wrong.mean() + 0.3
    assert right.min() >= -1 and right.max() <= 1 + 1e-5


def test_toy_id_identical_pair_scores_near_max(world, toy_id):
    idents, _ = _cases(world, n=6)
    refs = [world.reference(i) for i in idents]
    prompts = [r.prompt for r in refs]
    with_masks = toy_id.score(_request(world, refs, idents, prompts))["toy-id"]
    segmented = toy_id.score(_request(world, refs, idents, prompts, masks=False))["toy-id"]
    assert with_masks.min() > 0.95
    assert torch.allclose(segmented, torch.ones(6), atol=1e-5)


def test_toy_id_penalises_property_changes(world, toy_id):
    """ "a red X" should cost identity: the reward competition the method is about."""
    idents, rng = _cases(world, seed=1)
    same, changed = [], []
    for ident in idents:
        same.append(world.render(ident, world.sample_scene(ident, rng, ("recontext",)), rng))
        changed.append(world.render(ident, world.sample_scene(ident, rng, ("property",)), rng))
    s = toy_id.score(_request(world, same, idents, [g.prompt for g in same]))["toy-id"]
    c = toy_id.score(_request(world, changed, idents, [g.prompt for g in changed]))["toy-id"]
    assert s.mean() > c.mean() + 0.1


def test_toy_prompt_prefers_the_right_background(world, toy_prompt):
    idents, rng = _cases(world, seed=2)
    bgs = [b for b in ("snow", "beach", "jungle", "kitchen", "city", "water")]
    right, wrong, prompts = [], [], []
    for k, ident in enumerate(idents):
        bg, other = bgs[k % len(bgs)], bgs[(k + 3) % len(bgs)]
        scene = Scene("recontext", bg, "center", "medium", (), "")
        prompts.append(world.scene_from_prompt(ident, _prompt(ident, bg)).prompt)
        right.append(world.render(ident, scene, rng))
        wrong.append(
            world.render(ident, Scene("recontext", other, "center", "medium", (), ""), rng)
        )
    r = toy_prompt.score(_request(world, right, idents, prompts))["toy-prompt"]
    w = toy_prompt.score(_request(world, wrong, idents, prompts))["toy-prompt"]
    assert (r > w).float().mean() >= 0.9 and r.mean() > w.mean() + 0.3
    assert r.min() >= 0 and r.max() <= 1


def _prompt(ident, bg):
    from cgrpo.world import make_prompt

    return make_prompt(ident.noun, background=bg)


def test_toy_prompt_prefers_the_requested_colour(world, toy_prompt):
    idents = [i for i in world.identities("heldout") if i.palette != "red"][:N]
    rng = np.random.default_rng(3)
    right, wrong, prompts = [], [], []
    for ident in idents:
        prompt = f"a red {ident.noun}"
        prompts.append(prompt)
        right.append(world.render(ident, world.scene_from_prompt(ident, prompt), rng))
        wrong.append(world.render(ident, world.scene_from_prompt(ident, f"a {ident.noun}"), rng))
    r = toy_prompt.score(_request(world, right, idents, prompts))["toy-prompt"]
    w = toy_prompt.score(_request(world, wrong, idents, prompts))["toy-prompt"]
    assert (r > w).float().mean() >= 0.9 and r.mean() > w.mean() + 0.3


def test_batch_invariance_and_other_sizes(world, toy_id, toy_prompt):
    idents, rng = _cases(world, n=8, seed=4)
    gens = [world.render(i, world.sample_scene(i, rng), rng) for i in idents]
    req = _request(world, gens, idents, [g.prompt for g in gens])
    for reward in (toy_id, toy_prompt):
        whole = reward.score(req)[reward.name]
        singles = torch.cat([reward.score(req.select([k]))[reward.name] for k in range(8)])
        torch.testing.assert_close(whole, singles, atol=1e-5, rtol=0)
    # 64 px generations (and references) are resized to the world size and still score well
    big = SubjectWorld(size=64, seed=0)
    refs = [big.reference(i) for i in idents]
    req64 = ScoreRequest(
        images=torch.stack([_img(r) for r in refs]),
        prompts=[r.prompt for r in refs],
        references=[_img(world.reference(i))[None] for i in idents],
        reference_masks=[_mask(world.reference(i))[None] for i in idents],
    )
    assert toy_id.score(req64)["toy-id"].mean() > 0.8
    assert toy_prompt.score(req64)["toy-prompt"].mean() > 0.5


def test_several_references_average(world, toy_id):
    idents, _ = _cases(world, n=2, seed=5)
    a, b = (world.reference(i) for i in idents)
    one = toy_id.score(_request(world, [a, a], [idents[0], idents[1]], ["x", "x"]))["toy-id"]
    two = toy_id.score(
        ScoreRequest(
            images=_img(a)[None],
            prompts=["x"],
            references=[torch.stack([_img(a), _img(b)])],
            reference_masks=[torch.stack([_mask(a), _mask(b)])],
        )
    )["toy-id"]
    torch.testing.assert_close(two, one.mean()[None], atol=1e-5, rtol=0)


def test_toy_prompt_targets_and_bad_prompts(toy_prompt):
    assert prompt_targets("a ball in the snow") == {"background": "snow", "shape": "round"}
    assert prompt_targets("a cube shaped ball") == {"shape": "cube"}
    assert prompt_targets("a red ball", class_term=False) == {"palette": "red"}
    req = ScoreRequest(
        images=torch.rand(1, 3, 32, 32),
        prompts=["a backpack in the jungle"],
        references=[torch.rand(1, 3, 32, 32)],
    )
    with pytest.raises(ValueError, match="a backpack in the jungle"):
        toy_prompt.score(req)


def test_crop_subjects_frames_the_mask():
    img = torch.rand(2, 3, 32, 32)
    masks = torch.zeros(2, 1, 32, 32)
    masks[0, :, 2:10, 20:28] = 1  # a small box in the top right; sample 1 has an empty mask
    out = crop_subjects(img, masks)
    assert out.shape == (2, 4, 24, 24)
    m = out[0, 3]
    assert m[12, 12] > 0.99 and m[0, 0] < 0.01  # subject centred, margin empty
    assert 0.6 < (m > 0.5).float().mean() < 0.85  # fills ~1/1.15^2 of the crop
    assert out[1, 3].abs().sum() == 0 and out[1, :3].abs().sum() == 0


def test_device_moves(toy_prompt):
    assert toy_prompt.to("cpu") is toy_prompt
    toy_prompt.offload()
    assert next(toy_prompt.model.parameters()).device.type == "cpu"


def test_toy_prompt_blur_makes_scores_steadier_under_speckle(world):
    """``blur`` smooths the generator-like speckle away before the classifier: the scores of
    one render under different speckle draws spread less, and the requested colour still wins."""
    sharp = build_reward("toy-prompt", {"class_term": False})
    soft = build_reward("toy-prompt", {"class_term": False, "blur": 0.8})
    idents = [i for i in world.identities("heldout") if i.palette != "red"][:N]
    rng = np.random.default_rng(5)
    renders, prompts = [], []
    for ident in idents:
        prompt = f"a red {ident.noun}"
        prompts.append(prompt)
        renders.append(world.render(ident, world.scene_from_prompt(ident, prompt), rng))
    base = _request(world, renders, idents, prompts)
    gen = torch.Generator().manual_seed(0)

    def spread(reward):
        draws = []
        for _ in range(6):
            noisy = (base.images + 0.12 * torch.randn(base.images.shape, generator=gen)).clamp(0, 1)
            request = ScoreRequest(noisy, base.prompts, base.references)
            draws.append(reward.score(request)["toy-prompt"])
        return torch.stack(draws).std(dim=0).mean()

    assert spread(soft) < spread(sharp)
    wrong = [world.render(i, world.scene_from_prompt(i, f"a {i.noun}"), rng) for i in idents]
    r = soft.score(base)["toy-prompt"]
    w = soft.score(_request(world, wrong, idents, prompts))["toy-prompt"]
    assert (r > w).float().mean() >= 0.9
    with pytest.raises(ConfigError, match="blur"):
        build_reward("toy-prompt", {"blur": -1.0})
