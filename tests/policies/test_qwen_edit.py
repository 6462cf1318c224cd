"""Qwen-Image-Edit-Plus backend against diffusers, offline, with tiny random components."""

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
from qwen_tiny import (  # noqa: E402
    SIZE,
    edit_pipeline,
    small_pipeline_sizes,
    tiny_components,
    tiny_options,
    tiny_policy,
    tiny_transformer,
)

PROMPT = "put the backpack on a beach"


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def comps():
    return tiny_components()


def fresh(comps: dict) -> dict:
    """The shared components with a new transformer (LoRA goes into it in place)."""
    return {**comps, "transformer": tiny_transformer()}


def _noise(policy, n: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *policy.latent_shape(), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize(
    "guidance,zero_cond_t",
    [(4.0, False), (1.0, False), (4.0, True)],
    ids=["true-cfg", "no-cfg", "2511-zero-cond-t"],
)
def test_deterministic_sampling_matches_the_pipeline_with_two_references(
    comps, guidance, zero_cond_t
):
    comps = {**comps, "transformer": tiny_transformer(zero_cond_t=zero_cond_t)}
    policy = tiny_policy(comps, guidance=guidance)
    pil, refs = pil_references(2, SIZE)
    noise = _noise(policy)
    sigmas = policy.dynamic_sigmas(4)
    with torch.no_grad():
        cond = policy.encode([PROMPT], [refs])
        ours = euler(policy, cond, noise, sigmas)
        image = policy.decode(ours[-1])
    theirs = []

    def record(pipe, i, t, kwargs):
        theirs.append(kwargs["latents"].clone())
        return {}

    with small_pipeline_sizes():
        out = edit_pipeline(comps)(
            image=pil,
            prompt=PROMPT,
            negative_prompt=" " if guidance > 1 else None,
            true_cfg_scale=guidance,
            height=SIZE,
            width=SIZE,
            num_inference_steps=4,
            latents=noise.clone(),
            output_type="pt",
            callback_on_step_end=record,
        ).images
    assert torch.allclose(comps["scheduler"].sigmas, sigmas, atol=1e-6)
    assert sigmas[-2] == pytest.approx(0.02)  # the scheduler's shift_terminal
    assert len(theirs) == 4
    for mine, their in zip(ours[1:], theirs):
        assert (mine - their).abs().max() < 1e-4
    assert image.shape == out.shape == (1, 3, SIZE, SIZE)
    assert (out - image).abs().max() < 1e-4
    assert image.std() > 0.01


def test_batch_of_prompts_of_different_lengths_equals_one_by_one(comps):
    policy = tiny_policy(comps)
    _, refs = pil_references(1, SIZE, seed=3)
    _, other = pil_references(1, SIZE, seed=4)
    calls = []
    encode = policy._text.encode
    policy._text.encode = lambda p, images: calls.append(p) or encode(p, images)
    prompts = ["a dog", "a much longer prompt about a cat on a sofa"]
    with torch.no_grad():
        both = policy.encode(prompts, [refs, other])
        mask = both.tensors["prompt_mask"]
        assert mask[0].sum() < mask[1].sum() and mask[1].all()  # padded and masked
        x, s = _noise(policy, 2), torch.tensor([0.9, 0.4])
        batched = policy(x, s, both)
        for i in range(2):
            one = policy.encode([prompts[i]], [[refs, other][i]])
            assert torch.allclose(policy(x[i : i + 1], s[i : i + 1], one), batched[i], atol=1e-5)
    # each (prompt, references) pair and its negative prompt were encoded once
    assert sorted(calls) == sorted([*prompts, " ", " "])
    with torch.no_grad():  # the text embedding depends on the references, not just the prompt
        a = policy.encode(["a dog"], [refs]).tensors["prompt_embeds"]
        b = policy.encode(["a dog"], [other]).tensors["prompt_embeds"]
    assert a.shape == b.shape and not torch.allclose(a, b)


# ----------------------------------------------------------------------------- GRPO
@pytest.mark.parametrize("checkpointing", [False, True])
def test_first_update_ratio_is_one_and_only_lora_gets_gradients(comps, checkpointing):
    policy = tiny_policy(fresh(comps), gradient_checkpointing=checkpointing)
    random_lora(policy)
    _, refs = pil_references(2, SIZE)
    with torch.no_grad():
        cond = policy.encode([PROMPT], [refs]).repeat_interleave(2)
    # the last block's text-stream output projection feeds nothing (only image tokens leave)
    unused = ["transformer_blocks.1.attn.to_add_out."]
    check_first_update(policy, cond, _noise(policy, 2), policy.dynamic_sigmas(3), unused=unused)


def test_lora_presets_adapt_the_documented_layers():
    policy, default, everything = (tiny_policy({"transformer": tiny_transformer()}) for _ in "abc")
    random_lora(policy, "paper")
    random_lora(default)
    random_lora(everything, "all")
    attn = policy.denoiser.transformer_blocks[1].attn
    assert attn.add_v_proj.lora_A["default"].weight is attn.add_q_proj.lora_A["default"].weight
    names = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj")
    expected = {f"transformer_blocks.{b}.attn.{n}" for b in (0, 1) for n in (*names, "to_add_out")}
    assert adapted_modules(policy) == adapted_modules(default) == expected
    assert adapted_modules(everything) - expected == {
        f"transformer_blocks.{b}.{mlp}.net.{n}"
        for b in (0, 1)
        for mlp in ("img_mlp", "txt_mlp")
        for n in ("0.proj", "2")
    }


def test_saved_adapter_loads_in_the_pipeline_and_back(comps, tmp_path):
    policy = tiny_policy(fresh(comps))
    random_lora(policy, "paper")
    policy.save_adapter(tmp_path / "adapter")
    _, refs = pil_references(1, SIZE)
    with torch.no_grad():
        cond = policy.encode([PROMPT], [refs])
        x, s = _noise(policy), torch.tensor([0.7])
        ours = policy(x, s, cond)
    pipe = edit_pipeline(fresh(comps))
    pipe.load_lora_weights(tmp_path / "adapter")
    reloaded = tiny_policy({**comps, "transformer": pipe.transformer})
    again = tiny_policy(fresh(comps))
    random_lora(again, "paper")
    again.load_adapter(tmp_path / "adapter")
    base = tiny_policy(fresh(comps))
    with torch.no_grad():
        assert torch.allclose(reloaded(x, s, cond), ours, atol=1e-5)
        assert torch.allclose(again(x, s, cond), ours, atol=1e-6)
        assert not torch.allclose(base(x, s, cond), ours, atol=1e-4)


# ----------------------------------------------------------------------------- loading
def test_directory_loader_names_missing_parts(comps, tmp_path):
    from cgrpo.policies import build_policy

    root = tmp_path / "m"
    for name in ("transformer", "vae", "scheduler"):
        comps[name].save_pretrained(root / name)
    with pytest.raises(FileNotFoundError, match="Qwen-Image-Edit model directory not found"):
        build_policy("qwen-image-edit", {"path": str(tmp_path / "nowhere"), **tiny_options()})
    with pytest.raises(FileNotFoundError, match=r"missing text_encoder/, tokenizer/, processor/;"):
        build_policy("qwen-image-edit", {"path": str(root), **tiny_options()})
    shutil.rmtree(root / "vae")
    with pytest.raises(FileNotFoundError, match=r"missing vae/, text_encoder/"):
        build_policy("qwen-image-edit", {"path": str(root), **tiny_options()})
