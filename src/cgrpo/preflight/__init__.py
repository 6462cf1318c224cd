"""The pre-flight reward check: can each reward rank a group's samples at all?

Before a run, ``cgrpo preflight --config FILE`` samples groups from the base policy exactly
as training does (:mod:`cgrpo.preflight.sampling`), scores them clean and under changes no
one sees (:mod:`cgrpo.preflight.perturb`), and measures per reward the within-group spread,
its noise, the groups with signal, the rank agreement with every monitor and between the
rewards (:mod:`cgrpo.preflight.stats`). It prints a table and a verdict line per reward
(:mod:`cgrpo.preflight.verdict`) and writes ``preflight.json``, example-group grids and
``preflight.html`` (:mod:`cgrpo.preflight.report`). ``advantage.noise_floor_from`` reads the
measured noise back as a training option.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cgrpo.config.train import Config

#: A perturbation counts as imperceptible on the sampled images when their PSNR after it
#: is at least this (dB); only those, and the 1-px shift, set a reward's noise std.
IMPERCEPTIBLE_PSNR = 30.0
#: The small visible change whose noise always counts.
SMALL_CHANGE = "shift"
#: A group has signal when its std exceeds this many times the reward's noise std.
SIGNAL_FACTOR = 2.0


def run_preflight(
    config: Config,
    *,
    groups: int = 64,
    split: str = "train",
    kind: str | None = None,
    out: str | Path | None = None,
    config_path: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the check on ``config``; returns the result (the content of ``preflight.json``)
    and, with ``out``, writes the outputs there."""
    from cgrpo.preflight.perturb import DESCRIPTIONS, IMPERCEPTIBLE, PERTURBATIONS
    from cgrpo.preflight.report import write_outputs
    from cgrpo.preflight.sampling import sample_groups
    from cgrpo.preflight.stats import summarize
    from cgrpo.preflight.verdict import verdict

    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    t0 = time.perf_counter()
    sampled = sample_groups(
        config,
        groups=groups,
        split=split,
        kind=kind,
        perturbations=PERTURBATIONS,
        progress=progress,
    )
    noise_from = noise_sources(sampled.psnr, IMPERCEPTIBLE)
    measures = summarize(
        sampled.scores,
        sampled.perturbed,
        sampled.roles,
        sampled.group_size,
        noise_from,
        SIGNAL_FACTOR,
    )
    verdicts = []
    for column, m in measures["rewards"].items():
        m["verdict"], line = verdict(column, m, tuple(p for p in noise_from if p != SMALL_CHANGE))
        verdicts.append(line)
    result: dict[str, Any] = {
        "config": config_path,
        "split": split,
        "kind": kind,
        "groups": sampled.n_groups,
        "group_size": sampled.group_size,
        "perturbations": {p: DESCRIPTIONS[p] for p in PERTURBATIONS},
        "imperceptible": list(IMPERCEPTIBLE),
        "psnr": sampled.psnr,
        "noise_from": list(noise_from),
        "signal_factor": SIGNAL_FACTOR,
        "monitors": [c for c, r in sampled.roles.items() if r in ("monitor", "ground-truth")],
        **measures,
        "verdicts": verdicts,
        "seconds": {**sampled.seconds},
    }
    result["seconds"]["total"] = time.perf_counter() - t0
    if out is not None:
        write_outputs(result, sampled, out)
    return result


def noise_sources(psnr: dict[str, float], imperceptible: tuple[str, ...]) -> tuple[str, ...]:
    """The perturbations a reward's noise std is the largest over: the nominally
    imperceptible ones that were imperceptible on the sampled images (PSNR at least
    :data:`IMPERCEPTIBLE_PSNR`; a 0.75x resize round trip of a 32-px image with fine
    speckle is a visible blur, at 512 px it is not), and the 1-px shift."""
    kept = [p for p in imperceptible if psnr.get(p, 0.0) >= IMPERCEPTIBLE_PSNR]
    return (*kept, SMALL_CHANGE) if SMALL_CHANGE in psnr else tuple(kept)


__all__ = ["IMPERCEPTIBLE_PSNR", "SIGNAL_FACTOR", "SMALL_CHANGE", "noise_sources", "run_preflight"]
