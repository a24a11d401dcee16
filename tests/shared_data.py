"""Data the tests share: where the shared files live (``../shared/data`` beside the checkout,
as laid out for developers and CI, or ``$COORCH_DATA``), and a synthetic two-task truth."""

import os
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("COORCH_DATA", Path(__file__).resolve().parents[2] / "shared/data"))
REPLAY_FILE = DATA / "smbfo_coorchestration/raman_beps.nc"


def two_tasks(x: np.ndarray) -> np.ndarray:
    """Two correlated tasks over 1-D position (n,) -> (n, 2): the second a warped copy of the
    first."""
    a = np.exp(-(((x - 0.6) / 0.12) ** 2))
    return np.column_stack([a, 0.8 * a + 0.3 * np.sin(3 * x)])
