"""The reward training command runs end to end (tiny recipe) and writes loadable assets."""

import json

import torch

from cgrpo.rewards.models.toy import load_toy_id, load_toy_prompt
from cgrpo.rewards.models.toy_train import Recipe, blur, main, train_all


def test_train_all_tiny_recipe_writes_loadable_weights(tmp_path):
    r = Recipe(
        pool_size=32,
        seg_steps=2,
        seg_batch=8,
        id_steps=2,
        id_batch=8,
        prompt_steps=2,
        prompt_batch=8,
        eval_queries=1,
        eval_images=1,
        eval_bench_every=250,
    )
    logs = []
    cards = train_all(tmp_path, r, log=logs.append)
    assert set(cards) == {"toy_id", "toy_prompt"}
    card = json.loads((tmp_path / "toy_id.json").read_text())
    assert card["recipe"]["id_steps"] == 2
    assert 0 <= card["heldout_metrics"]["clean"]["auc_same_vs_different"] <= 1
    prompt_card = json.loads((tmp_path / "toy_prompt.json").read_text())
    assert set(prompt_card["heldout_metrics"]["clean"]) == {
        "background",
        "position",
        "size",
        "palette",
        "pattern",
        "shape",
    }
    load_toy_id(tmp_path / "toy_id.safetensors")
    load_toy_prompt(tmp_path / "toy_prompt.safetensors")
    assert any("segmenter step" in line for line in logs)


def test_blur_keeps_flat_images_and_smooths_edges():
    flat = torch.full((2, 3, 8, 8), 0.3)
    torch.testing.assert_close(blur(flat, torch.tensor([0.0, 1.0])), flat)
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0
    out = blur(step, torch.tensor([1.0]))
    assert 0.0 < out[0, 0, 0, 3] < 0.5 < out[0, 0, 0, 4] < 1.0
    torch.testing.assert_close(blur(step, torch.tensor([0.0])), step)


def test_cli_requires_an_output_directory(capsys):
    try:
        main([])
    except SystemExit as e:
        assert e.code == 2
    assert "--out" in capsys.readouterr().err
