"""The pocket backend: Policy interface, conditioning, LoRA, weights and their checks."""

import dataclasses
import json

import pytest
import torch

from cgrpo.config import ConfigError
from cgrpo.policies import POLICIES, LoraSettings, build_policy
from cgrpo.policies.pocket import (
    ASSET_PATH,
    PocketPolicy,
    images_to_patches,
    patches_to_images,
    save_pocket_weights,
)

TINY = {"weights": "random", "dim": 32, "depth": 2, "heads": 2, "text_max_length": 12}
PROMPTS = ["a ball in the snow", "a red ball"]


def tiny(**over) -> PocketPolicy:
    return build_policy("pocket", {**TINY, **over})


@pytest.fixture(scope="module")
def policy():
    return tiny()


@pytest.fixture(scope="module")
def refs():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(1, 3, 32, 32, generator=g) for _ in PROMPTS]


def inputs(policy, seed=1, b=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, *policy.latent_shape(), generator=g), torch.rand(b, generator=g)


def test_registered_and_interface_shapes(policy, refs):
    assert "pocket" in POLICIES.names() and policy.backend == "pocket"
    assert policy.latent_shape() == (64, 48) and policy.image_seq_len == 64
    cond = policy.encode(PROMPTS, refs)
    assert len(cond) == 2
    x, s = inputs(policy)
    v = policy(x, s, cond)
    assert v.shape == x.shape and torch.isfinite(v).all()
    images = policy.decode(x * 3)
    assert images.shape == (2, 3, 32, 32) and images.min() >= 0 and images.max() <= 1


def test_packing_round_trips(policy):
    img = torch.rand(3, 3, 32, 32)
    assert torch.equal(patches_to_images(images_to_patches(img, 4), 4, 32), img)
    torch.testing.assert_close(policy.decode(policy.images_to_latents(img)), img)
    # one patch token is one 4x4 pixel block, channel-major inside
    tokens = images_to_patches(img, 4)
    assert torch.equal(tokens[1, 9].view(3, 4, 4), img[1, :, 4:8, 4:8])


def test_forward_is_deterministic(refs):
    a, b = tiny(), tiny()
    x, s = inputs(a)
    out_a = a(x, s, a.encode(PROMPTS, refs))
    out_b = b(x, s, b.encode(PROMPTS, refs))
    assert torch.equal(out_a, out_b)
    assert torch.equal(out_a, a(x, s, a.encode(PROMPTS, refs)))
    assert not torch.equal(out_a, tiny(seed=1)(x, s, a.encode(PROMPTS, refs)))


def test_random_init_leaves_callers_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny()
    assert torch.equal(torch.rand(3), expected)


def test_reference_text_and_sigma_all_influence_the_velocity(policy, refs):
    x, s = inputs(policy)
    base = policy(x, s, policy.encode(PROMPTS, refs))
    other_refs = [1.0 - r for r in refs]
    assert (policy(x, s, policy.encode(PROMPTS, other_refs)) - base).abs().max() > 1e-3
    other_text = ["a tent on the beach", "a dotted kite"]
    assert (policy(x, s, policy.encode(other_text, refs)) - base).abs().max() > 1e-3
    assert (policy(x, s * 0.5, policy.encode(PROMPTS, refs)) - base).abs().max() > 1e-3


