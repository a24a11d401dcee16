"""``coorch im2spec SPEC``: run an image -> spectrum (DKL) campaign from a spec file.

Kept out of ``coorch/cli.py`` so the command and its flow stay together; the CLI mounts it.
"""

from __future__ import annotations

from pathlib import Path

import typer


def im2spec_command(
    spec_file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="im2spec spec, YAML or JSON (an Im2SpecSpec)"
    ),
) -> None:
    """Run, or resume from its store, the image -> spectrum campaign in SPEC_FILE.

    Images the structure modality at every candidate, then measures the spectrum budget where
    the deep-kernel model is least sure. Uses the Prefect server named by PREFECT_API_URL
    (Prefect's local ephemeral server when unset). Safe to re-run after a crash: the store says
    what is done.
    """
    import yaml

    from coorch.deployments.im2spec_config import Im2SpecSpec
    from coorch.flows.im2spec import im2spec

    spec = Im2SpecSpec(**yaml.safe_load(spec_file.read_text()))
    result = im2spec(spec)
    typer.echo(
        f"{spec.name}: {result.n_structure} images, {result.n_spectra} spectra in {result.store}"
    )
