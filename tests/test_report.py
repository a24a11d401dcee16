"""Scoring a campaign against a twin's ground truth, and the report figure."""

import numpy as np

from coorch.instrument_agents.twins import make_twin
from coorch.records import Measurement
from coorch.tasks.report import ground_truth, nrmse_curve, plot_report, training_arrays


def campaign(twins, modalities, n):
    """``n`` measurements per instrument spread along x (direct driver calls, no HTTP)."""
    out = []
    for name, twin in twins.items():
        twin.load_sample("s")
        for i, x in enumerate(np.linspace(0.3, 9.7, n)):
            twin.move(*twin.frame.to_stage(x, 1.0))
            sig = twin.measure(modalities[name], {})
            out.append(
                Measurement(
                    measurement_id=f"{name}-{i}",
                    instrument=name,
                    modality=modalities[name],
                    sample="s",
                    library_x=x,
                    library_y=1.0,
                    stage_x=0.0,
                    stage_y=0.0,
                    started=i,
                    ended=i + 0.5,
                    signal=sig,
                )
            )
    return sorted(out, key=lambda m: (m.ended, m.instrument))


def test_error_against_ground_truth_falls_and_the_report_is_drawn(tmp_path):
    twins = {"afm": make_twin("afm", seed=1), "raman": make_twin("raman", seed=2)}
    modalities = {"afm": "pfm_loop", "raman": "raman"}
    extent = np.array([[0.0, 10.0], [0.0, 2.0]])
    truth = ground_truth(twins, modalities, extent, shape=(30, 2))
    assert truth.values.shape == (60, 2) and np.isfinite(truth.values).all()
    ms = campaign(twins, modalities, 12)
    steps, err = nrmse_curve(ms, truth, extent)
    assert err.shape == (len(steps), 2)
    assert (err[-1] < 0.5 * err[0]).all()  # 24 measurements map both tasks far better than 2
    from coorch.models.mtgp import fit_hyperparameters

    hyper = fit_hyperparameters(*training_arrays(ms, truth.tasks, extent), 2)
    png = plot_report(
        tmp_path / "report.png", {"grid": ms}, {"grid": (steps, err)}, truth, extent, hyper
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
