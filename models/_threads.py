"""Scoped torch thread and RNG settings for model fitting.

The models here are small (hundreds of points, tens of thousands of weights). Intra-op threads
buy little on them, and when the cores are shared (a Dask worker running fits beside the flow,
the agents and other fits) they cost a lot: measured on 2 busy cores, a VAE fit took 3-5 s with
one torch thread and 29-53 s with two, the threads spinning against each other. So fits default
to one thread. Torch's thread count and RNG
are process-global, so nothing here changes them at import time; fits enter :func:`torch_scope`
for their duration and restore what they found.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

DEFAULT_THREADS = 1


@contextmanager
def torch_scope(seed: int | None = None, threads: int | None = DEFAULT_THREADS) -> Iterator[None]:
    """Run a block with at most ``threads`` intra-op threads and, if given, a private seed.

    The global RNG state is forked (``torch.random.fork_rng``), so seeding a fit neither
    depends on nor disturbs the caller's random stream.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1, previous)))
    try:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(previous)
