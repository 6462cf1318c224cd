"""The reward server over real loopback HTTP: keep-alive after every error, 4xx for every
malformed request, health counters, many connections, a full queue, the CLI's start errors,
and a bounded load test (64 concurrent clients, scores identical to serial scoring)."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from cgrpo import cli
from cgrpo.rewards import ScoreRequest, build_reward
from cgrpo.rewards.base import Reward
from cgrpo.rewards.images import b64encode_image, quantize
from cgrpo.rewards.serving import remote as remote_module
from cgrpo.rewards.serving.server import RewardServer
from cgrpo.rewards.serving.wire import encode_request

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "custom_reward.py"
STATS = {"target": f"{EXAMPLE}:image_stats", "columns": ["brightness", "colorfulness"]}
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def stats_reward() -> Reward:
    return build_reward("custom", dict(STATS))


def req(images: torch.Tensor, seed: int = 0) -> ScoreRequest:
    n = images.shape[0]
    return ScoreRequest(
        images=images, prompts=[f"prompt {seed} {i}" for i in range(n)], references=[images[:1]] * n
    )


def png_bomb(side: int = 15000) -> str:
    """A PNG that declares ``side`` x ``side`` grey pixels (225 M at 15000) in a few bytes:
    its image data holds one row only. A decoder must refuse it before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * (side + 1))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
    return base64.b64encode(png + chunk(b"IEND", b"")).decode()


def post(conn: http.client.HTTPConnection, body: bytes | str, headers=None, path="/score"):
    data = body.encode() if isinstance(body, str) else body
    conn.request("POST", path, body=data, headers={**AUTH, **(headers or {})})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


@pytest.fixture
def served():
    with RewardServer(stats_reward(), token=TOKEN, max_bytes=200_000) as server:
        yield server


def test_keep_alive_connection_survives_every_error(served, make_images):
    imgs = quantize(make_images(3, 16, 16, seed=1))
    good = json.dumps(encode_request(req(imgs)))
    want = stats_reward().score(req(imgs))
    valid = {"images": [b64encode_image(imgs[0])], "prompts": ["a"], "references": [[0]]}
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)

    def expect_scores():
        status, answer = post(conn, good)
        assert status == 200
        assert answer["columns"]["brightness"] == pytest.approx(want["brightness"].tolist())

    expect_scores()
    sock = conn.sock
    bad = [
        (401, "bearer token", good, {"Authorization": "Bearer wrong"}),
        (413, "over the limit of 200000 bytes", "x" * 300_000, {}),
        (400, "Expecting value", "not json", {}),
        (400, "request body must be a JSON object", "[1, 2]", {}),
        (400, "field 'images' is empty", '{"images": [], "prompts": [], "references": []}', {}),
        (
            400,
            "images[0] is not valid base64",
            '{"images": ["%%"], "prompts": ["a"], "references": [["%%"]]}',
            {},
        ),
        (400, "field 'prompts' has 2 items for 1 images", {**valid, "prompts": ["a", "b"]}, {}),
        (400, "references[0][0] must be a base64 PNG or an index into 'pool'", valid, {}),
        (400, "images[0] must be a base64 PNG string", {**valid, "images": [3]}, {}),
        (400, "nests too deeply", "[" * 100_000, {}),
        (404, "no POST /nope", good, {}),
    ]
    masks = [b64encode_image(torch.ones(1, 4, 4)), b64encode_image(torch.ones(1, 6, 6))]
    bad += [
        (
            400,
            "reference_masks[0] holds images of different sizes",
            {**valid, "references": [[valid["images"][0]] * 2], "reference_masks": [masks]},
            {},
        ),
        (
            400,
            "reference_masks[0] has 1 masks for 2 references",
            {**valid, "references": [[valid["images"][0]] * 2], "reference_masks": [masks[:1]]},
            {},
        ),
        (
            400,
            "reference_masks[0] are (6, 6), their references (16, 16)",
            {**valid, "references": [[valid["images"][0]]], "reference_masks": [masks[1:]]},
            {},
        ),
    ]
    for status, message, body, headers in bad:
        if isinstance(body, dict):
            body = json.dumps(body)
        path = "/nope" if status == 404 else "/score"
        got, answer = post(conn, body, headers, path)
        assert (got, message in answer["error"]) == (status, True), (message, answer)
        expect_scores()
    conn.request("GET", "/score", headers=AUTH)
    resp = conn.getresponse()
    assert resp.status == 405 and "use GET /health or POST /score" in resp.read().decode()
    expect_scores()
    assert conn.sock is sock  # one connection throughout: no error closed it
    conn.request("GET", "/health", headers=AUTH)
    health = json.loads(conn.getresponse().read())
    assert health["requests_served"] == len(bad) + 2 and health["errors"] == len(bad) + 1
    assert health["errors_by_status"]["400"] == len(bad) - 3 and health["queue_depth"] == 0
    assert health["reward"] == "custom" and health["columns"] == ["brightness", "colorfulness"]


