"""The scale each known metric is reported on, shown in every table header.

DreamBench papers print DINO, CLIP-I and CLIP-T as raw cosine similarities (0-1, CLIP-T
clipped at 0), which is what the ``dino``, ``dino-seg``, ``clip-i`` and ``clip-t`` rewards
return; HPSv3 is its model's raw preference score. Metrics not listed here are shown by
name only.
"""

from __future__ import annotations

METRIC_SCALES = {
    "dino": "cosine, 0-1",
    "dino-seg": "cosine, 0-1",
    "clip-i": "cosine, 0-1",
    "clip-t": "cosine, 0-1",
    "hpsv3": "HPSv3 score",
    "toy-id": "cosine, -1 to 1",
    "toy-prompt": "probability, 0-1",
    "gt-colour": "share, 0-1",
    "gt-pattern": "probability, 0-1",
    "gt-shape": "probability, 0-1",
    "gt-scene": "0-1",
}


def metric_label(name: str) -> str:
    """``dino [cosine, 0-1]``: the metric with its scale, or the bare name if unknown."""
    scale = METRIC_SCALES.get(name)
    return f"{name} [{scale}]" if scale else name


__all__ = ["METRIC_SCALES", "metric_label"]
