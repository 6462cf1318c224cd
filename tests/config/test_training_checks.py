"""Settings that load but cannot train, refused in one line before any work; LoRA settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from cgrpo.cli import main
from cgrpo.config import ConfigError, load_config
from cgrpo.training import Trainer
from cgrpo.training.runs import build_policy_from_config

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = "model.options={weights: random, dim: 32, depth: 1, heads: 2, text_max_length: 8}"


@pytest.mark.parametrize(
    ("override", "key", "fragment"),
    [
        ("model.lora.dropout=0.2", "model.lora.dropout", "must be 0 for training"),
        ("sampling.noise_level=0", "sampling.noise_level", "must be > 0 for training"),
        (
            "train.updates_per_step=5",
            "train.updates_per_step",
            "must divide the per-process batch sampling.groups_per_step * "
            "sampling.group_size = 12 (choose from 1, 2, 3, 4, 6, 12)",
        ),
    ],
)
def test_untrainable_settings_stop_the_cli_in_one_line(override, key, fragment, tmp_path, capsys):
    args = ["sampling.group_size=4", "sampling.groups_per_step=3", override]
    run = tmp_path / "run"
    assert main(["train", "--output", str(run), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"cgrpo: config error: {key} = ") and fragment in err
    assert not run.exists()  # nothing was started
    load_config(None, args)  # the same file still loads for sampling and evaluation
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Trainer(load_config(None, args), tmp_path / "direct")


def test_a_divisor_of_the_per_process_batch_is_accepted():
    load_config(
        None, ["train.updates_per_step=3", "sampling.group_size=12"]
    ).validate_for_training()


@pytest.mark.parametrize("preset", ["flux-uno.yaml", "flux-kontext.yaml"])
def test_paper_presets_use_the_paper_lora(preset, capsys):
    assert main(["config", "--config", str(REPO / "configs" / preset)]) == 0
    shown = capsys.readouterr().out
    assert "    targets: paper\n    init: gaussian\n" in shown
    cfg = load_config(REPO / "configs" / preset)
    assert cfg.model.lora.dropout == 0
    cfg.validate_for_training()


def test_lora_init_and_preset_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"model\.lora\.init = 'kaiming': choose from"):
        load_config(None, ["model.lora.init=kaiming"])
    cfg = load_config(None, [TINY_MODEL, "model.lora.targets=paper"])
    with pytest.raises(ConfigError, match=r"model\.lora\.targets = 'paper': .*'pocket'"):
        build_policy_from_config(cfg, with_lora=True)
    cfg = load_config(None, [TINY_MODEL, "model.lora.targets=[to_q, no_such_layer]"])
    with pytest.raises(ConfigError, match=r"model\.lora\.targets = \['to_q', 'no_such_layer'\]"):
        build_policy_from_config(cfg, with_lora=True)
