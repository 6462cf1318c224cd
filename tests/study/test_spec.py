"""Study files: parsing, the quick preset, selections, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cgrpo.config import ConfigError
from cgrpo.study import load_study, plan_runs

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, data: dict) -> Path:
    (tmp_path / "base.yaml").write_text("seed: 0\n")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_repo_study_file_has_the_four_arms_of_the_issue():
    study = load_study(REPO / "configs" / "study" / "toy.yaml")
    assert set(study.arms) >= {"naive", "sars", "tdw", "sars+tdw"}
    assert study.reference_arm == "naive"
    assert len(study.seeds) >= 3
    naive = dict(o.split("=", 1) for o in study.arms["naive"])
    assert naive["advantage.strategy"] == "linear" and naive["advantage.schedule"] == "fixed"
    both = dict(o.split("=", 1) for o in study.arms["sars+tdw"])
    assert both["advantage.strategy"] == "sars" and both["advantage.schedule"] == "tdw"


def test_quick_preset_selection_and_overrides(tmp_path):
    path = write(
        tmp_path,
        {
            "base": "base.yaml",
            "overrides": ["train.steps=10"],
            "arms": {"a": ["advantage.strategy=linear"], "b": []},
            "baseline": "a",
            "seeds": [0, 1, 2],
            "quick": {"seeds": [5], "overrides": ["train.steps=1"]},
        },
    )
    study = load_study(path, quick=True, overrides=["sampling.group_size=4"])
    assert study.seeds == [5]
    assert study.base == str(tmp_path / "base.yaml")
    runs = plan_runs(study)
    assert [r.name for r in runs] == ["a/seed-5", "b/seed-5"]
    # later overrides win: the quick budget after the study's, the run's seed last
    assert runs[0].overrides == (
        "train.steps=10",
        "train.steps=1",
        "sampling.group_size=4",
        "advantage.strategy=linear",
        "seed=5",
    )
    only_b = load_study(path, arms=["b"], seeds=[3, 4])
    assert list(only_b.arms) == ["b"] and only_b.seeds == [3, 4]
    assert only_b.reference_arm == "b"  # the baseline was not selected


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"base": "missing.yaml"}, "study.base"),
        ({"arms": {}}, "study.arms"),
        ({"arms": {"bad name": []}}, "study.arms.bad name"),
        ({"arms": {"a": ["no-equals-sign"]}}, "study.arms.a"),
        ({"arms": {"a": ["seed=3"]}}, "study.arms.a"),
        ({"baseline": "nope"}, "study.baseline"),
        ({"seeds": [1, 1]}, "study.seeds"),
        ({"unknown": 1}, "study.unknown"),
    ],
)
def test_bad_study_files_name_the_key(tmp_path, change, key):
    data = {"base": "base.yaml", "arms": {"a": []}, **change}
    with pytest.raises(ConfigError) as err:
        load_study(write(tmp_path, data))
    assert err.value.key == key


def test_unknown_selected_arm_lists_the_choices(tmp_path):
    path = write(tmp_path, {"base": "base.yaml", "arms": {"a": [], "b": []}})
    with pytest.raises(ConfigError, match="choose from a, b"):
        load_study(path, arms=["c"])
