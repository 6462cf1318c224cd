"""The recipes of docs/ARCHITECTURE.md, each built from its file and trained for one step.

Each ``recipe_*.py`` here is what a user writes: one small file whose last line registers a
reward, a backend, an advantage strategy or a weight schedule, with no edit to cgrpo. A test
loads the file (which registers it), names it in the embedded default config (the tiny one of
tests/conftest.py) and trains one step. The registries are restored afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cgrpo.config import sections
from cgrpo.config.schema import ConfigError
from cgrpo.grpo import advantages, compute_advantages, stage, weighting
from cgrpo.policies import POLICIES
from cgrpo.rewards import REWARDS
from cgrpo.training import Trainer

HERE = Path(__file__).resolve().parent


@pytest.fixture
def load_recipe(monkeypatch):
    """``load_recipe("reward")`` runs recipe_reward.py; every registry is restored after."""
    live = [
        REWARDS._items,
        POLICIES._items,
        advantages.ADVANTAGE_STRATEGIES,
        stage.STRATEGIES,
        weighting.WEIGHT_SCHEDULES,
        sections.ADVANTAGE_STRATEGIES,
        sections.WEIGHT_SCHEDULES,
    ]
    saved = [c.copy() for c in live]

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"recipe_{name}", HERE / f"recipe_{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        return module

    yield load
    for container, before in zip(live, saved, strict=True):
        if isinstance(container, dict):
            container.clear()
            container.update(before)
        else:
            container[:] = before


def train_one_step(tiny_config, run_dir: Path, *overrides: str):
    trainer = Trainer(tiny_config("train.steps=1", *overrides), run_dir)
    trainer.train()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]
    return trainer, rows[0]


def lora_b_moved(run_dir: Path) -> bool:
    adapter = load_file(str(run_dir / "final" / "adapter.safetensors"))
    return any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)


def test_add_a_reward(load_recipe, tiny_config, tmp_path):
    recipe = load_recipe("reward")
    assert REWARDS.get("brightness") is recipe.build
    rewards = "rewards=[{name: brightness, role: prompt}, {name: toy-id, role: identity}]"
    trainer, row = train_one_step(tiny_config, tmp_path / "run", rewards)
    assert isinstance(trainer.scorer.rewards["brightness"], recipe.Brightness)
    assert 0.0 <= row["reward/brightness/mean"] <= 1.0
    assert row["reward/brightness/std"] > 0  # a group's samples differ, so GRPO has a signal
    assert "adv/brightness/abs_mean" in row and lora_b_moved(tmp_path / "run")


def test_add_a_backend(load_recipe, tiny_config, tmp_path):
    recipe = load_recipe("backend")
    trainer, row = train_one_step(
        tiny_config, tmp_path / "run", "model.backend=tiny-mlp", "model.options={size: 8}"
    )
    assert isinstance(trainer.policy, recipe.TinyMLP) and trainer.policy.size == 8
    assert row["first_update_ratio_dev"] < 1e-5  # log-probs recomputed = those sampled
    assert lora_b_moved(tmp_path / "run")


def test_add_an_advantage_strategy(load_recipe, tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="advantage.strategy"):
        tiny_config("advantage.strategy=prompt-first")  # unknown before the recipe runs
    recipe = load_recipe("strategy")
    rewards = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])
    adv = compute_advantages(
        rewards, [0.5, 0.5], "prompt-first", group_size=3, roles=["prompt", "identity"]
    )
    z = (rewards - rewards.mean(0)) / rewards.std(0)
    assert torch.allclose(adv, z[:, 0] + 0.1 * z[:, 1], atol=1e-6)

    calls = []
    advantages.ADVANTAGE_STRATEGIES["prompt-first"] = lambda *a: (
        calls.append(1) or (recipe.prompt_first(*a))
    )
    train_one_step(tiny_config, tmp_path / "run", "advantage.strategy=prompt-first")
    assert calls and lora_b_moved(tmp_path / "run")


def test_add_a_weight_schedule(load_recipe, tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="advantage.schedule"):
        tiny_config("advantage.schedule=step")
    recipe = load_recipe("schedule")
    trainer, _ = train_one_step(tiny_config, tmp_path / "run", "advantage.schedule=step")
    assert isinstance(trainer.schedule, recipe.StepSchedule)
    steps = torch.tensor([[0, 1, 2, 3]])  # num_steps = 4 in the tiny config
    weights = trainer._reward_weights(steps)  # [1, T, K]: prompt column first
    assert weights[0, :, 0].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert weights[0, :, 1].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert lora_b_moved(tmp_path / "run")


def test_registering_a_taken_name_or_a_non_dataclass_schedule_fails(load_recipe):
    with pytest.raises(ValueError, match="'sars' is already registered"):
        stage.register_strategy("sars", advantages.ADVANTAGE_STRATEGIES["linear"])
    with pytest.raises(ValueError, match="'tdw' is already registered"):
        weighting.register_weight_schedule("tdw", weighting.FixedSchedule)
    with pytest.raises(ValueError, match="must be a dataclass"):
        weighting.register_weight_schedule("plain", lambda step, n: step)
    assert "plain" not in sections.WEIGHT_SCHEDULES
