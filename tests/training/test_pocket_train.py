"""The pocket pretraining recipe: schedule maths and an end-to-end miniature run."""

import json
import math

import pytest
import torch

from cgrpo.config import ConfigError
from cgrpo.policies import build_policy
from cgrpo.training.pocket_eval import flow_matching_loss, sample_sigmas
from cgrpo.training.pocket_train import PretrainOptions, lr_factor, main, training_progress

TINY_ARGS = ["--dim", "16", "--depth", "1", "--heads", "2", "--text-max-length", "12"]


def test_schedule_warms_up_then_anneals_by_steps_or_time():
    assert lr_factor(0, 10, 0.0) == pytest.approx(0.1)
    assert lr_factor(9, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(10, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(50, 10, 0.5) == pytest.approx(0.55)
    assert lr_factor(99, 10, 1.0) == pytest.approx(0.1)
    # the step count decides on a fast machine, the wall clock on a slow one
    assert training_progress(55, 100, 10, elapsed=1.0, budget=100.0) == pytest.approx(0.5)
    assert training_progress(55, 100, 10, elapsed=80.0, budget=100.0) == pytest.approx(0.8)
    assert training_progress(55, 100, 10, elapsed=80.0, budget=0.0) == pytest.approx(0.5)
    assert training_progress(3, 100, 10, elapsed=0.0, budget=0.0) == 0.0


def test_sigma_sampling():
    g = torch.Generator().manual_seed(0)
    for kind in ("logit-normal", "uniform"):
        s = sample_sigmas(4000, kind, g)
        assert s.shape == (4000,) and 0 < s.min() and s.max() < 1
    ln = sample_sigmas(4000, "logit-normal", g)
    assert abs(float(ln.mean()) - 0.5) < 0.02 and float(ln.std()) < 0.25  # centred, peaked
    with pytest.raises(ValueError, match="unknown sigma sampling"):
        sample_sigmas(2, "beta", g)


def test_flow_matching_loss_matches_its_definition():
    pol = build_policy("pocket", {"weights": "random", "dim": 16, "depth": 1, "heads": 2})
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 64, 48, generator=g) * 2 - 1
    noise = torch.randn(2, 64, 48, generator=g)
    sigma = torch.tensor([0.2, 0.9])
    cond = pol.encode(["a ball", "a box"], [torch.rand(1, 3, 32, 32)] * 2)
    xs = (1 - sigma.view(-1, 1, 1)) * x0 + sigma.view(-1, 1, 1) * noise
    expected = (pol(xs, sigma, cond) - (noise - x0)).square().mean(dim=(1, 2))
    per = flow_matching_loss(pol, x0, cond, noise, sigma, per_sample=True)
    torch.testing.assert_close(per, expected)
    torch.testing.assert_close(flow_matching_loss(pol, x0, cond, noise, sigma), expected.mean())


def test_miniature_run_writes_loadable_weights_and_a_report(tmp_path, capsys):
    out = tmp_path / "pocket.safetensors"
    grid = tmp_path / "grid.png"
    args = [
        "--out",
        str(out),
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--warmup-steps",
        "1",
        "--eval-pairs",
        "4",
        "--eval-identities",
        "1",
        "--sample-steps",
        "2",
        "--grid",
        str(grid),
        "--no-progress",
        *TINY_ARGS,
    ]
    threads = torch.get_num_threads()
    assert main([*args, "--threads", str(threads + 1)]) == 0
    assert torch.get_num_threads() == threads  # the caller's setting is restored
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["steps"] == 3 and report["seed"] == 0 and not report["stopped_early"]
    assert (
        report["recipe"]["property_fraction"] == PretrainOptions().property_fraction
    )  # defaults recorded
    assert report["architecture"]["dim"] == 16
    losses = report["flow_matching_loss"]["heldout_identities"]
    assert set(losses) == {"recontext", "property", "all"}
    assert all(math.isfinite(v) for v in losses.values())
    samples = report["toybench_samples"]
    assert samples["recontext"]["items"] + samples["property"]["items"] == 25
    assert 0 <= samples["property"]["pixel_mse"] <= 1
    assert grid.is_file()
    assert '"steps": 3' in capsys.readouterr().out
    # the file loads as a backend with the same architecture, and only with it
    opts = {"weights": str(out), "dim": 16, "depth": 1, "heads": 2, "text_max_length": 12}
    pol = build_policy("pocket", opts)
    assert pol.denoiser.patch_in.weight.dtype == torch.float32
    with pytest.raises(ConfigError, match=r"model\.options\.dim = 128: .*dim = 16"):
        build_policy("pocket", {"weights": str(out)})


def test_bad_flags_are_reported_with_their_name(capsys):
    assert main(["--property-fraction", "1.5"]) == 2
    assert "pocket_train.property_fraction = 1.5" in capsys.readouterr().err


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "10% of lr" in out  # a % in a help text once crashed argparse
    assert "--warmup-steps" in out and "--property-fraction" in out