def test_rows_are_independent_and_groups_repeat(policy, refs):
    cond = policy.encode(PROMPTS, refs)
    x, s = inputs(policy, b=4)
    group = cond.repeat_interleave(2)
    out = policy(x, s, group)
    for i in range(4):
        one = policy(x[i : i + 1], s[i : i + 1], cond.select([i // 2]))
        torch.testing.assert_close(out[i : i + 1], one, atol=1e-5, rtol=1e-5)


def test_reference_resizing_and_several_references(policy, refs):
    x, s = inputs(policy)
    # a larger non-square reference is centre-cropped and resized, not rejected
    big = torch.nn.functional.interpolate(refs[0], size=(64, 64), mode="nearest")
    wide = torch.cat([torch.zeros(1, 3, 64, 16), big, torch.zeros(1, 3, 64, 16)], dim=3)
    v_big = policy(x[:1], s[:1], policy.encode(PROMPTS[:1], [wide]))
    v_ref = policy(x[:1], s[:1], policy.encode(PROMPTS[:1], refs[:1]))
    assert (v_big - v_ref).abs().max() < 0.1 * v_ref.abs().max()
    # R = 2 for one sample and R = 1 for another: padding is masked out
    two = torch.cat([refs[0], refs[1]])
    cond = policy.encode(PROMPTS, [two, refs[1]])
    assert cond.tensors["ref_tokens"].shape == (2, 128, 48)
    out = policy(x, s, cond)
    alone = policy(x[1:], s[1:], policy.encode(PROMPTS[1:], [refs[1]]))
    torch.testing.assert_close(out[1:], alone, atol=1e-5, rtol=1e-5)
    assert (out[:1] - v_ref).abs().max() > 1e-3  # the second reference is seen


def test_bad_inputs_raise_clear_errors(policy, refs):
    with pytest.raises(ValueError, match=r"references\[0\] must be \[R, 3, h, w\]"):
        policy.encode(PROMPTS[:1], [torch.rand(3, 32, 32)])
    with pytest.raises(ValueError, match="2 prompts but 1 reference"):
        policy.encode(PROMPTS, refs[:1])
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        policy.encode([""], refs[:1])
    cond = policy.encode(PROMPTS, refs)
    with pytest.raises(ValueError, match="latents must be"):
        policy(torch.zeros(2, 64, 3), torch.rand(2), cond)
    with pytest.raises(ValueError, match="sigma must be"):
        policy(torch.zeros(2, 64, 48), torch.rand(3), cond)


def test_lora_trains_only_adapters_and_the_base_stays_reachable(refs, tmp_path):
    pol = tiny()
    cond = pol.encode(PROMPTS, refs)
    x, s = inputs(pol)
    base = pol(x, s, cond).detach()
    pol.add_lora(LoraSettings(rank=4))
    names = [n for n, _ in pol.named_trainable_parameters()]
    # every default target in every block got an adapter
    for target in pol.default_lora_targets:
        assert sum(f".{target}.lora_A" in n for n in names) == 2, target
    trainable = {n for n, p in pol.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    torch.testing.assert_close(pol(x, s, cond), base)  # B = 0 at init

    pol(x, s, cond).square().mean().backward()
    assert all(p.grad is None for n, p in pol.named_parameters() if "lora_" not in n)
    assert all(p.grad is not None for p in pol.trainable_parameters())

    with torch.no_grad():
        for p in pol.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    tuned = pol(x, s, cond).detach()
    assert (tuned - base).abs().max() > 1e-3
    with pol.adapter_disabled():
        torch.testing.assert_close(pol(x, s, cond), base)
    assert all(p.requires_grad for p in pol.trainable_parameters())

    pol.save_adapter(tmp_path / "adapter")
    fresh = tiny()
    fresh.add_lora(LoraSettings(rank=4))
    fresh.load_adapter(tmp_path / "adapter")
    torch.testing.assert_close(fresh(x, s, fresh.encode(PROMPTS, refs)), tuned)


def test_weights_file_round_trip_and_architecture_check(policy, refs, tmp_path):
    path = save_pocket_weights(policy.denoiser, tmp_path / "w.safetensors", dtype=torch.float32)
    loaded = build_policy("pocket", {**TINY, "weights": str(path)})
    x, s = inputs(policy)
    torch.testing.assert_close(
        loaded(x, s, loaded.encode(PROMPTS, refs)), policy(x, s, policy.encode(PROMPTS, refs))
    )
    with pytest.raises(ConfigError, match=r"model\.options\.depth = 3: .*trained with depth = 2"):
        build_policy("pocket", {**TINY, "weights": str(path), "depth": 3})
    with pytest.raises(ConfigError, match=r"model\.options\.weights = .*no weights file"):
        build_policy("pocket", {**TINY, "weights": str(tmp_path / "missing.safetensors")})


def test_options_are_checked():
    with pytest.raises(ConfigError, match=r"model\.options\.colour = .*unknown key"):
        build_policy("pocket", {"weights": "random", "colour": 1})
    with pytest.raises(ConfigError, match=r"model\.options\.patch = 5: must divide image_size"):
        build_policy("pocket", {**TINY, "patch": 5})
    with pytest.raises(ConfigError, match=r"model\.options\.heads"):
        build_policy("pocket", {**TINY, "heads": 3})


def test_dtype_and_device_are_honoured(refs):
    pol = build_policy("pocket", TINY, dtype=torch.bfloat16)
    assert pol.denoiser.patch_in.weight.dtype == torch.bfloat16
    cond = pol.encode(PROMPTS, refs)
    assert cond.tensors["ref_tokens"].dtype == torch.bfloat16
    x, s = inputs(pol)
    assert pol(x, s, cond).dtype == torch.bfloat16
    assert pol.decode(pol(x, s, cond)).dtype == torch.float32


def test_committed_asset_loads_and_checks_its_architecture(refs):
    assert ASSET_PATH.is_file(), "run python -m cgrpo.training.pocket_train to rebuild it"
    assert ASSET_PATH.stat().st_size < 10 * 2**20
    report = json.loads(ASSET_PATH.with_suffix(".json").read_text())
    pol = build_policy("pocket")
    assert pol.latent_shape() == (64, 48)
    assert report["architecture"] == dataclasses.asdict(pol.arch)
    # trained weights: the velocity at pure noise points from the noise towards the data
    cond = pol.encode(["a ball in the snow"], refs[:1])
    x = torch.randn(1, *pol.latent_shape(), generator=torch.Generator().manual_seed(0))
    x0 = x - pol(x, torch.ones(1), cond)
    assert x0.abs().mean() < x.abs().mean()
    with pytest.raises(ConfigError, match=r"model\.options\.dim = 64: .*trained with dim = "):
        build_policy("pocket", {"dim": 64})
