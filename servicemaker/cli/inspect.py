"""svc-inspect <file[:key]> [--json] [--verify]"""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from servicemaker.cli.common import (DEBUG_HELP, SALTS_HELP, echo_json, out_console, reported_errors,
                                     version_option)
from servicemaker.eff.codecs import SaltTable, digest_of
from servicemaker.inspect import inspect_archive, to_json
from servicemaker.keys import parse_local_archive_arg
from servicemaker import yamlio

app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)


@app.command()
def svc_inspect(
    archive: str = typer.Argument(..., metavar="FILE[:KEY]", help="a .riva/.eff/.rmir archive"),
    as_json: bool = typer.Option(False, "--json", help="print the stable JSON document (docs/cli.md)"),
    verify: bool = typer.Option(False, "--verify", help="decrypt every artifact and check its sha256 (needs the key)"),
    eff_salts: Optional[str] = typer.Option(None, "--eff-salts", help=SALTS_HELP),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
    _version: bool = version_option("svc-inspect"),
) -> None:
    """Show an archive's metadata, artifacts and (for an RMIR) pipeline spec; a key given is checked."""
    with reported_errors(debug):
        doc = inspect_archive(parse_local_archive_arg(archive, "svc-inspect"), SaltTable.from_option(eff_salts),
                              verify=verify)
        if as_json:
            echo_json(to_json(doc))
            return
        _print(doc)


_TERSE = {"description", "sha256", "hmac_sha256", "size", "encryption", "source", "artifact_type", "content_callback"}


def _print(doc: dict) -> None:
    c = out_console
    c.print(f"{doc['file']}: EFF {doc['kind']}, {doc['file_size']} bytes, {doc['layout']} layout", markup=False)
    c.print(f"sha256 {doc['file_sha256']}", markup=False)
    c.print("metadata:", markup=False)
    for line in yamlio.dump(doc["metadata"]).splitlines():
        c.print("  " + line, markup=False)
    table = Table(title="artifacts", title_justify="left")
    for col in ("name", "stored bytes", "encryption", "sha256", "props"):
        table.add_column(col, overflow="fold")
    if doc["verified"]:
        table.add_column("verified sha256", overflow="fold")
    for a in doc["artifacts"]:
        props = ", ".join(f"{k}={v}" for k, v in a["props"].items() if k not in _TERSE)
        sha = str(digest_of(a["props"]) or "")[:12]
        row = [a["name"], str(a["stored_size"]), a["encryption"], sha, props]
        if doc["verified"]:
            row.append(a["sha256"][:16] + "…")
        table.add_row(*row)
    c.print(table)
    spec = doc["pipeline_spec"]
    if spec:
        c.print(f"pipeline spec (version {spec['spec_version']}): {spec['pipeline']} '{spec['name']}'", markup=False)
        for name, comp in spec["components"].items():
            c.print(f"  {name} [{comp['kind']}] → {comp['model_name']}", markup=False)
            for k, v in comp["params"].items():
                c.print(f"      {k} = {v}", markup=False)
            for role, ref in comp["artifacts"].items():
                c.print(f"      {role}: {ref['name']} ({ref['size']} bytes)", markup=False)
        for inp in spec["inputs"]:
            c.print(f"  input {inp['slot']}: {inp['file']} {inp['model_class']} sha256 {inp['sha256']}", markup=False)
        c.print(f"  built by {spec['provenance']['tool']} {spec['provenance']['version']}", markup=False)


def main() -> None:
    app(prog_name="svc-inspect")
