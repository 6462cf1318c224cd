"""Several machines, played on this one: two launcher invocations ("nodes") of one process
each meet in a c10d rendezvous on 127.0.0.1 (gloo on the CPU), through the files users run:
``scripts/launch_multinode.sh`` with ``configs/accelerate/multinode.yaml``.

The invariant of ``test_multiprocess.py`` holds across nodes: two nodes with ``g`` groups
each train the LoRA one process trains with ``2 g`` groups. Here it also holds across a lost
node: one node is killed mid-run, the other stops within a bounded time with one line (and
a checkpoint), and ``--resume`` on both nodes finishes the run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ddp_worker import TINY
from safetensors.torch import load_file

from cgrpo.config import load_config
from cgrpo.training import Trainer
from cgrpo.training.distributed import lost_peer, process_group_kwargs

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "launch_multinode.sh"
BIN = Path(sys.executable).parent
ACCELERATE = BIN / "accelerate"
STOP_LINE = "cgrpo: training stopped at step "


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.is_file() else ""


def wait_for(condition, nodes, logs, what: str, limit: float = 180.0, poll: float = 0.2) -> None:
    """Poll ``condition`` until it holds; fail with the nodes' logs if a node ended or
    ``limit`` seconds passed."""
    end = time.monotonic() + limit
    while not condition():
        ended = [i for i, p in enumerate(nodes) if p.poll() is not None]
        if ended or time.monotonic() > end:
            shown = "\n".join(f"--- node {i}\n{log_tail(log)}" for i, log in enumerate(logs))
            pytest.fail(f"waiting for {what}: nodes {ended} ended\n{shown}")
        time.sleep(poll)


def start_nodes(tmp_path: Path, name: str, config: Path, run: Path, overrides: list[str]):
    """Start two nodes of one process each; node 0 first, so it hosts the rendezvous."""
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "NNODES": "2",
        "GPUS_PER_NODE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    nodes, logs = [], []
    for rank in range(2):
        log = tmp_path / f"{name}-node{rank}.log"
        logs.append(log)
        with open(log, "w") as out:
            nodes.append(
                subprocess.Popen(
                    ["bash", str(SCRIPT), str(config), str(run), *overrides],
                    env={**env, "NODE_RANK": str(rank)},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a node: its launcher's own process group
                )
            )
        if rank == 0:
            wait_for(lambda: listening(port), nodes, logs, "node 0's rendezvous store")
    return nodes, logs


def workers_of(pid: int) -> dict[int, int]:
    """``{pid: global rank}`` of the training processes a launcher started (Linux /proc)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent != pid:
                continue
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
        if ranks:
            found[int(proc.name)] = int(ranks[0])
    return found


def kill_node(node: subprocess.Popen) -> None:
    """SIGKILL a node at once: its training processes and its launcher (a lost machine)."""
    for pid in workers_of(node.pid):
        os.kill(pid, signal.SIGKILL)
    os.killpg(node.pid, signal.SIGKILL)
    node.wait()


def stop_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith(STOP_LINE)]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate's launcher not installed")
def test_two_nodes_train_the_one_process_lora_through_a_lost_node(tmp_path):
    shared = [
        "sampling.group_size=3",
        "train.updates_per_step=2",
        "train.clip_range=100",  # see test_multiprocess.py: keeps the comparison smooth
    ]
    config = tmp_path / "tiny.yaml"
    config.write_text("{}\n")  # the embedded defaults; TINY shrinks them
    run = tmp_path / "run"
    node_args = [
        *TINY,
        *shared,
        "sampling.groups_per_step=2",
        "train.steps=4",
        "logging.checkpoint_every=1",
        # bounds the wait if the lost node's connection does not close (a hang)
        "train.collective_timeout=30",
    ]
    nodes, logs = start_nodes(tmp_path, "first", config, run, node_args)
    try:
        wait_for(lambda: all(workers_of(n.pid) for n in nodes), nodes, logs, "the workers")
        victim = next(i for i, n in enumerate(nodes) if 1 in workers_of(n.pid).values())
        survivor = 1 - victim
        first = run / "checkpoints" / "step-000001"
        wait_for(first.is_dir, nodes, logs, "the first checkpoint", poll=0.05)
        kill_node(nodes[victim])  # 3 steps to go: the kill lands mid-run
        # bounded: the survivor stops by itself (the wait is only a safety net)
        rc = nodes[survivor].wait(timeout=240)
    finally:
        for node in nodes:
            if node.poll() is None:
                kill_node(node)

    assert rc == 1, log_tail(logs[survivor])
    # rank 0 survived: one line that says why, what was saved and how to continue
    (line,) = stop_lines(logs[survivor])
    assert "lost contact with another process of the run" in line
    assert f"continue with: cgrpo train --resume {run}" in line
    assert "checkpoint" in line
    assert not (run / "final").exists()

    # --resume on both nodes (the script sees the run's config.yaml) finishes the run
    nodes, logs = start_nodes(tmp_path, "resumed", config, run, node_args)
    try:
        for node in nodes:
            node.wait(timeout=240)
    finally:
        for node in nodes:
            if node.poll() is None:
                kill_node(node)
    for node, log in zip(nodes, logs, strict=True):
        assert node.returncode == 0, log_tail(log)
    resumed = "\n".join(log.read_text() for log in logs)
    assert "resumed from" in resumed
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]

    # ... and the LoRA is the one one process trains with twice the groups
    one_process = [*TINY, *shared, "sampling.groups_per_step=4", "train.steps=4"]
    one = Trainer(load_config(None, one_process), tmp_path / "one")
    one.train()
    expected = one.policy.adapter_state_dict()
    got = load_file(str(run / "final" / "adapter.safetensors"))
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ the lost-peer line

