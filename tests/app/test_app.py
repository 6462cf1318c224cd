"""cgrpo app: the comparison behind the page, and the page itself in headless Chromium."""

from __future__ import annotations

import re
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cgrpo.app.tryout import Tryout
from cgrpo.cli import main
from cgrpo.config import load_config
from cgrpo.evaluation.output.screenshot import find_chromium
from cgrpo.extras import MissingExtra
from cgrpo.training import Trainer

NUM_STEPS = 4


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_overrides) -> Path:
    """A tiny trained run (random pocket model, one step, toy rewards)."""
    run = tmp_path_factory.mktemp("app") / "run"
    config = load_config(None, [*tiny_overrides, "train.steps=1", "logging.tensorboard=false"])
    Trainer(config, run).train()
    return run


@pytest.fixture(scope="module")
def tryout(run_dir) -> Tryout:
    return Tryout(run_dir, num_steps=NUM_STEPS, max_examples=5)


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def test_compare_is_base_vs_adapter_with_every_reward(tryout):
    ref = tryout.examples[1]
    result = tryout.compare(ref, ref.prompt, seed=5)
    again = tryout.compare(ref, ref.prompt, seed=5)
    assert torch.equal(result.base, again.base) and torch.equal(result.trained, again.trained)
    assert result.base.shape == result.trained.shape == (3, 32, 32)
    assert not torch.equal(result.base, result.trained)  # the adapter changes the image
    with tryout.policy.adapter_disabled():
        from cgrpo.sampling import generate

        base = generate(
            tryout.policy,
            [ref.prompt],
            [ref.references],
            num_steps=NUM_STEPS,
            seed=5,
            shift=tryout.config.sampling.shift,
        )
    assert torch.equal(result.base, base[0])
    assert set(result.scores) == {"toy-prompt", "toy-id"}
    table = result.table()
    for column, (b, t) in result.scores.items():
        assert f"| {column} | {result.roles[column]} | {b:.4f} | {t:.4f} |" in table
    assert "time (s)" in table and all(s > 0 for s in result.seconds)
    assert len(tryout.examples) == 5 and ref.label.endswith(ref.prompt)


def test_bad_requests_are_one_line_errors(tryout):
    ref = tryout.examples[0]
    with pytest.raises(ValueError, match="the prompt is empty"):
        tryout.compare(ref, "   ", 0)
    with pytest.raises(ValueError, match="the seed must be between 0 and"):
        tryout.compare(ref, ref.prompt, -1)
    with pytest.raises(ValueError, match="not in the toy world's grammar"):
        tryout.compare(ref, "a photo of my dog", 0)


