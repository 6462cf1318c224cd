"""The command line: help, version, one-line errors with the right exit status."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cgrpo import __version__
from cgrpo.cli import build_parser, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cgrpo.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_version_and_help():
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"cgrpo {__version__}"
    out = run_cli("--help")
    assert out.returncode == 0
    assert "train" in out.stdout and "sample" in out.stdout


def test_every_listed_subcommand_has_help_and_a_handler():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) >= {"train", "sample", "config"}
    for name, p in sub.choices.items():
        assert callable(p.get_default("func")), name
        assert p.format_help()


def test_bad_config_value_is_one_line_exit_2():
    out = run_cli("config", "sampling.group_size=1")
    assert out.returncode == 2
    assert out.stderr.strip() == "cgrpo: config error: sampling.group_size = 1: must be >= 2"
    assert "Traceback" not in out.stderr


def test_train_bad_key_exits_2_before_any_work(capsys, tmp_path):
    code = main(["train", "--output", str(tmp_path / "run"), "train.stepz=3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "train.stepz" in err and "unknown key" in err
    assert not (tmp_path / "run").exists()


def test_sample_empty_prompt_and_missing_reference(tmp_path, capsys):
    assert main(["sample", "--config", "x.yaml", "--reference", "r.png", "--prompt", " "]) == 2
    assert "--prompt" in capsys.readouterr().err
    code = main(
        [
            "sample",
            "--config",
            "x.yaml",
            "--reference",
            str(tmp_path / "missing.png"),
            "--prompt",
            "a toy",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "reference image not found" in err and "missing.png" in err


@pytest.mark.parametrize("args", [["config", "--describe"], ["config"]])
def test_config_command_prints(args, capsys):
    assert main(args) == 0
    assert "sampling" in capsys.readouterr().out
