"""LoRA presets on the tiny FLUX model: the paper's layer set, shared q/k/v down-projection, init."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from flux_tiny import HEIGHT, WIDTH, kontext_pipeline, tiny_components, tiny_options, tiny_policy  # noqa: E402

from cgrpo.policies import LoraSettings  # noqa: E402
from cgrpo.policies.flux import KONTEXT_LORA_TARGETS, FluxPolicy  # noqa: E402

PROMPT = "a backpack on a beach"

#: The official UNO / Customized-GRPO layer set in diffusers' names (1 double + 1 single block).
PAPER_MODULES = {
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.0.attn.to_k",
    "transformer_blocks.0.attn.to_v",
    "transformer_blocks.0.attn.to_out.0",
    "transformer_blocks.0.attn.add_q_proj",
    "transformer_blocks.0.attn.add_k_proj",
    "transformer_blocks.0.attn.add_v_proj",
    "transformer_blocks.0.attn.to_add_out",
    "single_transformer_blocks.0.attn.to_q",
    "single_transformer_blocks.0.attn.to_k",
    "single_transformer_blocks.0.attn.to_v",
    "single_transformer_blocks.0.proj_out",
}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def adapted_modules(policy) -> set[str]:
    from peft.tuners.lora import LoraLayer

    return {n for n, m in policy.denoiser.named_modules() if isinstance(m, LoraLayer)}


def down_weights(policy) -> list[torch.Tensor]:
    """Every distinct LoRA A matrix (a shared one counts once)."""
    return [p for n, p in policy.named_trainable_parameters() if "lora_A" in n]


def test_paper_preset_adapts_exactly_the_official_layers():
    policy = tiny_policy()
    policy.add_lora(LoraSettings(rank=4, targets="paper"))
    assert adapted_modules(policy) == PAPER_MODULES  # no MLP, not the final proj_out


def test_diffusers_preset_is_the_default_and_keeps_the_mlps():
    named, default = tiny_policy(), tiny_policy()
    named.add_lora(LoraSettings(rank=2, targets="diffusers"))
    default.add_lora(LoraSettings(rank=2))
    assert adapted_modules(named) == adapted_modules(default)
    adapted = adapted_modules(named)
    assert all(any(n.endswith(t) for n in adapted) for t in KONTEXT_LORA_TARGETS)
    assert "single_transformer_blocks.0.proj_out" not in adapted


def test_paper_qkv_lora_is_one_rank_r_lora_on_the_fused_projection():
    rank = 4
    policy = tiny_policy()
    policy.add_lora(LoraSettings(rank=rank, alpha=4.0, targets="paper", init_weights=False))
    attn = policy.denoiser.transformer_blocks[0].attn
    for names in (("to_q", "to_k", "to_v"), ("add_q_proj", "add_k_proj", "add_v_proj")):
        layers = [getattr(attn, n) for n in names]
        assert all(m.lora_A["default"].weight is layers[0].lora_A["default"].weight for m in layers)
        # delta [W_q; W_k; W_v] = [B_q; B_k; B_v] A: rank r, where three separate LoRAs reach 3r
        delta = torch.cat([m.get_delta_weight("default") for m in layers])
        assert delta.shape[0] > 3 * rank
        assert torch.linalg.matrix_rank(delta) == rank
    # the fused parameter count: A (r x d) once per fused projection, plus the B's
    d = attn.to_q.in_features
    qkv = rank * d + 3 * d * rank
    out = 2 * d * rank
    proj_out = policy.denoiser.single_transformer_blocks[0].proj_out.in_features * rank + d * rank
    expected = 2 * (qkv + out) + qkv + proj_out
    assert sum(p.numel() for p in policy.trainable_parameters()) == expected


def test_shared_down_projection_gets_the_summed_gradient():
    policy = tiny_policy()
    policy.add_lora(LoraSettings(rank=2, targets="paper", init_weights=False))
    attn = policy.denoiser.single_transformer_blocks[0].attn
    x = torch.randn(3, attn.to_q.in_features)
    (attn.to_q(x).sum() + 2 * attn.to_k(x).sum() - attn.to_v(x).sum()).backward()
    shared = attn.to_q.lora_A["default"].weight
    scale = attn.to_q.scaling["default"]
    b = [m.lora_B["default"].weight for m in (attn.to_q, attn.to_k, attn.to_v)]
    by_hand = sum(c * bi.sum(dim=0)[:, None] for c, bi in zip((1, 2, -1), b)) * x.sum(dim=0)
    torch.testing.assert_close(shared.grad, scale * by_hand)


@pytest.mark.parametrize(
    ("init", "expected_std"),
    [
        # peft's gaussian: N(0, (1/r)^2), the official init (0.00195 at r = 512)
        ("gaussian", lambda rank, fan_in: 1 / rank),
        # peft's default: Kaiming-uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        (True, lambda rank, fan_in: (3 * fan_in) ** -0.5),
    ],
)
def test_lora_init_std(init, expected_std):
    rank = 16
    policy = tiny_policy()
    policy.add_lora(LoraSettings(rank=rank, targets="paper", init_weights=init))
    downs = [a for a in down_weights(policy) if a.shape[1] == 32]  # the fan-in 32 layers
    values = torch.cat([a.detach().flatten() for a in downs])
    assert values.numel() >= 2000
    assert values.std().item() == pytest.approx(expected_std(rank, 32), rel=0.08)
    ups = [p for n, p in policy.named_trainable_parameters() if "lora_B" in n]
    assert all(torch.count_nonzero(b) == 0 for b in ups)  # the start equals the base


def test_paper_adapter_round_trips_and_loads_in_diffusers(tmp_path):
    policy = tiny_policy()
    policy.add_lora(LoraSettings(rank=4, alpha=8.0, targets="paper", init_weights=False))
    policy.save_adapter(tmp_path / "adapter")
    cond = policy.encode([PROMPT], [torch.rand(1, 3, HEIGHT, WIDTH)])
    x = torch.randn(1, *policy.latent_shape(), generator=torch.Generator().manual_seed(0))
    s = torch.tensor([0.7])
    with torch.no_grad():
        ours = policy(x, s, cond)

    fresh = tiny_policy()
    fresh.add_lora(LoraSettings(rank=4, alpha=8.0, targets="paper"))
    fresh.load_adapter(tmp_path / "adapter")
    with torch.no_grad():
        assert torch.allclose(fresh(x, s, cond), ours, atol=1e-6)

    # a stock pipeline reads the file as separate q/k/v LoRAs with equal A: the same function
    pipe = kontext_pipeline(tiny_components())
    pipe.load_lora_weights(tmp_path / "adapter")
    reloaded = FluxPolicy.from_components(transformer=pipe.transformer, options=tiny_options())
    with torch.no_grad():
        assert torch.allclose(reloaded(x, s, cond), ours, atol=1e-5)


def test_adapter_with_separate_qkv_downs_is_refused_by_a_paper_policy(tmp_path):
    policy = tiny_policy()
    policy.add_lora(LoraSettings(rank=4, targets="paper", init_weights=False))
    state = policy.adapter_state_dict()
    key = "transformer_blocks.0.attn.to_k.lora_A.weight"
    state[key] = state[key] + 1.0
    with pytest.raises(ValueError, match=r"to_q, .*to_k, .*to_v"):
        policy.load_adapter_state_dict(state)


def test_unknown_preset_is_named():
    policy = tiny_policy()
    with pytest.raises(ValueError, match="no LoRA preset 'papr'.*paper, diffusers"):
        policy.add_lora(LoraSettings(targets="papr"))
