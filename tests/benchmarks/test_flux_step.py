"""The FLUX step sweep runs every phase on a CPU with --tiny, its levers agree, FLOPs are right."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling modules
    spec = importlib.util.spec_from_file_location(
        "flux_step_benchmark", BENCHMARKS / "flux_step.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)
    sys.path.remove(str(BENCHMARKS))


# Budgets far beyond need: what runs must not depend on the machine's speed.
UNBOUNDED = ["--budget-s", "100000", "--config-budget-s", "1000"]


def test_tiny_sweep_runs_every_phase_and_the_levers_agree(bench, tmp_path, capsys):
    torch.set_num_threads(1)
    args = ["--tiny", "--device", "cpu", "--out", str(tmp_path), *UNBOUNDED]
    args += [
        "--steps",
        "4",
        "--chunks",
        "4",
        "--micro-batches",
        "1,2",
        "--checkpointing",
        "1,0.5,0",
    ]
    bench.main(args)
    table = capsys.readouterr().out
    res = json.loads((tmp_path / "flux_step.json").read_text())
    assert (tmp_path / "flux_step.md").read_text().strip() == table.strip()
    assert res["skipped"] == [] and res["pairs"] == 4 * 2  # 60% of the first 3 steps: 2

    sweep = [r for r in res["training"] if r["rank"] == 4]
    assert [(r["micro_batch"], r["checkpointing"]) for r in sweep] == [
        (mb, c) for mb in (1, 2) for c in (1.0, 0.5, 0.0)
    ]
    for row in res["training"]:  # the same pairs: every config gives the same gradient
        assert row["status"] == "ok" and row["update_s"] > 0 and row["mfu"] is None
        assert row["grad_rel_diff"] < 1e-5 and row["grad_norm"] > 0
        assert row["ratio_dev"] < 1e-5  # old log-probs from the same weights
    at_step_rank = {
        (r["micro_batch"], r["checkpointing"]) for r in res["training"] if r["rank"] == 8
    }
    assert (1, 1.0) in at_step_rank and len(at_step_rank) == 4  # 3 fastest + the reference's

    loops = {(r["rank"], r["loop"], r["merged"]) for r in res["sampling"]}
    assert loops == {
        (k, loop, m)
        for k in (4, 8)
        for loop, m in (("batched", False), ("batched", True), ("per-sample", False))
    }
    for row in res["sampling"]:
        assert row["status"] == "ok" and row["sampling_s"] > 0
        if row["loop"] == "per-sample":
            assert row["agreement"]["max_abs_diff_latent"] < 1e-4
            assert row["agreement"]["max_abs_diff_log_prob"] < 1e-4
        else:  # fp32: the update's recomputation gives the sampled log-probs, merged or not
            assert row["first_update_log_prob_dev"] < 1e-5

    step = res["step"]
    assert step["status"] == "ok" and step["rank"] == 8
    assert step["step_s"] == pytest.approx(step["sampling_s"] + step["training_s"])
    assert step["first_update_ratio_dev"] < 1e-5 and step["grad_norm"] > 0
    loop = res["per_sample_step"]  # measured in the same run
    assert loop["rank"] == 8 and loop["step_s"] > 0
    assert res["per_sample_projection"]["rank"] == 8
    for part in ("dino", "hpsv3"):
        assert res["rewards"][part]["s"] > 0, res["rewards"][part]
    assert res["rewards"]["vae"]["decode"]["s"] > 0 and res["rewards"]["decode_and_score_s"] > 0
    assert "| sampling |" in table and "| step |" in table and "hpsv3" in table


def test_an_exhausted_budget_skips_phases_and_still_writes_results(bench, tmp_path):
    torch.set_num_threads(1)
    res = bench.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--budget-s", "0"])
    assert res["training"] == [] and res["sampling"] == [] and "step" not in res
    assert any(s.startswith("training r4 mb 1") for s in res["skipped"])
    assert "did not run" in (tmp_path / "flux_step.md").read_text()


def test_bad_sweep_arguments_are_refused(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--tiny", "--timed-pairs", "3", "--micro-batches", "2"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--tiny", "--checkpointing", "1.5"])


def test_flop_count_of_the_flux_dev_transformer():
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    sys.path.insert(0, str(BENCHMARKS))
    try:
        from flux_parts import FULL_MODEL, step_flops
    finally:
        sys.path.remove(str(BENCHMARKS))
    with init_empty_weights():
        model = FluxTransformer2DModel(patch_size=1, **FULL_MODEL)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(11.9e9, rel=0.01)
    flops = step_flops(model, s_img=2048, s_txt=512)
    # GUIDE §2: 37.7 TFLOP per image-step at 1024 target + 1024 reference + 512 text tokens.
    assert flops["forward"] / 1e12 == pytest.approx(37.7, rel=0.005)
    d, s = 3072, 2560
    assert flops["attention"] == pytest.approx(57 * 4 * s * s * d)
    assert flops["train"] == pytest.approx(2 * flops["linear"] + 3 * flops["attention"])