def test_bad_content_length_and_decompression_bomb_get_4xx(served, make_images):
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as s:
        s.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n"
            + f"Authorization: Bearer {TOKEN}\r\n\r\n{{}}".encode()
        )
        answer = b"".join(iter(lambda: s.recv(65536), b"")).decode()  # until it closes
    assert answer.startswith("HTTP/1.1 400") and "Invalid HTTP request" in answer
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    body = {"images": [png_bomb()], "prompts": ["a"], "references": [[0]], "pool": [png_bomb()]}
    status, answer = post(conn, json.dumps(body))
    assert 400 <= status < 500 and "pixels" in answer["error"], answer
    status, _ = post(conn, json.dumps(encode_request(req(make_images(1, 8, 8)))))
    assert status == 200


def test_256_simultaneous_connections_are_all_answered(served):
    sockets = [socket.create_connection(("127.0.0.1", served.port), timeout=60) for _ in range(256)]
    try:
        request = f"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        for s in sockets:
            s.sendall(request.encode())
        for s in sockets:
            assert s.makefile("rb").readline().startswith(b"HTTP/1.1 200")
    finally:
        for s in sockets:
            s.close()


class Gate(Reward):
    """Scores only after the test opens the gate, so the queue fills deterministically."""

    name = "gate"
    columns = ("gate",)

    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()

    def _score(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        assert self.open.wait(30), "the test never opened the gate"
        return {"gate": request.images.mean(dim=(1, 2, 3))}


def test_full_queue_answers_503_with_retry_after_which_the_client_honours(monkeypatch):
    reward = Gate()
    body = json.dumps(encode_request(req(torch.rand(2, 3, 8, 8))))
    with RewardServer(reward, max_queue=1) as server, ThreadPoolExecutor(1) as pool:
        first = pool.submit(
            post, http.client.HTTPConnection("127.0.0.1", server.port, timeout=30), body
        )
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        for _ in range(500):  # until the first request holds the only place
            conn.request("GET", "/health")
            if json.loads(conn.getresponse().read())["queue_depth"] == 1:
                break
        conn.request("POST", "/score", body=body)
        resp = conn.getresponse()
        assert resp.status == 503 and int(resp.getheader("Retry-After")) >= 1
        assert "busy" in json.loads(resp.read())["error"]

        waits = []

        def sleep(seconds):  # the client's pause: record it, then let the queue drain
            waits.append(seconds)
            reward.open.set()
            first.result(30)

        monkeypatch.setattr(remote_module.time, "sleep", sleep)
        client = build_reward("remote", {"url": server.url, "retries": 2, "backoff": 0.01})
        scores = client.score(req(torch.rand(2, 3, 8, 8)))
        assert scores["gate"].shape == (2,) and first.result()[0] == 200
        assert waits == [float(resp.getheader("Retry-After"))]  # Retry-After, not the backoff


def test_cli_start_errors_are_one_line_exit_2(capsys):
    assert cli.main(["serve-reward", "toy-id", "--port", "70000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --port 70000: must be between 0 and 65535"
    for given, shown in [  # float options are shown as parsed
        ("--batch-window-ms nan", "--batch-window-ms nan: must be a finite number >= 0"),
        ("--batch-window-ms -1", "--batch-window-ms -1.0: must be a finite number >= 0"),
        ("--max-batch 0", "--max-batch 0: must be >= 1"),
        ("--max-queue -2", "--max-queue -2: must be >= 1"),
        ("--max-request-mb inf", "--max-request-mb inf: must be a finite number > 0"),
        ("--max-request-mb 0", "--max-request-mb 0.0: must be a finite number > 0"),
    ]:
        assert cli.main(["serve-reward", "toy-id", *given.split()]) == 2
        assert capsys.readouterr().err.strip() == f"error: {shown}"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        bad = ["serve-reward", "custom", "--options", '{"target": "no_such_mod_q:f"}']
        assert cli.main([*bad, "--port", str(port)]) == 2  # the port fails before the reward
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port}: ") and "\n" not in err
    assert "in use" in err
    assert cli.main([*bad, "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot import 'no_such_mod_q' for 'f'" in err and "\n" not in err


def test_load_64_concurrent_clients_all_answered_scores_identical_to_serial(make_images):
    reward = stats_reward()
    requests = [req(quantize(make_images(12, 16, 16, seed=s)), seed=s) for s in range(64)]
    serial = [reward.score(r) for r in requests]
    with RewardServer(stats_reward(), batch_window_s=0.05) as server:
        clients = [
            build_reward("remote", {"url": server.url, "columns": list(STATS["columns"])})
            for _ in requests
        ]
        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(lambda c, r: c.score(r), clients, requests))
        health = remote_module.request_json(server.url + "/health", timeout=30, retries=0)
    for want, got in zip(serial, answers):
        for c in want:
            assert torch.equal(got[c], want[c]), c
    assert health["requests_served"] == 64 and health["errors"] == 0
    assert health["mean_batch_requests"] > 1  # concurrent requests shared calls
