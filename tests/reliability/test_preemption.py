"""Preemption at any moment: a run killed with SIGKILL again and again, from start-up through
its steps, checkpoint writes and the final adapter, and requeued each time, ends with the
adapter and the metrics of the run left alone.

A requeue script runs ``cgrpo train --resume RUN`` once the run has written its config
(a run with no checkpoint yet starts again from step 0 with that config) and the first
command otherwise (the run was killed before it had written anything to resume from).
"""

from __future__ import annotations

import json
import logging
import random
import time

import pytest
import torch
from reliability_helpers import killed_after, killed_by_fault, metric_steps
from safetensors.torch import load_file

from cgrpo.cli import main
from cgrpo.training.checkpoint import latest_checkpoint

STEPS = 3
ARGS = ["train.steps=3", "logging.checkpoint_every=1", "logging.sample_every=1"]
NEVER = 300.0  # a delay no attempt reaches; a child hung past it is killed and fails


def requeue(run, first: list[str]) -> list[str]:
    """The command a requeue script runs: resume once there is a config, else start."""
    return ["train", "--resume", str(run)] if (run / "config.yaml").is_file() else first


def adapter(run) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "adapter.safetensors")


def metric_rows(run) -> list[dict]:
    """metrics.jsonl without the timings (the only values that differ between runs)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


@pytest.fixture(scope="module")
def left_alone(tmp_path_factory, tiny_overrides):
    """The run without interruption, and how long it takes in a forked child like the
    killed ones (after a first run in this process has imported everything)."""
    folder = tmp_path_factory.mktemp("alone")
    assert main(["train", "--output", str(folder / "warm"), *tiny_overrides, *ARGS]) == 0
    run = folder / "run"
    start = time.monotonic()
    assert not killed_after(["train", "--output", str(run), *tiny_overrides, *ARGS], NEVER)
    duration = time.monotonic() - start
    assert_same_run(run, folder / "warm")  # the same in a child and in this process
    return run, duration


def assert_same_run(run, reference) -> None:
    assert metric_steps(run) == list(range(1, STEPS + 1))  # every step once
    assert metric_rows(run) == metric_rows(reference)
    want, got = adapter(reference), adapter(run)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name  # bit-identical


def test_sigkill_at_random_moments_then_requeue(left_alone, tmp_path, tiny_overrides):
    """Kills at moments drawn over a whole uninterrupted run, each followed by a requeue.
    A requeue that finishes before its kill ends an episode: the run must then equal the one
    left alone, and the next kill lands in a fresh run. Counting kills over episodes (rather
    than asking one run to take all of them) keeps the test independent of machine speed."""
    reference, duration = left_alone
    rng = random.Random(21)
    kills: list[float] = []
    episodes = 0

    def command(run):
        return requeue(run, ["train", "--output", str(run), *tiny_overrides, *ARGS])

    run = tmp_path / "run-0"
    for _attempt in range(80):
        if len(kills) >= 8:
            break
        delay = duration * rng.random()
        if killed_after(command(run), delay):
            kills.append(round(delay, 3))
        else:  # the requeue finished before the kill: the episode is over
            assert_same_run(run, reference)
            episodes += 1
            run = tmp_path / f"run-{episodes}"
    assert len(kills) >= 8, kills
    assert not killed_after(command(run), NEVER), kills
    assert_same_run(run, reference)


@pytest.mark.parametrize(
    "fault",
    [
        "startup:kill",  # before anything is written: the requeue starts the run again
        "setup.build:kill",  # folder and config claimed, the model loading
        "setup:kill",  # config written, model built, no step yet
        "step#2:kill",  # one step done, its metrics logged, no checkpoint
        "checkpoint.file#2:tear",  # the first checkpoint torn mid-way through a file
        "final.written:kill",  # the final adapter written, not yet in place
    ],
)
def test_killed_at_a_named_moment_then_requeued(
    left_alone, tmp_path, tiny_overrides, caplog, fault
):
    reference, _ = left_alone
    run = tmp_path / "run"
    first = ["train", "--output", str(run), *tiny_overrides, *ARGS]
    assert killed_by_fault(first, fault)
    argv = requeue(run, first)
    no_checkpoint = latest_checkpoint(run) is None
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    if argv[1] == "--resume" and no_checkpoint:
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert lines == [
            f"{run} holds a run stopped before its first checkpoint; starting it again "
            "from step 0 with its saved config"
        ]
    assert_same_run(run, reference)


def test_resume_of_a_run_with_damaged_checkpoints_only_is_refused(tiny_config, tmp_path):
    """No intact checkpoint but damaged ones: never silently thrown away by a restart."""
    from cgrpo.training import Trainer

    run = tmp_path / "run"
    Trainer(tiny_config("train.steps=2", "logging.sample_every=0"), run).train()
    state = run / "checkpoints" / "step-000002" / "training_state.pt"
    state.write_bytes(state.read_bytes()[:10])
    with pytest.raises(FileNotFoundError, match="no intact checkpoint"):
        Trainer(tiny_config("train.steps=2"), run, resume=True)
    assert state.is_file()


def test_a_run_killed_while_its_model_loads_is_resumed(left_alone, tmp_path, tiny_overrides):
    """The folder is claimed before the model loads: a requeue that always resumes works."""
    reference, _ = left_alone
    run = tmp_path / "run"
    assert killed_by_fault(
        ["train", "--output", str(run), *tiny_overrides, *ARGS], "setup.build:kill"
    )
    assert main(["train", "--resume", str(run)]) == 0
    assert_same_run(run, reference)


@pytest.mark.parametrize("fault", ["metrics.truncate:kill", "metrics.truncate:tear"])
def test_a_kill_while_a_resume_rewrites_the_metrics(left_alone, tmp_path, fault):
    """A resume rewrites metrics.jsonl (dropping steps past its checkpoint); a kill then
    leaves the old file or the new one, never an empty or torn one."""
    import shutil

    reference, _ = left_alone
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    assert killed_by_fault(["train", "--resume", str(run)], fault)
    assert metric_rows(run) == metric_rows(reference)
    assert main(["train", "--resume", str(run)]) == 0
    assert_same_run(run, reference)
