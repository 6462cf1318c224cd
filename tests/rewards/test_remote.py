"""Reward server (a real process) + remote client; the JSON/PNG wire format; the client's
retries, deadline, Retry-After and one-line failures."""

from __future__ import annotations

import email.utils
import http.server
import io
import json
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from cgrpo.rewards import RewardFailure, ScoreRequest, build_reward
from cgrpo.rewards.custom import resolve_custom
from cgrpo.rewards.images import decode_png, encode_png, quantize
from cgrpo.rewards.serving import remote as remote_module
from cgrpo.rewards.serving.remote import retry_after_seconds
from cgrpo.rewards.serving.server import RewardServer, load_options
from cgrpo.rewards.serving.wire import decode_request, encode_request

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "custom_reward.py"
STATS = {"target": f"{EXAMPLE}:image_stats", "columns": ["brightness", "colorfulness"]}
TOKEN = "s3cret-token"


def req(images, masks=None):
    n = images.shape[0]
    refs = [images[i % 2 : i % 2 + 1] for i in range(n)]
    return ScoreRequest(
        images=images,
        prompts=[f"prompt {i}" for i in range(n)],
        references=refs,
        reference_masks=masks or [],
        metadata=[{"i": i, "t": torch.tensor([i])} for i in range(n)],
    )


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    q: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: q.put(proc.stdout.readline()), daemon=True).start()
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        proc.kill()
        raise AssertionError(
            f"server printed nothing in {timeout} s: {proc.stderr.read()}"
        ) from None


@pytest.fixture(scope="module")
def server():
    """A real `python -m cgrpo.rewards.serving.server` process serving the example reward."""
    cmd = [
        sys.executable,
        "-m",
        "cgrpo.rewards.serving.server",
        "custom",
        "--port",
        "0",
        "--token",
        TOKEN,
        "--options",
        json.dumps(STATS),
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    line = _first_line(proc, 120)
    assert line.startswith("serving custom (columns: brightness, colorfulness; batch window 10 ms")
    assert " on http://127.0.0.1:" in line, line
    url = line.split(" on ")[-1].strip()
    yield proc, url
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def test_png_round_trip_is_exact_for_8bit_images_and_any_mode(make_images):
    from PIL import Image

    img = quantize(make_images(1, 17, 23, seed=1)[0])
    assert torch.equal(decode_png(encode_png(img)), img)
    assert (
        decode_png(encode_png(make_images(1, 9, 9)[0])) - make_images(1, 9, 9)[0]
    ).abs().max() <= 0.5 / 255 + 1e-6
    for mode in ("RGBA", "L", "P", "I;16"):
        buf = io.BytesIO()
        Image.new(mode, (7, 5)).save(buf, format="PNG")
        assert decode_png(buf.getvalue()).shape == (3, 5, 7)


def test_wire_format_round_trip(make_images):
    imgs = quantize(make_images(3, 20, 30, seed=2))
    mask = (torch.rand(1, 1, 20, 30) > 0.5).float()
    back = decode_request(json.loads(json.dumps(encode_request(req(imgs, [mask, None, mask])))))
    assert torch.equal(back.images, imgs) and back.prompts == ["prompt 0", "prompt 1", "prompt 2"]
    assert torch.equal(back.references[1], imgs[1:2])
    assert torch.equal(back.reference_masks[0], mask) and back.reference_masks[1] is None
    assert back.metadata[2] == {"i": 2, "t": [2]}
    with pytest.raises(ValueError, match="references\\[0\\] must be a non-empty list"):
        decode_request(
            {
                "images": encode_request(req(imgs))["images"],
                "prompts": ["a"] * 3,
                "references": [[], [], []],
            }
        )
    with pytest.raises(ValueError, match="images\\[0\\] is not valid base64"):
        decode_request({"images": ["%%%"], "prompts": ["a"], "references": [["%%%"]]})


def test_references_are_sent_and_decoded_once_per_request(make_images):
    imgs = quantize(make_images(6, 12, 12, seed=5))
    shared, other = imgs[:2], imgs[2:3]
    mask = (torch.rand(2, 1, 12, 12) > 0.5).float()
    request = ScoreRequest(
        images=imgs,
        prompts=["p"] * 6,
        references=[shared, shared, shared, other, shared.clone(), other],
        reference_masks=[mask, mask, None, None, mask.clone(), None],
    )
    body = encode_request(request)
    # 2 shared images + 1 other + 2 masks, each once (a clone has the same pixels)
    assert len(body["pool"]) == 5 and body["references"][0] == body["references"][4]
    back = decode_request(json.loads(json.dumps(body)))
    assert back.references[0] is back.references[1] is back.references[4]
    assert back.references[3] is back.references[5] and torch.equal(back.references[3], other)
    assert back.reference_masks[0] is back.reference_masks[4]
    assert torch.equal(back.reference_masks[4], mask)
    # inline PNGs (no pool) are de-duplicated by the server as well
    inline = {**body, "references": [[body["pool"][i] for i in g] for g in body["references"]]}
    del inline["pool"], inline["reference_masks"]
    back = decode_request(json.loads(json.dumps(inline)))
    assert back.references[0] is back.references[2] and torch.equal(back.references[0], shared)


def test_real_server_process_matches_in_process_scores(server, make_images):
    _, url = server
    local = build_reward("custom", dict(STATS))
    remote = build_reward("remote", {"url": url, "token": TOKEN, "batch_size": 3})
    assert remote.columns == ("brightness", "colorfulness") and remote.served == "custom"
    imgs = quantize(make_images(8, 24, 24, seed=3))
    want, got = local.score(req(imgs)), remote.score(req(imgs))
    for c in want:
        assert torch.allclose(got[c], want[c], atol=1e-4), c
    raw = make_images(2, 24, 24, seed=4)  # not 8-bit: scores differ only by quantisation
    assert torch.allclose(
        remote.score(req(raw))["brightness"], local.score(req(raw))["brightness"], atol=2e-3
    )


def test_token_is_enforced(server):
    _, url = server
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url + "/health", timeout=10)
    assert e.value.code == 401
    with pytest.raises(
        RewardFailure,
        match=r"^reward 'remote': reward server at http://127\.0\.0\.1:\d+/health answered "
        r"HTTP 401: missing or wrong bearer token$",
    ):
        build_reward("remote", {"url": url, "token": "wrong"})
    wrong = build_reward("remote", {"url": url, "token": "wrong", "columns": ["brightness"]})
    with pytest.raises(RewardFailure, match=r"/score answered HTTP 401"):
        wrong.score(req(torch.rand(1, 3, 8, 8)))
    with pytest.raises(ValueError, match="CGRPO_TEST_UNSET_TOKEN"):
        build_reward("remote", {"url": url, "token_env": "CGRPO_TEST_UNSET_TOKEN"})


