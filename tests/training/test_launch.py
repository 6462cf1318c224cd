"""The launch files (one node of 8 GPUs, several nodes, SLURM): accelerate reads the configs,
the scripts build valid launches and resume a run that exists."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "launch_8gpu.sh"
ACCELERATE_CONFIG = REPO / "configs" / "accelerate" / "8gpu.yaml"
MULTINODE = REPO / "scripts" / "launch_multinode.sh"
MULTINODE_CONFIG = REPO / "configs" / "accelerate" / "multinode.yaml"
SBATCH = REPO / "scripts" / "slurm" / "train.sbatch"


def test_accelerate_reads_the_8gpu_config():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(ACCELERATE_CONFIG))
    assert config.distributed_type == DistributedType.MULTI_GPU
    assert (config.num_machines, config.num_processes, config.gpu_ids) == (1, 8, "all")
    assert not config.use_cpu


def fake_command(tmp_path: Path, name: str, body: str) -> dict[str, str]:
    """Put a stand-in shell script ``name`` first on PATH; the environment to run with."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / name
    fake.write_text(f"#!/bin/bash\n{body}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def launched(tmp_path: Path, *args: str, script: Path = SCRIPT, **env: str) -> list[str]:
    """Run a launch script with a stand-in ``accelerate`` that records its arguments."""
    path_env = fake_command(tmp_path, "accelerate", f'printf "%s\\n" "$@" > {tmp_path / "argv"}')
    run_env = {**path_env, **env}
    subprocess.run(["bash", str(script), *args], check=True, env=run_env, cwd=tmp_path)
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


def test_accelerate_reads_the_multinode_config():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(MULTINODE_CONFIG))
    assert config.distributed_type == DistributedType.MULTI_GPU
    # not the same network: torchrun's c10d rendezvous at main_process_ip:main_process_port
    assert (config.rdzv_backend, config.same_network) == ("c10d", False)
    assert config.num_processes == config.num_machines * 8 and not config.use_cpu


NODE = {"MASTER_ADDR": "node-a", "MASTER_PORT": "1234", "GPUS_PER_NODE": "4"}


def test_multinode_script_launches_every_node_and_resumes(tmp_path):
    from accelerate.commands.launch import launch_command_parser

    argv = launched(
        tmp_path,
        "c.yaml",
        "runs/x",
        "train.steps=2",
        script=MULTINODE,
        **NODE,
        NNODES="3",
        NODE_RANK="2",
    )
    parsed = launch_command_parser().parse_args(argv[1:])
    assert parsed.config_file == str(MULTINODE_CONFIG)
    assert (parsed.num_machines, parsed.machine_rank, parsed.num_processes) == (3, 2, 12)
    assert (parsed.main_process_ip, parsed.main_process_port) == ("node-a", 1234)
    assert parsed.module and parsed.training_script == "cgrpo.cli"
    assert parsed.training_script_args == [
        "train",
        "--config",
        "c.yaml",
        "--output",
        "runs/x",
        "train.steps=2",
    ]

    # under srun, SLURM names the nodes; a run that exists (its config.yaml) is resumed,
    # also one stopped before its first checkpoint
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "config.yaml").write_text("{}\n")
    slurm = {"SLURM_NNODES": "2", "SLURM_NODEID": "1"}
    argv = launched(tmp_path, "c.yaml", "runs/x", script=MULTINODE, **NODE, **slurm)
    parsed = launch_command_parser().parse_args(argv[1:])
    assert (parsed.num_machines, parsed.machine_rank, parsed.num_processes) == (2, 1, 8)
    assert parsed.training_script_args == ["train", "--resume", "runs/x"]
    # the sbatch script decides once for all nodes
    argv = launched(
        tmp_path, "c.yaml", "runs/x", script=MULTINODE, **NODE, **slurm, CGRPO_RESUME="no"
    )
    assert argv[-4:] == ["--config", "c.yaml", "--output", "runs/x"]


def test_multinode_script_names_what_is_missing(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NNODES"))}
    for given, missing in [
        ({}, "NNODES"),
        ({"NNODES": "2"}, "NODE_RANK"),
        ({"NNODES": "2", "NODE_RANK": "0"}, "MASTER_ADDR"),
    ]:
        proc = subprocess.run(
            ["bash", str(MULTINODE), "c.yaml", "runs/x"],
            capture_output=True,
            text=True,
            env={**env, **given},
            cwd=tmp_path,
        )
        assert proc.returncode != 0
        assert f"set {missing}" in proc.stderr


def run_sbatch(tmp_path: Path, *, hold: bool, signal_usr1: bool) -> tuple[int, dict[str, str]]:
    """Run the sbatch script as SLURM would, with stand-in ``srun`` and ``scontrol``."""
    import signal
    import time

    log = tmp_path / "log"
    log.mkdir(exist_ok=True)
    srun = f"""printf "%s\\n" "$@" > {log}/srun_argv
env | grep -E '^(CGRPO_RESUME|MASTER_ADDR|MASTER_PORT|GPUS_PER_NODE)=' | sort > {log}/srun_env
trap 'echo TERM >> {log}/srun_signals; exit 143' TERM
touch {log}/srun_started
while [ -n "$HOLD" ]; do sleep 0.05; done"""
    fake_command(tmp_path, "srun", srun)
    scontrol = f"""if [ "$1" = show ]; then printf "node-a\\nnode-b\\n"; exit; fi
echo "$@" >> {log}/scontrol"""
    env = fake_command(tmp_path, "scontrol", scontrol)
    env.update(
        SLURM_SUBMIT_DIR=str(REPO),
        SLURM_JOB_ID="123456",
        SLURM_JOB_NODELIST="node-[a-b]",
        SLURM_NNODES="2",
        HOLD="1" if hold else "",
    )
    env.pop("MASTER_ADDR", None)
    env.pop("MASTER_PORT", None)
    proc = subprocess.Popen(
        ["bash", str(SBATCH), "c.yaml", str(tmp_path / "run"), "train.steps=9"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if signal_usr1:
        end = time.monotonic() + 30
        while not (log / "srun_started").exists() and time.monotonic() < end:
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)  # SLURM: the time limit is near
    out, _ = proc.communicate(timeout=60)
    files = {p.name: p.read_text() for p in log.iterdir()}
    files["stdout"] = out
    return proc.returncode, files


def test_sbatch_starts_then_resumes_and_requeues_at_the_time_limit(tmp_path):
    rc, files = run_sbatch(tmp_path, hold=False, signal_usr1=False)
    assert rc == 0, files["stdout"]
    run = str(tmp_path / "run")
    assert files["srun_argv"].splitlines() == [
        "--ntasks-per-node=1",
        "scripts/launch_multinode.sh",
        "c.yaml",
        run,
        "train.steps=9",
    ]
    env = dict(line.split("=", 1) for line in files["srun_env"].splitlines())
    assert env == {
        "CGRPO_RESUME": "no",
        "MASTER_ADDR": "node-a",
        "MASTER_PORT": str(20000 + 123456 % 20000),
        "GPUS_PER_NODE": "8",
    }
    assert "scontrol" not in files  # a finished run is not requeued

    # a restart finds the run's config.yaml: --resume; USR1 stops the step, then requeues
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("{}\n")
    for name in ("srun_started", "srun_env"):
        (tmp_path / "log" / name).unlink()
    rc, files = run_sbatch(tmp_path, hold=True, signal_usr1=True)
    assert rc == 143, files["stdout"]
    assert "CGRPO_RESUME=yes" in files["srun_env"]
    assert files["srun_signals"] == "TERM\n"
    assert files["scontrol"] == "requeue 123456\n"
