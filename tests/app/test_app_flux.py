"""cgrpo app's comparison on the FLUX backend (a tiny random FLUX model on the CPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "policies"))

from flux_tiny import HEIGHT, WIDTH, tiny_run_config  # noqa: E402


def test_flux_run_compares_base_and_trained(tmp_path):
    from cgrpo.app.tryout import Tryout
    from cgrpo.config.train import config_from_dict
    from cgrpo.training.trainer import Trainer

    torch.set_num_threads(1)
    config = tiny_run_config(tmp_path)
    config["train"]["steps"] = 1
    config["train"]["lr"] = 0.05  # one step moves the adapter visibly
    Trainer(config_from_dict(config), tmp_path / "run").train()
    tryout = Tryout(tmp_path / "run", num_steps=2)
    assert [r.prompt for r in tryout.examples] == ["a dog in the snow", "a red backpack"]
    result = tryout.compare(tryout.examples[1], "a red backpack on a beach", seed=3)
    assert result.base.shape == result.trained.shape == (3, HEIGHT, WIDTH)
    assert not torch.equal(result.base, result.trained)
    assert set(result.scores) == {"brightness", "redness"}
    assert result.roles == {"brightness": "prompt", "redness": "identity"}
