"""`cgrpo eval` end to end on the real DreamBench files and on toybench, with a tiny backend.

The backend (`eval-tiny-test`, registered by conftest) runs through the real sampler and LoRA
loading; metrics are a tiny random DINOv2 (`dino`) and a registered test metric.
"""

from __future__ import annotations

import argparse
import csv
import json

import pytest
import yaml

from cgrpo.config.schema import ConfigError
from cgrpo.evaluation.cli import add_compare_arguments, add_eval_arguments, run_compare, run_eval


def _eval(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    return run_eval(parser.parse_args([*argv, "--no-progress", "--resamples", "200"]))


@pytest.fixture
def setup(tmp_path, tiny_dino_dir):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump({"model": {"backend": "eval-tiny-test"}, "eval": {"num_steps": 3}})
    )
    options = tmp_path / "metrics.yaml"
    options.write_text(yaml.safe_dump({"dino": {"path": str(tiny_dino_dir)}}))
    return config, options


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_dreambench_eval_writes_everything_and_resumes(setup, dreambench_root, tmp_path, capsys):
    config, options = setup
    out = tmp_path / "base"
    common = [
        "--bench",
        "dreambench",
        "--data",
        str(dreambench_root),
        "--config",
        str(config),
        "--metrics",
        "dino,eval-test-match",
        "--metric-options",
        str(options),
        "--subjects",
        "dog,teapot",
        "--reference",
        "protocol:customized_grpo_singleip.json",
    ]
    assert _eval(*common, "--seeds", "2", "--out", str(out)) == 0
    assert "| dino [cosine, 0-1] |" in capsys.readouterr().out  # the scale in the header
    rows = _rows(out / "pairs.csv")
    assert len(rows) == 2 * 25 * 2
    assert {r["reference"].rsplit("/", 2)[-2:][1] for r in rows if r["subject"] == "dog"} == {
        "02.jpg"
    }
    assert {r["kind"] for r in rows if r["subject"] == "dog"} == {
        "recontextualization",
        "accessorization",
        "property_modification",
    }
    assert len((out / "pairs.jsonl").read_text().splitlines()) == 100
    for name in (
        "summary.json",
        "summary.md",
        "per_kind.csv",
        "per_subject.csv",
        "pareto.png",
        "report.html",
        "grids/dog.png",
        "grids/teapot.png",
        "images/dog/24_1.png",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_pairs"] == 50 and summary["settings"]["reference"].startswith("protocol:")

    # a rerun finds everything done: no image is rewritten
    stamp = (out / "images/dog/00_0.png").stat().st_mtime_ns
    assert _eval(*common, "--seeds", "2", "--out", str(out), "--no-report") == 0
    assert (out / "images/dog/00_0.png").stat().st_mtime_ns == stamp
    # a different sampler setting must not mix into the same folder
    with pytest.raises(ConfigError, match="different num_steps"):
        _eval(*common, "--out", str(out), "--num-steps", "5")

    # --images scores the same pixels the same way
    again = tmp_path / "rescored"
    images_args = [a for a in common if a not in ("--config", str(config))]
    assert _eval(*images_args, "--images", str(out / "images"), "--out", str(again)) == 0
    first = {(r["key"], r["seed"]): r["dino"] for r in rows}
    second = {(r["key"], r["seed"]): r["dino"] for r in _rows(again / "pairs.csv")}
    assert first == second


def test_adapter_eval_and_compare(setup, dreambench_root, tmp_path, capsys):
    import torch

    from cgrpo.config import load_config, save_config
    from cgrpo.training.runs import build_policy_from_config

    config, options = setup
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(config)
    save_config(cfg, run / "config.yaml")
    policy = build_policy_from_config(cfg, with_lora=True)
    assert isinstance(policy.denoiser.proj.lora_B["default"], torch.nn.Linear)
    with torch.no_grad():
        policy.denoiser.proj.lora_B["default"].weight.fill_(0.3)  # a trained adapter
    policy.save_adapter(run / "final")
    common = [
        "--bench",
        "dreambench",
        "--data",
        str(dreambench_root),
        "--subjects",
        "can",
        "--metrics",
        "eval-test-match",
        "--no-grids",
    ]
    assert _eval(*common, "--config", str(config), "--out", str(tmp_path / "base")) == 0
    assert _eval(*common, "--adapter", str(run)) == 0
    assert (run / "eval-dreambench" / "pairs.csv").is_file()  # default --out of a run
    meta = json.loads((run / "eval-dreambench" / "eval.json").read_text())
    assert meta["adapter"] == str(run.resolve()) and meta["checkpoint"] == "final"
    capsys.readouterr()
    parser = argparse.ArgumentParser()
    add_compare_arguments(parser)
    assert run_compare(parser.parse_args([str(tmp_path / "base"), str(run)])) == 0
    line = next(
        ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("eval-test-match")
    )
    fields = line.replace("*", "").split()
    assert fields[3] != "+0.0000"  # the adapter changed the images
    assert fields[-2:] == ["25", "1"]  # pairs, subjects


def test_toybench_eval_with_heldout_measures(setup, tmp_path):
    config, _ = setup
    out = tmp_path / "toy"
    assert (
        _eval(
            "--bench",
            "toybench",
            "--config",
            str(config),
            "--max-subjects",
            "2",
            "--metrics",
            "gt-colour,gt-scene",
            "--out",
            str(out),
        )
        == 0
    )
    rows = _rows(out / "pairs.csv")
    assert len(rows) == 50 and {r["kind"] for r in rows} == {"recontext", "property"}
    assert all(
        0.0 <= float(r["gt-colour"]) <= 1.0 and 0.0 <= float(r["gt-scene"]) <= 1.0 for r in rows
    )
    assert len(list((out / "references").glob("*.png"))) == 2
    meta = json.loads((out / "eval.json").read_text())
    assert meta["world"] == {"size": 32, "seed": 0}
    assert meta["metric_columns"] == {"gt-colour": ["gt-colour"], "gt-scene": ["gt-scene"]}


def test_toybench_default_metrics_are_the_config_rewards_plus_heldout(setup, tmp_path):
    config, _ = setup  # the default config's rewards: toy-prompt and toy-id
    out = tmp_path / "toy-default"
    assert (
        _eval(
            "--bench",
            "toybench",
            "--config",
            str(config),
            "--max-subjects",
            "1",
            "--out",
            str(out),
            "--no-grids",
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"] == [
        "toy-prompt",
        "toy-id",
        "gt-colour",
        "gt-pattern",
        "gt-shape",
        "gt-scene",
    ]
    assert "toy-id" in (out / "report.html").read_text()


def test_user_errors_are_one_line_config_errors(setup, dreambench_root, tmp_path):
    config, options = setup
    with pytest.raises(ConfigError, match="--data"):
        _eval("--bench", "dreambench", "--config", str(config))
    with pytest.raises(ConfigError, match="--config"):
        _eval("--bench", "dreambench", "--data", str(dreambench_root))
    with pytest.raises(ConfigError, match="--subjects"):
        _eval("--data", str(dreambench_root), "--config", str(config), "--subjects", "unicorn")
    with pytest.raises(ConfigError, match="--metric-options"):
        _eval(
            "--data",
            str(dreambench_root),
            "--config",
            str(config),
            "--metric-options",
            str(tmp_path / "none.yaml"),
        )
    with pytest.raises(ConfigError, match="--metrics = 'dinov9': unknown metric; choose from"):
        _eval("--data", str(dreambench_root), "--config", str(config), "--metrics", "dinov9")
    with pytest.raises(ConfigError, match="toybench measure"):
        _eval("--data", str(dreambench_root), "--config", str(config), "--metrics", "gt-scene")
    with pytest.raises(ConfigError, match="--reference"):
        _eval("--data", str(dreambench_root), "--config", str(config), "--reference", "last")


def test_toybench_with_the_pocket_backend(tmp_path):
    pytest.importorskip("cgrpo.policies.pocket", reason="the pocket backend is not in this tree")
    config = tmp_path / "pocket.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "backend": "pocket",
                    "options": {
                        "weights": "random",
                        "dim": 32,
                        "depth": 1,
                        "heads": 2,
                        "text_max_length": 8,
                    },
                },
                "eval": {"num_steps": 2},
            }
        )
    )
    out = tmp_path / "pocket"
    assert (
        _eval(
            "--bench",
            "toybench",
            "--config",
            str(config),
            "--max-subjects",
            "1",
            "--metrics",
            "gt-colour",
            "--out",
            str(out),
            "--no-grids",
        )
        == 0
    )
    assert len(_rows(out / "pairs.csv")) == 25
