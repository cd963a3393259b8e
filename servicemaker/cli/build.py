"""svc-build <pipeline> <out.rmir[:key]> <in.riva[:key]>... [options] [--<component>.<param>=value ...]"""

from __future__ import annotations

from typing import List, Optional

import typer

from servicemaker.build import BuildOptions, build
from servicemaker.cli.common import (DEBUG_HELP, JSON_HELP, SALTS_HELP, RichReporter, err_console, out_console,
                                     reported_errors, version_option)
from servicemaker.cli.result import BUILD_FORMAT, fill_build, new_document, run_app
from servicemaker.eff.codecs import SaltTable
from servicemaker.errors import UsageError
from servicemaker.keys import parse_local_archive_arg
from servicemaker.pipeline import parse_overrides
from servicemaker.pipelines import REGISTRY, get_pipeline, variant

EPILOG = ("Pipelines: " + ", ".join(REGISTRY) + ". Keys: PATH:KEY, PATH:env:VAR, PATH:file:KEYFILE, or "
          "$SERVICEMAKER_KEY for inputs. Parameters: --<component>.<param>=VALUE; list them with --list-params.")

app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)


def _list_params(name: str) -> None:
    pipeline = get_pipeline(name)
    out_console.print(f"{pipeline.name}: {pipeline.help}", markup=False)
    for flag, other in pipeline.variants.items():
        out_console.print(f"  --{flag}: build the {other} pipeline instead", markup=False)
    riva = {target: flag for flag, target in pipeline.aliases.items()}
    for comp in pipeline.components:
        out_console.print(f"  {comp.name} ({comp.kind}): {comp.help}", markup=False)
        for p in comp.params:
            alias = riva.get(f"{comp.name}.{p.name}")
            out_console.print(f"    --{comp.name}.{p.describe()}" + (f" [Riva: --{alias}]" if alias else ""),
                              markup=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, epilog=EPILOG)
def svc_build(
    ctx: typer.Context,
    args: Optional[List[str]] = typer.Argument(None, metavar="PIPELINE OUTPUT[:KEY] INPUT[:KEY]...",
                                               help="pipeline name, output RMIR, input exports", show_default=False),
    force: bool = typer.Option(False, "-f", "--force", help="overwrite the output if it exists"),
    name: Optional[str] = typer.Option(None, "--name", help="ensemble (pipeline) model name in Triton"),
    domain_name: Optional[str] = typer.Option(None, "--domain_name", "--domain-name", help="domain part of model names"),
    language_code: Optional[str] = typer.Option(None, "--language_code", "--language-code", help="e.g. en-US"),
    max_batch_size: Optional[int] = typer.Option(None, "--max_batch_size", "--max-batch-size",
                                                 help="default max batch size of every component"),
    eff_salts: Optional[str] = typer.Option(None, "--eff-salts", help=SALTS_HELP),
    compression_level: int = typer.Option(1, "--compression-level", help="gzip level of the RMIR, 0-9"),
    list_params: Optional[str] = typer.Option(None, "--list-params", metavar="PIPELINE",
                                              help="list a pipeline's components and parameters, then exit"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="print only errors and the result"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
    _version: bool = version_option("svc-build"),
) -> None:
    """Validate model exports and bundle them with a pipeline spec into an RMIR."""
    doc = new_document(BUILD_FORMAT, "svc-build") if as_json else None
    with reported_errors(debug, doc):
        if list_params:
            if as_json:
                raise UsageError("--list-params has no --json form", hint="drop --json")
            _list_params(list_params)
            return
        tokens = list(args or []) + list(ctx.args)
        first = next((t for t in tokens if not t.startswith("-")), None)
        chosen = get_pipeline(first) if first is not None else None
        overrides, positional = parse_overrides(tokens, chosen.aliases if chosen else (),
                                                chosen.variants if chosen else ())
        if len(positional) < 2:
            raise UsageError("missing arguments", hint="svc-build PIPELINE OUTPUT.rmir[:KEY] INPUT.riva[:KEY]...")
        pipeline, output, *inputs = positional
        pipeline = variant(get_pipeline(pipeline), overrides).name
        result = build(BuildOptions(
            pipeline=pipeline, output=parse_local_archive_arg(output, "svc-build"),
            inputs=[parse_local_archive_arg(a, "svc-build") for a in inputs],
            force=force, name=name, domain_name=domain_name, language_code=language_code,
            max_batch_size=max_batch_size, overrides=overrides, salts=SaltTable.from_option(eff_salts),
            compresslevel=compression_level,
        ), RichReporter(quiet or as_json))
        if doc is not None:
            fill_build(doc, result)
            return
        size = result.path.stat().st_size
        err_console.print(f"Finished building {result.path} ({result.spec.pipeline} '{result.spec.name}', "
                          f"{size} bytes) in {result.seconds:.1f} s", markup=False)


def main() -> None:
    run_app(app, "svc-build", BUILD_FORMAT)
