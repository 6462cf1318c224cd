"""FLUX backend against diffusers, offline, with tiny random components (see flux_tiny.py)."""

from __future__ import annotations

import shutil

import pytest
import torch

pytest.importorskip("diffusers")

from flux_tiny import (  # noqa: E402
    HEIGHT,
    MAX_SEQ,
    WIDTH,
    kontext_pipeline,
    save_tiny_model,
    tiny_components,
    tiny_options,
    tiny_policy,
)

from cgrpo.config import ConfigError  # noqa: E402
from cgrpo.grpo import dynamic_sigma_schedule, ppo_clip_loss, sde_step  # noqa: E402
from cgrpo.policies import LoraSettings, build_policy  # noqa: E402
from cgrpo.policies.flux import (  # noqa: E402
    KONTEXT_LORA_TARGETS,
    FluxPolicy,
    reference_position_ids,
    resize_center_crop,
)

PROMPT = "a backpack on a beach"


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _reference(seed: int = 0, n: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed))


def _noise(policy, n: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *policy.latent_shape(), generator=torch.Generator().manual_seed(seed))


def _euler(policy, cond, noise, sigmas):
    x = noise
    for i in range(sigmas.shape[0] - 1):
        v = policy(x, sigmas[i].expand(x.shape[0]), cond)
        x = sde_step(v, x, sigmas, i, 0.0).prev_sample
    return x


# ----------------------------------------------------------------------------- parity
def test_deterministic_sampling_matches_flux_kontext_pipeline():
    comps = tiny_components()
    policy = tiny_policy(comps)
    ref = _reference()
    noise = _noise(policy)
    sigmas = dynamic_sigma_schedule(4, policy.image_seq_len)
    with torch.no_grad():
        cond = policy.encode([PROMPT], [ref])
        final = _euler(policy, cond, noise, sigmas)
        image = policy.decode(final)
    pipe = kontext_pipeline(comps)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(
        image=ref,
        prompt=PROMPT,
        height=HEIGHT,
        width=WIDTH,
        num_inference_steps=4,
        guidance_scale=3.5,
        max_area=HEIGHT * WIDTH,
        _auto_resize=False,
        max_sequence_length=MAX_SEQ,
    )
    theirs_latent = pipe(latents=noise.clone(), output_type="latent", **kwargs).images
    theirs_image = pipe(latents=noise.clone(), output_type="pt", **kwargs).images
    assert torch.allclose(pipe.scheduler.sigmas, sigmas, atol=1e-6)
    assert (theirs_latent - final).abs().max() < 1e-4
    assert image.shape == (1, 3, HEIGHT, WIDTH)
    assert (theirs_image - image).abs().max() < 1e-4
    assert image.min() >= 0 and image.max() <= 1


def test_batched_encode_equals_one_by_one_and_caches_prompts():
    policy = tiny_policy(vae_batch_size=1)
    refs = [_reference(1), _reference(2)]
    calls = []
    encode = policy._text.encode
    policy._text.encode = lambda prompts, n: calls.append(list(prompts)) or encode(prompts, n)
    both = policy.encode(["a dog", "a cat"], refs)
    again = policy.encode(["a cat"], [refs[1]])
    assert calls == [["a dog", "a cat"]]  # the second call hit the in-memory cache
    for key, value in both.tensors.items():
        assert torch.allclose(value[1:], again.tensors[key], atol=1e-6), key
    assert both.tensors["img_ids"].shape == (2, 32, 3)


def test_text_cache_is_bounded_and_a_batch_larger_than_it_still_works():
    policy = tiny_policy(text_cache_size=1)
    calls = []
    encode = policy._text.encode
    policy._text.encode = lambda prompts, n: calls.append(list(prompts)) or encode(prompts, n)
    cond = policy.encode(["a", "b", "a"], [_reference(n=1)] * 3)
    assert torch.equal(cond.tensors["prompt_embeds"][0], cond.tensors["prompt_embeds"][2])
    policy.encode(["b"], [_reference()])
    policy.encode(["a"], [_reference()])
    assert calls == [["a", "b"], ["a"]] and list(policy._text_cache) == ["a"]


def test_disk_text_cache_is_reused(tmp_path):
    comps = tiny_components()
    first = tiny_policy(comps, text_cache_dir=str(tmp_path))
    expected = first.encode([PROMPT], [_reference()])
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1
    second = tiny_policy(comps, text_cache_dir=str(tmp_path))
    second._text.encode = None  # any call to the encoders would now fail
    got = second.encode([PROMPT], [_reference()])
    assert torch.equal(got.tensors["prompt_embeds"], expected.tensors["prompt_embeds"])
    assert torch.equal(
        got.tensors["pooled_prompt_embeds"], expected.tensors["pooled_prompt_embeds"]
    )


