"""``vlm``: a vision-language model as judge, over any OpenAI-compatible chat endpoint.

For each generated image the judge gets one user message: the instruction (``template``,
with ``{prompt}`` replaced by the sample's prompt), the reference images (when an identity
score is asked for) and the generated image, all images as base64 PNG data URLs. It must
answer with a JSON object holding one number per requested score, e.g.
``{"identity": 7, "prompt": 9}`` (a bare number is accepted when one score is asked for).
Columns: ``vlm.identity`` and/or ``vlm.prompt`` (option ``scores``), in [0, ``max_score``].

Parsing is strict: an answer that is not such an object, lacks a key, or holds a value that
is not a finite number in range raises :class:`VlmAnswerError` quoting the answer.

Transport: stdlib ``urllib`` POST to ``{base_url}/chat/completions`` with ``timeout``; retries
with exponential backoff on connection errors, timeouts, 429 and 5xx; up to ``max_workers``
requests in flight. The API key is read from the environment variable named by
``api_key_env`` (never from the config). Answers are cached on disk as JSON files keyed by the
SHA-256 of (generated-image pixels, reference pixels, prompt, model, template, scores) under
``cache_dir`` (default: ``<context.cache_dir>/vlm``; no cache when neither is set), so a
repeated evaluation costs no requests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cgrpo.config import option, parse
from cgrpo.rewards.base import REWARDS, Reward, RewardContext, ScoreRequest
from cgrpo.rewards.images import encode_png, image_digest
from cgrpo.rewards.serving.remote import RETRY_STATUS, RemoteError, request_json

SCORES = ("identity", "prompt")

_ASK = {
    "identity": "identity: how faithfully the generated image preserves the subject shown in "
    "the reference image(s): the same object or animal, with the same shape, "
    "colours, markings and details (ignore background and pose)",
    "prompt": 'prompt: how well the generated image follows the text prompt "{prompt}"',
}


def default_template(scores: list[str], max_score: float) -> str:
    """The built-in instruction for the requested ``scores``."""
    lines = [
        f"You are judging an image made by a subject-driven image generator. Rate the "
        f"generated image (the last image) from 0 (worst) to {max_score:g} (best) on:"
    ]
    lines += [f"- {_ASK[s]}" for s in scores]
    example = ", ".join(f'"{s}": <number>' for s in scores)
    lines.append(f"Answer with only a JSON object and nothing else: {{{example}}}")
    return "\n".join(lines)


class VlmAnswerError(ValueError):
    """The judge's answer could not be parsed into the requested scores."""


