"""Checkpoints survive a SIGKILL at every phase of their write, and damage is detected.

Each case forks the test process (torch already imported, so it takes milliseconds), lets
the child write a checkpoint with ``CGRPO_FAULT`` set to kill it at one phase, and then
resumes the run in the parent with the real ``Trainer(resume=True)``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal

import pytest
import torch
from reliability_helpers import fork

from cgrpo.config import load_config
from cgrpo.training import Trainer
from cgrpo.training.checkpoint import (
    DamagedCheckpoint,
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    save_checkpoint,
    verify_directory,
)
from cgrpo.training.faults import ENV

# every phase of a write: before it, inside each file, between the files, around the rename
PHASES = [
    "checkpoint.start:kill",
    "checkpoint.file#1:tear",  # mid-way through adapter.safetensors
    "checkpoint.file#1:kill",  # between adapter.safetensors and training_state.pt
    "checkpoint.file#2:tear",  # mid-way through training_state.pt
    "checkpoint.file#3:kill",
    "checkpoint.written:kill",  # all files and the manifest, before the rename
    "checkpoint.swap:kill",  # the same step's older copy moved aside, new one not in place
    "checkpoint.renamed:kill",  # in place, older copies not yet removed
]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tiny_overrides):
    """A run with one checkpoint (step 2, keep_checkpoints=1) and its live trainer."""
    config = load_config(
        None,
        [*tiny_overrides, "train.steps=2", "logging.keep_checkpoints=1", "logging.sample_every=0"],
    )
    run = tmp_path_factory.mktemp("base") / "run"
    trainer = Trainer(config, run)
    trainer.train()
    return config, run, trainer


def lora(policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.named_trainable_parameters()}


def killed_while_saving(trainer, run, step: int, fault: str) -> bool:
    """Write checkpoint ``step`` of ``trainer``'s state into ``run`` in a child process that
    ``fault`` kills; True if it died of SIGKILL."""
    pid = fork()
    if pid == 0:  # the child: write, then leave without running the parent's exit handlers
        os.environ[ENV] = fault
        try:
            save_checkpoint(
                run, step, trainer.policy, trainer.optimizer, trainer.scheduler, trainer.config, 1
            )
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


CASES = [
    pytest.param(fault, same, id=f"{fault}-{'same-step-again' if same else 'next-step'}")
    for fault in PHASES
    for same in (False, True)
    # only a second save of the same step moves an older copy aside
    if same or not fault.startswith("checkpoint.swap")
]


@pytest.mark.parametrize(("fault", "same_step"), CASES)
def test_a_kill_at_any_phase_leaves_a_resumable_run(base_run, tmp_path, fault, same_step):
    config, base, trainer = base_run
    run = tmp_path / "run"
    shutil.copytree(base, run)
    old = lora(trainer.policy)
    with torch.no_grad():  # the state being saved differs from the one on disk
        for p in trainer.policy.trainable_parameters():
            p.add_(1.0)
    new = lora(trainer.policy)
    try:
        step = 2 if same_step else 3
        assert killed_while_saving(trainer, run, step, fault)
    finally:
        with torch.no_grad():
            for name, p in trainer.policy.named_trainable_parameters():
                p.copy_(old[name])

    written = fault.startswith("checkpoint.renamed")
    resumed = Trainer(config, run, resume=True)
    assert resumed.step == (step if written else 2)
    got = lora(resumed.policy)
    want = new if written else old
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)

    # the next save tidies what the kill left behind
    resumed.config.train.steps = resumed.step + 1
    resumed.train()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == [f"step-{resumed.step:06d}"]


def test_a_damaged_latest_checkpoint_falls_back_with_one_line(tiny_config, tmp_path, caplog):
    run = tmp_path / "run"
    Trainer(tiny_config("train.steps=4"), run).train()
    assert [p.name for p in list_checkpoints(run)] == ["step-000002", "step-000004"]
    latest = checkpoint_dir(run, 4) / "training_state.pt"
    latest.write_bytes(latest.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        resumed = Trainer(tiny_config("train.steps=4"), run, resume=True)
    assert resumed.step == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "step-000004" in warnings[0] and "training_state.pt" in warnings[0]
    resumed.train()  # the damaged step 4 is written again, intact
    verify_directory(checkpoint_dir(run, 4))
    assert latest_checkpoint(run) == checkpoint_dir(run, 4)


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[:-1]),  # truncated
        lambda p: p.write_bytes(b"x" + p.read_bytes()[1:]),  # same size, other bytes
        lambda p: p.unlink(),
    ],
    ids=["truncated", "flipped", "missing"],
)
def test_verification_names_the_damaged_file(tiny_config, tmp_path, damage):
    run = tmp_path / "run"
    Trainer(tiny_config("train.steps=2"), run).train()
    path = checkpoint_dir(run, 2)
    verify_directory(path)
    verify_directory(run / "final")
    damage(path / "adapter.safetensors")
    with pytest.raises(DamagedCheckpoint, match="adapter.safetensors"):
        verify_directory(path)
    assert latest_checkpoint(run) is None
    with pytest.raises(FileNotFoundError, match="no intact checkpoint"):
        Trainer(tiny_config("train.steps=2"), run, resume=True)


def test_a_full_disk_mid_write_keeps_the_previous_checkpoint(base_run, tmp_path, monkeypatch):
    config, base, trainer = base_run
    run = tmp_path / "run"
    shutil.copytree(base, run)
    monkeypatch.setenv(ENV, "checkpoint.file#2:enospc")
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(
            run, 3, trainer.policy, trainer.optimizer, trainer.scheduler, trainer.config, 1
        )
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002"]
    verify_directory(checkpoint_dir(run, 2))