# ----------------------------------------------------------------------------- GRPO invariants
@pytest.mark.parametrize("checkpointing", [False, True])
def test_first_update_ratio_is_one_and_only_lora_gets_gradients(checkpointing):
    policy = tiny_policy(gradient_checkpointing=checkpointing)
    policy.add_lora(LoraSettings(rank=4, alpha=8.0, init_weights=False))
    assert all(p.dtype == torch.float32 for p in policy.trainable_parameters())
    sigmas = dynamic_sigma_schedule(3, policy.image_seq_len)
    with torch.no_grad():
        cond = policy.encode([PROMPT], [_reference()]).repeat_interleave(2)
        x = _noise(policy, 2)
        gen = torch.Generator().manual_seed(3)
        states, old = [], []
        for i in range(3):
            v = policy(x, sigmas[i].expand(2), cond)
            step = (
                sde_step(v, x, sigmas, i, 0.7, generator=gen)
                if i < 2
                else sde_step(v, x, sigmas, i, 0.0)
            )
            states.append((x, step.prev_sample))
            old.append(step.log_prob)
            x = step.prev_sample
    policy.train()
    advantages = torch.tensor([1.0, -1.0])
    total = 0.0
    for i in range(2):  # the final step is deterministic and never trained
        x, prev = states[i]
        v = policy(x, sigmas[i].expand(2), cond)
        new = sde_step(v, x, sigmas, i, 0.7, prev_sample=prev).log_prob
        assert torch.allclose(new, old[i], atol=1e-5)
        loss, stats = ppo_clip_loss(new, old[i], advantages)
        assert stats.ratio_mean == pytest.approx(1.0, abs=1e-5)
        total = total + loss
    total.backward()
    lora = dict(policy.named_trainable_parameters())
    assert lora and all(p.grad is not None and torch.isfinite(p.grad).all() for p in lora.values())
    assert any(p.grad.abs().sum() > 0 for p in lora.values())
    frozen = [n for n, p in policy.named_parameters() if "lora_" not in n]
    assert frozen and all(dict(policy.named_parameters())[n].grad is None for n in frozen)
    with torch.no_grad(), policy.adapter_disabled():
        base = policy(states[0][0], sigmas[0].expand(2), cond)
    adapted = policy(states[0][0], sigmas[0].expand(2), cond)
    assert not torch.allclose(base, adapted)  # the adapter is live and can be switched off


def test_bf16_base_keeps_fp32_lora_and_returns_fp32_velocity():
    policy = tiny_policy(dtype="bf16")
    policy.add_lora(LoraSettings(rank=2))
    assert policy.denoiser.x_embedder.weight.dtype == torch.bfloat16
    assert {p.dtype for p in policy.trainable_parameters()} == {torch.float32}
    cond = policy.encode([PROMPT], [_reference()])
    v = policy(_noise(policy), torch.tensor([0.5]), cond)
    assert v.dtype == torch.float32 and v.shape == (1, *policy.latent_shape())


def test_default_lora_targets_cover_diffusers_kontext_list():
    policy = tiny_policy()
    policy.add_lora(LoraSettings(rank=2))
    adapted = {n.rsplit(".lora_", 1)[0] for n, _ in policy.named_trainable_parameters()}
    for target in KONTEXT_LORA_TARGETS:
        assert any(n.endswith(target) for n in adapted), target
    assert "proj_out" not in adapted and "single_transformer_blocks.0.proj_out" not in adapted


# ----------------------------------------------------------------------------- position ids
def _grid_ids(rows, cols, first=0.0, row0=0, col0=0):
    out = []
    for r in range(rows):
        for c in range(cols):
            out.append([first, row0 + r, col0 + c])
    return torch.tensor(out, dtype=torch.float32)


@pytest.mark.parametrize("scheme", ["d", "h", "w", "o"])
def test_uno_reference_ids_offset_and_accumulate(scheme):
    target, refs = (4, 5), [(2, 3), (3, 2)]
    rows_on, cols_on = scheme in ("d", "h"), scheme in ("d", "w")
    one = _grid_ids(2, 3, row0=4 if rows_on else 0, col0=5 if cols_on else 0)
    second = _grid_ids(3, 2, row0=(4 + 2) if rows_on else 0, col0=(5 + 3) if cols_on else 0)
    assert torch.equal(reference_position_ids(scheme, target, refs[:1]), one)
    assert torch.equal(reference_position_ids(scheme, target, refs), torch.cat([one, second]))


def test_kontext_reference_ids_match_the_pipeline():
    from diffusers import FluxKontextPipeline

    ids = FluxKontextPipeline._prepare_latent_image_ids(None, 3, 4, "cpu", torch.float32)
    ids[..., 0] = 1
    assert torch.equal(reference_position_ids("kontext", (5, 5), [(3, 4)]), ids)
    two = reference_position_ids("kontext", (5, 5), [(3, 4), (3, 4)])
    assert torch.equal(two[12:, 0], torch.full((12,), 2.0))


