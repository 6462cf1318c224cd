"""The FLUX speed levers (issue #12) give the plain path's log-probs and LoRA gradients.

Tiny random transformer (2 double + 2 single blocks), LoRA with random A and B so that
gradients and merged weights are not trivial; every policy is built from the same seeds, so
the weights are identical and only the lever differs.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

import dit_checks  # noqa: E402
from dit_checks import assert_same_grads  # noqa: E402
from flux_tiny import tiny_run_config, tiny_transformer  # noqa: E402

from cgrpo.policies import LoraSettings  # noqa: E402
from cgrpo.policies.flux import FluxPolicy  # noqa: E402
from cgrpo.policies.flux_blocks import evenly_spaced, transformer_blocks  # noqa: E402
from cgrpo.sampling import merged_lora  # noqa: E402

SIZE = 64  # no VAE: scale factor 8, so a 4 x 4 packed grid, 16 target + 16 reference tokens
GROUP, STEPS, ETA = 3, 4, 0.7


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def make_policy(targets: str | None = None, **options) -> FluxPolicy:
    opts = {"height": SIZE, "width": SIZE, "dtype": "fp32", **options}
    policy = FluxPolicy.from_components(
        transformer=tiny_transformer(0, num_layers=2, num_single_layers=2), options=opts
    )
    torch.manual_seed(1)
    policy.add_lora(LoraSettings(rank=4, alpha=8.0, targets=targets, init_weights=False))
    return policy


def condition(policy: FluxPolicy):
    g = torch.Generator().manual_seed(2)
    text, pooled = torch.randn(1, 6, 32, generator=g), torch.randn(1, 32, generator=g)
    refs = torch.randn(1, 16, 16, generator=g)
    return policy.condition_from_embeddings(text, pooled, refs, 1).repeat_interleave(GROUP)


def rollout(policy: FluxPolicy):
    return dit_checks.rollout(policy, condition(policy), steps=STEPS, eta=ETA, group=GROUP)


def recompute(policy: FluxPolicy, traj, micro_batch: int):
    """The update's pass (:func:`dit_checks.recompute`): log-probs ``[GROUP, STEPS - 1]`` and
    the LoRA gradients of ``sum(adv * log_prob)``."""
    return dit_checks.recompute(policy, condition(policy), traj, micro_batch, eta=ETA)


@pytest.fixture(scope="module")
def plain():
    """The plain path: no checkpointing, no compile, one pair per backward."""
    policy = make_policy()
    traj = rollout(policy)
    log_probs, grads = recompute(policy, traj, micro_batch=1)
    assert torch.allclose(log_probs, traj.log_probs[:, :-1], atol=1e-6)  # ratio 1
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    return traj, log_probs, grads


@pytest.mark.parametrize(
    "options,micro_batch",
    [
        ({"gradient_checkpointing": True}, 1),
        ({"gradient_checkpointing": True}, 4),  # larger checkpointed micro-batches
        ({"gradient_checkpointing": True, "checkpoint_fraction": 0.5}, 3),  # selective
        ({}, 4),  # no checkpointing, larger micro-batch
    ],
    ids=["checkpointed", "checkpointed-mb4", "selective-half-mb3", "no-checkpoint-mb4"],
)
def test_lever_gives_the_plain_log_probs_and_gradients(plain, options, micro_batch):
    traj, expected_lp, expected_grads = plain
    policy = make_policy(**options)
    log_probs, grads = recompute(policy, traj, micro_batch)
    assert torch.allclose(log_probs, expected_lp, atol=1e-5)
    assert_same_grads(grads, expected_grads)


def test_compiled_blocks_give_the_plain_result_each_block_one_graph(plain):
    """Regional compile, traced by dynamo + AOT autograd (the aot_eager backend: the graph
    capture inductor would compile, without generating code, which takes minutes on a CPU),
    inside checkpointing as it runs in training."""
    from torch._dynamo.utils import counters

    traj, expected_lp, expected_grads = plain
    policy = make_policy(compile_blocks="aot_eager", gradient_checkpointing=True)
    assert all(b._compiled_call_impl is not None for b in transformer_blocks(policy.denoiser))
    counters.clear()
    log_probs, grads = recompute(policy, traj, micro_batch=3)
    assert counters["stats"]["unique_graphs"] >= 2  # at least one per block class
    assert not counters["graph_break"]  # each block, LoRA layers included, is one graph
    assert torch.allclose(log_probs, expected_lp, atol=1e-5)
    assert_same_grads(grads, expected_grads)


def count_block_calls(policy: FluxPolicy) -> list[int]:
    """Forward calls of each block during one forward + backward (recomputation calls a
    checkpointed block a second time)."""
    blocks = transformer_blocks(policy.denoiser)
    calls = [0] * len(blocks)
    hooks = [
        b.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, b in enumerate(blocks)
    ]
    policy.train()
    x = torch.randn(2, *policy.latent_shape())
    policy(x, torch.tensor([0.9, 0.4]), condition(policy).select([0, 1])).square().sum().backward()
    for h in hooks:
        h.remove()
    return calls


@pytest.mark.parametrize(
    "options,expected",
    [
        ({}, [1, 1, 1, 1]),
        ({"gradient_checkpointing": True}, [2, 2, 2, 2]),
        ({"gradient_checkpointing": True, "checkpoint_fraction": 0.5}, [1, 2, 1, 2]),
        ({"gradient_checkpointing": True, "checkpoint_fraction": 0.25}, [1, 1, 1, 2]),
    ],
)
def test_selective_checkpointing_recomputes_only_the_chosen_blocks(options, expected):
    assert count_block_calls(make_policy(**options)) == expected


def test_evenly_spaced_picks_floor_of_the_share():
    assert evenly_spaced(57, 1.0) == list(range(57))
    assert evenly_spaced(57, 0.5) == list(range(1, 57, 2))
    assert len(evenly_spaced(57, 0.25)) == 14 and len(evenly_spaced(57, 0.75)) == 42
    assert evenly_spaced(4, 0.1) == []
    picked = evenly_spaced(57, 1 / 3)
    assert len(picked) == 19 and all(b - a == 3 for a, b in zip(picked, picked[1:]))


# ----------------------------------------------------------------------------- merged sampling
@pytest.mark.parametrize("targets", [None, "paper"])  # paper: q/k/v share one A
def test_merged_sampling_matches_unmerged_and_puts_the_weights_back(targets):
    policy = make_policy(targets)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    plain_traj = rollout(policy)
    with merged_lora(policy):
        assert not any(p.data_ptr() == before[n].data_ptr() for n, p in policy.named_parameters())
        merged_traj = rollout(policy)
    assert torch.allclose(merged_traj.latents, plain_traj.latents, atol=1e-5)
    assert torch.allclose(merged_traj.log_probs, plain_traj.log_probs, atol=1e-5)
    with pytest.raises(RuntimeError, match="inside"), merged_lora(policy):
        raise RuntimeError("failure inside the merged block")
    for name, value in policy.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(p.requires_grad for p in policy.trainable_parameters())
    assert torch.equal(rollout(policy).latents, plain_traj.latents)  # the adapter is live again


def test_merged_bf16_sampling_never_drifts_and_errs_far_less_than_bf16_itself():
    """A bf16 base: merging rounds W + BA to bf16 once per sampling pass. The base weights must
    come back bit-identical every time (merge + unmerge in place would drift by an ulp per
    cycle), and the first update's log-probs (recomputed unmerged) must differ from the merged
    sampler's by far less than bf16 itself differs from float32."""
    policy = make_policy(dtype="bf16")
    base = {n: p.clone() for n, p in policy.named_parameters() if "lora_" not in n}
    for _ in range(3):
        with merged_lora(policy):
            merged_traj = rollout(policy)
    for name, p in policy.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base[name]), name
    unmerged_lp, _ = recompute(policy, merged_traj, micro_batch=GROUP)
    merged_dev = (unmerged_lp - merged_traj.log_probs[:, :-1]).abs().max()

    reference = make_policy()  # the same weights in float32
    reference.load_state_dict({k: v.float() for k, v in policy.state_dict().items()})
    fp32_lp, _ = recompute(reference, merged_traj, micro_batch=GROUP)
    bf16_dev = (unmerged_lp - fp32_lp).abs().max()
    assert 0 < merged_dev < 0.2 * bf16_dev


