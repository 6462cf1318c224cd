"""The trainer end to end on the CPU: outputs, invariants, resume, interruption."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from cgrpo.evaluation.heldout import load_held_out
from cgrpo.grpo import tdw_weights
from cgrpo.sampling import initial_noise, sample_trajectory
from cgrpo.training import Interrupted, Trainer
from cgrpo.training.checkpoint import list_checkpoints


def adapter(run_dir, name="final"):
    return load_file(str(run_dir / name / "adapter.safetensors"))


def test_three_steps_write_a_complete_run(tiny_config, tmp_path):
    cfg = tiny_config("eval.before_after=true", "eval.num_items=4", "eval.num_steps=3")
    summary = Trainer(cfg, tmp_path / "run").train()
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in (
        "reward/toy-prompt/mean",
        "reward/toy-id/std",
        "adv/toy-id/abs_mean",
        "conflict_rate",
        "loss",
        "ratio_mean",
        "clip_fraction",
        "kl",
        "grad_norm",
        "lr",
        "time/step",
    ):
        assert key in rows[0], key
    # recomputed log-probs equal the sampled ones before the first optimizer step
    assert all(r["first_update_ratio_dev"] < 1e-5 for r in rows)
    assert (run / "config.yaml").is_file() and (run / "summary.md").is_file()
    assert any((run / "tensorboard").iterdir())
    assert len(list((run / "samples").glob("*.png"))) == 3
    assert [p.name for p in list_checkpoints(run)] == ["step-000002", "step-000003"]
    # config rewards + the toy world's ground-truth measures, per item in heldout/<phase>/
    assert set(summary["before"]["means"]) == {
        "toy-prompt",
        "toy-id",
        "gt-colour",
        "gt-pattern",
        "gt-shape",
        "gt-scene",
    }
    assert "Held-out rewards" in (run / "summary.md").read_text()
    assert (run / "before_after.png").is_file()
    held = load_held_out(run)
    assert len(held.after) == 4 and [r["key"] for r in held.before] == [
        r["key"] for r in held.after
    ]


def test_only_lora_parameters_change(tiny_config, tmp_path):
    trainer = Trainer(tiny_config("train.steps=1"), tmp_path / "run")
    policy = trainer.policy
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    trainer.train_step(0)
    for n, p in policy.named_parameters():
        if "lora_" in n:
            continue
        assert p.grad is None, n
        assert torch.equal(p, before[n]), n
    changed = [
        n for n, p in policy.named_parameters() if "lora_B" in n and not torch.equal(p, before[n])
    ]
    assert changed


def test_resume_equals_straight_run(tiny_config, tmp_path):
    straight = tmp_path / "straight"
    Trainer(tiny_config("train.steps=4"), straight).train()
    split = tmp_path / "split"
    Trainer(tiny_config("train.steps=2"), split).train()
    resumed = Trainer(tiny_config("train.steps=4"), split, resume=True)
    assert resumed.step == 2
    resumed.train()
    a, b = adapter(straight), adapter(split)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    lines = (split / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]


def test_micro_batch_is_a_memory_knob_only(tiny_config, tmp_path):
    Trainer(tiny_config("train.steps=2", "train.micro_batch=1"), tmp_path / "a").train()
    Trainer(tiny_config("train.steps=2", "train.micro_batch=64"), tmp_path / "b").train()
    a, b = adapter(tmp_path / "a"), adapter(tmp_path / "b")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_sampling_does_not_depend_on_chunking(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(), tmp_path / "run")
    policy = trainer.policy
    ex = trainer.examples_for_step(0)
    cond = policy.encode([e.prompt for e in ex], [e.references for e in ex]).repeat_interleave(3)
    noise = initial_noise(policy, 6, torch.Generator().manual_seed(0), group_size=3)
    assert torch.equal(noise[0], noise[2]) and not torch.equal(noise[0], noise[3])
    runs = [
        sample_trajectory(
            policy,
            cond,
            noise,
            trainer.sigmas,
            noise_level=0.7,
            generator=torch.Generator().manual_seed(1),
            chunk_size=c,
        )
        for c in (0, 4)
    ]
    torch.testing.assert_close(runs[0].latents, runs[1].latents)
    torch.testing.assert_close(runs[0].log_probs, runs[1].log_probs)


def test_tdw_weight_is_taken_at_the_trained_step(tiny_config, tmp_path):
    trainer = Trainer(tiny_config("sampling.num_steps=8"), tmp_path / "run")
    rollout = trainer.sample(0)
    adv = trainer.advantages(rollout, trainer.score(rollout), 0)
    w_prompt, w_id = tdw_weights(adv.timesteps, 8)
    torch.testing.assert_close(adv.weights[..., 0], w_prompt)
    torch.testing.assert_close(adv.weights[..., 1], w_id)
    assert adv.combined.shape == adv.timesteps.shape
    # group-normalised advantages are centred within every group
    sums = adv.per_reward.reshape(-1, 3, adv.per_reward.shape[1]).sum(dim=1)
    torch.testing.assert_close(sums, torch.zeros_like(sums), atol=1e-5, rtol=0)


def test_last_step_is_never_stochastic(tiny_config, tmp_path):
    # the last step is never trained, so its noise would only degrade the scored images
    trainer = Trainer(tiny_config("sampling.num_steps=5"), tmp_path / "run")
    rollout = trainer.sample(0)
    assert rollout.trajectory.sde_steps.tolist() == [True, True, True, True, False]
    assert (rollout.trajectory.log_probs[:, -1] == 0).all()
    assert (rollout.trajectory.log_probs[:, :-1] != 0).all()


def test_window_trains_only_inside_the_window(tiny_config, tmp_path):
    trainer = Trainer(
        tiny_config(
            "train.timestep_selection=window", "train.window_size=2", "sampling.num_steps=5"
        ),
        tmp_path / "run",
    )
    rollout = trainer.sample(0)
    assert rollout.trajectory.sde_steps.tolist() == [True, True, False, False, False]
    assert (rollout.trajectory.log_probs[:, 2:] == 0).all()
    adv = trainer.advantages(rollout, trainer.score(rollout), 0)
    assert adv.timesteps.unique().tolist() == [0, 1]


def test_interrupt_saves_a_checkpoint(tiny_config, tmp_path, monkeypatch):
    trainer = Trainer(tiny_config("train.steps=5", "logging.checkpoint_every=0"), tmp_path / "run")
    real = trainer.train_step

    def flaky(step):
        if step == 2:
            raise KeyboardInterrupt
        return real(step)

    monkeypatch.setattr(trainer, "train_step", flaky)
    with pytest.raises(Interrupted, match="--resume"):
        trainer.train()
    found = list_checkpoints(tmp_path / "run")
    assert [p.name for p in found] == ["step-000002"]
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))
    assert Trainer(tiny_config("train.steps=5"), tmp_path / "run", resume=True).step == 2


@pytest.mark.parametrize("strategy", ["linear", "min", "max", "harmonic", "product", "product-2w"])
def test_every_strategy_trains(tiny_config, tmp_path, strategy):
    summary = Trainer(
        tiny_config(
            "train.steps=1",
            f"advantage.strategy={strategy}",
            "logging.sample_every=0",
            "logging.tensorboard=false",
        ),
        tmp_path / strategy,
    ).train()
    assert torch.isfinite(torch.tensor(summary["last_metrics"]["loss"]))


def test_kl_to_the_base_is_logged(tiny_config, tmp_path):
    summary = Trainer(tiny_config("train.steps=2", "train.kl_coef=0.1"), tmp_path / "run").train()
    assert summary["last_metrics"]["kl"] > 0
