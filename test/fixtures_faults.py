"""Shared settings of the fault, fuzz and time-jump tests (test_faults.py, test_fuzz.py,
test_time_jumps.py): these tests are about the node's behaviour, not the model's accuracy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from fixtures_node import TINY_PARAMS

# The tiny engine with a 32 x 32 network input: labels still come at each frame's own size
# (the model's input size is an internal detail), and each model run is a few times cheaper.
FAST_PARAMS: dict[str, object] = {**TINY_PARAMS, "model.fit_long": 32, "model.fit_short": 32}


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread while a test runs (restored after): on a shared, loaded CPU two
    OpenMP threads spin-wait for each other and every model run gets several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
