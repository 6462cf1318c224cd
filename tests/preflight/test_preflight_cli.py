"""``cgrpo preflight`` end to end on a tiny config: the training groups, the outputs."""

from __future__ import annotations

import json

import torch

from cgrpo.cli import main
from cgrpo.data.base import build_dataset
from cgrpo.evaluation.heldout import ground_truth_metrics
from cgrpo.grpo.noise_floor import measured_noise
from cgrpo.preflight.sampling import PreflightSampler, preflight_dataset, select_examples
from cgrpo.preflight.verdict import LABELS
from cgrpo.training import Trainer

TINY = [
    "model.options={weights: random, dim: 32, depth: 1, heads: 2, text_max_length: 8}",
    "model.lora.rank=4",
    "sampling.num_steps=3",
    "sampling.group_size=4",
    "sampling.groups_per_step=2",
]


def test_preflight_samples_exactly_the_groups_of_the_first_training_steps(tiny_config, tmp_path):
    cfg = tiny_config()
    trainer = Trainer(cfg, tmp_path / "run")
    sampler = PreflightSampler(cfg, preflight_dataset(cfg, "train"))
    for step in (0, 1):
        ours, theirs = sampler.sample(step), trainer.sample(step)
        assert [e.key for e in ours.examples] == [e.key for e in theirs.examples]
        torch.testing.assert_close(ours.images, theirs.images)


def test_kind_keeps_only_that_kind_of_example():
    data = build_dataset("toyworld", {"source": "toybench"}, "heldout")
    picked = select_examples(data, "property", 12, seed=0)
    assert len(picked) == 12 and {e.metadata["kind"] for e in picked} == {"property"}


def test_cli_writes_json_html_and_grids(tmp_path, capsys):
    out = tmp_path / "pf"
    args = ["preflight", "--groups", "3", "--split", "heldout", "--kind", "property"]
    rc = main([*args, "--out", str(out), "--no-progress", *TINY])
    assert rc == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "preflight.json").read_text())
    assert result["groups"] == 3 and result["group_size"] == 4
    assert (result["split"], result["kind"]) == ("heldout", "property")
    heldout = build_dataset("toyworld", {}, "heldout")
    truth = [c for m in ground_truth_metrics(heldout) for c in m.columns]
    assert truth and result["monitors"] == truth  # the dataset's list, not hard-coded names
    assert set(result["rewards"]) == {"toy-prompt", "toy-id"}
    assert set(result["perturbations"]) == {"noise", "jpeg", "resize", "shift"}
    assert set(result["psnr"]) == set(result["perturbations"])
    assert "shift" in result["noise_from"]
    for column, m in result["rewards"].items():
        for key in ("within_std", "between_std", "noise_std", "signal_share", "mean"):
            assert isinstance(m[key], float), (column, key)
        assert m["noise_std"] == max(m["noise"][p]["std"] for p in result["noise_from"])
        assert set(m["noise"]) == set(result["perturbations"])
        assert set(m["noise"]["jpeg"]) == {"std", "rank_agreement", "sign_flips"}
        assert set(m["monitors"]) == set(truth)
        assert m["verdict"] in LABELS
        assert f"{column}: {m['verdict']} — " in printed
        assert (out / f"groups_{column.replace('-', '_')}.png").is_file()
    [pair] = result["pairs"]
    assert {pair["a"], pair["b"]} == {"toy-prompt", "toy-id"}
    assert 0.0 <= pair["conflict_rate"] <= 1.0
    assert len(result["verdicts"]) == 2
    page = (out / "preflight.html").read_text()
    assert "groups_toy_prompt.png" in page and "Verdicts" in page
    # the trainer reads the measured noise back as floors
    assert measured_noise(out / "preflight.json") == {
        c: m["noise_std"] for c, m in result["rewards"].items()
    }


def test_cli_rejects_zero_groups(capsys):
    assert main(["preflight", "--groups", "0", *TINY]) == 2
    assert "--groups" in capsys.readouterr().err