def _bomb_png(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_uploads_go_through_the_image_reader(tmp_path):
    rgba = np.zeros((8, 10, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:4, ..., 3] = 255  # top half opaque red, bottom half transparent: white
    sixteen = _png(tmp_path / "grey16.png", np.full((4, 5), 65535 // 2, dtype=np.uint16))
    ref = Tryout.upload([_png(tmp_path / "a.png", rgba), sixteen])
    assert ref.references.shape == (2, 3, 8, 10)  # the second resized to the first
    assert torch.allclose(ref.references[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(ref.references[0, :, 7, 0], torch.ones(3))
    assert torch.allclose(ref.references[1], torch.full((3, 8, 10), 0.5), atol=1e-3)
    with pytest.raises(ValueError, match=r"uploaded reference .*over the limit"):
        Tryout.upload([_bomb_png(tmp_path / "bomb.png", 9000, 9000)])
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        Tryout.upload([tmp_path / "text.png"])


def test_cli_checks_and_missing_extra(run_dir, monkeypatch, capsys):
    assert main(["app", "--run", str(run_dir), "--port", "0"]) == 2
    assert "--port = 0" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "gradio", None)
    assert main(["app", "--run", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "cgrpo app needs the optional extra 'app'" in err and "cgrpo[app]" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(MissingExtra):
        from cgrpo.app.page import build_page

        build_page(None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _numbers(text: str, column: str) -> tuple[float, float]:
    match = re.search(rf"{re.escape(column)}\s+\S+\s+(-?[\d.]+)\s+(-?[\d.]+)", text)
    assert match, f"no scores for {column} in {text!r}"
    return float(match.group(1)), float(match.group(2))


IMAGES_SHOWN = """(() => {
  const ok = (id) => { const im = document.querySelector(`#${id} img`);
                       return im && im.complete && im.naturalWidth > 0 ? im.naturalWidth : 0; };
  const text = (document.querySelector('#cgrpo-scores') || {}).innerText || '';
  return ok('cgrpo-base') && ok('cgrpo-trained') && text.includes('time (s)')
    ? [ok('cgrpo-base'), ok('cgrpo-trained'), text, document.querySelector('#cgrpo-base img').src]
    : null;
})()"""


@pytest.mark.skipif(find_chromium() is None, reason="needs chromium (scripts/install_chromium.sh)")
def test_page_in_a_real_browser(tryout, tmp_path, monkeypatch):
    """Load the page, pick, type, submit; two images and the scores appear, equal to the
    direct comparison; then an upload; every request stays on 127.0.0.1."""
    pytest.importorskip("gradio")
    from cdp_browser import Browser

    from cgrpo.app import page as app_page

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    # the server side (Gradio runs in this process) may look up and reach only this machine
    outside: list = []
    lookup, connect = socket.getaddrinfo, socket.socket.connect

    def local_lookup(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", None):
            outside.append(host)
        return lookup(host, *args, **kwargs)

    def local_connect(sock, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            outside.append(address)
            raise OSError(f"test: no connections off this machine ({address})")
        return connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", local_lookup)
    monkeypatch.setattr(socket.socket, "connect", local_connect)
    port = _free_port()
    page = app_page.launch(tryout, "127.0.0.1", port, block=False)
    try:
        with Browser(1280, 900) as browser:
            browser.open(f"http://127.0.0.1:{port}/")
            browser.wait_for("!!document.querySelector('#cgrpo-generate')", what="the page")
            browser.wait_for(
                "(document.querySelector('#cgrpo-reference img') || {}).naturalWidth > 0",
                what="the first example's reference",
            )
            ref = tryout.examples[0]
            prompt = tryout.examples[2].prompt  # another prompt of the toy grammar
            browser.type_into("#cgrpo-prompt textarea", prompt)
            browser.type_into("#cgrpo-seed input", "7")
            browser.evaluate("document.querySelector('#cgrpo-generate').click()")
            base_w, trained_w, text, _ = browser.wait_for(
                IMAGES_SHOWN, what="two images and scores"
            )
            assert base_w == trained_w == 256  # 32 px shown 8x
            expected = tryout.compare(ref, prompt, 7)
            for column, (b, t) in expected.scores.items():
                assert _numbers(text, column) == pytest.approx((b, t), abs=1e-4)
            browser.screenshot(tmp_path / "app.png")

            # an upload replaces the picked reference (read by cgrpo.image_io)
            upload = _png(tmp_path / "mine.png", np.full((32, 32, 3), 200, dtype=np.uint8))
            before_src = browser.evaluate("document.querySelector('#cgrpo-base img').src")
            browser.set_files("#cgrpo-upload input[type=file]", [str(upload)])
            browser.evaluate("document.querySelector('#cgrpo-generate').click()")
            *_, text2, src = browser.wait_for(
                IMAGES_SHOWN.replace(
                    "? [",
                    f"&& document.querySelector('#cgrpo-base img').src !== {before_src!r} ? [",
                ),
                what="images of the upload",
            )
            expected = tryout.compare(Tryout.upload([upload]), prompt, 7)
            for column, (b, t) in expected.scores.items():
                assert _numbers(text2, column) == pytest.approx((b, t), abs=1e-4)
            urls = browser.requested_urls()
    finally:
        page.close()
    assert outside == []
    with Image.open(tmp_path / "app.png") as screenshot:
        assert screenshot.size[0] >= 1200 and screenshot.size[1] >= 600  # less a scroll bar
    assert urls and all(
        u.startswith((f"http://127.0.0.1:{port}/", "data:", "blob:")) for u in urls
    ), [u for u in urls if "127.0.0.1" not in u]
