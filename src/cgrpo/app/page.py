"""The ``cgrpo app`` page (Gradio): pick or upload a reference, type a prompt and a seed, see
base | trained side by side with every reward's score and the time taken.

Gradio is the ``app`` extra and is imported only here. The page sends nothing anywhere: usage
analytics and Gradio's version check are off (``GRADIO_ANALYTICS_ENABLED=False``), no share
link, no server-side rendering, system fonts instead of web fonts; the server binds to
127.0.0.1 unless told otherwise. Uploads arrive as files (a Gradio ``File``, which does not
decode them) and are read by :mod:`cgrpo.image_io` with its pixel limit.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cgrpo.app.tryout import Reference, Tryout
from cgrpo.extras import require_extra

#: Small images (the pocket model's 32 px) are shown at least this large (nearest neighbour).
SHOW_AT_LEAST = 256
#: Gradio's own size limit on an upload (the pixel limit is cgrpo.image_io's).
MAX_UPLOAD = "64mb"
#: No "share" button (it offers to post the image to a hub).
BUTTONS = ["download", "fullscreen"]


def _gradio():
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio when it is imported
    return require_extra("gradio", "app", "cgrpo app")


def shown(image: Any) -> np.ndarray:
    """``[3, H, W]`` float in [0, 1] -> ``[H', W', 3]`` uint8, upscaled by a whole factor
    (nearest) until at least :data:`SHOW_AT_LEAST` pixels on its short side."""
    arr = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    factor = max(1, -(-SHOW_AT_LEAST // min(arr.shape[:2])))
    return np.repeat(np.repeat(arr, factor, axis=0), factor, axis=1)


def build_page(tryout: Tryout):
    """The Gradio ``Blocks`` of ``tryout`` (not launched)."""
    gr = _gradio()
    examples = {ref.label: ref for ref in tryout.examples}
    labels = list(examples)
    first = tryout.examples[0] if tryout.examples else None
    config = tryout.config
    intro = (
        f"# Try the adapter of `{tryout.run_dir.name}`\n"
        f"Backend `{config.model.backend}`, {tryout.num_steps} deterministic sampler steps, "
        f"rewards: {', '.join(f'`{c}`' for c in tryout.scorer.columns)}. Pick a reference from "
        "the run's data or upload one or more images, type a prompt and a seed: the base model "
        "(adapter off) and the trained adapter start from the same noise."
    )

    def reference_for(label: str | None, uploads: list[str] | None) -> Reference:
        if uploads:
            return Tryout.upload(uploads)
        if label in examples:
            return examples[label]
        raise ValueError("pick a reference from the run's data or upload one")

    def on_choice(label: str | None):
        if label not in examples:
            return gr.update(), gr.update()
        ref = examples[label]
        return shown(ref.references[0]), ref.prompt

    def on_upload(uploads: list[str] | None, label: str | None):
        try:
            return shown(reference_for(label, uploads).references[0])
        except (OSError, ValueError) as e:
            raise gr.Error(str(e)) from None

    def on_generate(label: str | None, uploads: list[str] | None, prompt: str, seed: Any):
        try:
            ref = reference_for(label, uploads)
            if seed is None or float(seed) != int(seed):
                raise ValueError(f"the seed must be a whole number, got {seed!r}")
            result = tryout.compare(ref, prompt or "", int(seed))
        except (OSError, ValueError) as e:
            raise gr.Error(str(e)) from None
        return shown(result.base), shown(result.trained), result.table()

    def picture(label: str, elem_id: str, value: Any = None):
        return gr.Image(
            value,
            label=label,
            interactive=False,
            format="png",
            buttons=BUTTONS,
            elem_id=elem_id,
        )

    with gr.Blocks(title=f"cgrpo app: {tryout.run_dir.name}", analytics_enabled=False) as page:
        gr.Markdown(intro)
        with gr.Row():
            with gr.Column(scale=1):
                choice = gr.Dropdown(
                    labels,
                    value=labels[0] if labels else None,
                    label="Reference from the run's data",
                    elem_id="cgrpo-example",
                )
                upload = gr.File(
                    file_count="multiple",
                    file_types=["image"],
                    label="... or upload reference image(s) (used instead when given)",
                    elem_id="cgrpo-upload",
                )
                preview = picture(
                    "reference", "cgrpo-reference", shown(first.references[0]) if first else None
                )
                prompt = gr.Textbox(
                    first.prompt if first else "", label="Prompt", elem_id="cgrpo-prompt"
                )
                seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="cgrpo-seed")
                button = gr.Button("Generate", variant="primary", elem_id="cgrpo-generate")
            with gr.Column(scale=2):
                with gr.Row():
                    base = picture("base", "cgrpo-base")
                    trained = picture("trained", "cgrpo-trained")
                scores = gr.Markdown(elem_id="cgrpo-scores")
        choice.change(on_choice, inputs=choice, outputs=[preview, prompt])
        upload.change(on_upload, inputs=[upload, choice], outputs=preview)
        button.click(
            on_generate, inputs=[choice, upload, prompt, seed], outputs=[base, trained, scores]
        )
    return page


def launch(tryout: Tryout, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the page on ``host:port``; ``block=False`` returns at once (the server runs in a
    thread; ``page.close()`` stops it). Returns the page."""
    gr = _gradio()
    page = build_page(tryout)
    page.queue(default_concurrency_limit=1)  # one generation at a time
    page.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        prevent_thread_lock=not block,
        show_error=True,
        quiet=True,
        ssr_mode=False,
        mcp_server=False,
        max_file_size=MAX_UPLOAD,
        footer_links=[],
        theme=gr.themes.Default(
            font=["ui-sans-serif", "system-ui", "sans-serif"],
            font_mono=["ui-monospace", "monospace"],
        ),
    )
    return page


__all__ = ["build_page", "launch", "shown"]
