"""The reward server under a short soak (``benchmarks/reward_soak.py``, a few seconds here):
good, slow, disconnecting and junk clients at once. Every completed request has the right
scores, slow clients do not hold up the others, ``/health`` counts add up with what the
clients saw, and file descriptors come back. A client too slow for ``read_timeout_s``
gets 408 and its connection is closed."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from cgrpo.rewards import build_reward
from cgrpo.rewards.serving.server import RewardServer

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SLOW_SECONDS = 2.0


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("reward_soak", BENCHMARKS / "reward_soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd")
def test_a_short_soak_with_misbehaving_clients(bench):
    jobs = bench.make_jobs(n=8)
    kinds = bench.mix_of(32, {"slow": 0.125, "disconnect": 0.125, "junk": 0.125})
    reward = build_reward("custom", dict(bench.STATS))
    with RewardServer(reward, max_queue=256) as server:
        asyncio.run(bench.soak(server.url, jobs, 0.5, ["good"] * 4))  # warm-up
        fds, before = open_fds(), bench.health(server.url)
        tally = asyncio.run(
            bench.soak(server.url, jobs, 3.0, kinds, slow_pieces=6, slow_seconds=SLOW_SECONDS)
        )
        for _ in range(100):  # until the server has closed its side of every connection
            if open_fds() <= fds:
                break
            time.sleep(0.05)
        after = bench.health(server.url)
        assert open_fds() <= fds + 1  # this test's own /health connection may linger
    assert tally.wrong == []
    assert tally.ok("good") > 0 and tally.ok("slow") > 0
    assert {key.split()[0] for key in tally.statuses} == {
        "good",
        "slow",
        *(f"junk-{name}" for name in bench.JUNK),
    }
    counts = bench.counts_add_up(before, after, tally)
    assert counts["served_adds_up"], counts
    assert counts["errors_add_up"], counts
    assert 0 < counts["client_disconnects"] <= counts["resets_mid_body"], counts
    assert after["queue_depth"] == 0
    # a request held up behind a slow client's body would wait for all of it
    assert max(tally.latencies["good"]) < SLOW_SECONDS


def test_a_body_slower_than_the_read_timeout_gets_408(bench):
    (job,) = bench.make_jobs(n=1)
    reward = build_reward("custom", dict(bench.STATS))
    with RewardServer(reward, read_timeout_s=0.5) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(bench._head(len(job.body)) + job.body[:100])  # then nothing more
            answer = b"".join(iter(lambda: s.recv(65536), b""))  # until the server closes
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408")
        assert json.loads(body) == {"error": "request body not received within 0.5 s"}
        health = bench.health(server.url)
    assert health["errors_by_status"] == {"408": 1}
