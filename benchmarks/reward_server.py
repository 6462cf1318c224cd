"""A shared reward server under concurrent clients: cross-request batching vs one at a time.

``--clients`` training processes (threads here) send ``--rounds`` requests of ``--images``
images each, all at once, to one ``cgrpo serve-reward``-style server
(:class:`cgrpo.rewards.serving.server.RewardServer` over loopback HTTP), through the ``remote``
reward's HTTP client (:func:`cgrpo.rewards.serving.remote.request_json`). Request bodies are encoded
(PNG) before the clock starts: in training each process encodes its own on its own core,
while here the client threads would share the server's interpreter lock.
The served reward costs ``--forward-ms`` per call plus ``--per-image-ms`` per image, the
shape of a GPU model whose call has a fixed overhead (launches, weights streamed once per
forward), simulated with a sleep so the numbers do not depend on the CPU's speed.

Two servers run in the same process, one after the other, with the same requests:

* batched: requests arriving within ``--window-ms`` of the first, up to ``--max-batch``
  images, are scored in one call;
* one at a time: ``max_batch = 1``, each request is its own call (the old server's way).

Reported per server: wall time, images per second, per-request latency (median and p95),
calls of the reward, mean batch size; and whether the two gave identical scores.

Usage::

    python benchmarks/reward_server.py                 # 8 clients x 12 images, 10 rounds
    python benchmarks/reward_server.py --rounds 2 --forward-ms 5 --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from cgrpo.rewards import ScoreRequest
from cgrpo.rewards.base import Reward
from cgrpo.rewards.images import quantize
from cgrpo.rewards.serving.remote import request_json
from cgrpo.rewards.serving.server import RewardServer
from cgrpo.rewards.serving.wire import encode_request


class FixedCostReward(Reward):
    """Mean brightness, after a sleep of ``forward_s + per_image_s * B`` per call."""

    name = "fixed-cost"
    columns = ("brightness",)

    def __init__(self, forward_s: float, per_image_s: float) -> None:
        super().__init__()
        self.forward_s, self.per_image_s = forward_s, per_image_s

    def _score(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        time.sleep(self.forward_s + self.per_image_s * len(request))
        return {"brightness": request.images.mean(dim=(1, 2, 3))}


def make_requests(clients: int, rounds: int, images: int, size: int) -> list[list[ScoreRequest]]:
    """``rounds`` requests per client; each client's group shares one reference."""
    g = torch.Generator().manual_seed(0)
    out = []
    for c in range(clients):
        ref = quantize(torch.rand(1, 3, size, size, generator=g))
        out.append(
            [
                ScoreRequest(
                    images=quantize(torch.rand(images, 3, size, size, generator=g)),
                    prompts=[f"client {c} round {r}"] * images,
                    references=[ref] * images,
                )
                for r in range(rounds)
            ]
        )
    return out


def run_server(
    requests: list[list[ScoreRequest]], reward: Reward, window_s: float, max_batch: int
) -> dict:
    """Every client sends its requests one after another; all clients at once."""
    bodies = [[encode_request(r) for r in rs] for rs in requests]
    with RewardServer(reward, batch_window_s=window_s, max_batch=max_batch, max_queue=256) as srv:

        def client(i: int) -> tuple[list[torch.Tensor], list[float]]:
            scores, latency = [], []
            for body in bodies[i]:
                start = time.perf_counter()
                answer = request_json(srv.url + "/score", body, timeout=120, retries=0)
                latency.append(time.perf_counter() - start)
                scores.append(torch.tensor(answer["columns"]["brightness"]))
            return scores, latency

        start = time.perf_counter()
        with ThreadPoolExecutor(len(requests)) as pool:
            results = list(pool.map(client, range(len(requests))))
        wall = time.perf_counter() - start
        health = srv.batcher.stats.as_dict()
    latency = sorted(t for _, lat in results for t in lat)
    n_images = sum(len(r) for rs in requests for r in rs)
    return {
        "wall_s": round(wall, 3),
        "images_per_s": round(n_images / wall, 2),
        "latency_median_s": round(statistics.median(latency), 4),
        "latency_p95_s": round(latency[min(len(latency) - 1, int(0.95 * len(latency)))], 4),
        "calls": health["forwards"],
        "mean_batch_size": health["mean_batch_size"],
        "mean_batch_requests": health["mean_batch_requests"],
        "scores": [s for scores, _ in results for s in scores],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (processes)")
    p.add_argument("--images", type=int, default=12, help="images per request (a group)")
    p.add_argument("--rounds", type=int, default=10, help="requests per client")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--forward-ms", type=float, default=50.0, help="fixed cost of one call")
    p.add_argument("--per-image-ms", type=float, default=1.0, help="cost of each image in it")
    p.add_argument("--window-ms", type=float, default=10.0, help="batch window (batched)")
    p.add_argument("--max-batch", type=int, default=96, help="images per call (batched)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    requests = make_requests(a.clients, a.rounds, a.images, a.size)
    reward = FixedCostReward(a.forward_ms / 1000, a.per_image_ms / 1000)
    batched = run_server(requests, reward, a.window_ms / 1000, a.max_batch)
    serial = run_server(requests, reward, 0.0, 1)
    same = all(torch.equal(x, y) for x, y in zip(batched.pop("scores"), serial.pop("scores")))
    results = {
        "settings": vars(a) | {"json": str(a.json) if a.json else None},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "date": datetime.date.today().isoformat(),
        },
        "batched": batched,
        "one_at_a_time": serial,
        "throughput_ratio": round(batched["images_per_s"] / serial["images_per_s"], 2),
        "identical_scores": same,
    }
    rows = [
        ("wall s", "wall_s"),
        ("images / s", "images_per_s"),
        ("latency median s", "latency_median_s"),
        ("latency p95 s", "latency_p95_s"),
        ("reward calls", "calls"),
        ("mean batch (images)", "mean_batch_size"),
        ("mean batch (requests)", "mean_batch_requests"),
    ]
    print(
        f"{a.clients} clients x {a.rounds} requests x {a.images} images, "
        f"{a.forward_ms:g} ms per call + {a.per_image_ms:g} ms per image\n"
    )
    print("| | batched | one at a time |\n|---|---|---|")
    for label, key in rows:
        print(f"| {label} | {batched[key]} | {serial[key]} |")
    print(
        f"\nthroughput ratio batched / one at a time: {results['throughput_ratio']}x; "
        f"identical scores: {same}"
    )
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
