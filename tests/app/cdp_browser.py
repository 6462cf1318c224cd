"""A headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
JSON messages separated by NUL bytes on file descriptors 3 and 4), with no client library.

Enough for the page tests: open a URL, evaluate JavaScript, wait for a condition, type, set a
file input, take a screenshot, and list every URL the page requested.
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from cgrpo.evaluation.output.screenshot import HEADLESS_FLAGS, find_chromium

# the pipes arrive as stdin/stdout; chromium wants them on fds 3 (commands) and 4 (replies)
_ON_FDS_3_4 = 'exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null'


class Browser:
    def __init__(self, width: int = 1280, height: int = 900) -> None:
        exe = find_chromium()
        if exe is None:
            raise FileNotFoundError("no chromium on PATH; run scripts/install_chromium.sh")
        self._profile = tempfile.TemporaryDirectory(prefix="cgrpo-cdp-")
        self._log = open(Path(self._profile.name) / "chromium.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                "sh",
                "-c",
                _ON_FDS_3_4,
                exe,
                *HEADLESS_FLAGS,
                "--remote-debugging-pipe",
                f"--user-data-dir={self._profile.name}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self._id = 0
        self._buf = b""
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None
        self._size = (width, height)

    # ------------------------------------------------------------------ protocol
    def _message(self, deadline: float) -> dict[str, Any]:
        out = self.proc.stdout.fileno()
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([out], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(out, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit {self.proc.poll()})")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        self.proc.stdin.write(json.dumps(msg).encode() + b"\0")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    # ------------------------------------------------------------------ page
    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        self.call("Network.enable")
        self.call("Page.enable")
        width, height = self._size
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 120.0, what: str = "") -> Any:
        """Poll ``expression`` until it is truthy (a page that never gets there fails after
        ``timeout`` seconds, naming ``what``)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never showed {what or expression}")
            time.sleep(0.2)

    def type_into(self, selector: str, text: str) -> None:
        """Replace the text of the field at ``selector`` as typing would (focus, select, insert)."""
        self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.focus(); e.select(); }})()"
        )
        self.call("Input.insertText", {"text": text})

    def set_files(self, selector: str, files: list[str]) -> None:
        root = self.call("DOM.getDocument", {"depth": -1, "pierce": True})["root"]["nodeId"]
        node = self.call("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        if not node:
            raise RuntimeError(f"no element {selector}")
        self.call("DOM.setFileInputFiles", {"nodeId": node, "files": files})

    def screenshot(self, path: str | Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path = Path(path)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def requested_urls(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self._log):
            stream.close()
        self._profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
