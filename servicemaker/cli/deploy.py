"""svc-deploy <in.rmir[:key]>... <repo_dir> [-f] [--target auto|tensorrt|onnxruntime|onnxruntime-python]
[--serving ensemble|fused]"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from servicemaker.cli.common import (DEBUG_HELP, JSON_HELP, SALTS_HELP, RichReporter, err_console, reported_errors,
                                     version_option)
from servicemaker.cli.result import DEPLOY_FORMAT, fill_deploy, new_document, run_app
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
          "$SERVICEMAKER_KEY. RMIRs may also be object-store URLs (s3://bucket/key.rmir, file:///path.rmir). "
          "Compiled networks are cached in $SERVICEMAKER_CACHE (default ~/.cache/servicemaker; size cap "
          "$SERVICEMAKER_CACHE_SIZE) and, with --cache URL, in a shared store.")

CACHE_HELP = ("a shared compile cache: s3://bucket/prefix (endpoint and credentials from the AWS environment "
              "variables, AWS_ENDPOINT_URL included) or file:///folder; default $SERVICEMAKER_CACHE_URL. The local "
              "cache is $SERVICEMAKER_CACHE (default ~/.cache/servicemaker), capped at $SERVICEMAKER_CACHE_SIZE")

app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, epilog=EPILOG)
def svc_deploy(
    ctx: typer.Context,
    args: Optional[List[str]] = typer.Argument(None, metavar="IN.rmir[:KEY]... REPO_DIR", show_default=False,
                                               help="RMIRs to deploy, then the Triton model repository folder"),
    force: bool = typer.Option(False, "-f", "--force",
                               help="replace existing model folders of these RMIRs (others are never touched)"),
    target: str = typer.Option("auto", "--target", help="|".join(TARGETS)),
    serving: str = typer.Option("ensemble", "--serving", metavar="ensemble|fused",
                                help="the serving layout: ensemble (a model per component, as Riva; every target) "
                                     "or fused (the whole pipeline in one Python-backend model: the fast CPU "
                                     "layout; --target onnxruntime-python, non-streaming pipelines)"),
    allow_accuracy_drop: bool = typer.Option(
        False, "--allow-accuracy-drop",
        help="deploy even when the optimized network fails the accuracy gate (nn.accuracy_tolerance)"),
    eff_salts: Optional[str] = typer.Option(None, "--eff-salts", help=SALTS_HELP),
    cache: Optional[str] = typer.Option(None, "--cache", metavar="URL", envvar="SERVICEMAKER_CACHE_URL",
                                        show_envvar=False, help=CACHE_HELP),
    no_cache: bool = typer.Option(False, "--no-cache",
                                  help="compile every network: read and write no compile cache, local or shared"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="print only errors and the result"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
    _version: bool = version_option("svc-deploy"),
) -> None:
    """Turn RMIRs into a Triton model repository."""
    doc = new_document(DEPLOY_FORMAT, "svc-deploy") if as_json else None
    reporter = RichReporter(quiet or as_json)
    if doc is not None:
        reporter.warnings = doc["warnings"]   # listed on failure too
    with reported_errors(debug, doc):
        cache = (cache or "").strip() or None
        if no_cache and cache and _from_command_line(ctx, "cache"):
            raise UsageError("give --cache URL or --no-cache, not both")
        overrides, items = parse_overrides(list(args or []) + list(ctx.args))
        if len(items) < 2:
            raise UsageError("missing arguments", hint="svc-deploy IN.rmir[:KEY]... REPOSITORY")
        *rmirs, repo = items
        if doc is not None:
            doc["repository"] = str(Path(repo).absolute())
        result = deploy(DeployOptions(rmirs=[parse_archive_arg(a) for a in rmirs], repo=Path(repo), force=force,
                                      target=target, salts=SaltTable.from_option(eff_salts), overrides=overrides,
                                      allow_accuracy_drop=allow_accuracy_drop,
                                      cache=None if no_cache else cache, use_cache=not no_cache,
                                      serving=serving), reporter)
        if doc is not None:
            fill_deploy(doc, result)
            return
        for label, names in (("wrote", result.written), ("replaced", result.replaced), ("kept", result.kept)):
            if names:
                err_console.print(f"{label}: {', '.join(names)}", markup=False)
        err_console.print(f"Finished deploying {len(rmirs)} RMIR(s) to {result.repo} (target {result.target}) "
                          f"in {result.seconds:.1f} s", markup=False)


def _from_command_line(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return getattr(source, "name", "") == "COMMANDLINE"


def main() -> None:
    run_app(app, "svc-deploy", DEPLOY_FORMAT)
