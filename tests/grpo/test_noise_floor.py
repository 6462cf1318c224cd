"""The noise floor: which groups keep a reward's advantage, by hand and in a training step."""

from __future__ import annotations

import json

import pytest
import torch

from cgrpo.config.schema import ConfigError
from cgrpo.config.sections import AdvantageConfig
from cgrpo.grpo import group_normalize
from cgrpo.grpo.noise_floor import (
    flatten_groups,
    floor_mask,
    floor_rewards,
    measured_noise,
    resolve_noise_floors,
)

# two groups of 3, two columns: group 0 spreads in column 0 (std 1) and barely in column 1
# (std 0.01); group 1 the other way round
REWARDS = torch.tensor(
    [
        [0.0, 0.50],
        [1.0, 0.51],
        [2.0, 0.52],
        [5.00, 0.0],
        [5.02, 2.0],
        [5.01, 4.0],
    ]
)


def test_floor_mask_by_hand():
    kept = floor_mask(REWARDS, 3, [0.1, 0.1])
    assert kept.tolist() == [[True, False], [False, True]]
    assert floor_mask(REWARDS, 3, [0.0, 0.0]).all()  # no floor keeps every group
    assert not floor_mask(REWARDS, 3, [5.0, 5.0]).any()
    assert floor_mask(REWARDS, 3, [1.0, 0.0]).tolist() == [[True, True], [False, True]]  # >=


def test_floor_mask_checks_its_inputs():
    with pytest.raises(ValueError, match="1 floors for 2 reward columns"):
        floor_mask(REWARDS, 3, [0.1])
    with pytest.raises(ValueError, match=">= 0"):
        floor_mask(REWARDS, 3, [-0.1, 0.1])
    with pytest.raises(ValueError, match="groups of 4"):
        floor_mask(REWARDS, 4, [0.1, 0.1])


def test_a_floored_group_gets_exactly_zero_advantage_from_that_reward_only():
    floored, metrics = floor_rewards(REWARDS, 3, ["p", "id"], torch.tensor([0.1, 0.1]))
    adv = group_normalize(floored, 3)
    before = group_normalize(REWARDS, 3)
    assert adv[3:, 0].eq(0).all() and adv[:3, 1].eq(0).all()
    torch.testing.assert_close(adv[:3, 0], before[:3, 0])  # kept groups are untouched
    torch.testing.assert_close(adv[3:, 1], before[3:, 1])
    assert metrics == {"noise_floor/p/kept": 0.5, "noise_floor/id/kept": 0.5}
    # the group keeps its mean: what tells it from other groups
    torch.testing.assert_close(floored[3:, 0], torch.full((3,), 5.01))


def test_no_floors_change_nothing():
    out, metrics = floor_rewards(REWARDS, 3, ["p", "id"], None)
    assert out is REWARDS and metrics == {}


def test_flatten_groups_checks_the_mask_shape():
    with pytest.raises(ValueError, match="does not match"):
        flatten_groups(REWARDS, torch.ones(3, 2, dtype=torch.bool), 3)


def write_preflight(path, noise):
    path.write_text(json.dumps({"rewards": {c: {"noise_std": v} for c, v in noise.items()}}))
    return str(path)


def test_floors_from_a_preflight_json_times_the_scale_and_explicit_overrides(tmp_path):
    src = write_preflight(tmp_path / "preflight.json", {"p": 0.1, "id": 0.02, "mon": 0.3})
    assert measured_noise(src) == {"p": 0.1, "id": 0.02, "mon": 0.3}
    adv = AdvantageConfig(noise_floor_from=src, noise_floor_scale=2.0)
    assert resolve_noise_floors(adv, ["p", "id"]).tolist() == pytest.approx([0.2, 0.04])
    adv = AdvantageConfig(noise_floor_from=src, noise_floor={"id": 0.5})
    assert resolve_noise_floors(adv, ["p", "id"]).tolist() == pytest.approx([0.2, 0.5])
    assert resolve_noise_floors(AdvantageConfig(noise_floor={"id": 0.5}), ["p", "id"]).tolist() == [
        0.0,
        0.5,
    ]
    assert resolve_noise_floors(AdvantageConfig(), ["p", "id"]) is None


def test_config_errors_name_the_key_and_the_columns(tmp_path):
    with pytest.raises(ConfigError, match=r"advantage\.noise_floor\.toy-prom.*choose from p, id"):
        resolve_noise_floors(AdvantageConfig(noise_floor={"toy-prom": 0.1}), ["p", "id"])
    with pytest.raises(ConfigError, match=r"advantage\.noise_floor\.p .*>= 0"):
        resolve_noise_floors(AdvantageConfig(noise_floor={"p": -1.0}), ["p", "id"])
    missing = str(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match="noise_floor_from.*file not found"):
        resolve_noise_floors(AdvantageConfig(noise_floor_from=missing), ["p"])
    other = write_preflight(tmp_path / "other.json", {"q": 0.1})
    with pytest.raises(ConfigError, match="no measured noise for trained column.* p"):
        resolve_noise_floors(AdvantageConfig(noise_floor_from=other), ["p"])
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a preflight.json"):
        resolve_noise_floors(AdvantageConfig(noise_floor_from=str(tmp_path / "bad.json")), ["p"])


def test_a_floor_above_every_spread_leaves_no_advantage_and_no_gradient(tiny_config, tmp_path):
    from cgrpo.training import Trainer

    cfg = tiny_config("train.steps=1", "advantage.noise_floor={toy-prompt: 100.0, toy-id: 100.0}")
    trainer = Trainer(cfg, tmp_path / "run")
    rollout = trainer.sample(0)
    adv = trainer.advantages(rollout, trainer.score(rollout), 0)
    assert adv.per_reward.eq(0).all() and adv.combined.eq(0).all()
    assert adv.noise_floor_kept == {
        "noise_floor/toy-prompt/kept": 0.0,
        "noise_floor/toy-id/kept": 0.0,
    }
    stats = trainer.update(rollout, adv, 0)
    assert stats["grad_norm"] == 0.0


def test_a_floor_on_one_reward_zeroes_only_its_advantage_and_is_logged(tiny_config, tmp_path):
    from cgrpo.training import Trainer

    cfg = tiny_config("train.steps=1", "advantage.noise_floor={toy-prompt: 100.0}")
    trainer = Trainer(cfg, tmp_path / "run")
    rollout = trainer.sample(0)
    rewards = trainer.score(rollout)
    adv = trainer.advantages(rollout, rewards, 0)
    assert adv.columns == ["toy-prompt", "toy-id"]
    assert adv.per_reward[:, 0].eq(0).all()
    expected = group_normalize(rewards.matrix(["toy-id"]), rollout.group_size)[:, 0]
    torch.testing.assert_close(adv.per_reward[:, 1], expected)
    trainer.train()
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["noise_floor/toy-prompt/kept"] == 0.0
    assert row["noise_floor/toy-id/kept"] == 1.0


def test_an_unknown_floor_column_stops_start_up_naming_it(tiny_config, tmp_path):
    from cgrpo.training import Trainer

    with pytest.raises(ConfigError, match=r"advantage\.noise_floor\.toy-prmpt .*toy-prompt"):
        Trainer(tiny_config("advantage.noise_floor={toy-prmpt: 0.1}"), tmp_path / "run")
