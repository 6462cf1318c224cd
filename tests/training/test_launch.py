"""The 8-GPU launch files: accelerate reads the config, the script builds a valid launch."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "launch_8gpu.sh"
ACCELERATE_CONFIG = REPO / "configs" / "accelerate" / "8gpu.yaml"


def test_accelerate_reads_the_8gpu_config():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(ACCELERATE_CONFIG))
    assert config.distributed_type == DistributedType.MULTI_GPU
    assert (config.num_machines, config.num_processes, config.gpu_ids) == (1, 8, "all")
    assert not config.use_cpu


def launched(tmp_path: Path, *args: str) -> list[str]:
    """Run the launch script with a stand-in ``accelerate`` that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "accelerate"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "argv"}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", str(SCRIPT), *args], check=True, env=env, cwd=tmp_path)
    return (tmp_path / "argv").read_text().splitlines()


def test_launch_script_starts_training_and_resumes(tmp_path):
    from accelerate.commands.launch import launch_command_parser

    argv = launched(tmp_path, "configs/flux-uno.yaml", "runs/uno", "train.steps=2")
    assert argv == [
        "launch",
        "--config_file",
        str(ACCELERATE_CONFIG),
        "-m",
        "cgrpo.cli",
        "train",
        "--config",
        "configs/flux-uno.yaml",
        "--output",
        "runs/uno",
        "train.steps=2",
    ]
    parsed = launch_command_parser().parse_args(argv[1:])  # accelerate accepts the flags
    assert parsed.module and parsed.training_script == "cgrpo.cli"
    assert parsed.training_script_args[:3] == ["train", "--config", "configs/flux-uno.yaml"]

    (tmp_path / "runs" / "uno" / "checkpoints" / "step-000010").mkdir(parents=True)
    argv = launched(tmp_path, "configs/flux-uno.yaml", "runs/uno", "train.steps=20")
    assert argv[-4:] == ["train", "--resume", "runs/uno", "train.steps=20"]


def test_launch_script_needs_config_and_output(tmp_path):
    proc = subprocess.run(
        ["bash", str(SCRIPT), "configs/flux-uno.yaml"], capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "usage: scripts/launch_8gpu.sh CONFIG.yaml OUTPUT_DIR" in proc.stderr
