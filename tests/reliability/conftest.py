"""Every reliability test starts from zero fault counts and runs torch on one thread.

One thread, because these tests fork children that train (see ``reliability_helpers.fork``):
a child must run on one thread to be safe, and a run in this process must compute the same
numbers as one in a child for the two to be compared bit for bit."""

from __future__ import annotations

import pytest
import torch

from cgrpo.training import faults


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _fresh_fault_counts():
    faults.reset()
    yield
    faults.reset()
