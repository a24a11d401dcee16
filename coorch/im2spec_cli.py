"""``coorch im2spec SPEC``: run an image -> spectrum (DKL) campaign from a spec file.

Kept out of ``coorch/cli.py`` so the command and its flow stay together; the CLI mounts it.
Errors are reported as ``coorch run``'s are (``coorch.cli.user_errors``, ``flow_failures``):
a bad spec, token file or store folder in two lines at most, before Prefect is imported.
"""

from __future__ import annotations

from pathlib import Path

import typer


def im2spec_command(
    spec_file: Path = typer.Argument(..., help="im2spec spec, YAML or JSON (an Im2SpecSpec)"),
) -> None:
    """Run, or resume from its store, the image -> spectrum campaign in SPEC_FILE.

    Images the structure modality at every candidate, then measures the spectrum budget where
    the deep-kernel model is least sure. Uses the Prefect server named by PREFECT_API_URL
    (Prefect's local ephemeral server when unset). Safe to re-run after a crash: the store says
    what is done. The spec, its token file and its store folder are checked before Prefect is
    imported.
    """
    # Imported here, not at the top: coorch.cli imports this module while it mounts commands.
    from coorch.cli import check_local_files, flow_failures, load_spec, user_errors

    with user_errors("im2spec"):
        from coorch.deployments.im2spec_config import Im2SpecSpec

        spec = load_spec(spec_file, Im2SpecSpec)
        tokens = {"instrument.token_file": spec.instrument.token_file}
        check_local_files(spec_file, tokens, spec.store)
    with flow_failures("im2spec", spec.name):
        from coorch.flows.im2spec import im2spec

        result = im2spec(spec)
    typer.echo(
        f"{spec.name}: {result.n_structure} images, {result.n_spectra} spectra in {result.store}"
    )
