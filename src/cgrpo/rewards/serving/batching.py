"""Cross-request batching for the reward server.

Requests that arrive within ``window_s`` of the first one waiting, up to ``max_batch``
images, are scored in one call of the reward and the scores are split back per request.
A request is never split: one larger than ``max_batch`` is scored alone, so
``max_batch=1`` scores one request at a time. Only requests whose images have the same
size share a call (a batch is one ``[B, 3, H, W]`` tensor); the others wait for the next.
If a shared call fails, each of its requests is scored alone, so a bad request fails only
itself.

The reward runs on one worker thread (models are not thread-safe); the event loop keeps
accepting, reading and decoding requests meanwhile. At most ``max_queue`` requests are
admitted at once (waiting or being scored); beyond that :meth:`Batcher.admit` raises
:class:`Busy` with a Retry-After estimate, which the server answers as 503.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from cgrpo.rewards.base import Reward, ScoreRequest

Scores = dict[str, torch.Tensor]


class Busy(Exception):
    """The queue is full; try again in ``retry_after`` seconds."""

    def __init__(self, queued: int, retry_after: int) -> None:
        super().__init__(f"reward server busy: {queued} requests queued; retry in {retry_after} s")
        self.retry_after = retry_after


def concat_requests(requests: list[ScoreRequest]) -> ScoreRequest:
    """Several requests (images of one size) as one; rows keep their order."""
    if len(requests) == 1:
        return requests[0]
    return ScoreRequest(
        images=torch.cat([r.images for r in requests]),
        prompts=[p for r in requests for p in r.prompts],
        references=[x for r in requests for x in r.references],
        reference_masks=[m for r in requests for m in r.reference_masks],
        metadata=[m for r in requests for m in r.metadata],
    )


def split_scores(scores: Scores, sizes: list[int]) -> list[Scores]:
    """The inverse of scoring :func:`concat_requests`: one dict of columns per request."""
    parts = {name: column.split(sizes) for name, column in scores.items()}
    return [{name: parts[name][i] for name in scores} for i in range(len(sizes))]


@dataclass(eq=False)
class _Waiting:
    request: ScoreRequest
    future: asyncio.Future[Scores]
    arrived: float


@dataclass
class BatchStats:
    """Counters for ``/health``."""

    requests_served: int = 0
    images_served: int = 0
    forwards: int = 0
    forward_images: int = 0
    forward_requests: int = 0
    reward_errors: int = 0
    forward_seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        n = max(self.forwards, 1)
        return {
            "requests_served": self.requests_served,
            "images_served": self.images_served,
            "forwards": self.forwards,
            "mean_batch_size": round(self.forward_images / n, 3),
            "mean_batch_requests": round(self.forward_requests / n, 3),
            "reward_errors": self.reward_errors,
            "mean_forward_s": round(self.forward_seconds / n, 4),
        }


class Batcher:
    """Queues decoded requests and scores them in batches on one worker thread.

    Args:
        reward: the reward to call.
        window_s: how long a batch waits for more requests after its first arrived.
        max_batch: most images per call (a larger request is scored alone).
        max_queue: most requests admitted at once; more get :class:`Busy`.
    """

    def __init__(self, reward: Reward, window_s: float, max_batch: int, max_queue: int) -> None:
        if window_s < 0 or max_batch < 1 or max_queue < 1:
            raise ValueError(
                f"batching needs window >= 0, max_batch >= 1 and max_queue >= 1, got "
                f"{window_s}, {max_batch}, {max_queue}"
            )
        self.reward = reward
        self.window_s, self.max_batch, self.max_queue = window_s, max_batch, max_queue
        self.stats = BatchStats()
        self.admitted = 0
        self._waiting: deque[_Waiting] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Start the worker on the running event loop."""
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="reward")
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        for item in self._waiting:
            item.future.cancel()

    def retry_after(self) -> int:
        """Seconds until the admitted requests have likely been scored (at least 1)."""
        s = self.stats
        per_request = s.forward_seconds / s.forward_requests if s.forward_requests else 1.0
        return max(1, math.ceil(self.admitted * per_request))

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of ``max_queue`` places while a request is read, decoded and scored."""
        if self.admitted >= self.max_queue:
            raise Busy(self.admitted, self.retry_after())
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def score(self, request: ScoreRequest) -> Scores:
        """Queue ``request`` and wait for its scores (the reward's exception if it failed)."""
        assert self._arrived is not None, "Batcher.start() was not awaited"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Scores] = loop.create_future()
        self._waiting.append(_Waiting(request, future, loop.time()))
        self._arrived.set()
        return await future

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                await self._score_batch(batch)
            except Exception as error:  # keep serving; no request may wait forever
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)

    async def _next_batch(self) -> list[_Waiting]:
        """Wait for a first request, then up to the window for more of its image size."""
        loop = asyncio.get_running_loop()
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        first = self._waiting[0]
        shape = first.request.images.shape[1:]
        deadline = first.arrived + self.window_s
        while (remaining := deadline - loop.time()) > 0 and self._fits(shape) < self.max_batch:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:  # noqa: UP041 - a distinct class on Python 3.10
                break
        batch, images, rest = [self._waiting.popleft()], len(first.request), deque()
        for item in self._waiting:
            n = len(item.request)
            if item.request.images.shape[1:] == shape and images + n <= self.max_batch:
                batch.append(item)
                images += n
            else:
                rest.append(item)
        self._waiting = rest
        return batch

    def _fits(self, shape: torch.Size) -> int:
        return sum(len(w.request) for w in self._waiting if w.request.images.shape[1:] == shape)

    async def _score_batch(self, batch: list[_Waiting]) -> None:
        live = [item for item in batch if not item.future.done()]  # a client may have gone
        if not live:
            return
        try:
            scores = await self._forward([item.request for item in live])
        except Exception as error:
            if len(live) == 1:
                self.stats.reward_errors += 1
                live[0].future.set_exception(error)
                return
            for item in live:  # find the request at fault: score each alone
                await self._score_batch([item])
            return
        for item, part in zip(live, split_scores(scores, [len(i.request) for i in live])):
            if not item.future.done():
                item.future.set_result(part)
            self.stats.requests_served += 1
            self.stats.images_served += len(item.request)

    async def _forward(self, requests: list[ScoreRequest]) -> Scores:
        merged = concat_requests(requests)
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self.reward.score, merged)
        finally:
            self.stats.forwards += 1
            self.stats.forward_images += len(merged)
            self.stats.forward_requests += len(requests)
            self.stats.forward_seconds += time.perf_counter() - start


__all__ = ["Batcher", "BatchStats", "Busy", "concat_requests", "split_scores"]
