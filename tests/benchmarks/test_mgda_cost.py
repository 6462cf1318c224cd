"""The mgda cost benchmark runs end to end on a tiny model and reports both strategies."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "mgda_cost.py"


def test_tiny_run_times_both_strategies(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("mgda_cost_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        result = module.main(
            ["--tiny", "--steps", "2", "--rounds", "1", "--json", str(tmp_path / "r.json")]
        )
    finally:
        sys.modules.pop(spec.name, None)
    assert result["steps_timed"] == 1
    assert result["ratio_update"] > 0 and result["ratio_step"] > 0
    assert json.loads((tmp_path / "r.json").read_text())["median_s"].keys() == {"linear", "mgda"}
    assert "mgda / linear: update x" in capsys.readouterr().out
