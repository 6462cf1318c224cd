"""What a synergy study is: arms x seeds of one base training config, as plain data.

A study trains the same base config (``base``) under several *arms*, each a list of config
overrides (``advantage.strategy=linear advantage.schedule=fixed`` for naive GRPO, ...), once
per seed, and compares the arms on held-out items. Every run is an ordinary ``cgrpo train``
run directory, so anything a run can do (another backend, other rewards, several GPUs through
``launcher``) a study can do too.

Study files are YAML (``configs/study/toy.yaml``)::

    base: ../toy.yaml              # training preset; relative paths: from this file
    overrides: [train.steps=120]   # applied to every run
    baseline: naive                # the arm the others are compared with
    seeds: [0, 1, 2]
    arms:
      naive: [advantage.strategy=linear, advantage.schedule=fixed]
      sars+tdw: [advantage.strategy=sars, advantage.schedule=tdw]
    quick:                         # what --quick changes (tests check the machinery)
      seeds: [0, 1]
      overrides: [train.steps=2, eval.num_items=8]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cgrpo.config import ConfigError, option, parse
from cgrpo.config.train import read_yaml

__all__ = ["QuickPreset", "StudyConfig", "StudyRun", "load_study", "plan_runs"]

_ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class QuickPreset:
    """What ``--quick`` replaces: fewer seeds, and overrides appended to every run."""

    seeds: list[int] = option(default_factory=lambda: [0, 1], help="seeds of a quick study")
    overrides: list[str] = option(
        default_factory=list, help="overrides appended to every run of a quick study"
    )


@dataclass
class StudyConfig:
    """A study: one base training config, arms of overrides, seeds."""

    base: str = option("", "training config preset every run starts from (YAML path)")
    overrides: list[str] = option(
        default_factory=list, help="config overrides applied to every run (the shared budget)"
    )
    arms: dict[str, list[str]] = option(
        default_factory=dict, help="arm name -> config overrides that define the arm"
    )
    baseline: str = option("", "arm the others are compared with (paired differences)")
    seeds: list[int] = option(default_factory=lambda: [0, 1, 2], help="seeds run for every arm")
    launcher: list[str] = option(
        default_factory=list,
        help="command that runs `cgrpo` for each run, e.g. [accelerate, launch, "
        "--num_processes, '8', -m, cgrpo.cli]; empty = this Python, one process",
    )
    identity_metric: str = option("", "x axis of the Pareto plot (default: the identity reward)")
    prompt_metric: str = option("", "y axis of the Pareto plot (default: the prompt reward)")
    quick: QuickPreset = option(default_factory=QuickPreset, help="the --quick preset")

    def validate(self, prefix: str = "") -> None:
        where = f"{prefix}." if prefix else ""
        if not self.base:
            raise ConfigError(f"{where}base", self.base, "name the training config preset")
        if len(self.arms) < 1:
            raise ConfigError(f"{where}arms", self.arms, "give at least one arm")
        for name, overrides in self.arms.items():
            if not _ARM_NAME.match(name):
                raise ConfigError(
                    f"{where}arms.{name}", name, "arm names use letters, digits and _ . + -"
                )
            for item in overrides:
                _check_override(f"{where}arms.{name}", item)
        for item in self.overrides:
            _check_override(f"{where}overrides", item)
        if self.baseline and self.baseline not in self.arms:
            raise ConfigError(
                f"{where}baseline", self.baseline, f"choose one of {', '.join(self.arms)}"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"{where}seeds", self.seeds, "give distinct seeds")
        if any(s < 0 for s in self.seeds):
            raise ConfigError(f"{where}seeds", self.seeds, "seeds must be >= 0")

    @property
    def reference_arm(self) -> str:
        """The baseline, or the first arm when none is named."""
        return self.baseline or next(iter(self.arms))


def _check_override(key: str, item: Any) -> None:
    if not isinstance(item, str) or "=" not in item or item.startswith("="):
        raise ConfigError(key, item, "each override is a string key.sub=value")
    if item.split("=", 1)[0].strip() in ("seed", "--output"):
        raise ConfigError(key, item, "the study sets seed and the run directory itself")


@dataclass(frozen=True)
class StudyRun:
    """One training run of a study: an arm at a seed, with every override it gets."""

    arm: str
    seed: int
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.arm}/seed-{self.seed}"


def load_study(
    path: str | Path,
    *,
    quick: bool = False,
    arms: list[str] | None = None,
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
) -> StudyConfig:
    """Read a study file; ``quick`` applies its quick preset; ``arms``/``seeds`` select,
    ``overrides`` are appended to every run. The base path resolves against the file."""
    path = Path(path)
    data = read_yaml(path)
    study = parse(StudyConfig, data, "study")
    base = Path(study.base).expanduser()
    if not base.is_absolute():
        base = path.parent / base
    if not base.is_file():
        raise ConfigError("study.base", study.base, f"no training config at {base}")
    study.base = str(base)
    if quick:
        study.seeds = list(study.quick.seeds)
        study.overrides = [*study.overrides, *study.quick.overrides]
    if seeds is not None:
        study.seeds = list(seeds)
    if arms is not None:
        unknown = [a for a in arms if a not in study.arms]
        if unknown:
            raise ConfigError("--arms", ",".join(unknown), f"choose from {', '.join(study.arms)}")
        study.arms = {a: study.arms[a] for a in arms}
        if study.baseline not in study.arms:
            study.baseline = ""
    if overrides:
        study.overrides = [*study.overrides, *overrides]
    study.validate("study")
    return study


def plan_runs(study: StudyConfig) -> list[StudyRun]:
    """Every (arm, seed) run, seed-major so that a partial study covers all arms evenly."""
    return [
        StudyRun(arm, seed, (*study.overrides, *arm_overrides, f"seed={seed}"))
        for seed in study.seeds
        for arm, arm_overrides in study.arms.items()
    ]
