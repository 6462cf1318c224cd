"""The FLUX step benchmark runs end to end on a CPU with --tiny, and counts FLOPs right."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "flux_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("flux_step_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_tiny_step_runs_and_batched_matches_per_sample(bench, tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "flux_step.json"
    bench.main(["--tiny", "--device", "cpu", "--json", str(out)])
    table = capsys.readouterr().out
    assert "| sampling |" in table and "| training |" in table and "speed-up" in table
    res = json.loads(out.read_text())
    assert res["settings"]["tiny"] and res["tokens"]["trained_steps_per_sample"] == 3
    for impl in ("batched", "per_sample"):
        for key in ("sampling_s", "training_s", "step_s"):
            assert res[impl][key] > 0
        assert res[impl]["sampling_mfu"] is None  # no MFU against a GPU peak on a CPU
    agree = res["agreement"]
    assert agree["max_abs_diff_final_latent"] < 1e-4
    assert agree["max_abs_diff_log_prob"] < 1e-4
    assert agree["rel_diff_grad_norm"] < 1e-4 and res["batched"]["grad_norm"] > 0
    assert res["speedup"]["step"] == pytest.approx(
        res["per_sample"]["step_s"] / res["batched"]["step_s"]
    )


def test_flop_count_of_the_flux_dev_transformer(bench):
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    with init_empty_weights():
        model = FluxTransformer2DModel(patch_size=1, **bench.FULL_MODEL)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(11.9e9, rel=0.01)
    flops = bench.step_flops(model, s_img=2048, s_txt=512)
    # GUIDE §2: 37.7 TFLOP per image-step at 1024 target + 1024 reference + 512 text tokens.
    assert flops["forward"] / 1e12 == pytest.approx(37.7, rel=0.005)
    d, s = 3072, 2560
    assert flops["attention"] == pytest.approx(57 * 4 * s * s * d)
    assert flops["train"] == pytest.approx(2 * flops["linear"] + 3 * flops["attention"])
