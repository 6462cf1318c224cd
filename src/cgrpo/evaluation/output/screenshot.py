"""A PNG screenshot of a report page with headless Chromium (Debian's ``chromium`` package).

Used by ``cgrpo report --screenshot FILE`` (e.g. for the docs) and by the tests that check
``report.html`` renders. ``scripts/install_chromium.sh`` installs the browser.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
#: Headless, and nothing a page did not ask for: no network of its own, no sync, no first-run UI.
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def find_chromium() -> str | None:
    """The first Chromium-like browser on PATH, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(
    html: str | Path,
    png: str | Path,
    *,
    width: int = 1200,
    height: int = 900,
    timeout: float = 120.0,
) -> Path:
    """Render ``html`` (a file) offline and save a ``width`` x ``height`` PNG to ``png``.

    Raises FileNotFoundError when no browser is installed and RuntimeError (with the
    browser's last output lines) when it fails.
    """
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError(
            "no chromium on PATH; run scripts/install_chromium.sh "
            "(Debian: apt-get install chromium)"
        )
    html, png = Path(html).resolve(), Path(png).resolve()
    if not html.is_file():
        raise FileNotFoundError(f"no report page at {html}")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cgrpo-chromium-") as profile:
        # No network, no sync, no first-run UI: the page must render from local files alone.
        cmd = [
            browser,
            *HEADLESS_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size={width},{height}",
            html.as_uri(),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 or not png.is_file():
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise RuntimeError(
            f"chromium failed to screenshot {html} (exit {result.returncode}):\n{tail}"
        )
    return png


__all__ = ["HEADLESS_FLAGS", "find_chromium", "screenshot"]
