"""configs/study/baselines.yaml: the arms of issue 19, each a config that loads."""

from __future__ import annotations

from pathlib import Path

from cgrpo.config import load_config
from cgrpo.study import load_study, plan_runs

REPO = Path(__file__).resolve().parents[2]

# arm -> (advantage.strategy, advantage.schedule)
ARMS = {
    "naive": ("linear", "fixed"),
    "sum-normalize": ("sum-normalize", "fixed"),
    "gdpo": ("gdpo", "fixed"),
    "mgda": ("mgda", "fixed"),
    "gate": ("gate", "fixed"),
    "sars": ("sars", "fixed"),
    "tdw": ("linear", "tdw"),
    "sars+tdw": ("sars", "tdw"),
    "sars+reversed-tdw": ("sars", "reversed-tdw"),
}


def test_every_arm_of_the_baselines_study_loads_as_named():
    study = load_study(REPO / "configs" / "study" / "baselines.yaml")
    assert list(study.arms) == list(ARMS)
    assert study.reference_arm == "naive" and len(study.seeds) >= 3
    runs = plan_runs(study)
    assert len(runs) == len(ARMS) * len(study.seeds)
    for run in runs[: len(ARMS)]:
        cfg = load_config(study.base, list(run.overrides))
        assert (cfg.advantage.strategy, cfg.advantage.schedule) == ARMS[run.arm], run.name
        if cfg.advantage.schedule == "fixed":
            assert cfg.advantage.fixed_prompt_weight == 0.5, run.name
        assert cfg.seed == run.seed


def test_the_quick_baselines_study_keeps_every_arm():
    study = load_study(REPO / "configs" / "study" / "baselines.yaml", quick=True)
    assert list(study.arms) == list(ARMS)
    for run in plan_runs(study)[: len(ARMS)]:
        assert load_config(study.base, list(run.overrides)).train.steps == 2