def test_two_references_in_a_uno_policy(tmp_path):
    comps = tiny_components()
    lora = _write_xlabs_lora(tmp_path / "uno.safetensors", comps["transformer"], rank=2)[0]
    policy = tiny_policy(comps, variant="uno", uno_lora=str(lora))
    cond = policy.encode([PROMPT], [_reference(n=2)])
    ids = cond.tensors["img_ids"][0]
    assert ids.shape == (16 * 3, 3)
    assert torch.equal(ids[16:], reference_position_ids("d", (4, 4), [(4, 4), (4, 4)]))
    v = policy(_noise(policy), torch.tensor([0.3]), cond)
    assert v.shape == (1, 16, 16)
    with pytest.raises(ValueError, match="same number"):
        policy.encode(["a", "b"], [_reference(n=2), _reference(n=1)])


# ----------------------------------------------------------------------------- UNO LoRA fusing
def _write_xlabs_lora(path, transformer, rank=2, seed=5, block=0):
    """A random XLabs-format LoRA and the weights it should produce when fused."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    dim = transformer.inner_dim
    mlp = transformer.single_transformer_blocks[0].proj_out.in_features
    shapes = {  # xlabs name -> (in, out)
        f"double_blocks.{block}.processor.qkv_lora1": (dim, 3 * dim),
        f"double_blocks.{block}.processor.qkv_lora2": (dim, 3 * dim),
        f"double_blocks.{block}.processor.proj_lora1": (dim, dim),
        f"double_blocks.{block}.processor.proj_lora2": (dim, dim),
        f"single_blocks.{block}.processor.qkv_lora": (dim, 3 * dim),
        f"single_blocks.{block}.processor.proj_lora": (mlp, dim),
    }
    state = {}
    for name, (n_in, n_out) in shapes.items():
        state[f"{name}.down.weight"] = torch.randn(rank, n_in, generator=g) * 0.1
        state[f"{name}.up.weight"] = torch.randn(n_out, rank, generator=g) * 0.1
    save_file(state, str(path))
    d, s = f"transformer_blocks.{block}", f"single_transformer_blocks.{block}"
    delta = {}

    def add(module, name, rows=None):
        up, down = state[f"{name}.up.weight"], state[f"{name}.down.weight"]
        if rows is not None:
            up = up[rows * dim : (rows + 1) * dim]
        delta[f"{module}.weight"] = up @ down

    for i, proj in enumerate(("to_q", "to_k", "to_v")):
        add(f"{d}.attn.{proj}", f"double_blocks.{block}.processor.qkv_lora1", i)
        add(f"{s}.attn.{proj}", f"single_blocks.{block}.processor.qkv_lora", i)
    for i, proj in enumerate(("add_q_proj", "add_k_proj", "add_v_proj")):
        add(f"{d}.attn.{proj}", f"double_blocks.{block}.processor.qkv_lora2", i)
    add(f"{d}.attn.to_out.0", f"double_blocks.{block}.processor.proj_lora1")
    add(f"{d}.attn.to_add_out", f"double_blocks.{block}.processor.proj_lora2")
    add(f"{s}.proj_out", f"single_blocks.{block}.processor.proj_lora")
    return path, delta


def test_uno_lora_is_converted_and_fused_like_a_hand_applied_update(tmp_path):
    comps = tiny_components()
    path, delta = _write_xlabs_lora(tmp_path / "uno.safetensors", comps["transformer"])
    by_hand = tiny_components()["transformer"]
    base = {k: v.clone() for k, v in by_hand.state_dict().items()}
    with torch.no_grad():
        for name, d in delta.items():
            by_hand.get_parameter(name).add_(d)
    uno = tiny_policy(comps, variant="uno", uno_lora=str(path))
    fused = uno.denoiser.state_dict()
    assert set(fused) == set(base)  # no adapter left behind
    for name, value in fused.items():
        assert torch.allclose(value, by_hand.state_dict()[name], atol=1e-6), name
    assert len(delta) == 12 and all(not torch.equal(fused[n], base[n]) for n in delta)
    hand_policy = FluxPolicy.from_components(
        transformer=by_hand, options=tiny_options(id_scheme="d")
    )
    cond = uno.encode([PROMPT], [_reference()])
    x, s = _noise(uno), torch.tensor([0.6])
    base_policy = FluxPolicy.from_components(
        transformer=tiny_components()["transformer"], options=tiny_options(id_scheme="d")
    )
    with torch.no_grad():
        out = uno(x, s, cond)
        assert torch.allclose(out, hand_policy(x, s, cond), atol=1e-5)
        assert not torch.allclose(out, base_policy(x, s, cond), atol=1e-3)


def test_uno_lora_naming_missing_blocks_is_rejected(tmp_path):
    comps = tiny_components()
    path, _ = _write_xlabs_lora(tmp_path / "bad.safetensors", comps["transformer"], block=3)
    with pytest.raises(ValueError, match="lacks"):
        tiny_policy(comps, variant="uno", uno_lora=str(path))


# ----------------------------------------------------------------------------- save / reload
def test_saved_adapter_loads_in_flux_kontext_pipeline_and_back(tmp_path):
    policy = tiny_policy()
    policy.add_lora(LoraSettings(rank=4, alpha=8.0, init_weights=False))
    policy.save_adapter(tmp_path / "adapter")
    cond = policy.encode([PROMPT], [_reference()])
    x, s = _noise(policy), torch.tensor([0.7])
    with torch.no_grad():
        ours = policy(x, s, cond)

    pipe = kontext_pipeline(tiny_components())
    pipe.load_lora_weights(tmp_path / "adapter")
    reloaded = FluxPolicy.from_components(transformer=pipe.transformer, options=tiny_options())
    with torch.no_grad():
        assert torch.allclose(reloaded(x, s, cond), ours, atol=1e-5)

    fresh = tiny_policy()
    fresh.add_lora(LoraSettings(rank=4, alpha=8.0))
    fresh.load_adapter(tmp_path / "adapter")
    with torch.no_grad():
        assert torch.allclose(fresh(x, s, cond), ours, atol=1e-6)


# ----------------------------------------------------------------------------- loading and errors
def test_directory_loader_matches_components_and_names_missing_parts(tmp_path):
    comps = tiny_components()
    root = save_tiny_model(comps, tmp_path / "flux")
    loaded = build_policy("flux", {"path": str(root), **tiny_options()})
    direct = tiny_policy(comps)
    with torch.no_grad():
        a = loaded.encode([PROMPT], [_reference()])
        b = direct.encode([PROMPT], [_reference()])
        x, s = _noise(direct), torch.tensor([0.4])
        assert torch.allclose(loaded(x, s, a), direct(x, s, b), atol=1e-5)

    shutil.rmtree(root / "vae")
    (root / "text_encoder_2" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing vae/, text_encoder_2/config\.json"):
        build_policy("flux", {"path": str(root), **tiny_options()})
    with pytest.raises(FileNotFoundError, match="not found"):
        build_policy("flux", {"path": str(tmp_path / "nowhere")})


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"model\.options\.path"):
        build_policy("flux", {"variant": "kontext"})
    with pytest.raises(ConfigError, match=r"model\.options\.uno_lora"):
        build_policy("flux", {"path": "x", "variant": "uno"})
    with pytest.raises(ConfigError, match=r"model\.options\.id_scheme"):
        build_policy("flux", {"path": "x", "id_scheme": "z"})
    comps = tiny_components()
    with pytest.raises(ConfigError, match=r"model\.options\.height.*multiple of 4"):
        tiny_policy(comps, height=18)


def test_resize_center_crop_covers_then_crops_the_middle():
    image = torch.zeros(1, 3, 20, 40)
    image[..., 10:30] = 1.0  # the middle half of the columns is white
    out = resize_center_crop(image, (16, 16))
    assert out.shape == (1, 3, 16, 16)
    assert out[..., 2:-2].min() > 0.99  # the kept centre comes from the white band
    same = torch.rand(2, 3, 16, 16)
    assert resize_center_crop(same, (16, 16)) is same


@pytest.mark.parametrize(
    "name,variant,scheme", [("flux-kontext", "kontext", "kontext"), ("flux-uno", "uno", "d")]
)
def test_flux_presets_load_and_carry_the_paper_settings(name, variant, scheme):
    from pathlib import Path

    from cgrpo.config import parse
    from cgrpo.config.train import load_config
    from cgrpo.policies.flux import FluxOptions

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml")
    opts = parse(FluxOptions, cfg.model.options, "model.options")
    assert (opts.variant, opts.scheme, opts.height, opts.guidance) == (variant, scheme, 512, 3.5)
    assert cfg.model.backend == "flux" and cfg.model.lora.rank == 512
    s, t = cfg.sampling, cfg.train
    assert (s.num_steps, s.shift, s.noise_level, s.sde_kind, s.group_size) == (
        25,
        3.0,
        0.4,
        "dance",
        12,
    )
    assert (t.lr, t.weight_decay, t.grad_clip, t.timestep_fraction) == (2e-5, 1e-4, 1.0, 0.6)
    assert (cfg.advantage.strategy, cfg.advantage.schedule) == ("sars", "tdw")
    assert {(r.name, r.role) for r in cfg.rewards} == {
        ("hpsv3", "prompt"),
        ("dino-seg", "identity"),
    }
