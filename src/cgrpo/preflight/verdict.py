"""One verdict per reward: what the pre-flight numbers mean for training on it.

The labels, worst first:

* ``NO SIGNAL`` -- fewer than :data:`NO_SIGNAL_BELOW` of the groups spread more than twice
  the reward's own noise: most groups' advantages rank samples by the reward's jitter,
  and GRPO learns to please that jitter;
* ``UNSTABLE`` -- the within-group ranking does not survive an imperceptible change
  (Spearman below :data:`STABLE_IMPERCEPTIBLE`) or a 1-px shift (below
  :data:`STABLE_SHIFT`): many advantages change sign under changes no one sees;
* ``WEAK`` -- signal in fewer than :data:`SIGNAL_OK` of the groups (the bar issue 18 set
  for the embedded default): it trains, slowly;
* ``OK`` -- fit to train on.

Agreement with monitors (the config's monitor rewards and the dataset's ground-truth
checks) is reported in the line (below :data:`AGREES` with every monitor, the line says so)
but does not set the label: whether a reward *should* agree with a given monitor is for
the user to judge.
"""

from __future__ import annotations

import math
from typing import Any

NO_SIGNAL_BELOW = 0.5
SIGNAL_OK = 0.6
STABLE_IMPERCEPTIBLE = 0.8
STABLE_SHIFT = 0.6
#: Within-group Spearman with a monitor below which the line says the reward agrees with none.
AGREES = 0.2
LABELS = ("NO SIGNAL", "UNSTABLE", "WEAK", "OK")

ADVICE = {
    "NO SIGNAL": "most advantages from it are noise; drop those groups with "
    "advantage.noise_floor_from, or fix the reward",
    "UNSTABLE": "its advantages change sign under changes no one sees",
    "WEAK": "trains on few groups",
    "OK": "fit to train on",
}


def verdict(column: str, m: dict[str, Any], imperceptible: tuple[str, ...]) -> tuple[str, str]:
    """``(label, line)`` for the measures ``m`` of one reward (an entry of
    :func:`cgrpo.preflight.stats.summarize`'s ``rewards``)."""
    share = m["signal_share"]
    reasons = [f"{share:.0%} of groups have spread above noise (2 x {m['noise_std']:.3g})"]
    noise = m["noise"]
    unstable = []
    for p in imperceptible:
        if p in noise and _below(noise[p]["rank_agreement"], STABLE_IMPERCEPTIBLE):
            unstable.append(f"a {p} round trip" if p in ("jpeg", "resize") else f"{p}")
    if "shift" in noise and _below(noise["shift"]["rank_agreement"], STABLE_SHIFT):
        unstable.append("a 1-px shift")
    counted = [p for p in noise if p in imperceptible or p == "shift"]
    if unstable:
        worst = min(counted, key=lambda p: _value(noise[p]["rank_agreement"]))
        reasons.append(
            f"ranks flip under {' and '.join(unstable)} (worst: {worst}, Spearman "
            f"{noise[worst]['rank_agreement']:+.2f}, {noise[worst]['sign_flips']:.0%} of "
            "advantage signs flip)"
        )
    elif counted:
        worst = min(counted, key=lambda p: _value(noise[p]["rank_agreement"]))
        reasons.append(
            f"ranks hold (worst: {worst}, Spearman {noise[worst]['rank_agreement']:+.2f})"
        )
    monitors = {k: v for k, v in m.get("monitors", {}).items() if not math.isnan(v)}
    if monitors:
        best = max(monitors, key=monitors.get)
        if monitors[best] < AGREES:
            reasons.append(f"its ranks agree with no monitor (best: {best} {monitors[best]:+.2f})")
        else:
            reasons.append(f"best monitor agreement {best} {monitors[best]:+.2f}")
    if share < NO_SIGNAL_BELOW:
        label = "NO SIGNAL"
    elif unstable:
        label = "UNSTABLE"
    elif share < SIGNAL_OK:
        label = "WEAK"
    else:
        label = "OK"
    return label, f"{column}: {label} — {'; '.join(reasons)}; {ADVICE[label]}"


def _value(x: float) -> float:
    return -math.inf if math.isnan(x) else x


def _below(x: float, bar: float) -> bool:
    return math.isnan(x) or x < bar


__all__ = [
    "LABELS",
    "NO_SIGNAL_BELOW",
    "SIGNAL_OK",
    "STABLE_IMPERCEPTIBLE",
    "STABLE_SHIFT",
    "verdict",
]
