"""vlm judge against a local OpenAI-style chat-completions server (127.0.0.1, random port)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from cgrpo.config import ConfigError
from cgrpo.rewards import RewardContext, ScoreRequest, build_reward
from cgrpo.rewards.models.vlm import VlmAnswerError, parse_answer
from cgrpo.rewards.serving.remote import RemoteError


class Judge(ThreadingHTTPServer):
    """Answers from a script: each entry is (status, answer text) or ("sleep", seconds)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list = []
        self.default = (200, '{"identity": 7, "prompt": 9}')
        self.bodies: list = []
        self.lock = threading.Lock()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.bodies.append((self.path, dict(self.headers), body))
            step = self.server.script.pop(0) if self.server.script else self.server.default
        if step[0] == "sleep":
            time.sleep(step[1])
            step = self.server.default
        status, text = step
        payload = {"choices": [{"message": {"role": "assistant", "content": text}}]}
        data = json.dumps(payload if status == 200 else {"error": text}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def judge():
    srv = Judge()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def req(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(n, 3, 16, 16, generator=g)
    refs = [torch.rand(2, 3, 12, 12, generator=g)] * n
    return ScoreRequest(
        images=imgs, prompts=[f"a dog number {i}" for i in range(n)], references=refs
    )


def make(judge, tmp_path, **kw):
    opts = {"base_url": judge.url, "model": "judge-1", "backoff": 0.01, **kw}
    return build_reward("vlm", opts, RewardContext(cache_dir=str(tmp_path)))


def test_scores_parsed_and_request_shape(judge, tmp_path, monkeypatch):
    monkeypatch.setenv("CGRPO_TEST_VLM_KEY", "k-123")
    reward = make(judge, tmp_path, api_key_env="CGRPO_TEST_VLM_KEY", max_workers=2)
    out = reward.score(req(3))
    assert list(out) == ["vlm.identity", "vlm.prompt"]
    assert out["vlm.identity"].tolist() == [7.0] * 3 and out["vlm.prompt"].tolist() == [9.0] * 3
    path, headers, body = judge.bodies[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer k-123"
    assert body["model"] == "judge-1"
    parts = body["messages"][0]["content"]
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(urls) == 3 and all(
        u.startswith("data:image/png;base64,") for u in urls
    )  # 2 refs + image
    assert any('"a dog number' in p.get("text", "") for p in parts)


def test_cache_hit_sends_no_second_request(judge, tmp_path):
    reward = make(judge, tmp_path)
    first = reward.score(req(2))
    assert len(judge.bodies) == 2
    again = make(judge, tmp_path).score(req(2))  # a fresh reward reads the same cache
    assert len(judge.bodies) == 2 and all(torch.equal(first[k], again[k]) for k in first)
    assert len(list((tmp_path / "vlm").rglob("*.json"))) == 2
    make(judge, tmp_path).score(req(2, seed=1))  # other images: new requests
    assert len(judge.bodies) == 4


def test_retry_after_500_then_success(judge, tmp_path):
    judge.script = [(500, "overloaded"), (503, "busy")]
    reward = make(judge, tmp_path / "c", scores=["prompt"])
    out = reward.score(req(1))
    assert out["vlm.prompt"].tolist() == [9.0] and len(judge.bodies) == 3
    assert list(out) == ["vlm.prompt"]


def test_timeout_names_the_endpoint(judge, tmp_path):
    judge.script = [("sleep", 1.0), ("sleep", 1.0)]
    reward = make(judge, tmp_path, timeout=0.3, retries=1)
    with pytest.raises(
        RemoteError,
        match=rf"vlm judge 'judge-1' at {judge.url}/chat/completions "
        r"failed after 2 attempts: no answer within 0.3 s",
    ):
        reward.score(req(1))


def test_malformed_answer_is_quoted(judge, tmp_path):
    judge.script = [(200, "I think it is quite good!")]
    with pytest.raises(
        VlmAnswerError, match=r"no JSON object found; answer was 'I think it is quite good!'"
    ):
        make(judge, tmp_path).score(req(1))
    judge.script = [(200, '{"identity": 12, "prompt": 3}')]
    with pytest.raises(VlmAnswerError, match=r"'identity' = 12 is outside \[0, 10\]"):
        make(judge, tmp_path).score(req(1))
    judge.script = [(400, "bad model")]
    with pytest.raises(RemoteError, match="answered HTTP 400: bad model"):
        make(judge, tmp_path).score(req(1))
    assert not list((tmp_path / "vlm").rglob("*.json"))  # failures are not cached


def test_parse_answer_strictness():
    assert parse_answer(
        '```json\n{"identity": "8", "prompt": 6.5}\n```', ["identity", "prompt"], 10
    ) == {"identity": 8.0, "prompt": 6.5}
    assert parse_answer('Sure: {"prompt": 4} done', ["prompt"], 10) == {"prompt": 4.0}
    assert parse_answer("7", ["prompt"], 10) == {"prompt": 7.0}
    for bad, msg in [
        ("7", "expected a JSON object"),
        ('{"identity": 3}', "missing key 'prompt'"),
        ('{"identity": true, "prompt": 1}', "not a finite number"),
        ('{"identity": "high", "prompt": 1}', "not a number"),
        ('{"identity": 1, "prompt": NaN}', "not a finite number"),
    ]:
        with pytest.raises(VlmAnswerError, match=msg):
            parse_answer(bad, ["identity", "prompt"], 10)


def test_options_are_checked(tmp_path, monkeypatch):
    monkeypatch.delenv("CGRPO_TEST_VLM_MISSING", raising=False)
    with pytest.raises(ValueError, match="CGRPO_TEST_VLM_MISSING"):
        build_reward(
            "vlm", {"base_url": "http://x", "model": "m", "api_key_env": "CGRPO_TEST_VLM_MISSING"}
        )
    with pytest.raises(ConfigError, match=r"rewards\.vlm\.options\.scores"):
        build_reward("vlm", {"base_url": "http://x", "model": "m", "scores": ["beauty"]})
    with pytest.raises(ConfigError, match=r"rewards\.vlm\.options\.model"):
        build_reward("vlm", {"base_url": "http://x"})
