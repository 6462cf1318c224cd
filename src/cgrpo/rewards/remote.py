"""The ``remote`` reward: score through a reward server (``cgrpo serve-reward``) over HTTP.

Use it to run a reward in another process, environment or machine: a reward whose
dependencies clash with training (the official HPSv3 package pins an older transformers), or
a large model kept off the training GPU. Protocol (JSON, no pickle), shared with
:mod:`cgrpo.rewards.server`:

``GET /health`` -> ``{"status": "ok", "reward": NAME, "columns": [...]}``

``POST /score`` with ``{"images": [PNG base64], "prompts": [...], "references": [[PNG
base64, ...], ...], "reference_masks": [[PNG base64 (grey), ...] | null, ...], "metadata":
[{...}, ...]}`` -> ``{"columns": {NAME: [float, ...]}}``; errors -> ``{"error": message}``
with status 400 (bad request), 401 (token), 500 (the reward failed).

Images travel as 8-bit PNG, so they are quantised to 1/255 steps in transit (lossless for
images that already are 8-bit); masks travel as 8-bit grey PNG (subject where >= 0.5).
A bearer token is sent when ``token`` or ``token_env`` is set.
"""

from __future__ import annotations

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
from cgrpo.rewards.base import REWARDS, Reward, RewardContext, ScoreRequest
from cgrpo.rewards.images import b64decode_image, b64encode_image

# Statuses worth another try: the server is busy or a proxy in front of it failed.
RETRY_STATUS = (429, 502, 503, 504)


class RemoteError(RuntimeError):
    """A request to a remote endpoint failed for good (message names the URL)."""


def request_json(
    url: str,
    body: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
    retries: int = 2,
    backoff: float = 0.5,
    retry_status: tuple[int, ...] = RETRY_STATUS,
    what: str = "server",
) -> Any:
    """GET (``body`` None) or POST JSON to ``url``; return the decoded JSON answer.

    Retries ``retries`` times on connection errors, timeouts and ``retry_status`` answers,
    sleeping ``backoff * 2**attempt`` seconds between tries. Other HTTP errors fail at once.
    Raises :class:`RemoteError` naming ``what`` and the URL.
    """
    data = None if body is None else json.dumps(body).encode()
    hdrs = {"Accept": "application/json", **(headers or {})}
    if data is not None:
        hdrs["Content-Type"] = "application/json"
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        req = urllib.request.Request(
            url, data=data, headers=hdrs, method="GET" if data is None else "POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = _error_detail(e)
            if e.code in retry_status:
                last = f"HTTP {e.code}: {detail}"
                continue
            raise RemoteError(f"{what} at {url} answered HTTP {e.code}: {detail}") from None
        except TimeoutError:
            last = f"no answer within {timeout:g} s"
            continue
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError | socket.timeout):
                last = f"no answer within {timeout:g} s"
            else:
                last = f"unreachable ({reason})"
            continue
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise RemoteError(f"{what} at {url} answered with non-JSON: {raw[:200]!r}") from None
    raise RemoteError(f"{what} at {url} failed after {retries + 1} attempts: {last}")


def _error_detail(e: urllib.error.HTTPError) -> str:
    try:
        text = e.read().decode("utf-8", "replace")
    except OSError:
        return str(e.reason)
    try:
        return str(json.loads(text).get("error", text))[:500]
    except (json.JSONDecodeError, AttributeError):
        return text[:500] or str(e.reason)


# ---------------------------------------------------------------- wire format


