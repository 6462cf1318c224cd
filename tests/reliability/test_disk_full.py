"""A full disk in any writer of a run ends it with one line that names the file it could not
write and the last intact checkpoint, exit status 1.

Faults are injected at the ``write.*`` points (:mod:`cgrpo.training.faults`): ``full`` turns
the file about to be written into a link to ``/dev/full``, so the real writer (``torch.save``,
PIL, a text write) meets ENOSPC; ``enospc`` raises it for writers that replace the file
instead of writing through it (safetensors) or where a link would destroy data already
written (``metrics.jsonl``). TensorBoard meets a real ENOSPC in its writer thread.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from safetensors import SafetensorError

from cgrpo.cli import main
from cgrpo.training import Trainer, TrainingFailed
from cgrpo.training.checkpoint import checkpoint_dir, latest_checkpoint, verify_directory
from cgrpo.training.faults import ENV
from cgrpo.training.writes import DiskFull, writing

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")

QUIET = ["train.steps=3", "logging.checkpoint_every=1", "logging.keep_checkpoints=3"]
CKPT2 = "checkpoints/step-000002.tmp"


def both(point: str, action: str) -> str:
    """The fault at the 2nd time ``point`` is reached (checkpoint 2) and at the retry."""
    return f"{point}#2:{action},{point}#3:{action}"


# (fault, file it names, relative to the run; step it stopped at; stage; checkpoint saved)
CASES = {
    "checkpoint-adapter": (both("write.adapter", "enospc"), f"{CKPT2}/adapter.safetensors", 2),
    "torch-save": (both("write.training_state", "full"), f"{CKPT2}/training_state.pt", 2),
    "state-json": (both("write.state", "full"), f"{CKPT2}/state.json", 2),
    "checkpoint-config": (both("write.checkpoint_config", "full"), f"{CKPT2}/config.yaml", 2),
    "manifest": (both("write.manifest", "full"), f"{CKPT2}/manifest.json", 2),
    "metrics": ("write.metrics#2:enospc", "metrics.jsonl", 2),
    "sample-grid": ("write.grid#2:full", "samples/step-000002.png", 2),
    "final-adapter": ("write.adapter#4:enospc", "final.tmp/adapter.safetensors", 3),
    "summary": ("write.summary:full", "summary.md", 3),
}


@pytest.mark.parametrize(("fault", "written", "step"), CASES.values(), ids=CASES.keys())
def test_a_full_disk_in_each_writer(tiny_config, tmp_path, monkeypatch, fault, written, step):
    run = tmp_path / "run"
    monkeypatch.setenv(ENV, fault)
    with pytest.raises(TrainingFailed) as info:
        Trainer(tiny_config(*QUIET), run).train()
    message = str(info.value)
    assert info.value.exit_code == 1 and "\n" not in message
    assert f"at step {step} of 3, during " in message
    assert f": disk full: could not write {run / written} (No space left on device" in message
    assert "free on its file system)" in message
    last = latest_checkpoint(run)
    if written.startswith(CKPT2):  # the checkpoint failed twice: the one before stands
        assert last == checkpoint_dir(run, 1)
        assert f"no new checkpoint (disk full: could not write {run / written}" in message
        assert f"; the last checkpoint is {last}; " in message
        assert not list((run / "checkpoints").glob("*.tmp"))
    else:
        assert last == checkpoint_dir(run, step)
        assert f"; checkpoint saved to {last}; " in message
    verify_directory(last)
    assert message.endswith(
        f"continue with: cgrpo train --resume {run}; traceback in {run / 'error.log'}"
    )
    assert "OSError: [Errno 28] No space left on device" in (run / "error.log").read_text()


def test_tensorboard_meets_a_real_full_disk(tiny_config, tmp_path, capfd):
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(*QUIET), run)
    (events,) = (run / "tensorboard").iterdir()
    events.unlink()
    events.symlink_to("/dev/full")  # TensorBoard appends to it from its writer thread
    with pytest.raises(TrainingFailed) as info:
        trainer.train()
    message = str(info.value)
    assert ": disk full: could not write " in message
    assert f"could not write {run / 'tensorboard'} (No space left on device" in message
    assert f"checkpoint saved to {checkpoint_dir(run, trainer.step)}" in message
    assert "Traceback" not in capfd.readouterr().err  # the writer thread stays quiet


def test_a_full_disk_at_start_up_is_one_line(tmp_path, tiny_overrides, capsys, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv(ENV, "write.config:full")
    assert main(["train", "--output", str(run), *tiny_overrides]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"cgrpo: error: disk full: could not write {run / 'config.yaml.tmp'}")
    assert err.endswith("free on its file system); no checkpoint yet")


def test_a_full_disk_on_resume_names_the_last_checkpoint(tiny_config, tmp_path, monkeypatch):
    run = tmp_path / "run"
    Trainer(tiny_config("train.steps=2", "logging.sample_every=0"), run).train()
    monkeypatch.setenv(ENV, "write.config:full")
    with pytest.raises(DiskFull) as info:
        Trainer(tiny_config("train.steps=3"), run, resume=True)
    assert str(info.value).endswith(f"; the last checkpoint is {checkpoint_dir(run, 2)}")


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        ),
    ],
    ids=["enospc", "quota", "safetensors"],
)
def test_writing_names_the_file_whatever_the_form(tmp_path, error):
    target = tmp_path / "a.bin"
    with pytest.raises(DiskFull) as info, writing(target, "test"):
        raise error
    assert str(info.value).startswith(f"disk full: could not write {target} (")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)


def test_writing_leaves_other_errors_alone(tmp_path):
    with pytest.raises(PermissionError), writing(tmp_path / "a", "test"):
        raise PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(RuntimeError, match="unexpected pos"), writing(tmp_path / "a", "test"):
        # torch's short write on a disk with room: not taken for a full disk
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")


def test_the_file_an_error_names_wins(tmp_path):
    named = tmp_path / "inner" / "file"
    with pytest.raises(DiskFull, match=f"could not write {named} "), writing(Path(tmp_path), "t"):
        raise OSError(errno.ENOSPC, "No space left on device", str(named))
