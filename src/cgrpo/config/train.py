"""The training configuration: one documented dataclass tree, loaded from YAML.

The root :class:`Config` and its checks across sections live here, with loading and
overrides; the sections themselves are in :mod:`cgrpo.config.sections`.

``cgrpo train --config configs/toy.yaml train.steps=50 sampling.group_size=12`` loads the
preset, applies dotted overrides (values parsed as YAML), checks every field, and saves
the resolved config into the run directory. Backend, dataset and reward ``options`` are
checked by the component they belong to, with keys named in full
(``model.options.path``, ``rewards.hpsv3.options.path``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cgrpo.config.schema import ConfigError, option, parse, to_dict
from cgrpo.config.sections import (
    AdvantageConfig,
    DataConfig,
    EvalConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    RewardSpec,
    SamplingConfig,
)


@dataclass
class Config:
    seed: int = option(0, "global seed; every random draw derives from (seed, step)")
    model: ModelConfig = option(default_factory=ModelConfig, help="generator and LoRA")
    data: DataConfig = option(default_factory=DataConfig, help="training prompts and references")
    rewards: list[RewardSpec] = option(
        default_factory=lambda: [
            RewardSpec("toy-prompt", "prompt"),
            RewardSpec("toy-id", "identity"),
        ],
        help="rewards and their roles",
    )
    sampling: SamplingConfig = option(default_factory=SamplingConfig, help="rollouts")
    advantage: AdvantageConfig = option(default_factory=AdvantageConfig, help="advantages")
    train: OptimConfig = option(default_factory=OptimConfig, help="optimisation")
    logging: LoggingConfig = option(default_factory=LoggingConfig, help="outputs")
    eval: EvalConfig = option(default_factory=EvalConfig, help="held-out before/after check")

    def validate(self, prefix: str = "") -> None:
        trained = [r for r in self.rewards if r.role != "monitor"]
        if not trained:
            raise ConfigError(
                "rewards",
                [r.name for r in self.rewards],
                "need at least one reward with role prompt or identity",
            )
        names = [r.name for r in self.rewards]
        dup = sorted(
            {
                n
                for n in names
                if names.count(n) > 1 and not any(r.column for r in self.rewards if r.name == n)
            }
        )
        if dup:
            raise ConfigError("rewards", dup, "listed twice; give each entry its own `column`")
        self._check_strategy()
        if (
            self.train.timestep_selection == "window"
            and self.train.window_size > self.sampling.num_steps - 1
        ):
            raise ConfigError(
                "train.window_size",
                self.train.window_size,
                f"must be <= sampling.num_steps - 1 = {self.sampling.num_steps - 1}",
            )

    def _check_strategy(self) -> None:
        from cgrpo.grpo.stage import check_strategy  # the GRPO math only when checking

        try:
            check_strategy(self.advantage.strategy, [r.role for r in self.trained_rewards])
        except ValueError as e:
            raise ConfigError("advantage.strategy", self.advantage.strategy, str(e)) from None
        if self.advantage.strategy == "mgda" and self.train.mixed_precision == "fp16":
            raise ConfigError(
                "train.mixed_precision",
                "fp16",
                "advantage.strategy=mgda takes its per-reward gradients without a loss "
                "scaler; use bf16 or no",
            )

    def validate_for_training(self) -> None:
        """Settings that load fine (for sampling or evaluation) but cannot train correctly."""
        if self.model.lora.dropout > 0:
            raise ConfigError(
                "model.lora.dropout",
                self.model.lora.dropout,
                "must be 0 for training (dropout makes the update's log-probs differ from "
                "the sampled ones, so the ratio is not 1 on the first update)",
            )
        if self.sampling.noise_level == 0:
            raise ConfigError(
                "sampling.noise_level",
                self.sampling.noise_level,
                "must be > 0 for training (a deterministic sampler has no log-probability "
                "to train)",
            )
        batch = self.sampling.groups_per_step * self.sampling.group_size
        if batch % self.train.updates_per_step:
            divisors = ", ".join(str(d) for d in range(1, batch + 1) if batch % d == 0)
            raise ConfigError(
                "train.updates_per_step",
                self.train.updates_per_step,
                "must divide the per-process batch sampling.groups_per_step * "
                f"sampling.group_size = {batch} (choose from {divisors})",
            )

    @property
    def trained_rewards(self) -> list[RewardSpec]:
        """Rewards the advantage uses, prompt role first (column order of the advantage)."""
        return [r for r in self.rewards if r.role == "prompt"] + [
            r for r in self.rewards if r.role == "identity"
        ]


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, ".".join(parts[: i + 1]))]
            continue
        if part not in node or node[part] is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict | list):
            raise ConfigError(
                ".".join(parts[: i + 1]), node, f"is not a section; cannot set {dotted}"
            )
    last = parts[-1]
    if isinstance(node, list):
        idx = _list_index(node, last, dotted)
        node[idx] = value
    else:
        node[last] = value


def _list_index(node: list, part: str, key: str) -> int:
    if part.isdigit() and int(part) < len(node):
        return int(part)
    # rewards may be addressed by name: rewards.toy-id.weight=2
    for i, item in enumerate(node):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    raise ConfigError(key, part, f"no list item with that index or name (have {len(node)})")


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """``["a.b=3", "c=[1, 2]"]`` -> ``[("a.b", 3), ("c", [1, 2])]`` (values parsed as YAML)."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, None, "overrides look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


def _merge(base: Any, update: Any) -> Any:
    """Mappings merge key by key; anything else in ``update`` replaces ``base``."""
    if isinstance(base, dict) and isinstance(update, dict):
        out = dict(base)
        for k, v in update.items():
            out[k] = _merge(base.get(k), v) if k in base else v
        return out
    return update


def config_from_dict(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then ``data`` (a preset), then dotted ``overrides``; checked strictly."""
    data = _merge(to_dict(Config()), dict(data or {}))
    for key, value in parse_overrides(overrides):
        _set_dotted(data, key, value)
    return parse(Config, data)


def read_yaml(path: str | Path, flag: str = "--config") -> dict[str, Any]:
    """A YAML mapping from ``path``; errors name ``flag`` (the option that gave the file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(flag, str(path), "file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise ConfigError(
            "--config", str(path), f"not UTF-8 text (byte {e.object[e.start]:#04x} on line {line})"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(flag, str(path), f"not valid YAML ({e})".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ConfigError(flag, str(path), "must be a YAML mapping of sections")
    return data


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a preset (or the defaults when ``path`` is None) and apply overrides."""
    return config_from_dict(read_yaml(path) if path else {}, overrides)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


__all__ = [
    "Config",
    "load_config",
    "config_from_dict",
    "parse_overrides",
    "save_config",
    "read_yaml",
]