def _plain(value: Any) -> Any:
    """Metadata -> JSON-safe values (tensors and arrays become lists, unknowns strings)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def encode_request(request: ScoreRequest) -> dict[str, Any]:
    """A :class:`ScoreRequest` as the JSON body of ``POST /score`` (images as 8-bit PNG)."""
    return {
        "images": [b64encode_image(im) for im in request.images],
        "prompts": list(request.prompts),
        "references": [[b64encode_image(r) for r in refs] for refs in request.references],
        "reference_masks": [
            None if m is None else [b64encode_image(x) for x in m] for m in request.reference_masks
        ],
        "metadata": [_plain(m) for m in request.metadata],
    }


def decode_request(body: Any) -> ScoreRequest:
    """The inverse of :func:`encode_request`; images of any PNG mode and size, as RGB.

    Raises ValueError naming the field at fault.
    """
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    for key in ("images", "prompts", "references"):
        if not isinstance(body.get(key), list):
            raise ValueError(f"field {key!r} must be a list")
    images = [b64decode_image(s, "RGB", f"images[{i}]") for i, s in enumerate(body["images"])]
    if not images:
        raise ValueError("field 'images' is empty")
    sizes = {tuple(im.shape) for im in images}
    if len(sizes) > 1:
        raise ValueError(f"images differ in size {sorted(sizes)}; send one size per request")
    refs = []
    for i, group in enumerate(body["references"]):
        if not isinstance(group, list) or not group:
            raise ValueError(f"references[{i}] must be a non-empty list of images")
        decoded = [b64decode_image(s, "RGB", f"references[{i}][{j}]") for j, s in enumerate(group)]
        if len({tuple(r.shape) for r in decoded}) > 1:
            raise ValueError(f"references[{i}] differ in size")
        refs.append(torch.stack(decoded))
    masks = []
    for i, group in enumerate(body.get("reference_masks") or [None] * len(images)):
        if group is None:
            masks.append(None)
            continue
        m = [b64decode_image(s, "L", f"reference_masks[{i}][{j}]") for j, s in enumerate(group)]
        masks.append((torch.stack(m) >= 0.5).float())
    prompts = body["prompts"]
    if not all(isinstance(p, str) for p in prompts):
        raise ValueError("field 'prompts' must hold strings")
    metadata = body.get("metadata") or []
    if not isinstance(metadata, list) or not all(isinstance(m, dict) for m in metadata):
        raise ValueError("field 'metadata' must be a list of objects")
    return ScoreRequest(
        images=torch.stack(images),
        prompts=prompts,
        references=refs,
        reference_masks=masks,
        metadata=metadata,
    )


# ---------------------------------------------------------------- client reward


@dataclass
class RemoteOptions:
    url: str = option(help="the reward server's base URL, e.g. http://127.0.0.1:8765")
    token: str | None = option(None, "bearer token (prefer token_env: configs get shared)")
    token_env: str | None = option(None, "name of the environment variable holding the token")
    timeout: float = option(300.0, "seconds to wait for one answer", min=0.0, min_exclusive=True)
    retries: int = option(2, "extra tries on connection errors, timeouts and busy answers", min=0)
    backoff: float = option(
        0.5, "first pause between tries in seconds (doubles each time)", min=0.0
    )
    batch_size: int = option(16, "images per request", min=1)
    columns: list[str] = option(
        help="score columns; empty: ask the server's /health", default_factory=list
    )


class RemoteReward(Reward):
    """Scores batches on a reward server; columns keep the served reward's names."""

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
                raise RemoteError(f"reward server at {self.url}/health gave no columns: {health!r}")
            self.columns = tuple(str(c) for c in cols)
            self.served = health.get("reward")
        self.device = torch.device(context.device)

    def _call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        o = self.options
        return request_json(
            self.url + path,
            body,
            headers=self.headers,
            timeout=o.timeout,
            retries=o.retries,
            backoff=o.backoff,
            what="reward server",
        )

    def _score(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        parts: dict[str, list[torch.Tensor]] = {c: [] for c in self.columns}
        n = len(request)
        for start in range(0, n, self.options.batch_size):
            sub = request.select(slice(start, min(n, start + self.options.batch_size)))
            answer = self._call("/score", encode_request(sub))
            cols = answer.get("columns") if isinstance(answer, dict) else None
            if not isinstance(cols, dict):
                raise RemoteError(
                    f"reward server at {self.url}/score answered without "
                    f"'columns': {str(answer)[:200]}"
                )
            for c in self.columns:
                if c not in cols:
                    raise RemoteError(
                        f"reward server at {self.url} returned columns {sorted(cols)}, not {c!r}"
                    )
                parts[c].append(torch.tensor(cols[c], dtype=torch.float32))
        return {c: torch.cat(v) for c, v in parts.items()}


@REWARDS.register("remote")
def _build_remote(options: dict, context: RewardContext) -> RemoteReward:
    return RemoteReward(parse(RemoteOptions, options, prefix="rewards.remote.options"), context)


__all__ = [
    "RemoteOptions",
    "RemoteReward",
    "RemoteError",
    "request_json",
    "encode_request",
    "decode_request",
]
