"""A soak of the reward server: many clients for a long time, some of them misbehaving.

``--clients`` concurrent clients (asyncio connections, in this process) hold one
``cgrpo serve-reward`` server (a separate process, the CLI, so its memory and file
descriptors are its own) busy for ``--seconds``. Each client is one of:

* **good** -- valid requests back to back on one keep-alive connection; every answer is
  checked against the scores computed here, locally, for the same images;
* **slow** -- a valid request whose body trickles in ``--slow-pieces`` pieces over
  ``--slow-seconds``; its answer is checked too;
* **disconnect** -- a valid request abandoned half-way: the connection is reset after part of
  the body (the server sees the client vanish), or closed right after the whole body,
  before the answer (the server scores a request nobody reads);
* **junk** -- bytes that are no HTTP, JSON that is no score request, a wrong path.

Checked: every completed request has the right scores; the good clients' latency with the
others present, against a phase of good clients only (``--baseline-seconds``); the server's
memory (RSS) and open file descriptors before and after; that ``/health`` counts add up
with what the clients saw.

Usage::

    nice -n 10 python benchmarks/reward_soak.py                    # 256 clients, 60 s
    python benchmarks/reward_soak.py --clients 32 --seconds 5 --json soak.json

``soak()`` is what ``tests/reliability/test_reward_soak.py`` runs, shorter.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cgrpo.rewards import ScoreRequest, build_reward
from cgrpo.rewards.images import quantize
from cgrpo.rewards.serving.wire import encode_request

REPO = Path(__file__).resolve().parents[1]
STATS = {
    "target": str(REPO / "examples" / "custom_reward.py") + ":image_stats",
    "columns": ["brightness", "colorfulness"],
}
KINDS = ("good", "slow", "disconnect", "junk")
#: What junk clients send; ``not-http`` is answered by the HTTP layer, not the application.
JUNK = {
    "not-http": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not HTTP at all\r\n\r\n",
    "not-json": b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{not json",
    "not-a-request": (
        b'POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\n\r\n{"images": [42]}'
    ),
    "wrong-path": b"GET /nothing/here HTTP/1.1\r\nHost: x\r\n\r\n",
}


@dataclass
class Job:
    """A valid request, its encoded body and the scores it must get."""

    body: bytes
    expected: dict[str, list[float]]


def make_jobs(n: int = 16, images: int = 4, size: int = 16, seed: int = 0) -> list[Job]:
    """``n`` requests of ``images`` random images, scored here by the same reward."""
    reward = build_reward("custom", dict(STATS))
    g = torch.Generator().manual_seed(seed)
    jobs = []
    for i in range(n):
        pixels = quantize(torch.rand(images, 3, size, size, generator=g))
        request = ScoreRequest(
            images=pixels, prompts=[f"soak {i}"] * images, references=[pixels[:1]] * images
        )
        scores = reward.score(request)
        body = json.dumps(encode_request(request)).encode()
        jobs.append(Job(body, {k: v.tolist() for k, v in scores.items()}))
    return jobs


def _head(body_length: int, path: str = "/score") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
        f"Content-Length: {body_length}\r\n\r\n"
    ).encode()


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 response (ConnectionError if none)."""
    line = await reader.readline()
    if not line:
        raise ConnectionError("closed before an answer")
    status = int(line.split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        key, _, value = line.decode().partition(":")
        headers[key.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return status, headers, body


@dataclass
class Tally:
    """What the clients saw."""

    statuses: Counter[str] = field(default_factory=Counter)  # "<kind> <status>"
    wrong: list[str] = field(default_factory=list)  # completed requests with wrong scores
    latencies: dict[str, list[float]] = field(default_factory=dict)  # kind -> seconds
    events: Counter[str] = field(default_factory=Counter)  # resets, closes, reconnects

    def ok(self, kind: str) -> int:
        return self.statuses[f"{kind} 200"]


def _check(job: Job, payload: bytes, tally: Tally, kind: str) -> None:
    got = json.loads(payload).get("columns")
    if got != job.expected:
        tally.wrong.append(f"{kind}: {str(got)[:120]} != {str(job.expected)[:120]}")


async def _good(host, port, jobs, rng, deadline, tally, kind="good") -> None:
    reader = writer = None
    while time.monotonic() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            job = rng.choice(jobs)
            start = time.monotonic()
            writer.write(_head(len(job.body)) + job.body)
            status, headers, payload = await _answer(reader)
            tally.statuses[f"{kind} {status}"] += 1
            if status == 200:
                tally.latencies.setdefault(kind, []).append(time.monotonic() - start)
                _check(job, payload, tally, kind)
            elif status == 503:
                await asyncio.sleep(min(1.0, float(headers.get("retry-after", 1))))
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            tally.events[f"{kind} reconnect"] += 1
            writer = _close(writer)
    _close(writer)


async def _slow(host, port, jobs, rng, deadline, tally, pieces, seconds) -> None:
    while time.monotonic() < deadline:
        job = rng.choice(jobs)
        writer = None
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(_head(len(job.body)))
            step = -(-len(job.body) // pieces)
            start = time.monotonic()
            for i in range(0, len(job.body), step):
                writer.write(job.body[i : i + step])
                await writer.drain()
                await asyncio.sleep(seconds / pieces)
            status, _, payload = await _answer(reader)
            tally.statuses[f"slow {status}"] += 1
            if status == 200:
                tally.latencies.setdefault("slow", []).append(time.monotonic() - start)
                _check(job, payload, tally, "slow")
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            tally.events["slow reconnect"] += 1
        _close(writer)


async def _disconnect(host, port, jobs, rng, deadline, tally) -> None:
    while time.monotonic() < deadline:
        job = rng.choice(jobs)
        reader, writer = await asyncio.open_connection(host, port)
        if rng.random() < 0.5:  # reset half-way through the body
            cut = rng.randrange(1, len(job.body))
            writer.write(_head(len(job.body)) + job.body[:cut])
            await writer.drain()
            await asyncio.sleep(0.05)  # let the server start reading it
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # RST
            tally.events["reset mid-body"] += 1
        else:  # the whole request, then gone before the answer
            writer.write(_head(len(job.body)) + job.body)
            await writer.drain()
            writer.close()
            tally.events["closed before the answer"] += 1
        await asyncio.sleep(rng.uniform(0.05, 0.2))


async def _junk(host, port, rng, deadline, tally) -> None:
    while time.monotonic() < deadline:
        name = rng.choice(sorted(JUNK))
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(JUNK[name])
            status, _, _ = await asyncio.wait_for(_answer(reader), 10)
            tally.statuses[f"junk-{name} {status}"] += 1
        except (ConnectionError, asyncio.IncompleteReadError, OSError, asyncio.TimeoutError):
            tally.events["junk closed"] += 1
        _close(writer)
        await asyncio.sleep(rng.uniform(0.02, 0.1))


def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()


def mix_of(clients: int, shares: dict[str, float]) -> list[str]:
    """The kind of each client: ``shares`` of them slow, disconnecting, junk; the rest good."""
    kinds = []
    for kind in ("slow", "disconnect", "junk"):
        kinds += [kind] * round(clients * shares.get(kind, 0.0))
    return ["good"] * (clients - len(kinds)) + kinds


async def soak(
    url: str,
    jobs: list[Job],
    seconds: float,
    kinds: list[str],
    *,
    slow_pieces: int = 8,
    slow_seconds: float = 2.0,
    seed: int = 0,
) -> Tally:
    """Run one client of each of ``kinds`` against ``url`` for ``seconds``."""
    host, port = url.split("//")[1].rsplit(":", 1)
    host = host.strip("[]")
    tally = Tally()
    deadline = time.monotonic() + seconds
    tasks = []
    for i, kind in enumerate(kinds):
        rng = random.Random(seed * 100003 + i)
        if kind == "good":
            coro = _good(host, port, jobs, rng, deadline, tally)
        elif kind == "slow":
            coro = _slow(host, port, jobs, rng, deadline, tally, slow_pieces, slow_seconds)
        elif kind == "disconnect":
            coro = _disconnect(host, port, jobs, rng, deadline, tally)
        else:
            coro = _junk(host, port, rng, deadline, tally)
        tasks.append(asyncio.ensure_future(coro))
    await asyncio.gather(*tasks)
    return tally


def health(url: str) -> dict[str, Any]:
    from cgrpo.rewards.serving.remote import request_json

    return request_json(url + "/health", timeout=30, retries=0)


def process_usage(pid: int) -> dict[str, int]:
    """RSS in KiB and open file descriptors of a process (Linux /proc)."""
    rss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return {"rss_kib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


class Sampler:
    """The server's RSS and file descriptors every ``every`` seconds, from a thread."""

    def __init__(self, pid: int, every: float = 5.0) -> None:
        self.pid, self.every, self.samples = pid, every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self.every):
            use = process_usage(self.pid)
            self.samples.append({"t": round(time.monotonic() - start), **use})

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    values = sorted(values)

    def at(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    return {
        "n": len(values),
        "p50_ms": round(at(0.5) * 1000, 1),
        "p95_ms": round(at(0.95) * 1000, 1),
        "p99_ms": round(at(0.99) * 1000, 1),
        "max_ms": round(values[-1] * 1000, 1),
        "mean_ms": round(statistics.fmean(values) * 1000, 1),
    }


def counts_add_up(before: dict, after: dict, tally: Tally) -> dict[str, Any]:
    """``/health`` deltas against what the clients saw: served = the 200s received plus the
    requests whose client left after sending all of it; each 4xx/5xx the same."""
    served = after["requests_served"] - before["requests_served"]
    answered = sum(n for key, n in tally.statuses.items() if key.endswith(" 200"))
    gone = tally.events["closed before the answer"]
    errors = Counter(after["errors_by_status"]) - Counter(before["errors_by_status"])
    seen: Counter[str] = Counter()  # what the application answered (not the HTTP layer)
    for key, n in tally.statuses.items():
        who, status = key.split()
        if status != "200" and who != "junk-not-http":
            seen[status] += n
    return {
        "served": served,
        "answered_200": answered,
        "closed_before_the_answer": gone,
        "served_adds_up": served == answered + gone,
        "errors_by_status": dict(errors),
        "errors_seen_by_clients": dict(seen),
        "errors_add_up": dict(errors) == dict(seen),
        "client_disconnects": after.get("client_disconnects", 0)
        - before.get("client_disconnects", 0),
        "resets_mid_body": tally.events["reset mid-body"],
    }


def start_server(max_queue: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    """``cgrpo serve-reward custom`` in its own process; (process, url)."""
    cmd = [
        sys.executable,
        "-m",
        "cgrpo.rewards.serving.server",
        "custom",
        "--options",
        json.dumps(STATS),
        "--port",
        "0",
        "--max-queue",
        str(max_queue),
        *extra,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if " on http://" not in line:
        proc.kill()
        raise RuntimeError(f"the server did not start: {line!r}")
    return proc, line.rsplit(" on ", 1)[1].strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=256)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--baseline-seconds", type=float, default=15.0)
    p.add_argument("--slow", type=float, default=0.1, help="share of slow clients")
    p.add_argument("--disconnect", type=float, default=0.1, help="share that disconnect")
    p.add_argument("--junk", type=float, default=0.1, help="share that send junk")
    p.add_argument("--slow-pieces", type=int, default=8)
    p.add_argument("--slow-seconds", type=float, default=2.0)
    p.add_argument("--max-queue", type=int, default=512, help="the server's --max-queue")
    p.add_argument("--settle-seconds", type=float, default=5.0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("server_args", nargs="*", help="more serve-reward options (after --)")
    args = p.parse_args(argv)

    jobs = make_jobs()
    proc, url = start_server(args.max_queue, args.server_args)
    try:
        mix = mix_of(args.clients, vars(args))
        good_only = ["good"] * mix.count("good")
        asyncio.run(soak(url, jobs, 3.0, good_only[:16]))  # warm-up: imports, allocator
        time.sleep(args.settle_seconds)
        start_use, start_health = process_usage(proc.pid), health(url)
        baseline = asyncio.run(soak(url, jobs, args.baseline_seconds, good_only, seed=1))
        mid_health = health(url)
        with Sampler(proc.pid) as sampler:
            tally = asyncio.run(
                soak(
                    url,
                    jobs,
                    args.seconds,
                    mix,
                    slow_pieces=args.slow_pieces,
                    slow_seconds=args.slow_seconds,
                    seed=2,
                )
            )
        time.sleep(args.settle_seconds)
        end_use, end_health = process_usage(proc.pid), health(url)
    finally:
        proc.terminate()
        proc.wait(30)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "command": "python benchmarks/reward_soak.py " + " ".join(argv or sys.argv[1:]),
        "clients": Counter(mix),
        "seconds": args.seconds,
        "baseline_good_latency": percentiles(baseline.latencies.get("good", [])),
        "soak_good_latency": percentiles(tally.latencies.get("good", [])),
        "soak_slow_latency": percentiles(tally.latencies.get("slow", [])),
        "statuses": dict(tally.statuses),
        "events": dict(tally.events),
        "wrong_scores": tally.wrong[:5],
        "wrong_count": len(tally.wrong) + len(baseline.wrong),
        "server_before": start_use,
        "server_after": end_use,
        "server_during": sampler.samples,
        "counts": counts_add_up(mid_health, end_health, tally),
        "baseline_counts": counts_add_up(start_health, mid_health, baseline),
        "health_after": end_health,
    }
    text = json.dumps(report, indent=1, default=dict)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0 if not report["wrong_count"] else 1


if __name__ == "__main__":
    sys.exit(main())
