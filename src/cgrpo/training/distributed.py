"""Several processes and machines: how long a process waits for the others, and what it
looks like when one of them is gone.

Every collective operation (DDP's gradient all-reduce, the step-boundary gather, barriers)
waits at most ``train.collective_timeout`` seconds for the other processes. A process whose
peer died (its machine lost, killed, out of memory) gets an error from the backend at once
when the connection closes, or after the time-out when the peer hangs or the network is cut
without closing it. :func:`lost_peer` turns either into one line for the user, so the run
stops with a checkpoint (process 0) and exits instead of hanging.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

#: gloo's errors are plain RuntimeErrors that name its transport source in the message.
GLOO_TRANSPORT = "gloo/transport/"


def process_group_kwargs(timeout_s: float) -> list[Any]:
    """accelerate's handler that sets the process group's time-out to ``timeout_s``."""
    from accelerate.utils import InitProcessGroupKwargs

    handler = InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))
    # accelerate passes on only the fields that differ from its own defaults: a time-out
    # equal to its NCCL default (600 s) would be dropped, and gloo would wait 30 minutes.
    handler.to_kwargs = lambda: {"timeout": handler.timeout}
    return [handler]


def lost_peer(error: BaseException) -> str | None:
    """One line if ``error`` says another process of the run is gone or silent, else None."""
    import torch.distributed as dist

    text = " ".join(str(error).split())
    if not (
        isinstance(error, getattr(dist, "DistError", ()))
        or (isinstance(error, RuntimeError) and GLOO_TRANSPORT in text)
    ):
        return None
    if text.startswith("[") and "] " in text:  # drop gloo's "[path/to/source.cc:123] "
        text = text.split("] ", 1)[1]
    text = text.split(". This is typically caused", 1)[0]
    if len(text) > 200:
        text = text[:197] + "..."
    return (
        "lost contact with another process of the run (its machine died, hangs or is "
        "unreachable; see that node's log; train.collective_timeout bounds the wait): " + text
    )
