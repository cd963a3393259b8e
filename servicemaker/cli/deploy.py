"""svc-deploy: RMIR → Triton model repository. Not implemented in this version."""

from __future__ import annotations

from typing import List, Optional

import typer

from servicemaker import __version__
from servicemaker.cli.common import DEBUG_HELP, reported_errors
from servicemaker.errors import ServiceMakerError

app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)


class NotYetError(ServiceMakerError):
    exit_code = 2


@app.command()
def svc_deploy(
    args: Optional[List[str]] = typer.Argument(None, metavar="IN.rmir[:KEY]... REPO_DIR"),
    force: bool = typer.Option(False, "-f", "--force"),
    target: str = typer.Option("auto", "--target", help="auto|tensorrt|onnxruntime|onnxruntime-python"),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Turn RMIRs into a Triton model repository (not yet available in this version)."""
    with reported_errors(debug):
        raise NotYetError(f"svc-deploy is not implemented yet in servicemaker {__version__}",
                          hint="svc-build and svc-inspect work now; RMIRs you build today will deploy with it")


def main() -> None:
    app(prog_name="svc-deploy")
