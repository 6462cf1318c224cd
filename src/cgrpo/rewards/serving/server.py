"""``cgrpo serve-reward``: serve any registered reward over HTTP (uvicorn + starlette).

    cgrpo serve-reward NAME [--host 127.0.0.1] [--port 8765] [--token T | --token-env VAR]
                            [--options JSON-or-file] [--device cpu] [--batch-window-ms 10]
                            [--max-batch 64] [--max-queue 64] [--max-request-mb 512]
                            [--read-timeout-s 60]

NAME is a registered reward or ``python:module:function``. One server is meant to be shared
by many training processes (the ``remote`` reward is the client):

* ``POST /score`` takes the JSON + PNG body of :mod:`cgrpo.rewards.serving.wire` and answers
  ``{"columns": {NAME: [float, ...]}}``. Requests that arrive within the batch window, up to
  ``--max-batch`` images, are scored in one call of the reward
  (:mod:`cgrpo.rewards.serving.batching`).
* ``GET /health`` answers the reward, its columns, the queue depth and counters (requests
  served, mean batch size, errors).
* Errors are ``{"error": message}``: 400 a malformed request, 401 a missing or wrong token
  (every endpoint, health included, when a token is set), 404/405 a wrong endpoint or
  method, 413 a body over ``--max-request-mb``, 500 the reward failed, 503 the queue holds
  ``--max-queue`` requests already (with ``Retry-After`` in seconds), 408 a body not
  received within ``--read-timeout-s`` (a client that sends too slowly; the connection is
  closed). The request body is otherwise always read to its end first, so a keep-alive
  connection stays usable after any error.
* A client that disconnects mid-request costs nothing but a count (``client_disconnects``
  in ``/health``); one that leaves after sending the whole request is scored all the same.

The server binds 127.0.0.1 unless told otherwise; ``--port 0`` picks a free port. The first
line of stdout is ``serving NAME (columns: ...; batching ...) on http://HOST:PORT``. Run it as
``python -m cgrpo.rewards.serving.server NAME ...`` as well.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from cgrpo.rewards.base import Reward, RewardContext
from cgrpo.rewards.build import build_reward
from cgrpo.rewards.serving.batching import Batcher, Busy
from cgrpo.rewards.serving.wire import drain_body, parse_body, read_body

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


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
        "--batch-window-ms",
        type=float,
        default=10.0,
        help="how long a batch waits for more requests after its first (default 10; 0: no wait)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=64,
        help="most images scored in one call of the reward (default 64; 1: one request at "
        "a time); a larger request is scored alone",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="most requests admitted at once (default 64); more get 503 with Retry-After",
    )
    parser.add_argument(
        "--max-request-mb", type=float, default=512.0, help="largest accepted request body in MiB"
    )
    parser.add_argument(
        "--read-timeout-s",
        type=float,
        default=60.0,
        help="longest a request body may take to arrive (default 60); a slower client gets 408",
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
    return build_reward(name, options, RewardContext(device=torch.device(device)))


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with a deep backlog (an OSError if it is taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


class RewardServer:
    """One reward behind an HTTP server: a token, body limits, a batching queue.

    The socket is bound on construction (an OSError if the address is taken), unless a
    bound one is given as ``listening`` (the CLI binds before it loads the reward); :meth:`serve`
    runs in the foreground (the CLI), :meth:`start` / :meth:`stop` in a background thread
    (tests, benchmarks; also a context manager).
    """

    def __init__(
        self,
        reward: Reward,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        listening: socket.socket | None = None,
        token: str | None = None,
        max_bytes: int = 512 << 20,
        batch_window_s: float = 0.010,
        max_batch: int = 64,
        max_queue: int = 64,
        read_timeout_s: float = 60.0,
    ) -> None:
        self.reward, self.token, self.max_bytes = reward, token, max_bytes
        self.read_timeout_s = read_timeout_s
        self.batcher = Batcher(reward, batch_window_s, max_batch, max_queue)
        self.error_counts: Counter[int] = Counter()
        self.client_disconnects = 0  # clients gone before their request was read
        self.socket = listening or listen(host, port)
        self.host, self.port = host, self.socket.getsockname()[1]
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # ---------------------------------------------------------------- HTTP
    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> Any:
        from starlette.responses import JSONResponse

        self.error_counts[status] += 1
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def _denied(self, request: Any) -> bool:
        if not self.token:
            return False
        given = request.headers.get("authorization", "")
        return not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    async def _unauthorised(self, request: Any) -> Any:
        await drain_body(request)
        return self._error(401, "missing or wrong bearer token")

    async def health(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        if self._denied(request):
            return await self._unauthorised(request)
        b = self.batcher
        return JSONResponse(
            {
                "status": "ok",
                "reward": self.reward.name,
                "columns": list(self.reward.columns),
                "queue_depth": b.admitted,
                **b.stats.as_dict(),
                "errors": sum(self.error_counts.values()),
                "errors_by_status": {str(k): v for k, v in sorted(self.error_counts.items())},
                "client_disconnects": self.client_disconnects,
                "batch_window_ms": b.window_s * 1000,
                "max_batch": b.max_batch,
                "max_queue": b.max_queue,
            }
        )

    async def score(self, request: Any) -> Any:
        from starlette.requests import ClientDisconnect
        from starlette.responses import Response

        try:
            return await self._score(request)
        except ClientDisconnect:  # nobody to answer: count it, log nothing
            self.client_disconnects += 1
            return Response(status_code=400)

    async def _score(self, request: Any) -> Any:
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse

        if self._denied(request):
            return await self._unauthorised(request)
        try:
            with self.batcher.admit():
                try:
                    body = await read_body(request, self.max_bytes, self.read_timeout_s)
                except asyncio.TimeoutError:  # noqa: UP041 - a distinct class on Python 3.10
                    message = f"request body not received within {self.read_timeout_s:g} s"
                    return self._error(408, message, {"Connection": "close"})
                if body is None:
                    return self._error(
                        413, f"request body over the limit of {self.max_bytes} bytes"
                    )
                try:
                    score_request = await run_in_threadpool(parse_body, body)
                except ValueError as e:
                    return self._error(400, f"bad request: {e}")
                try:
                    scores = await self.batcher.score(score_request)
                except Exception as e:  # report any reward failure to the client, keep serving
                    log.warning("reward %s failed: %s: %s", self.reward.name, type(e).__name__, e)
                    return self._error(500, f"{type(e).__name__}: {e}")
        except Busy as e:
            await drain_body(request)
            return self._error(503, str(e), {"Retry-After": str(e.retry_after)})
        return JSONResponse({"columns": {k: v.tolist() for k, v in scores.items()}})

    async def _not_found(self, request: Any, exc: Any) -> Any:
        await drain_body(request)
        status = getattr(exc, "status_code", 404)
        return self._error(
            status, f"no {request.method} {request.url.path}; use GET /health or POST /score"
        )

    def app(self) -> Any:
        """The starlette application (the batcher runs while it does)."""
        from starlette.applications import Starlette
        from starlette.routing import Route

        @contextlib.asynccontextmanager
        async def lifespan(_app: Any):
            await self.batcher.start()
            try:
                yield
            finally:
                await self.batcher.stop()

        return Starlette(
            routes=[
                Route("/health", self.health, methods=["GET"]),
                Route("/score", self.score, methods=["POST"]),
            ],
            exception_handlers={404: self._not_found, 405: self._not_found},
            lifespan=lifespan,
        )

    # ---------------------------------------------------------------- running
    def _uvicorn(self) -> Any:
        import uvicorn

        config = uvicorn.Config(
            self.app(),
            log_level="warning",
            access_log=False,
            backlog=2048,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        return self._server

    def serve(self) -> None:
        """Serve in the foreground until Ctrl-C or SIGTERM."""
        self._uvicorn().run(sockets=[self.socket])

    def start(self) -> RewardServer:
        """Serve from a background thread; returns once the server accepts requests."""
        server = self._uvicorn()
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )
        self._thread.start()
        while not server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"reward server on {self.url} failed to start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.socket.close()

    def __enter__(self) -> RewardServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _option_error(args: argparse.Namespace) -> str | None:
    """The first numeric option out of range, as one line naming it; None when all fit."""
    window, mb = args.batch_window_ms, args.max_request_mb
    checks = [
        ("--port", args.port, 0 <= args.port <= 65535, "between 0 and 65535"),
        ("--batch-window-ms", window, 0 <= window < math.inf, "a finite number >= 0"),
        ("--max-batch", args.max_batch, args.max_batch >= 1, ">= 1"),
        ("--max-queue", args.max_queue, args.max_queue >= 1, ">= 1"),
        ("--max-request-mb", mb, 0 < mb < math.inf, "a finite number > 0"),
        ("--read-timeout-s", args.read_timeout_s, 0 < args.read_timeout_s, "> 0"),
    ]
    for flag, value, fits, rule in checks:
        if not fits:
            return f"{flag} {value}: must be {rule}"
    return None


def run(args: argparse.Namespace) -> int:
    """Build the reward, serve until interrupted. Returns the exit code."""
    bad = _option_error(args)
    if bad:
        return _fail(bad)
    token = args.token
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            return _fail(f"--token-env {args.token_env}: variable not set")
    try:  # before the reward loads (minutes for a large model): a busy port fails at once
        listening = listen(args.host, args.port)
    except OSError as e:
        return _fail(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}")
    try:
        reward = build_served_reward(args.name, load_options(args.options), args.device)
    except (ValueError, FileNotFoundError, ImportError) as e:
        listening.close()
        return _fail(str(e))
    server = RewardServer(
        reward,
        args.host,
        listening=listening,
        token=token,
        max_bytes=int(args.max_request_mb * 2**20),
        batch_window_s=args.batch_window_ms / 1000,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        read_timeout_s=args.read_timeout_s,
    )
    if args.host not in LOOPBACK and not token:
        log.warning("serving on %s without a token: anyone who can reach it can use it", args.host)
    print(
        f"serving {reward.name} (columns: {', '.join(reward.columns)}; batch window "
        f"{args.batch_window_ms:g} ms, max batch {args.max_batch} images, queue "
        f"{args.max_queue} requests) on {server.url}",
        flush=True,
    )
    server.serve()
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
