"""Bad training items skipped and counted, up to a share of the dataset.

A long run on a large, messy dataset meets items it cannot use: an unreadable image, a
record whose file is missing. :class:`BadItems` stands between the trainer and its dataset:
an item that raises :class:`~cgrpo.data.base.BadItem` is skipped (the next one of the same
shuffled order is taken instead, so every process and every resume picks the same),
logged once with the message that names its file, and counted. Entries a file dataset
already dropped when it was built (``on_error: skip``) count too. When the share of bad
items in the dataset passes ``data.max_bad_fraction`` the run stops with
:class:`~cgrpo.training.stopping.TooManyBadItems`; the items found so far are saved in
each checkpoint, so a resumed run keeps the count.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from cgrpo.config.schema import ConfigError
from cgrpo.data.base import BadItem, Example, build_dataset

log = logging.getLogger("cgrpo.data")


class TooManyBadItems(ValueError):
    """The share of unreadable or invalid data items passed ``data.max_bad_fraction``."""


def build_training_dataset(name: str, options: dict[str, Any]) -> Any:
    """The ``train`` split; a file dataset skips and counts bad entries when it is built,
    unless the options say ``on_error: stop`` (then the first one stops the start-up)."""
    if "on_error" not in options:
        try:
            return build_dataset(name, {**options, "on_error": "skip"}, "train")
        except ConfigError as e:
            if not e.key.endswith("on_error"):  # a dataset without the option
                raise
    return build_dataset(name, options, "train")


class BadItems:
    """Picks items of ``dataset`` past the bad ones; see the module docstring."""

    def __init__(self, dataset: Any, max_fraction: float) -> None:
        self.dataset = dataset
        self.max_fraction = max_fraction
        self.found: dict[int, str] = {}  # index -> what was wrong, found while training
        problems = list(getattr(dataset, "problems", ()))  # dropped when it was built
        self.dropped = len(problems)
        self.total = len(dataset) + self.dropped
        self._load = getattr(dataset, "load", None) or dataset.__getitem__
        if problems:
            self._check(problems[0])

    @property
    def count(self) -> int:
        """Bad items so far: dropped at build time and found while training."""
        return self.dropped + len(self.found)

    def pick(self, order: Sequence[int], offset: int) -> Example:
        """The item at ``order[offset]``, or the first good one after it (cyclically)."""
        n = len(order)
        for k in range(n):
            index = int(order[(offset + k) % n])
            if index in self.found:
                continue
            try:
                return self._load(index)
            except BadItem as e:
                message = " ".join(str(e).split())
                self.found[index] = message
                log.warning(
                    "skipping a bad data item (%d of %d bad so far): %s",
                    self.count,
                    self.total,
                    message,
                )
                self._check(message)
        raise TooManyBadItems(f"no data item could be used: all {self.total} are bad")

    def _check(self, latest: str) -> None:
        share = self.count / self.total
        if share > self.max_fraction:
            raise TooManyBadItems(
                f"{self.count} of {self.total} data items are unreadable or invalid "
                f"({share:.1%}), over data.max_bad_fraction = {self.max_fraction}; "
                f"the latest: {latest}"
            )

    def state(self) -> dict[str, str]:
        """What a checkpoint keeps: the bad items found while training."""
        return {str(i): m for i, m in sorted(self.found.items())}

    def restore(self, state: dict[str, str] | None) -> None:
        """Take the bad items a checkpoint kept (not logged again)."""
        self.found = {int(i): str(m) for i, m in (state or {}).items()}
