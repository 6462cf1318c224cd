"""Cross-request batching: one call of the reward for many requests, scores split back."""

from __future__ import annotations

import asyncio

import pytest
import torch

from cgrpo.rewards.base import Reward, ScoreRequest
from cgrpo.rewards.serving.batching import Batcher, Busy, concat_requests, split_scores


class Probe(Reward):
    """Scores that depend on every per-sample field, so a row sent back to the wrong
    request, or a reference paired with the wrong image, changes them. Records call sizes."""

    name = "probe"
    columns = ("pixels", "text")

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def _score(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        self.calls.append(len(request))
        if "fail" in request.prompts:
            raise RuntimeError("the prompt 'fail' cannot be scored")
        refs = torch.stack([r.mean() for r in request.references])
        masks = torch.tensor(
            [0.0 if m is None else float(m.sum()) for m in request.reference_masks]
        )
        pixels = request.images.flatten(1).std(dim=1) * 3 + refs + masks
        text = torch.tensor(
            [len(p) + m.get("k", 0) for p, m in zip(request.prompts, request.metadata)],
            dtype=torch.float32,
        )
        return {"pixels": pixels, "text": text}


def make_request(n: int, size: int = 8, seed: int = 0, prompt: str = "p") -> ScoreRequest:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g)
    shared = torch.rand(2, 3, 5, 5, generator=g)
    return ScoreRequest(
        images=images,
        prompts=[prompt * (i + 1 + seed) for i in range(n)],
        references=[shared if i % 2 else images[i : i + 1] for i in range(n)],
        reference_masks=[
            None if i % 3 else (torch.rand(2, 1, 5, 5, generator=g) > 0.5).float() for i in range(n)
        ],
        metadata=[{"k": seed * 10 + i} for i in range(n)],
    )


def run_concurrently(batcher: Batcher, requests: list[ScoreRequest]) -> list:
    """Submit all requests at once (as concurrent clients would) and collect each outcome."""

    async def main():
        await batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.score(r) for r in requests), return_exceptions=True
            )
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_concat_and_split_are_inverse():
    parts = [make_request(n, seed=n) for n in (1, 3, 2)]
    merged = concat_requests(parts)
    assert len(merged) == 6 and merged.prompts[1:4] == parts[1].prompts
    assert merged.references[4] is parts[2].references[0]
    cols = {"a": torch.arange(6.0), "b": -torch.arange(6.0)}
    back = split_scores(cols, [1, 3, 2])
    assert [b["a"].tolist() for b in back] == [[0.0], [1.0, 2.0, 3.0], [4.0, 5.0]]
    assert back[2]["b"].tolist() == [-4.0, -5.0]


def test_batched_scores_equal_scoring_each_request_alone():
    reward = Probe()
    sizes = [3, 1, 5, 2, 4, 1, 6, 2]
    requests = [make_request(n, seed=i) for i, n in enumerate(sizes)]
    requests.append(make_request(2, size=12, seed=99))  # another image size: its own call
    alone = [reward.score(r) for r in requests]
    reward.calls.clear()
    got = run_concurrently(Batcher(reward, window_s=0.05, max_batch=64, max_queue=64), requests)
    for want, have in zip(alone, got):
        assert set(have) == {"pixels", "text"}
        for c in want:
            assert torch.equal(have[c], want[c]), c
    assert sorted(reward.calls) == [2, sum(sizes)]  # two calls: one per image size


def test_max_batch_bounds_each_call_and_a_large_request_goes_alone():
    reward = Probe()
    requests = [make_request(n, seed=i) for i, n in enumerate([3, 3, 3, 10, 2, 2])]
    batcher = Batcher(reward, window_s=0.05, max_batch=6, max_queue=64)
    got = run_concurrently(batcher, requests)
    assert all(isinstance(g, dict) for g in got)
    assert all(n <= 6 for n in reward.calls if n != 10) and 10 in reward.calls
    assert sum(reward.calls) == 23 and len(reward.calls) < len(requests)
    assert batcher.stats.requests_served == 6 and batcher.stats.images_served == 23


def test_max_batch_one_scores_one_request_at_a_time():
    reward = Probe()
    requests = [make_request(n, seed=i) for i, n in enumerate([2, 3, 1, 4])]
    batcher = Batcher(reward, window_s=0.05, max_batch=1, max_queue=64)
    run_concurrently(batcher, requests)
    assert reward.calls == [2, 3, 1, 4]
    assert batcher.stats.as_dict()["mean_batch_requests"] == 1.0


def test_a_failing_request_fails_alone():
    reward = Probe()
    requests = [make_request(2, seed=0), make_request(1, prompt="x"), make_request(2, seed=2)]
    requests[1].prompts[0] = "fail"
    batcher = Batcher(reward, window_s=0.05, max_batch=64, max_queue=64)
    got = run_concurrently(batcher, requests)
    assert isinstance(got[1], RuntimeError) and "'fail' cannot be scored" in str(got[1])
    for i in (0, 2):
        assert torch.equal(got[i]["text"], reward.score(requests[i])["text"])
    stats = batcher.stats.as_dict()
    assert stats["reward_errors"] == 1 and stats["requests_served"] == 2


def test_admission_is_bounded_and_busy_says_when_to_retry():
    batcher = Batcher(Probe(), window_s=0.0, max_batch=8, max_queue=2)
    with batcher.admit(), batcher.admit():
        with pytest.raises(Busy, match="2 requests queued") as busy:
            with batcher.admit():
                pass
        assert busy.value.retry_after >= 1
    assert batcher.admitted == 0
    with pytest.raises(ValueError, match="max_queue >= 1"):
        Batcher(Probe(), window_s=0.0, max_batch=8, max_queue=0)
