"""Evaluation presets: the published DreamBench protocol in one flag (``cgrpo eval --protocol``).

``paper`` is DreamBench as UNO's and Customized-GRPO's evaluation scripts run it:

* the 750 pairs (30 subjects x 25 prompts), each with the reference the protocol file names
  (``customized_grpo_singleip.json``, found in ``--data``), no unique token;
* one image per pair, 25 sampler steps, FLUX guidance 4, UNO's dynamic time shift
  (FLUX's resolution-dependent shift, about 1.9 at 512 x 512);
* seed 3407 for every pair (UNO's script seeds every pair's image with 3407;
  cgrpo draws its noise in its own latent layout, so images match UNO's in distribution,
  not bit for bit);
* metrics ``dino`` (DINO v1 ViT-S/16 CLS, raw cosine), ``clip-i`` / ``clip-t`` (CLIP
  ViT-B/32, raw cosine, CLIP-T clipped at 0), ``dino-seg`` against the precomputed reference
  cut-outs (``<ref>_seg.png``; the generated image is not segmented) and ``hpsv3`` on the
  full prompt.

Model files are the user's: pass their local paths with ``--metric-options`` (a template:
``configs/eval/paper-metrics.yaml``). Every flag given explicitly overrides the preset's value,
and options in the ``--metric-options`` file override the preset's metric options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DREAMBENCH_METRICS = ("dino", "dino-seg", "clip-i", "clip-t", "hpsv3")


@dataclass(frozen=True)
class Protocol:
    """Defaults an evaluation takes unless a flag says otherwise.

    ``shift`` is a static shift or ``"dynamic"``; ``shared_seed``: every pair's image ``s``
    uses ``seed + s`` (see :func:`cgrpo.evaluation.harness.image_seed`).
    """

    name: str
    summary: str
    bench: str
    reference: str
    num_steps: int
    guidance: float
    shift: float | str
    seeds: int
    seed: int
    shared_seed: bool
    metrics: tuple[str, ...]
    metric_options: dict[str, dict[str, Any]] = field(default_factory=dict)


PAPER = Protocol(
    name="paper",
    summary="DreamBench as the papers run it: protocol-file references, 1 image per pair, "
    "seed 3407, 25 steps, guidance 4, dynamic shift; dino (DINO v1 ViT-S/16), clip-i/clip-t "
    "(ViT-B/32, raw cosine), dino-seg (precomputed cut-outs), hpsv3",
    bench="dreambench",
    reference="protocol:customized_grpo_singleip.json",
    num_steps=25,
    guidance=4.0,
    shift="dynamic",
    seeds=1,
    seed=3407,
    shared_seed=True,
    metrics=DREAMBENCH_METRICS,
    metric_options={"dino-seg": {"segmenter": "precomputed"}},
)

PROTOCOLS = {p.name: p for p in (PAPER,)}


def get_protocol(name: str) -> Protocol:
    """The preset called ``name``; ValueError listing the choices otherwise."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


__all__ = ["DREAMBENCH_METRICS", "PAPER", "PROTOCOLS", "Protocol", "get_protocol"]
