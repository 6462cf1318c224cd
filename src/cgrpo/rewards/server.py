"""``cgrpo serve-reward``: serve any registered reward over HTTP (JSON, stdlib only).

    cgrpo serve-reward NAME [--host 127.0.0.1] [--port 8765] [--token T | --token-env VAR]
                            [--options JSON-or-file] [--device cpu]

NAME is a registered reward (``cgrpo`` lists them in errors) or ``python:module:function``.
The protocol is in :mod:`cgrpo.rewards.remote`; clients use the ``remote`` reward. The server
binds 127.0.0.1 unless told otherwise; with a token, every request (health included) needs
``Authorization: Bearer <token>`` or gets 401. Requests are scored one at a time (a lock),
so one model serves concurrent clients safely. ``--port 0`` picks a free port; the chosen
address is printed on the first line of stdout (``serving NAME ... on http://HOST:PORT``).
Images arrive as 8-bit PNG (quantised in transit) and are converted to RGB whatever their mode.

Run it as ``python -m cgrpo.rewards.server NAME ...`` as well.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch

from cgrpo.rewards.base import Reward, RewardContext, build_reward
from cgrpo.rewards.remote import decode_request

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve-reward`` arguments (the CLI wires this into ``cgrpo``)."""
    parser.add_argument("name", help="registered reward name, or python:module:function")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    parser.add_argument("--token", default=None, help="require this bearer token")
    parser.add_argument(
        "--token-env",
        default=None,
        help="require the bearer token held in this environment variable",
    )
    parser.add_argument(
        "--options",
        default=None,
        help="reward options: a JSON object, or a .json/.yaml file holding one",
    )
    parser.add_argument("--device", default="cpu", help="device for the reward's models")
    parser.add_argument(
        "--max-request-mb", type=float, default=512.0, help="largest accepted request body in MiB"
    )


def load_options(text: str | None) -> dict[str, Any]:
    """``--options``: inline JSON, or a path to a JSON/YAML file; must be a mapping."""
    if not text:
        return {}
    path = Path(text).expanduser()
    source = f"--options {text!r}"
    if not text.lstrip().startswith("{") and path.is_file():
        raw = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            value = yaml.safe_load(raw)
        else:
            value = json.loads(raw)
        source = f"--options file {path}"
    else:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: neither a file nor valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{source}: expected a mapping of options, got {type(value).__name__}")
    return value


def build_served_reward(name: str, options: dict[str, Any], device: str) -> Reward:
    """The reward to serve: a registered name or a ``python:`` spec."""
    context = RewardContext(device=torch.device(device))
    if name.startswith("python:"):
        from cgrpo.rewards.custom import resolve_custom

        return resolve_custom(name, options, context)
    return build_reward(name, options, context)


class RewardServer(ThreadingHTTPServer):
    """A threading HTTP server holding one reward, a token and a scoring lock."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        reward: Reward,
        token: str | None = None,
        max_bytes: int = 512 << 20,
    ) -> None:
        super().__init__(address, _Handler)
        self.reward, self.token, self.max_bytes = reward, token, max_bytes
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: RewardServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        if not self.server.token:
            return True
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {self.server.token}".encode()):
            return True
        self._send(401, {"error": "missing or wrong bearer token"})
        return False

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if not self._authorised():
            return
        if self.path.rstrip("/") == "/health":
            r = self.server.reward
            self._send(200, {"status": "ok", "reward": r.name, "columns": list(r.columns)})
        else:
            self._send(
                404, {"error": f"no such endpoint {self.path!r}; use GET /health or POST /score"}
            )

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        if not self._authorised():
            return
        if self.path.rstrip("/") != "/score":
            self._send(404, {"error": f"no such endpoint {self.path!r}; use POST /score"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > self.server.max_bytes:
            self._send(
                400, {"error": f"request body of {length} bytes (limit {self.server.max_bytes})"}
            )
            return
        try:
            request = decode_request(json.loads(self.rfile.read(length)))
        except (ValueError, json.JSONDecodeError) as e:
            self._send(400, {"error": f"bad request: {e}"})
            return
        try:
            with self.server.lock:
                scores = self.server.reward.score(request)
        except Exception as e:  # report any reward failure to the client, keep serving
            log.exception("reward %s failed", self.server.reward.name)
            self._send(500, {"error": f"{type(e).__name__}: {e}"})
            return
        self._send(200, {"columns": {k: v.tolist() for k, v in scores.items()}})


def run(args: argparse.Namespace) -> int:
    """Build the reward, serve until interrupted. Returns the exit code."""
    token = args.token
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            print(f"error: --token-env {args.token_env}: variable not set", file=sys.stderr)
            return 2
    try:
        reward = build_served_reward(args.name, load_options(args.options), args.device)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    server = RewardServer((args.host, args.port), reward, token, int(args.max_request_mb * 2**20))
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warning("serving on %s without a token: anyone who can reach it can use it", args.host)
    print(
        f"serving {reward.name} (columns: {', '.join(reward.columns)}) on {server.url}", flush=True
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cgrpo serve-reward", description="Serve a cgrpo reward over HTTP."
    )
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
