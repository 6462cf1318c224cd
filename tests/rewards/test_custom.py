"""custom / python:... rewards and the example in examples/custom_reward.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cgrpo.config import ConfigError
from cgrpo.rewards import ScoreRequest, build_reward
from cgrpo.rewards.custom import resolve_custom

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_reward.py"


def req(images):
    n = images.shape[0]
    return ScoreRequest(
        images=images, prompts=[f"p{i}" for i in range(n)], references=[images[:1]] * n
    )


def test_example_colorfulness_by_file_target(make_images):
    reward = build_reward("custom", {"target": f"{EXAMPLE}:colorfulness"})
    assert reward.columns == ("colorfulness",)
    grey = torch.full((1, 3, 16, 16), 0.4)
    vivid = torch.zeros(1, 3, 16, 16)
    vivid[0, 0, :, :8] = 1.0
    vivid[0, 2, :, 8:] = 1.0
    out = reward.score(req(torch.cat([grey, vivid, make_images(1, 16, 16)])))["colorfulness"]
    assert out[0].item() == pytest.approx(0.0, abs=1e-3)
    assert out[1] > 100 and out[1] > out[2] > 0


def test_python_spec_with_kwargs_and_list_output():
    reward = resolve_custom(
        f"python:{EXAMPLE}:brightness", {"kwargs": {"target": 0.2}, "column": "bright"}
    )
    assert reward.name == f"python:{EXAMPLE}:brightness" and reward.columns == ("bright",)
    imgs = torch.stack([torch.full((3, 8, 8), v) for v in (0.2, 1.0)])
    assert reward.score(req(imgs))["bright"].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


def test_dict_output_needs_declared_columns():
    good = build_reward(
        "custom", {"target": f"{EXAMPLE}:image_stats", "columns": ["brightness", "colorfulness"]}
    )
    out = good.score(req(torch.rand(3, 3, 8, 8)))
    assert list(out) == ["brightness", "colorfulness"] and out["brightness"].shape == (3,)
    bad = build_reward("custom", {"target": f"{EXAMPLE}:image_stats"})
    with pytest.raises(TypeError, match="declare them with the columns option"):
        bad.score(req(torch.rand(2, 3, 8, 8)))


def test_module_target_and_clear_errors(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "import torch\n"
        "def ones(images, prompts, references):\n    return torch.ones(images.shape[0])\n"
        "def short(images, prompts, references):\n    return [1.0]\n"
        "def words(images, prompts, references):\n    return ['high'] * len(prompts)\n"
        "def nan(images, prompts, references):\n    return torch.full((len(prompts),), float('nan'))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    imgs = torch.rand(2, 3, 8, 8)
    assert build_reward("custom", {"target": "my_rewards:ones"}).score(req(imgs))[
        "ones"
    ].tolist() == [1, 1]
    with pytest.raises(ValueError, match="returned 1 scores for 2 images"):
        build_reward("custom", {"target": "my_rewards:short"}).score(req(imgs))
    with pytest.raises(TypeError, match="not numbers"):
        build_reward("custom", {"target": "my_rewards:words"}).score(req(imgs))
    with pytest.raises(ValueError, match=r"reward 'python:my_rewards:nan' gave a non-finite score"):
        resolve_custom("python:my_rewards:nan").score(req(imgs))
    with pytest.raises(ValueError, match=r"rewards\.custom\.options\.target = 'my_rewards:absent'"):
        build_reward("custom", {"target": "my_rewards:absent"})
    with pytest.raises(ValueError, match="cannot import 'no_such_module_xyz'"):
        build_reward("custom", {"target": "no_such_module_xyz:f"})
    with pytest.raises(FileNotFoundError, match="missing.py"):
        build_reward("custom", {"target": str(tmp_path / "missing.py") + ":f"})
    with pytest.raises(ValueError, match="expected 'package.module:function'"):
        build_reward("custom", {"target": "just_a_name"})
    with pytest.raises(ConfigError, match=r"rewards\.custom\.options\.target"):
        build_reward("custom", {})
