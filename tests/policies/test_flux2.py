"""FLUX.2 backend (klein, dev) against diffusers, offline, with tiny random components."""

from __future__ import annotations

import shutil

import pytest
import torch

pytest.importorskip("diffusers")

from dit_checks import (  # noqa: E402
    adapted_modules,
    check_first_update,
    euler,
    pil_references,
    random_lora,
)
from flux2_tiny import (  # noqa: E402
    MAX_SEQ,
    SIZE,
    TEXT_LAYERS,
    klein_pipeline,
    mistral_text,
    tiny_components,
    tiny_options,
    tiny_policy,
    tiny_transformer,
    tiny_vae,
)

from cgrpo.policies.flux2 import Flux2Policy  # noqa: E402

PROMPT = "a backpack on a beach"


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _noise(policy, n: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *policy.latent_shape(), generator=torch.Generator().manual_seed(seed))


def _unpacked(x: torch.Tensor) -> torch.Tensor:
    """Our packed ``[B, L, C]`` as the pipelines' ``[B, C, rows, cols]`` (row-major tokens)."""
    side = int(x.shape[1] ** 0.5)
    return x.permute(0, 2, 1).reshape(x.shape[0], x.shape[2], side, side)


def _record(store: list):
    def callback(pipe, i, t, kwargs):
        store.append(kwargs["latents"].clone())
        return {}

    return callback


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("guidance", [4.0, 1.0], ids=["true-cfg", "no-cfg"])
def test_klein_deterministic_sampling_matches_the_pipeline_with_two_references(guidance):
    comps = tiny_components()
    policy = tiny_policy(comps, guidance=guidance)
    pil, refs = pil_references(2, SIZE)
    noise = _noise(policy)
    sigmas = policy.dynamic_sigmas(4)
    with torch.no_grad():
        cond = policy.encode([PROMPT], [refs])
        ours = euler(policy, cond, noise, sigmas)
        image = policy.decode(ours[-1])
    theirs = []
    out = klein_pipeline(comps)(
        image=pil,
        prompt=PROMPT,
        height=SIZE,
        width=SIZE,
        num_inference_steps=4,
        guidance_scale=guidance,
        latents=_unpacked(noise),
        output_type="pt",
        max_sequence_length=MAX_SEQ,
        text_encoder_out_layers=TEXT_LAYERS,
        callback_on_step_end=_record(theirs),
    ).images
    assert torch.allclose(comps["scheduler"].sigmas, sigmas, atol=1e-6)
    assert len(theirs) == 4
    for mine, their in zip(ours[1:], theirs):
        assert (mine - their).abs().max() < 1e-4
    assert image.shape == out.shape == (1, 3, SIZE, SIZE)
    assert (out - image).abs().max() < 1e-4
    assert image.std() > 0.01  # a real image, not a constant


def test_dev_embedded_guidance_and_mistral_text_match_flux2_pipeline():
    from diffusers import Flux2Pipeline

    comps = {**tiny_components(guidance_embeds=True), **mistral_text()}
    options = tiny_options(variant="dev", guidance=2.5, max_sequence_length=256)
    policy = tiny_policy(comps, **options)
    pil, refs = pil_references(1, SIZE, seed=4)
    noise = _noise(policy, seed=1)
    sigmas = policy.dynamic_sigmas(3)
    with torch.no_grad():
        cond = policy.encode([PROMPT], [refs])
        ours = euler(policy, cond, noise, sigmas)
        image = policy.decode(ours[-1])
        other = policy.encode(["a red backpack"], [refs]).tensors["prompt_embeds"]
    assert not torch.allclose(other, cond.tensors["prompt_embeds"])  # the prompt is not cut off
    pipe = Flux2Pipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        image=pil,
        prompt=PROMPT,
        height=SIZE,
        width=SIZE,
        num_inference_steps=3,
        guidance_scale=2.5,
        latents=_unpacked(noise),
        output_type="pt",
        max_sequence_length=256,
        text_encoder_out_layers=TEXT_LAYERS,
    ).images
    assert (out - image).abs().max() < 1e-4
    with torch.no_grad():  # the guidance value reaches the model
        louder = tiny_policy(comps, **{**options, "guidance": 5.0})
        x, s = noise, sigmas[:1]
        assert not torch.allclose(louder(x, s, cond), policy(x, s, cond), atol=1e-5)


def test_true_cfg_is_the_guided_combination_of_two_passes():
    comps = tiny_components()
    guided = tiny_policy(comps, guidance=3.0)
    plain = tiny_policy(comps, guidance=1.0)
    _, refs = pil_references(1, SIZE)
    with torch.no_grad():
        cond = guided.encode(["a dog", "a cat"], [refs, refs])
        assert set(cond.tensors) == {"prompt_embeds", "negative_prompt_embeds", "reference_latents"}
        neg = plain.condition_from_embeddings(
            cond.tensors["negative_prompt_embeds"], cond.tensors["reference_latents"], 1
        )
        pos = plain.condition_from_embeddings(
            cond.tensors["prompt_embeds"], cond.tensors["reference_latents"], 1
        )
        x, s = _noise(guided, 2), torch.tensor([0.8, 0.3])
        v_pos, v_neg = plain(x, s, pos), plain(x, s, neg)
        assert torch.allclose(guided(x, s, cond), v_neg + 3.0 * (v_pos - v_neg), atol=1e-5)


