"""train.offload_rewards: reward models wait on the CPU and visit the device only to score."""

from __future__ import annotations

import torch

from cgrpo.training import Trainer


def test_offloaded_rewards_move_to_the_device_only_while_scoring(tiny_config, tmp_path):
    trainer = Trainer(tiny_config("train.offload_rewards=true"), tmp_path / "run")
    events: list[tuple[str, str]] = []
    for name, reward in trainer.scorer.rewards.items():
        assert reward.device == torch.device("cpu")
        to, offload, score = reward.to, reward.offload, reward.score

        def logged_to(device, name=name, to=to):
            events.append((name, f"to {torch.device(device).type}"))
            return to(device)

        def logged_offload(name=name, offload=offload):
            events.append((name, "offload"))
            offload()

        def logged_score(request, name=name, score=score, reward=reward):
            events.append((name, f"score on {reward.device.type}"))
            return score(request)

        reward.to, reward.offload, reward.score = logged_to, logged_offload, logged_score
    rollout = trainer.sample(0)
    trainer.score(rollout)
    device = trainer.device.type
    expected = []
    for name in trainer.scorer.rewards:
        # offload() itself moves the reward with to("cpu")
        expected += [(name, f"to {device}"), (name, f"score on {device}"), (name, "offload")]
        expected += [(name, "to cpu")]
    assert events == expected
    assert all(r.device == torch.device("cpu") for r in trainer.scorer.rewards.values())


def test_resident_rewards_stay_on_the_device(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(), tmp_path / "run")
    assert trainer.scorer.offload_to is None
    assert all(r.device == trainer.device for r in trainer.scorer.rewards.values())
