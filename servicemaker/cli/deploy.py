"""svc-deploy <in.rmir[:key]>... <repo_dir> [-f] [--target auto|tensorrt|onnxruntime|onnxruntime-python]"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from servicemaker import __version__
from servicemaker.cli.common import DEBUG_HELP, SALTS_HELP, RichReporter, err_console, out_console, reported_errors
from servicemaker.deploy import TARGETS, DeployOptions, deploy
from servicemaker.eff.codecs import SaltTable
from servicemaker.errors import UsageError
from servicemaker.keys import parse_archive_arg
from servicemaker.pipeline import parse_overrides

EPILOG = ("Targets: auto (tensorrt where TensorRT and a GPU are present, else onnxruntime), tensorrt (model.plan), "
          "onnxruntime (Triton's onnxruntime backend), onnxruntime-python (ONNX Runtime inside the Python backend; "
          "runs on any Triton with the Python backend). Compiler options recorded at svc-build can be overridden: "
          "--nn.precision, --nn.fuse, --nn.fusion_ops, --nn.sparsity, --nn.calibration_method, "
          "--nn.accuracy_tolerance, --nn.max_workspace_size. Keys: PATH:KEY, PATH:env:VAR, PATH:file:KEYFILE, or "
          "$SERVICEMAKER_KEY.")

app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, epilog=EPILOG)
def svc_deploy(
    ctx: typer.Context,
    args: Optional[List[str]] = typer.Argument(None, metavar="IN.rmir[:KEY]... REPO_DIR", show_default=False,
                                               help="RMIRs to deploy, then the Triton model repository folder"),
    force: bool = typer.Option(False, "-f", "--force",
                               help="replace existing model folders of these RMIRs (others are never touched)"),
    target: str = typer.Option("auto", "--target", help="|".join(TARGETS)),
    allow_accuracy_drop: bool = typer.Option(
        False, "--allow-accuracy-drop",
        help="deploy even when the optimized network fails the accuracy gate (nn.accuracy_tolerance)"),
    eff_salts: Optional[str] = typer.Option(None, "--eff-salts", help=SALTS_HELP),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="print only errors and the result"),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
    version: bool = typer.Option(False, "--version", help="print the version and exit"),
) -> None:
    """Turn RMIRs into a Triton model repository."""
    with reported_errors(debug):
        if version:
            out_console.print(f"svc-deploy (servicemaker) {__version__}", markup=False)
            return
        overrides, items = parse_overrides(list(args or []) + list(ctx.args))
        if len(items) < 2:
            raise UsageError("missing arguments", hint="svc-deploy IN.rmir[:KEY]... REPOSITORY")
        *rmirs, repo = items
        result = deploy(DeployOptions(rmirs=[parse_archive_arg(a) for a in rmirs], repo=Path(repo), force=force,
                                      target=target, salts=SaltTable.from_option(eff_salts), overrides=overrides,
                                      allow_accuracy_drop=allow_accuracy_drop), RichReporter(quiet))
        for label, names in (("wrote", result.written), ("replaced", result.replaced), ("kept", result.kept)):
            if names:
                err_console.print(f"{label}: {', '.join(names)}", markup=False)
        err_console.print(f"Finished deploying {len(rmirs)} RMIR(s) to {result.repo} (target {result.target}) "
                          f"in {result.seconds:.1f} s", markup=False)


def main() -> None:
    app(prog_name="svc-deploy")
