"""The ``remote`` reward: score through a reward server (``cgrpo serve-reward``) over HTTP.

Use it to run a reward in another process, environment or machine: a reward whose
dependencies clash with training (the official HPSv3 package pins an older transformers), or
a large model kept off the training GPU and shared by every training process. The wire
format (JSON + PNG, no pickle) is in :mod:`cgrpo.rewards.serving.wire`, the server in
:mod:`cgrpo.rewards.serving.server`. A bearer token is sent when ``token`` or ``token_env`` is set.

Defaults are sized for a training step: one answer may take up to ``timeout`` = 120 s (a
shared server scores other processes' requests first); connection errors, timeouts and busy
answers (429/502/503/504) are retried up to ``retries`` = 4 times, after ``Retry-After``
when the server sends it, else after ``backoff`` = 1 s doubling (at most 30 s); and a
request gives up ``deadline`` = 300 s after it started, whatever is left. Giving up, or any
other failure, raises :class:`~cgrpo.rewards.base.RewardFailure` naming the URL and the
cause; the trainer then checkpoints and stops with one line.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import torch

from cgrpo.config import option, parse
from cgrpo.rewards.base import REWARDS, Reward, RewardContext, RewardFailure, ScoreRequest
from cgrpo.rewards.serving.wire import encode_request

# Statuses worth another try: the server is busy or a proxy in front of it failed.
RETRY_STATUS = (429, 502, 503, 504)
MAX_BACKOFF_S = 30.0


class RemoteError(RuntimeError):
    """A request to a remote endpoint failed for good (message names the URL)."""


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header (seconds or an HTTP date) as seconds from now, or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def request_json(
    url: str,
    body: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
    retries: int = 2,
    backoff: float = 0.5,
    deadline: float | None = None,
    retry_status: tuple[int, ...] = RETRY_STATUS,
    what: str = "server",
) -> Any:
    """GET (``body`` None) or POST JSON to ``url``; return the decoded JSON answer.

    Retries ``retries`` times on connection errors, timeouts and ``retry_status`` answers,
    waiting what the answer's ``Retry-After`` says, else ``backoff * 2**attempt`` seconds
    (at most 30). With ``deadline``, gives up that many seconds after the first try began
    (no try waits past it). Other HTTP errors fail at once.
    Raises :class:`RemoteError` naming ``what``, the URL and the last cause.
    """
    data = None if body is None else json.dumps(body).encode()
    hdrs = {"Accept": "application/json", **(headers or {})}
    if data is not None:
        hdrs["Content-Type"] = "application/json"
    start = time.monotonic()
    attempts, last = 0, ""
    while True:
        left = None if deadline is None else deadline - (time.monotonic() - start)
        wait_for = timeout if left is None else max(0.001, min(timeout, left))
        attempts += 1
        req = urllib.request.Request(
            url, data=data, headers=hdrs, method="GET" if data is None else "POST"
        )
        pause = min(backoff * 2 ** (attempts - 1), MAX_BACKOFF_S)
        try:
            with urllib.request.urlopen(req, timeout=wait_for) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = _error_detail(e)
            if e.code not in retry_status:
                raise RemoteError(f"{what} at {url} answered HTTP {e.code}: {detail}") from None
            last = f"HTTP {e.code}: {detail}"
            told = retry_after_seconds(e.headers.get("Retry-After") if e.headers else None)
            pause = pause if told is None else told
        except TimeoutError:
            last = f"no answer within {wait_for:g} s"
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError | socket.timeout):
                last = f"no answer within {wait_for:g} s"
            else:
                last = f"unreachable ({reason})"
        except http.client.HTTPException as e:  # the connection broke inside the answer
            last = f"broken answer ({type(e).__name__}: {e})"
        else:
            try:
                return json.loads(raw)
            except ValueError:  # not JSON, or not even UTF-8
                raise RemoteError(
                    f"{what} at {url} answered with non-JSON: {raw[:200]!r}"
                ) from None
        elapsed = time.monotonic() - start
        if attempts > retries:
            break
        if deadline is not None and elapsed + pause >= deadline:
            last += f"; the {deadline:g} s deadline leaves no time for another try"
            break
        time.sleep(pause)
    raise RemoteError(
        f"{what} at {url} failed after {attempts} attempts: {last} (gave up after {elapsed:.1f} s)"
    )


def _error_detail(e: urllib.error.HTTPError) -> str:
    try:
        text = e.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return str(e.reason)
    try:
        return str(json.loads(text).get("error", text))[:500]
    except (json.JSONDecodeError, AttributeError):
        return text[:500] or str(e.reason)


# ---------------------------------------------------------------- client reward


@dataclass
class RemoteOptions:
    url: str = option(help="the reward server's base URL, e.g. http://127.0.0.1:8765")
    token: str | None = option(None, "bearer token (prefer token_env: configs get shared)")
    token_env: str | None = option(None, "name of the environment variable holding the token")
    timeout: float = option(
        120.0,
        "seconds to wait for one answer (queueing behind other processes included)",
        min=0.0,
        min_exclusive=True,
    )
    retries: int = option(4, "extra tries on connection errors, timeouts and busy answers", min=0)
    backoff: float = option(
        1.0,
        "first pause between tries in seconds (doubles, at most 30; Retry-After wins)",
        min=0.0,
    )
    deadline: float = option(
        300.0,
        "seconds after which one request gives up, tries and pauses included",
        min=0.0,
        min_exclusive=True,
    )
    batch_size: int = option(16, "images per request", min=1)
    columns: list[str] = option(
        help="score columns; empty: ask the server's /health", default_factory=list
    )


class RemoteReward(Reward):
    """Scores batches on a reward server; columns keep the served reward's names.

    Every failure to score (server down, silent, busy past the deadline, wrong token, a
    malformed answer, the served reward failing) raises
    :class:`~cgrpo.rewards.base.RewardFailure`, also when ``/health`` fails at build time.
    """

    name = "remote"

    def __init__(self, options: RemoteOptions, context: RewardContext) -> None:
        super().__init__()
        self.options = options
        self.url = options.url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"rewards.remote.options.url = {options.url!r}: expected http(s)://")
        token = options.token
        if options.token_env:
            token = os.environ.get(options.token_env)
            if not token:
                raise ValueError(
                    f"rewards.remote.options.token_env: environment variable "
                    f"{options.token_env!r} is not set"
                )
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.served = None
        if options.columns:
            self.columns = tuple(options.columns)
        else:
            health = self._call("/health")
            cols = health.get("columns") if isinstance(health, dict) else None
            if not isinstance(cols, list) or not cols:
                raise RewardFailure(
                    self.name, f"reward server at {self.url}/health gave no columns: {health!r}"
                )
            self.columns = tuple(str(c) for c in cols)
            self.served = health.get("reward")
        self.device = torch.device(context.device)

    def _call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        o = self.options
        try:
            return request_json(
                self.url + path,
                body,
                headers=self.headers,
                timeout=o.timeout,
                retries=o.retries,
                backoff=o.backoff,
                deadline=o.deadline,
                what="reward server",
            )
        except RemoteError as e:
            raise RewardFailure(self.name, str(e)) from None

    def _columns(self, answer: Any, n: int) -> dict[str, torch.Tensor]:
        """The answer's score columns, each ``n`` numbers; a RewardFailure otherwise."""
        cols = answer.get("columns") if isinstance(answer, dict) else None
        if not isinstance(cols, dict):
            raise RewardFailure(
                self.name,
                f"reward server at {self.url}/score answered without 'columns': {str(answer)[:200]}",
            )
        out = {}
        for c in self.columns:
            if c not in cols:
                raise RewardFailure(
                    self.name,
                    f"reward server at {self.url} returned columns {sorted(cols)}, not {c!r}",
                )
            values = cols[c]
            if (
                not isinstance(values, list)
                or len(values) != n
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
            ):
                raise RewardFailure(
                    self.name,
                    f"reward server at {self.url} returned column {c!r} as "
                    f"{str(values)[:100]}, not {n} numbers",
                )
            out[c] = torch.tensor(values, dtype=torch.float32)
        return out

    def _score(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        parts: dict[str, list[torch.Tensor]] = {c: [] for c in self.columns}
        n = len(request)
        for start in range(0, n, self.options.batch_size):
            sub = request.select(slice(start, min(n, start + self.options.batch_size)))
            answer = self._call("/score", encode_request(sub))
            for c, values in self._columns(answer, len(sub)).items():
                parts[c].append(values)
        return {c: torch.cat(v) for c, v in parts.items()}


@REWARDS.register("remote")
def _build_remote(options: dict, context: RewardContext) -> RemoteReward:
    return RemoteReward(parse(RemoteOptions, options, prefix="rewards.remote.options"), context)


__all__ = [
    "RemoteOptions",
    "RemoteReward",
    "RemoteError",
    "request_json",
    "retry_after_seconds",
]