# ----------------------------------------------------------------------------- through the trainer
def test_trainer_with_every_lever_keeps_the_first_ratio_at_one_and_never_reencodes(
    tmp_path, monkeypatch
):
    """bf16 base, merged sampling, selective checkpointing, micro-batch 3, two steps (the second
    samples with a trained, non-zero LoRA). The update reads text embeddings and reference
    latents from the rollout: the encoders and the VAE encoder are never called in it."""
    import cgrpo.training.sample_stage as sample_stage
    import cgrpo.training.trainer as trainer_module
    from cgrpo.config.train import config_from_dict

    raw = tiny_run_config(tmp_path)
    raw["model"]["options"].update(
        dtype="bf16", gradient_checkpointing=True, checkpoint_fraction=0.5
    )
    raw["sampling"]["merge_lora"] = True
    raw["train"]["lr"] = 0.1  # a visible LoRA after one step
    trainer = trainer_module.Trainer(config_from_dict(raw), tmp_path / "run")
    policy = trainer.policy
    base = {n: p.clone() for n, p in policy.named_parameters() if "lora_" not in n}
    calls = []

    def forbid(name):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called in the update")

        return call

    update = trainer.update

    def guarded_update(rollout, adv, step):
        encode, vae_encode = policy._text.encode, policy.vae.encode
        policy._text.encode, policy.vae.encode = forbid("text encoders"), forbid("VAE encoder")
        try:
            return update(rollout, adv, step)
        finally:
            policy._text.encode, policy.vae.encode = encode, vae_encode

    trainer.update = guarded_update
    merges = []
    monkeypatch.setattr(sample_stage, "merged_lora", lambda p: merges.append(p) or merged_lora(p))
    metrics = [trainer.train_step(step) for step in range(2)]
    assert not calls and merges == [policy, policy]
    # bf16 rounding of W + BA at this size gives ~2e-4; sampling without the adapter, 2e-3
    for m in metrics:
        assert m["first_update_ratio_dev"] < 1e-3 and m["grad_norm"] > 0
    for name, p in policy.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base[name]), name
    assert all(float(p.detach().abs().sum()) > 0 for p in policy.trainable_parameters())