def test_errors_travel_back_with_the_reward_name(tmp_path, monkeypatch, make_images):
    (tmp_path / "nan_reward.py").write_text(
        "import torch\ndef nan(images, prompts, references):\n"
        "    return torch.full((images.shape[0],), float('nan'))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with RewardServer(resolve_custom("python:nan_reward:nan")) as srv:
        remote = build_reward("remote", {"url": srv.url, "retries": 0})
        with pytest.raises(
            RewardFailure,
            match=r"HTTP 500: ValueError: reward 'python:nan_reward:nan' "
            r"gave a non-finite score",
        ):
            remote.score(req(make_images(2, 8, 8)))
        bad = urllib.request.Request(srv.url + "/score", data=b'{"images": 3}', method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad, timeout=10)
        assert e.value.code == 400 and "field 'images' must be a list" in e.value.read().decode()


def test_client_fails_clearly_when_the_server_dies(server, make_images):
    proc, url = server
    remote = build_reward(
        "remote", {"url": url, "token": TOKEN, "timeout": 5, "retries": 1, "backoff": 0.1}
    )
    proc.kill()
    proc.wait(10)
    start = time.monotonic()
    with pytest.raises(
        RewardFailure,
        match=rf"^reward 'remote': reward server at {url}/score failed after 2 attempts: "
        r"unreachable \(.*refused\) \(gave up after [\d.]+ s\)$",
    ):
        remote.score(req(make_images(2, 8, 8)))
    assert time.monotonic() - start < 2 * 5 + 1  # bounded by the timeout, not a hang


def test_server_down_at_start_fails_at_build_or_first_score(make_images):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    fast = {"url": url, "retries": 1, "backoff": 0.01}
    with pytest.raises(RewardFailure, match=rf"^reward 'remote': reward server at {url}/health"):
        build_reward("remote", fast)
    remote = build_reward("remote", {**fast, "columns": ["x"]})  # no /health call
    with pytest.raises(RewardFailure, match=rf"{url}/score failed after 2 attempts"):
        remote.score(req(make_images(1, 8, 8)))


def test_client_times_out_on_a_silent_server_within_its_deadline(make_images):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)  # accepts connections at the TCP level but never answers
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        remote = build_reward(
            "remote",
            {"url": url, "columns": ["x"], "timeout": 0.5, "retries": 1, "backoff": 0.0},
        )
        with pytest.raises(
            RewardFailure,
            match=rf"{url}/score failed after 2 attempts: no answer within 0.5 s \(gave up",
        ):
            remote.score(req(make_images(1, 8, 8)))
        patient = build_reward(
            "remote",
            {"url": url, "columns": ["x"], "timeout": 0.4, "retries": 50, "deadline": 1.0},
        )
        start = time.monotonic()
        with pytest.raises(RewardFailure, match=r"the 1 s deadline leaves no time"):
            patient.score(req(make_images(1, 8, 8)))
        assert time.monotonic() - start < 5  # the deadline, not 51 tries of 0.4 s
    finally:
        sock.close()