PEER = """
import os, sys, time
import torch
from accelerate import Accelerator
from cgrpo.training.distributed import lost_peer, process_group_kwargs
mode = sys.argv[1]
acc = Accelerator(cpu=True, kwargs_handlers=process_group_kwargs(float(sys.argv[2])))
acc.wait_for_everyone()
if acc.process_index == 1:
    if mode == "exit":
        os._exit(0)
    time.sleep(120)
time.sleep(0.5)
try:
    torch.distributed.all_reduce(torch.ones(1))
except RuntimeError as e:
    print("LINE", lost_peer(e), flush=True)
    os._exit(0)
print("LINE no error", flush=True)
"""


@pytest.mark.parametrize(("mode", "expected"), [("exit", "by peer"), ("hang", "Timed out")])
def test_a_gone_or_silent_process_gives_one_line(mode, expected, tmp_path):
    """Real gloo errors: a peer that exits (its connection closes) and one that hangs (the
    process group's time-out, set through accelerate, ends the wait)."""
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PEER, mode, "6"],  # time-out (s): above start-up skew
            env={
                **os.environ,
                "OMP_NUM_THREADS": "1",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "WORLD_SIZE": "2",
                "RANK": str(rank),
                "LOCAL_RANK": "0",
                "LOCAL_WORLD_SIZE": "1",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        out, _ = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    (line,) = [ln for ln in out.splitlines() if ln.startswith("LINE ")]
    assert line.startswith("LINE lost contact with another process of the run"), out[-2000:]
    assert expected in line
    assert "gloo" not in line and "This is typically" not in line


def test_lost_peer_names_only_distributed_errors():
    import torch.distributed as dist

    assert lost_peer(RuntimeError("CUDA out of memory")) is None
    assert lost_peer(ValueError("gloo/transport/ in a value error")) is None
    line = lost_peer(dist.DistNetworkError("Broken pipe"))
    assert line is not None and line.endswith(": Broken pipe")
    assert len(lost_peer(dist.DistBackendError("x" * 1000))) < 400


def test_the_timeout_reaches_init_process_group_even_at_accelerates_default():
    from datetime import timedelta

    # accelerate drops fields equal to its defaults (600 s is its NCCL default)
    for seconds in (600.0, 7.5):
        (handler,) = process_group_kwargs(seconds)
        assert handler.to_kwargs() == {"timeout": timedelta(seconds=seconds)}


def test_a_process_other_than_0_names_the_checkpoint_on_disk(tmp_path):
    """After a lost peer only process 0 writes; another process (whose process 0 may be the
    one gone) names the newest checkpoint in the run directory instead of claiming a save."""
    from types import SimpleNamespace

    stub = SimpleNamespace(is_main=False, run_dir=tmp_path, _mid_update=False)
    assert Trainer._save_after_stop(stub, barrier=False).endswith("the last one is none yet")
    for step in (2, 3):  # written before manifests existed: an adapter file is enough
        newest = tmp_path / "checkpoints" / f"step-{step:06d}"
        newest.mkdir(parents=True)
        (newest / "adapter.safetensors").write_bytes(b"")
    assert Trainer._save_after_stop(stub, barrier=False) == (
        f"process 0 writes checkpoints; the last one is {newest}"
    )
