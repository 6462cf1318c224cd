"""The reward-server benchmark runs end to end in seconds and compares like with like."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "reward_server.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("reward_server_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_small_run_reports_both_servers_with_identical_scores(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--clients", "3", "--rounds", "2", "--images", "4", "--size", "16"]
    bench.main([*argv, "--forward-ms", "20", "--per-image-ms", "0", "--json", str(out)])
    table = capsys.readouterr().out
    assert "| images / s |" in table and "throughput ratio batched / one at a time" in table
    res = json.loads(out.read_text())
    assert res["identical_scores"] is True and res["throughput_ratio"] > 0
    serial, batched = res["one_at_a_time"], res["batched"]
    assert serial["calls"] == 6 and serial["mean_batch_requests"] == 1.0
    assert batched["calls"] <= 6 and batched["mean_batch_size"] == 24 / batched["calls"]
    assert res["machine"]["cpus"] >= 1 and res["settings"]["clients"] == 3
