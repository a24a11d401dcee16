"""From a stored measurement to what the policy learns: signal -> descriptor -> ``tell``.

A plain function, not a Prefect task: it runs on the decision path for every measurement, costs
microseconds, and a task run would cost ~11 ms (DESIGN.md, "Performance").
"""

from __future__ import annotations

import numpy as np

from coorch.models.descriptors import describe
from coorch.models.policies import BasePolicy, Observation
from coorch.records import Measurement


def observation(m: Measurement) -> Observation:
    """The policy's view of a measurement: library position and descriptor values."""
    return Observation(instrument=m.instrument, x=np.array([m.library_x, m.library_y]),
                       values=describe(m.modality, m.signal), measurement_id=m.measurement_id)


def observe(policy: BasePolicy, measurements: list[Measurement]) -> list[Observation]:
    """Tell ``policy`` about ``measurements``; returns what it was told."""
    obs = [observation(m) for m in measurements]
    policy.tell(obs)
    return obs