class Scripted(http.server.BaseHTTPRequestHandler):
    """Answers POSTs from a script of (status, headers, body), then closes the connection."""

    script: list[tuple[int, dict[str, str], bytes]] = []

    def do_POST(self):  # noqa: N802 - stdlib name
        self.rfile.read(int(self.headers["Content-Length"]))
        status, headers, body = self.script.pop(0)
        self.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(k, v)  # a scripted Content-Length over len(body): a cut answer
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield Scripted, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_client_honours_retry_after_and_rejects_malformed_answers(scripted, monkeypatch):
    handler, url = scripted
    waits = []
    monkeypatch.setattr(remote_module.time, "sleep", waits.append)
    ok = json.dumps({"columns": {"x": [1.0, 2.0]}}).encode()
    handler.script[:] = [
        (503, {"Retry-After": "7"}, b'{"error": "busy"}'),
        (502, {}, b"bad gateway"),
        (200, {"Content-Length": "100"}, ok[:10]),  # the connection breaks mid-answer
        (200, {}, ok),
    ]
    remote = build_reward("remote", {"url": url, "columns": ["x"], "backoff": 0.25})
    assert remote.score(req(torch.rand(2, 3, 8, 8)))["x"].tolist() == [1.0, 2.0]
    assert waits == [7.0, 0.5, 1.0]  # Retry-After, then the doubled backoff
    handler.script[:] = [(200, {"Content-Length": "100"}, ok[:10])] * 5
    with pytest.raises(RewardFailure, match=r"after 5 attempts: broken answer \(IncompleteRead"):
        remote.score(req(torch.rand(2, 3, 8, 8)))
    handler.script[:] = [(503, {"Retry-After": "400"}, b'{"error": "busy"}')]
    with pytest.raises(RewardFailure, match=r"HTTP 503: busy; the 300 s deadline leaves no"):
        remote.score(req(torch.rand(2, 3, 8, 8)))
    for answer, message in [
        (b"<html>", "answered with non-JSON"),
        (b"\xff\xfe\x00", "answered with non-JSON"),
        (b'{"scores": []}', "answered without 'columns'"),
        (b'{"columns": {"y": [1, 2]}}', r"returned columns \['y'\], not 'x'"),
        (b'{"columns": {"x": [1]}}', r"returned column 'x' as \[1\], not 2 numbers"),
        (b'{"columns": {"x": ["a", "b"]}}', "not 2 numbers"),
    ]:
        handler.script[:] = [(200, {}, answer)]
        with pytest.raises(RewardFailure, match=rf"^reward 'remote': .*{message}"):
            remote.score(req(torch.rand(2, 3, 8, 8)))


def test_retry_after_header_forms():
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a past date
    future = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= retry_after_seconds(future) <= 61


def test_options_from_json_yaml_and_inline(tmp_path):
    (tmp_path / "o.yaml").write_text("target: a:b\ncolumns: [x]\n")
    (tmp_path / "o.json").write_text('{"target": "a:b"}')
    assert load_options(str(tmp_path / "o.yaml")) == {"target": "a:b", "columns": ["x"]}
    assert load_options(str(tmp_path / "o.json")) == {"target": "a:b"}
    assert load_options('{"k": 1}') == {"k": 1} and load_options(None) == {}
    with pytest.raises(ValueError, match="neither a file nor valid JSON"):
        load_options("nope.yaml")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_options("[1, 2]")
