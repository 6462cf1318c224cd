"""`cgrpo eval --protocol paper`, --guidance, --shift and --shared-seed, with a tiny backend."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest
import yaml

from cgrpo.config.schema import ConfigError
from cgrpo.evaluation.benchmarks.protocol import PAPER
from cgrpo.evaluation.cli import add_eval_arguments, run_eval
from cgrpo.evaluation.run import EvalSettings, load_metric_options, sampler_settings, with_protocol

REPO = Path(__file__).resolve().parents[2]


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    return parser.parse_args([*argv, "--no-progress", "--no-report"])


def _eval(*argv: str) -> int:
    return run_eval(_parse(*argv))


def _scores(out: Path, metric: str = "eval-test-match") -> dict[str, float]:
    with (out / "pairs.csv").open() as f:
        return {r["key"]: float(r[metric]) for r in csv.DictReader(f)}


@pytest.fixture
def configs(tmp_path):
    def write(backend: str) -> Path:
        path = tmp_path / f"{backend}.yaml"
        path.write_text(yaml.safe_dump({"model": {"backend": backend}, "eval": {"num_steps": 3}}))
        return path

    return write("eval-tiny-guided"), write("eval-tiny-test")


def test_the_preset_fills_unset_fields_and_explicit_flags_win():
    paper = with_protocol(EvalSettings(protocol="paper"))
    assert (paper.bench, paper.reference) == (
        "dreambench",
        "protocol:customized_grpo_singleip.json",
    )
    assert (paper.seeds, paper.seed, paper.shared_seed) == (1, 3407, True)
    assert (paper.num_steps, paper.guidance, paper.shift) == (25, 4.0, "dynamic")
    assert paper.metrics == ["dino", "dino-seg", "clip-i", "clip-t", "hpsv3"]
    mine = with_protocol(EvalSettings(protocol="paper", seed=1, shift=3.0, metrics=["dino"]))
    assert (mine.seed, mine.shift, mine.metrics, mine.guidance) == (1, 3.0, ["dino"], 4.0)
    assert with_protocol(EvalSettings()) == EvalSettings()  # no preset: nothing filled
    with pytest.raises(ConfigError, match="--protocol = 'dreambooth': unknown protocol"):
        with_protocol(EvalSettings(protocol="dreambooth"))


def test_paper_protocol_end_to_end(configs, dreambench_root, tmp_path):
    guided, _ = configs
    out = tmp_path / "paper"
    common = ["--protocol", "paper", "--data", str(dreambench_root), "--subjects", "dog"]
    fast = ["--config", str(guided), "--metrics", "eval-test-match", "--num-steps", "2"]
    assert _eval(*common, *fast, "--out", str(out)) == 0
    meta = json.loads((out / "eval.json").read_text())
    assert meta["protocol"] == "paper"
    assert meta["reference"] == "protocol:customized_grpo_singleip.json"
    assert (meta["base_seed"], meta["shared_seed"], meta["seeds"]) == (3407, True, 1)
    assert (meta["dynamic_shift"], meta["num_steps"]) == (True, 2)  # --num-steps overrides
    assert meta["model"]["options"]["guidance"] == 4.0
    with (out / "pairs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 25 and {r["reference"].rsplit("/", 1)[1] for r in rows} == {"02.jpg"}
    # one seed for every pair: the tiny policy ignores the prompt, so all 25 images agree
    assert len(set(_scores(out).values())) == 1
    per_pair = tmp_path / "per-pair"
    assert _eval(*common, *fast, "--no-shared-seed", "--out", str(per_pair)) == 0
    assert len(set(_scores(per_pair).values())) == 25


def test_guidance_reaches_the_backend_and_is_refused_without_one(
    configs, dreambench_root, tmp_path
):
    guided, plain = configs
    common = ["--data", str(dreambench_root), "--subjects", "can", "--metrics", "eval-test-match"]
    assert _eval(*common, "--config", str(guided), "--out", str(tmp_path / "g1")) == 0
    assert (
        _eval(*common, "--config", str(guided), "--guidance", "2", "--out", str(tmp_path / "g2"))
        == 0
    )
    one, two = _scores(tmp_path / "g1"), _scores(tmp_path / "g2")
    assert all(one[k] != two[k] for k in one)
    out = tmp_path / "plain"
    with pytest.raises(ConfigError, match="--guidance = 4.0: backend 'eval-tiny-test' has no"):
        _eval(*common, "--config", str(plain), "--guidance", "4", "--out", str(out))
    # the failed run left no results, so the folder takes the corrected command
    assert _eval(*common, "--config", str(plain), "--out", str(out)) == 0


def test_shift_flag(configs):
    from cgrpo.config import load_config

    assert _parse("--shift", "dynamic").shift == "dynamic"
    assert _parse("--shift", "1.5").shift == 1.5
    for bad in ("0", "-1", "fast"):
        with pytest.raises(SystemExit):
            _parse("--shift", bad)
    config = load_config(configs[0])
    assert sampler_settings(EvalSettings(shift="dynamic"), config)["dynamic_shift"] is True
    static = sampler_settings(EvalSettings(shift=1.5, num_steps=7), config)
    assert static == {"num_steps": 7, "shift": 1.5, "dynamic_shift": False}
    default = sampler_settings(EvalSettings(), config)
    assert default["shift"] == config.sampling.shift and default["num_steps"] == 3


def test_help_shows_the_preset_and_the_new_flags(capsys):
    from cgrpo.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--help"])
    text = capsys.readouterr().out
    for needle in ("--protocol {paper}", "--guidance", "--shift {NUMBER,dynamic}", "paper: "):
        assert needle in text, needle


def test_metric_options_template_names_every_protocol_metric():
    options = load_metric_options(REPO / "configs" / "eval" / "paper-metrics.yaml")
    assert set(options) == set(PAPER.metrics)
    assert all(opts.get("path") for opts in options.values())


def test_metric_options_errors_name_the_flag(tmp_path):
    bad = tmp_path / "metrics.yaml"
    bad.write_text("dino: [1")
    with pytest.raises(ConfigError, match="--metric-options = .*not valid YAML"):
        load_metric_options(bad)
    bad.write_text("dino: 3")
    with pytest.raises(ConfigError, match="must map metric names to option mappings"):
        load_metric_options(bad)


def test_paper_dino_seg_scores_against_the_reference_cutout(tiny_dino_dir, tmp_path):
    """The preset's dino-seg options with the real reward, through the harness: a DreamBench
    item names its reference file, and its <ref>_seg.png cut-out is what the image meets."""
    import torch

    from cgrpo.evaluation.harness import EvalItem, save_png, score_batch
    from cgrpo.rewards import build_reward
    from cgrpo.rewards.images import quantize

    ref = quantize(torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)))
    cutout = torch.zeros_like(ref)
    cutout[:, 16:48, 16:48] = ref[:, 16:48, 16:48]
    save_png(ref, tmp_path / "thing" / "00.jpg")  # the name is what matters: 00_seg.png beside it
    save_png(cutout, tmp_path / "thing" / "00_seg.png")
    item = EvalItem(
        index=0,
        key="thing/00",
        subject="thing",
        prompt_index=0,
        prompt="a thing",
        kind="",
        references=ref[None],
        metadata={"reference_paths": [str(tmp_path / "thing" / "00.jpg")]},
    )
    options = {"path": str(tiny_dino_dir), **PAPER.metric_options["dino-seg"]}
    reward = build_reward("dino-seg", options)
    scores = score_batch([reward], [item, item], torch.stack([cutout, ref]))["dino-seg"]
    assert scores[0] == pytest.approx(1.0, abs=1e-4)  # the cut-out itself: identical
    assert scores[1] < scores[0] - 1e-3  # the raw reference is not what it is compared with