def parse_answer(text: str, scores: list[str], max_score: float) -> dict[str, float]:
    """Scores from the judge's answer text (strict; see the module docstring).

    Raises VlmAnswerError naming the problem; the caller adds the quoted answer.
    """
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.S)
    if fenced:
        body = fenced.group(1)
    value: Any
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        match = re.search(r"\{.*\}", body, re.S)
        if match is None:
            raise VlmAnswerError("no JSON object found") from None
        try:
            value = json.loads(match.group(0))
        except json.JSONDecodeError as e:
            raise VlmAnswerError(f"invalid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        if len(scores) == 1 and isinstance(value, int | float) and not isinstance(value, bool):
            value = {scores[0]: value}
        else:
            raise VlmAnswerError(f"expected a JSON object with keys {scores}")
    out = {}
    for key in scores:
        if key not in value:
            raise VlmAnswerError(f"missing key {key!r}")
        v = value[key]
        if isinstance(v, str):
            try:
                v = float(v.strip())
            except ValueError:
                raise VlmAnswerError(f"{key!r} is not a number: {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise VlmAnswerError(f"{key!r} is not a finite number: {v!r}")
        if not 0 <= v <= max_score:
            raise VlmAnswerError(f"{key!r} = {v} is outside [0, {max_score:g}]")
        out[key] = float(v)
    return out


@dataclass
class VlmOptions:
    base_url: str = option(
        help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1 "
        "(requests go to <base_url>/chat/completions)"
    )
    model: str = option(help="model name sent with each request")
    api_key_env: str | None = option(
        None,
        "name of the environment variable holding the API "
        "key (sent as a bearer token); none: no key",
    )
    scores: list[str] = option(
        help="which scores to ask for (columns vlm.<score>)",
        choices=SCORES,
        default_factory=lambda: list(SCORES),
    )
    template: str | None = option(
        None,
        "instruction text; {prompt} is replaced by the prompt. "
        "Default: a built-in instruction for the requested scores",
    )
    max_score: float = option(10.0, "top of the rating scale", min=0.0, min_exclusive=True)
    send_references: bool = option(True, "attach the reference images when scoring identity")
    timeout: float = option(120.0, "seconds to wait for one answer", min=0.0, min_exclusive=True)
    retries: int = option(3, "extra tries on connection errors, timeouts, 429 and 5xx", min=0)
    backoff: float = option(
        1.0, "first pause between tries in seconds (doubles each time)", min=0.0
    )
    max_workers: int = option(4, "requests in flight at once", min=1)
    max_tokens: int = option(200, "answer length limit", min=1)
    temperature: float = option(0.0, "sampling temperature of the judge", min=0.0)
    cache_dir: str | None = option(None, "answer cache directory (default: <cache_dir>/vlm)")

    def validate(self, prefix: str) -> None:
        from cgrpo.config import ConfigError

        if not self.scores or len(set(self.scores)) != len(self.scores):
            raise ConfigError(f"{prefix}.scores", self.scores, "a non-empty list without repeats")


def _data_url(image: torch.Tensor) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")


class VlmJudgeReward(Reward):
    """Asks a chat-completions VLM for identity / prompt-following scores."""

    name = "vlm"

    def __init__(self, options: VlmOptions, context: RewardContext) -> None:
        super().__init__()
        self.options = options
        self.url = options.base_url.rstrip("/") + "/chat/completions"
        self.columns = tuple(f"vlm.{s}" for s in options.scores)
        self.template = options.template or default_template(options.scores, options.max_score)
        self.headers: dict[str, str] = {}
        if options.api_key_env:
            key = os.environ.get(options.api_key_env)
            if not key:
                raise ValueError(
                    f"rewards.vlm.options.api_key_env: environment variable "
                    f"{options.api_key_env!r} is not set"
                )
            self.headers["Authorization"] = f"Bearer {key}"
        cache = options.cache_dir or (
            str(Path(context.cache_dir) / "vlm") if context.cache_dir else None
        )
        self.cache = Path(cache).expanduser() if cache else None
        self.requests_sent = 0
        self._count_lock = threading.Lock()
        self.device = torch.device(context.device)

    # -- one sample

    def _cache_key(self, image: torch.Tensor, refs: torch.Tensor | None, prompt: str) -> str:
        h = hashlib.sha256()
        parts = {
            "image": image_digest(image),
            "refs": [image_digest(r) for r in refs] if refs is not None else [],
            "prompt": prompt,
            "model": self.options.model,
            "template": self.template,
            "scores": list(self.options.scores),
        }
        h.update(json.dumps(parts, sort_keys=True).encode())
        return h.hexdigest()

    def _messages(self, image: torch.Tensor, refs: torch.Tensor | None, prompt: str) -> list[dict]:
        content: list[dict[str, Any]] = [
            {"type": "text", "text": self.template.replace("{prompt}", prompt)}
        ]
        if refs is not None:
            content.append({"type": "text", "text": "Reference image(s) of the subject:"})
            content += [{"type": "image_url", "image_url": {"url": _data_url(r)}} for r in refs]
        content.append({"type": "text", "text": "Generated image:"})
        content.append({"type": "image_url", "image_url": {"url": _data_url(image)}})
        return [{"role": "user", "content": content}]

    def judge(
        self, image: torch.Tensor, refs: torch.Tensor | None, prompt: str
    ) -> dict[str, float]:
        """Scores of one ``[3, H, W]`` image (from the cache when possible)."""
        o = self.options
        key = self._cache_key(image, refs, prompt)
        file = self.cache / key[:2] / f"{key}.json" if self.cache else None
        if file is not None and file.is_file():
            try:
                return {k: float(v) for k, v in json.loads(file.read_text())["scores"].items()}
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                pass  # a damaged entry: ask again and overwrite it
        body = {
            "model": o.model,
            "messages": self._messages(image, refs, prompt),
            "max_tokens": o.max_tokens,
            "temperature": o.temperature,
        }
        with self._count_lock:
            self.requests_sent += 1
        answer = request_json(
            self.url,
            body,
            headers=self.headers,
            timeout=o.timeout,
            retries=o.retries,
            backoff=o.backoff,
            retry_status=RETRY_STATUS + (500, 501),
            what=f"vlm judge {o.model!r}",
        )
        text = _answer_text(answer, self.url)
        try:
            scores = parse_answer(text, list(o.scores), o.max_score)
        except VlmAnswerError as e:
            raise VlmAnswerError(
                f"vlm judge {o.model!r} at {self.url}: {e}; answer was {text[:500]!r}"
            ) from None
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(
                json.dumps({"scores": scores, "answer": text, "prompt": prompt, "model": o.model})
            )
            os.replace(tmp, file)
        return scores

    def _score(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        send_refs = self.options.send_references and "identity" in self.options.scores
        jobs = [
            (request.images[i], request.references[i] if send_refs else None, request.prompts[i])
            for i in range(len(request))
        ]
        with ThreadPoolExecutor(max_workers=self.options.max_workers) as pool:
            results = list(pool.map(lambda job: self.judge(*job), jobs))
        return {f"vlm.{s}": torch.tensor([r[s] for r in results]) for s in self.options.scores}


def _answer_text(answer: Any, url: str) -> str:
    """The assistant message text of a chat-completions response."""
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise RemoteError(
            f"vlm judge at {url}: response has no choices[0].message.content: {str(answer)[:300]}"
        ) from None
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise RemoteError(f"vlm judge at {url}: message content is {type(content).__name__}")
    return content


@REWARDS.register("vlm")
def _build_vlm(options: dict, context: RewardContext) -> VlmJudgeReward:
    return VlmJudgeReward(parse(VlmOptions, options, prefix="rewards.vlm.options"), context)


__all__ = ["VlmOptions", "VlmJudgeReward", "VlmAnswerError", "default_template", "parse_answer"]
