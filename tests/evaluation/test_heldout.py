"""The trainer's held-out check runs through the harness and leaves per-item records a study reads."""

from __future__ import annotations

import json

import pytest
import torch

from cgrpo.config import load_config
from cgrpo.evaluation.harness import evaluate_policy
from cgrpo.evaluation.heldout import (
    HeldOutCheck,
    before_after_grid,
    held_out_summary,
    held_out_table,
    load_held_out,
)
from cgrpo.evaluation.output.runs import load_run
from cgrpo.evaluation.resumable import run_evaluation
from cgrpo.training.runs import build_policy_from_config


@pytest.fixture
def check_and_policies(mean_match):
    cfg = load_config(
        None, ["model.backend=eval-tiny-test", "eval.num_items=12", "eval.num_steps=3"]
    )
    check = HeldOutCheck.from_config(cfg, [mean_match()], torch.Generator().manual_seed(5))
    base = build_policy_from_config(cfg, "cpu", with_lora=True).eval()
    trained = build_policy_from_config(cfg, "cpu", with_lora=True).eval()
    with torch.no_grad():
        trained.denoiser.proj.lora_B["default"].weight.fill_(0.3)
    return check, base, trained


def test_records_hold_rewards_ground_truth_kind_and_cluster(check_and_policies, tmp_path):
    check, base, trained = check_and_policies
    assert len({it.key for it in check.items}) == 12
    before, after = check.run(base), check.run(trained)
    check.save(tmp_path, "before", before)
    check.save(tmp_path, "after", after)

    held = load_held_out(tmp_path)
    assert [r["key"] for r in held.before] == [r["key"] for r in held.after]
    assert held.metrics == ["mean-match", "gt-colour", "gt-pattern", "gt-shape", "gt-scene"]
    for record in held.before + held.after:
        assert record["subject"] == record["info"]["identity"]  # the cluster: the toy identity
        assert record["kind"] in ("recontext", "property")
        assert (tmp_path / "heldout" / ("before" if record in held.before else "after")).is_dir()
    assert held.before != held.after  # the adapter changed the images, hence the scores
    assert (tmp_path / "heldout/after" / held.after[0]["image"]).is_file()

    summary = held_out_summary(held.after, "after")
    assert summary["n"] == 12 and summary["records"] == "heldout/after/pairs.jsonl"
    gt = [r["scores"]["gt-colour"] for r in held.after]
    assert summary["means"]["gt-colour"] == pytest.approx(sum(gt) / len(gt))
    prop = [r["scores"]["gt-scene"] for r in held.after if r["kind"] == "property"]
    assert summary["by_kind"]["property"]["gt-scene"] == pytest.approx(sum(prop) / len(prop))

    table = held_out_table(tmp_path, resamples=200)
    assert "| gt-colour [share, 0-1] | all | 12 |" in table
    assert "| mean-match | property |" in table  # unknown scale: the bare name
    grid = before_after_grid(check.items, before, after, ["mean-match"], max_items=3)
    assert grid.size[1] > 0 and grid.size[0] == 96 * 3  # reference | base | trained

    # each phase folder is an evaluation folder: report and compare read it
    run = load_run(tmp_path / "heldout" / "after")
    assert run.summary.n_pairs == 12 and run.meta["phase"] == "after"


def test_saved_images_rescore_to_the_recorded_scores(check_and_policies, tmp_path):
    """One path: the images the check saved, scored by `cgrpo eval --images`, give its scores."""
    check, _, trained = check_and_policies
    result = check.run(trained)
    folder = check.save(tmp_path, "after", result)
    rescored = run_evaluation(
        check.items, tmp_path / "again", check.metrics, images_dir=folder / "images", progress=False
    )
    want = {(r["key"], m): v for r in result.records for m, v in r["scores"].items()}
    again = {(r["key"], m): v for r in rescored for m, v in r["scores"].items()}
    assert again == pytest.approx(want, abs=1e-6)  # float32 sums in another batch order
    # and they are what evaluate_policy gives for the same items and settings
    direct = evaluate_policy(
        trained, check.items, check.metrics, gen_kwargs=check.gen_kwargs, base_seed=check.base_seed
    )
    assert direct.records == result.records


def test_no_records_no_table(tmp_path):
    assert held_out_table(tmp_path) == ""
    with pytest.raises(FileNotFoundError, match="heldout/before/pairs.jsonl"):
        load_held_out(tmp_path)
    (tmp_path / "heldout" / "before").mkdir(parents=True)
    (tmp_path / "heldout" / "before" / "pairs.jsonl").write_text(
        json.dumps({"key": "a", "seed": 0}) + "\n"
    )
    assert held_out_table(tmp_path) == ""


def test_offloaded_rewards_score_on_the_device_and_wait_on_the_cpu(mean_match):
    reward = mean_match()
    moves = []
    reward.to = lambda device: moves.append(str(device)) or reward
    cfg = load_config(
        None, ["model.backend=eval-tiny-test", "eval.num_items=5", "eval.num_steps=2"]
    )
    cfg.sampling.chunk_size = 2
    check = HeldOutCheck.from_config(
        cfg, [reward], torch.Generator().manual_seed(0), offload_to=torch.device("meta")
    )
    result = check.run(build_policy_from_config(cfg, "cpu").eval())
    assert moves == ["meta", "cpu"] * 3  # 5 items in batches of 2: each batch on the device
    assert [r["scores"]["mean-match"] for r in result.records] == [
        r["scores"]["mean-match"]
        for r in evaluate_policy(
            build_policy_from_config(cfg, "cpu").eval(),
            check.items,
            [reward],
            gen_kwargs=check.gen_kwargs,
            base_seed=check.base_seed,
        ).records
    ]