def test_prompts_and_the_empty_prompt_are_encoded_once():
    policy = tiny_policy()
    calls = []
    encode = policy._text.encode
    policy._text.encode = lambda prompts, n: calls.append(list(prompts)) or encode(prompts, n)
    _, refs = pil_references(1, SIZE)
    first = policy.encode(["a dog", "a cat", "a dog"], [refs] * 3)
    again = policy.encode(["a cat"], [refs])
    assert calls == [["a dog", "a cat", ""]]
    for key, value in first.tensors.items():
        assert torch.allclose(value[1:2], again.tensors[key], atol=1e-6), key
    with pytest.raises(ValueError, match="same number"):
        policy.encode(["a", "b"], [refs, torch.cat([refs, refs])])


# ----------------------------------------------------------------------------- GRPO
@pytest.mark.parametrize("checkpointing", [False, True])
def test_first_update_ratio_is_one_and_only_lora_gets_gradients(checkpointing):
    policy = tiny_policy(gradient_checkpointing=checkpointing)  # klein with true CFG
    random_lora(policy)
    _, refs = pil_references(2, SIZE)
    with torch.no_grad():
        cond = policy.encode([PROMPT], [refs]).repeat_interleave(2)
    check_first_update(policy, cond, _noise(policy, 2), policy.dynamic_sigmas(3))


def test_lora_presets_adapt_the_documented_layers():
    policy = tiny_policy()
    random_lora(policy, "paper")
    attn = policy.denoiser.transformer_blocks[0].attn
    assert attn.to_k.lora_A["default"].weight is attn.to_q.lora_A["default"].weight
    assert adapted_modules(policy) == {
        *(f"transformer_blocks.0.attn.{n}" for n in ("to_q", "to_k", "to_v", "to_out.0")),
        *(f"transformer_blocks.0.attn.{n}" for n in ("add_q_proj", "add_k_proj", "add_v_proj")),
        "transformer_blocks.0.attn.to_add_out",
        "single_transformer_blocks.0.attn.to_qkv_mlp_proj",
        "single_transformer_blocks.0.attn.to_out",
    }
    default, everything = tiny_policy(), tiny_policy()
    random_lora(default)
    random_lora(everything, "all")
    assert adapted_modules(default) == adapted_modules(policy)
    extra = adapted_modules(everything) - adapted_modules(default)
    assert extra == {
        f"transformer_blocks.0.{ff}.{n}"
        for ff in ("ff", "ff_context")
        for n in ("linear_in", "linear_out")
    }


def test_saved_adapter_loads_in_flux2_klein_pipeline_and_back(tmp_path):
    policy = tiny_policy()
    random_lora(policy, "paper")
    policy.save_adapter(tmp_path / "adapter")
    _, refs = pil_references(1, SIZE)
    with torch.no_grad():
        cond = policy.encode([PROMPT], [refs])
        x, s = _noise(policy), torch.tensor([0.7])
        ours = policy(x, s, cond)

    pipe = klein_pipeline(tiny_components())
    pipe.load_lora_weights(tmp_path / "adapter")
    reloaded = tiny_policy({**tiny_components(), "transformer": pipe.transformer})
    fresh = tiny_policy()
    random_lora(fresh, "paper")
    fresh.load_adapter(tmp_path / "adapter")
    with torch.no_grad():
        assert torch.allclose(reloaded(x, s, cond), ours, atol=1e-5)
        assert torch.allclose(fresh(x, s, cond), ours, atol=1e-6)
        assert not torch.allclose(tiny_policy()(x, s, cond), ours, atol=1e-4)


# ----------------------------------------------------------------------------- loading
def test_directory_loader_matches_components_and_names_missing_parts(tmp_path):
    from cgrpo.policies import build_policy

    comps = tiny_components()
    for name, part in comps.items():
        part.save_pretrained(tmp_path / "m" / name)
    with pytest.raises(FileNotFoundError, match=r"FLUX\.2 model directory not found"):
        build_policy("flux2", {"path": str(tmp_path / "nowhere"), **tiny_options()})
    loaded = build_policy("flux2", {"path": str(tmp_path / "m"), **tiny_options()})
    direct = tiny_policy(comps)
    _, refs = pil_references(1, SIZE)
    with torch.no_grad():
        a, b = loaded.encode([PROMPT], [refs]), direct.encode([PROMPT], [refs])
        x, s = _noise(direct), torch.tensor([0.4])
        assert torch.allclose(loaded(x, s, a), direct(x, s, b), atol=1e-5)
    assert torch.equal(loaded.dynamic_sigmas(5), direct.dynamic_sigmas(5))
    shutil.rmtree(tmp_path / "m" / "vae")
    with pytest.raises(FileNotFoundError, match=r"FLUX\.2 model directory .* is missing vae/;"):
        build_policy("flux2", {"path": str(tmp_path / "m"), **tiny_options()})


def test_vae_round_trip_and_size_errors():
    from cgrpo.config import ConfigError

    policy = Flux2Policy.from_components(
        transformer=tiny_transformer(), vae=tiny_vae(), options=tiny_options()
    )
    assert policy.latent_shape() == (16, 16) and policy.vae_scale_factor == 8
    with pytest.raises(ConfigError, match=r"model\.options\.height.*multiple of 16"):
        Flux2Policy.from_components(
            transformer=tiny_transformer(), vae=tiny_vae(), options=tiny_options(height=72)
        )
