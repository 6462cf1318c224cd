"""custom / python:... rewards and the example in examples/custom_reward.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cgrpo.config import ConfigError
from cgrpo.rewards import RewardFailure, ScoreRequest, build_reward
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
    with pytest.raises(RewardFailure, match="declare them with the columns option"):
        bad.score(req(torch.rand(2, 3, 8, 8)))


def test_module_target_and_clear_errors(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "import torch\n"
        "def ones(images, prompts, references):\n    return torch.ones(images.shape[0])\n"
        "def short(images, prompts, references):\n    return [1.0]\n"
        "def words(images, prompts, references):\n    return ['high'] * len(prompts)\n"
        "def nothing(images, prompts, references):\n    return None\n"
        "def boom(images, prompts, references):\n    raise ValueError('no score\\nfor this')\n"
        "def nan(images, prompts, references):\n    return torch.full((len(prompts),), float('nan'))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    imgs = torch.rand(2, 3, 8, 8)
    assert build_reward("custom", {"target": "my_rewards:ones"}).score(req(imgs))[
        "ones"
    ].tolist() == [1, 1]
    for fn, cause in [
        ("short", "my_rewards:short returned 1 scores for 2 images"),
        ("words", "my_rewards:words returned list, not numbers: "),
        ("nothing", "my_rewards:nothing returned NoneType, not numbers: "),
        ("boom", "my_rewards:boom raised ValueError: no score / for this"),
    ]:
        reward = resolve_custom(f"python:my_rewards:{fn}")
        with pytest.raises(RewardFailure) as e:
            reward.score(req(imgs))
        assert str(e.value).startswith(f"reward 'python:my_rewards:{fn}': {cause}"), str(e.value)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"reward 'python:my_rewards:nan' gave a non-finite score"):
        resolve_custom("python:my_rewards:nan").score(req(imgs))


def test_targets_that_cannot_be_imported_are_config_errors(tmp_path, monkeypatch):
    (tmp_path / "broken_syntax.py").write_text("def f(images, prompts, references)\n    return 1\n")
    (tmp_path / "raises_on_import.py").write_text("raise RuntimeError('needs a GPU')\n")
    (tmp_path / "my_rewards2.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cases = [
        ("broken_syntax:f", r"cannot import 'broken_syntax' for 'f': SyntaxError: "),
        (f"{tmp_path}/broken_syntax.py:f", r"for 'f': SyntaxError: .*broken_syntax\.py, line 1"),
        ("raises_on_import:g", r"for 'g': RuntimeError: needs a GPU"),
        ("no_such_module_xyz:f", r"cannot import 'no_such_module_xyz' for 'f': ModuleNotFound"),
        ("my_rewards2:absent", r"my_rewards2 has no callable 'absent'"),
        ("my_rewards2:x", r"my_rewards2 has no callable 'x'"),
        (f"{tmp_path}/missing.py:f", r"file .*missing\.py not found"),
        ("just_a_name", r"expected 'package\.module:function'"),
    ]
    for target, message in cases:
        with pytest.raises(ConfigError, match=r"rewards\.custom\.options\.target = .*" + message):
            build_reward("custom", {"target": target})
    with pytest.raises(ConfigError, match=r"rewards\.python:broken_syntax:f\.options\.target"):
        resolve_custom("python:broken_syntax:f")
    with pytest.raises(ConfigError, match=r"rewards\.custom\.options\.target"):
        build_reward("custom", {})
