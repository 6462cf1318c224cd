"""The FLUX.2 / Qwen-Image-Edit step benchmark runs on a CPU with --tiny and reports every config."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("dit_step_benchmark", BENCHMARKS / "dit_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize("model", ["flux2-klein", "flux2-dev", "qwen-image-edit"])
def test_tiny_run_reports_sampling_and_every_update_config(bench, model, tmp_path):
    torch.set_num_threads(1)
    args = ["--model", model, "--tiny", "--device", "cpu", "--out", str(tmp_path)]
    args += ["--group", "3", "--chunk", "2", "--timed-steps", "1", "--timed-passes", "1"]
    args += ["--micro-batches", "1", "2", "--checkpointed", "1", "0"]
    res = bench.main(args)
    saved = json.loads((tmp_path / f"dit_step_{model}.json").read_text())
    assert saved == json.loads(json.dumps(res))
    assert res["sampling"]["s_per_step"] > 0 and math.isfinite(res["sampling"]["rollout_s"])
    configs = {(r["micro_batch"], r["checkpointed"]) for r in res["update"]}
    assert configs == {(1, 1.0), (2, 1.0), (1, 0.0), (2, 0.0)}
    assert all(r["status"] == "ok" and r["s_per_pair"] > 0 for r in res["update"])
    table = (tmp_path / f"dit_step_{model}.md").read_text()
    assert table.count("\n| ") == 1 + 4  # header + one row per config
