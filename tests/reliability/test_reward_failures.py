"""Remote and custom reward failures end `cgrpo train` (a subprocess) with one line naming
the reward and the cause, exit status 1 (2 for a config error), no traceback, and a
checkpoint of the completed steps that `--resume` continues from."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cgrpo.rewards import build_reward
from cgrpo.rewards.server import RewardServer
from cgrpo.training.checkpoint import checkpoint_step, latest_checkpoint
from conftest import one_line, run_cli

pytestmark = pytest.mark.slow  # eight `cgrpo train` processes

REPO = Path(__file__).resolve().parents[2]
# A monitored column beside the two toy rewards that train; fails fast when it fails.
FAST = "timeout: 2, retries: 1, backoff: 0.05, deadline: 5"

REWARDS = """
import os
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


def train(tiny_overrides, run: Path, monitor: str, *extra: str):
    rewards = (
        f"rewards=[{{name: toy-prompt, role: prompt}}, {{name: toy-id, role: identity}}, {monitor}]"
    )
    return run_cli(
        "train",
        "--output",
        str(run),
        *tiny_overrides,
        "logging.checkpoint_every=0",
        rewards,
        *extra,
    )


def remote(url: str, extra: str = "") -> str:
    return f"{{name: remote, role: monitor, options: {{url: '{url}', {FAST}{extra}}}}}"


def assert_stopped_after(result, run: Path, step: int, cause: str) -> None:
    line = one_line(result.stderr)
    assert result.returncode == 1, result.stderr
    assert line.startswith(f"cgrpo: training stopped at step {step} of 3, during training: ")
    assert cause in line and f"continue with: cgrpo train --resume {run}" in line, line
    assert checkpoint_step(latest_checkpoint(run)) == step


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_remote_server_down_at_start(tiny_overrides, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    run = tmp_path / "run"
    result = train(tiny_overrides, run, remote(url))
    assert result.returncode == 1, result.stderr
    line = one_line(result.stderr)
    assert line.startswith(f"cgrpo: error: reward 'remote': reward server at {url}/health ")
    assert "failed after 2 attempts: unreachable" in line
    assert latest_checkpoint(run) is None

    # with `columns` given, nothing is asked at start: the first step fails instead
    result = train(tiny_overrides, tmp_path / "run2", remote(url, ", columns: [x]"))
    assert_stopped_after(result, tmp_path / "run2", 0, f"reward server at {url}/score failed")


def test_remote_server_killed_mid_run_then_resume(tiny_overrides, tmp_path, rewards_file):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "cgrpo.rewards.server", f"python:{rewards_file}:dies_on_third_call",
         "--port", str(port)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert " on http://127.0.0.1:" in server.stdout.readline()
        run = tmp_path / "run"
        result = train(tiny_overrides, run, remote(f"http://127.0.0.1:{port}"))
        assert server.wait(30) == 1  # it died on its third /score call: step 3
        assert_stopped_after(result, run, 2, "reward 'remote': reward server at http://127.0.0")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    with RewardServer(build_reward("custom", {"target": f"{rewards_file}:brightness"})) as back:
        result = run_cli("train", "--resume", str(run), f"rewards.remote.options.url={back.url}")
    assert result.returncode == 0, result.stderr
    assert checkpoint_step(latest_checkpoint(run)) == 3


def test_remote_server_that_never_answers(tiny_overrides, tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts at the TCP level, never answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        run = tmp_path / "run"
        result = train(tiny_overrides, run, remote(url, ", timeout: 0.5, columns: [x]"))
    finally:
        silent.close()
    assert_stopped_after(result, run, 0, "no answer within 0.5 s")


def test_remote_server_with_another_token(tiny_overrides, tmp_path, rewards_file):
    reward = build_reward("custom", {"target": f"{rewards_file}:brightness"})
    with RewardServer(reward, token="right") as server:
        run = tmp_path / "run"
        result = train(
            tiny_overrides, run, remote(server.url, ", token: wrong, columns: [brightness]")
        )
    assert_stopped_after(result, run, 0, "/score answered HTTP 401: missing or wrong bearer token")


@pytest.mark.parametrize(
    ("function", "cause"),
    [
        ("raises_on_second_call", "raises_on_second_call raised RuntimeError: CUDA out of memory"),
        ("words_on_second_call", "words_on_second_call returned list, not numbers"),
    ],
)
def test_custom_reward_that_fails_mid_run(tiny_overrides, tmp_path, rewards_file, function, cause):
    run = tmp_path / "run"
    spec = f"python:{rewards_file}:{function}"
    result = train(tiny_overrides, run, f"{{name: '{spec}', role: monitor}}")
    assert_stopped_after(result, run, 1, f"reward '{spec}': {rewards_file}:{cause}")


def test_custom_reward_with_a_syntax_error_is_a_config_error(tiny_overrides, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def score(images, prompts, references)\n    return 1\n")
    result = train(
        tiny_overrides, tmp_path / "run", f"{{name: 'python:{broken}:score', role: monitor}}"
    )
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert f"cannot import '{broken}' for 'score': SyntaxError" in line, line
    assert line.startswith("cgrpo: config error: rewards.python:")
