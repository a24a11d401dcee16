"""One simulation as the campaign sees it: the LGD loop and the descriptor the experiment uses.

The theory's output must be the very number the instrument's describer gives a measured loop,
or calibration compares unlike things: the simulated loop goes through
:func:`coorch.models.descriptors.loop_opening`, as a measured ``pfm_loop`` does. This function
is what a Dask worker runs (it imports the simulator and numpy only: no torch on the workers).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from coorch import lgd
from coorch.models.descriptors import loop_opening
from coorch.records import Signal

#: The simulated loops' bias grid: the AFM twin's (``pfm_loop``, +-10 V, 64 points).
BIAS_V = lgd.default_bias()


def simulate_opening(s: float, theta: Mapping[str, float]) -> tuple[np.ndarray, float]:
    """The loop (2, nb) at Sm fraction ``s`` and parameters ``theta``, and its opening."""
    loop = lgd.simulate(float(s), theta, BIAS_V)
    sig = Signal.from_array(
        "pfm_loop",
        ["branch", "bias"],
        loop,
        coords={"branch": ["forward", "reverse"], "bias": BIAS_V.tolist()},
    )
    return loop, float(loop_opening(sig)[0])
