"""Remote and custom reward failures end `cgrpo train` with one line naming the reward and
the cause, exit status 1 (2 for a config error), no traceback, and a checkpoint of the
completed steps that `--resume` continues from.

The CLI runs in this process (as in test_signals), so a case costs its training, not a
fresh interpreter; a reward server that must die mid-run is a forked child."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path

import pytest
from reliability_helpers import fork, one_line

from cgrpo.cli import main
from cgrpo.rewards import build_reward
from cgrpo.rewards.serving.server import RewardServer, listen
from cgrpo.training.checkpoint import checkpoint_step, latest_checkpoint

# A monitored column beside the two toy rewards that train; fails fast when it fails.
FAST = "timeout: 2, retries: 1, backoff: 0.05, deadline: 5"

REWARDS = """
import os
import signal
import torch

calls = 0

def brightness(images, prompts, references):
    return images.mean(dim=(1, 2, 3))

def dies_on_third_call(images, prompts, references):
    global calls
    calls += 1
    if calls == 3:
        os._exit(1)  # the server process dies mid-request
    return images.mean(dim=(1, 2, 3))

def raises_on_second_call(images, prompts, references):
    global calls
    calls += 1
    if calls == 2:
        raise RuntimeError("CUDA out of memory")
    return images.mean(dim=(1, 2, 3))

def words_on_second_call(images, prompts, references):
    global calls
    calls += 1
    return ["good"] * len(prompts) if calls == 2 else images.mean(dim=(1, 2, 3))
"""


@pytest.fixture
def rewards_file(tmp_path) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARDS)
    return path


def cli(capsys, *argv: str) -> tuple[int, str]:
    """``cgrpo ARGV`` in this process: the exit status and what it wrote to stderr."""
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


def train(capsys, tiny_overrides, run: Path, monitor: str) -> tuple[int, str]:
    rewards = (
        f"rewards=[{{name: toy-prompt, role: prompt}}, {{name: toy-id, role: identity}}, {monitor}]"
    )
    return cli(
        capsys,
        "train",
        "--output",
        str(run),
        *tiny_overrides,
        "logging.checkpoint_every=0",
        rewards,
    )


def remote(url: str, extra: str = "") -> str:
    return f"{{name: remote, role: monitor, options: {{url: '{url}', {FAST}{extra}}}}}"


def assert_stopped_after(result: tuple[int, str], run: Path, step: int, cause: str) -> None:
    code, stderr = result
    line = one_line(stderr)
    assert code == 1, stderr
    assert line.startswith(f"cgrpo: training stopped at step {step} of 3, during training: ")
    assert cause in line and f"continue with: cgrpo train --resume {run}" in line, line
    assert checkpoint_step(latest_checkpoint(run)) == step


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def forked_server(reward):
    """Serve ``reward`` from a forked child; yields its URL and a function that waits for
    the child and returns its exit status."""
    sock = listen("127.0.0.1", 0)
    pid = fork()
    if pid == 0:  # the child: serve until the reward ends it, never return into pytest
        try:
            RewardServer(reward, listening=sock).serve()
        finally:
            os._exit(0)
    port = sock.getsockname()[1]
    sock.close()

    def exit_status() -> int:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    try:
        yield f"http://127.0.0.1:{port}", exit_status
    finally:
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_remote_server_down_at_start(capsys, tiny_overrides, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    run = tmp_path / "run"
    code, stderr = train(capsys, tiny_overrides, run, remote(url))
    assert code == 1, stderr
    line = one_line(stderr)
    assert line.startswith(f"cgrpo: error: reward 'remote': reward server at {url}/health ")
    assert "failed after 2 attempts: unreachable" in line
    assert latest_checkpoint(run) is None

    # with `columns` given, nothing is asked at start: the first step fails instead
    result = train(capsys, tiny_overrides, tmp_path / "run2", remote(url, ", columns: [x]"))
    assert_stopped_after(result, tmp_path / "run2", 0, f"reward server at {url}/score failed")


def test_remote_server_killed_mid_run_then_resume(capsys, tiny_overrides, tmp_path, rewards_file):
    dies = build_reward("custom", {"target": f"{rewards_file}:dies_on_third_call"})
    run = tmp_path / "run"
    with forked_server(dies) as (url, exit_status):
        result = train(capsys, tiny_overrides, run, remote(url))
        assert exit_status() == 1  # it died on its third /score call: step 3
    assert_stopped_after(result, run, 2, "reward 'remote': reward server at http://127.0.0")
    with RewardServer(build_reward("custom", {"target": f"{rewards_file}:brightness"})) as back:
        code, stderr = cli(
            capsys, "train", "--resume", str(run), f"rewards.remote.options.url={back.url}"
        )
    assert code == 0, stderr
    assert checkpoint_step(latest_checkpoint(run)) == 3


def test_remote_server_that_never_answers(capsys, tiny_overrides, tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts at the TCP level, never answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        run = tmp_path / "run"
        result = train(capsys, tiny_overrides, run, remote(url, ", timeout: 0.5, columns: [x]"))
    finally:
        silent.close()
    assert_stopped_after(result, run, 0, "no answer within 0.5 s")


def test_remote_server_with_another_token(capsys, tiny_overrides, tmp_path, rewards_file):
    reward = build_reward("custom", {"target": f"{rewards_file}:brightness"})
    with RewardServer(reward, token="right") as server:
        run = tmp_path / "run"
        result = train(
            capsys, tiny_overrides, run, remote(server.url, ", token: wrong, columns: [brightness]")
        )
    assert_stopped_after(result, run, 0, "/score answered HTTP 401: missing or wrong bearer token")


@pytest.mark.parametrize(
    ("function", "cause"),
    [
        ("raises_on_second_call", "raises_on_second_call raised RuntimeError: CUDA out of memory"),
        ("words_on_second_call", "words_on_second_call returned list, not numbers"),
    ],
)
def test_custom_reward_that_fails_mid_run(
    capsys, tiny_overrides, tmp_path, rewards_file, function, cause
):
    run = tmp_path / "run"
    spec = f"python:{rewards_file}:{function}"
    result = train(capsys, tiny_overrides, run, f"{{name: '{spec}', role: monitor}}")
    assert_stopped_after(result, run, 1, f"reward '{spec}': {rewards_file}:{cause}")


def test_custom_reward_with_a_syntax_error_is_a_config_error(capsys, tiny_overrides, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def score(images, prompts, references)\n    return 1\n")
    code, stderr = train(
        capsys,
        tiny_overrides,
        tmp_path / "run",
        f"{{name: 'python:{broken}:score', role: monitor}}",
    )
    assert code == 2, stderr
    line = one_line(stderr)
    assert f"cannot import '{broken}' for 'score': SyntaxError" in line, line
    assert line.startswith("cgrpo: config error: rewards.python:")
