"""Where the shared test data live: ``../shared/data`` beside the checkout (as laid out for
developers and CI), or ``$COORCH_DATA``."""

import os
from pathlib import Path

DATA = Path(os.environ.get("COORCH_DATA", Path(__file__).resolve().parents[2] / "shared/data"))
REPLAY_FILE = DATA / "smbfo_coorchestration/raman_beps.nc"
