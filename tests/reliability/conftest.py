"""Fault-injection counts start from zero in every reliability test."""

from __future__ import annotations

import pytest

from cgrpo.training import faults


@pytest.fixture(autouse=True)
def _fresh_fault_counts():
    faults.reset()
    yield
    faults.reset()
