"""The machine-readable result documents of ``svc-build --json`` and ``svc-deploy --json`` (docs/cli.md).

One document per run on stdout, success or failure alike: a build server parses it instead of scraping messages.
Every field is always present; on failure ``ok`` is false and ``error`` holds ``{type, message, hint,
exit_code}`` (the process exits with that code too).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from servicemaker import __version__
from servicemaker.build import BuildResult, sha256_file
from servicemaker.deploy.state import DeployResult

BUILD_FORMAT = "servicemaker.build_result/1"
DEPLOY_FORMAT = "servicemaker.deploy_result/1"
#: files at the repository's top level that a deploy writes or merges (beside the model folders)
REPOSITORY_FILES = ("deploy_status.json", "requirements.txt")


def new_document(fmt: str, tool: str) -> dict[str, Any]:
    """A result document with every field present, as a failure before any work would leave it."""
    doc: dict[str, Any] = {"format": fmt, "tool": tool, "version": __version__, "ok": False}
    if fmt == BUILD_FORMAT:
        doc.update({"pipeline": None, "name": None, "outputs": [], "inputs": []})
    else:
        doc.update({"repository": None, "target": None, "models": {"written": [], "replaced": [], "kept": []},
                    "outputs": [], "inputs": [], "cache": {}, "steps": [], "warnings": []})
    doc.update({"seconds": 0.0, "error": None})
    return doc


def file_entry(path: Path, shown: str) -> dict[str, Any]:
    digest, size = sha256_file(path)
    return {"path": shown, "sha256": digest, "size": size}


def fill_build(doc: dict[str, Any], result: BuildResult) -> None:
    doc["pipeline"] = result.spec.pipeline
    doc["name"] = result.spec.name
    doc["outputs"] = [file_entry(result.path, str(result.path.absolute()))]
    doc["inputs"] = [{"slot": i.slot, "file": i.file, "sha256": i.sha256, "size": i.size,
                      "model_class": i.model_class} for i in result.spec.inputs]


def fill_deploy(doc: dict[str, Any], result: DeployResult) -> None:
    repo = Path(result.repo).absolute()
    doc["repository"] = str(repo)
    doc["target"] = result.target
    doc["models"] = {"written": list(result.written), "replaced": list(result.replaced), "kept": list(result.kept)}
    outputs = []
    for name in sorted(set(result.written) | set(result.replaced)):
        for path in sorted(p for p in (repo / name).rglob("*") if p.is_file()):
            outputs.append(file_entry(path, path.relative_to(repo).as_posix()))
    for name in REPOSITORY_FILES:
        if (repo / name).is_file():
            outputs.append(file_entry(repo / name, name))
    doc["outputs"] = outputs
    doc["cache"] = dict(result.cache)
    doc["steps"] = [{"name": s.name, "status": s.status, "seconds": round(s.seconds, 3),
                     "detail": _plain(s.detail)} for s in result.steps]
    try:
        status = json.loads((repo / REPOSITORY_FILES[0]).read_text(encoding="utf-8"))
        doc["inputs"] = [{k: i.get(k) for k in ("file", "sha256", "size", "pipeline", "name")}
                         for i in status.get("inputs", [])]
    except (OSError, ValueError, AttributeError, TypeError):
        doc["inputs"] = []


def _plain(value: Any) -> Any:
    """``value`` as JSON types (a step's detail may hold paths)."""
    return json.loads(json.dumps(value, default=str))


def fail(doc: dict[str, Any], kind: str, message: str, hint: str | None, exit_code: int) -> None:
    doc["ok"] = False
    doc["error"] = {"type": kind, "message": message, "hint": hint, "exit_code": exit_code}


def emit(doc: dict[str, Any]) -> None:
    """The document, alone, on stdout (strict JSON: no NaN)."""
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    sys.stdout.flush()


def run_app(app: typer.Typer, prog_name: str, fmt: str) -> None:
    """Run a console script. Option errors that click finds before the command runs (an option without its value,
    an ill-typed value) exit 2 as usual; with ``--json`` they are reported as a result document too."""
    argv = sys.argv[1:]
    try:
        code = app(args=argv, prog_name=prog_name, standalone_mode=False)
    except typer.Abort:
        sys.exit(1)
    except typer.TyperException as err:   # click's errors (typer bundles click): bad option values
        exit_code = int(getattr(err, "exit_code", 2))
        message = err.format_message() if hasattr(err, "format_message") else str(err)
        options = argv[: argv.index("--")] if "--" in argv else argv
        if "--json" in options:
            doc = new_document(fmt, prog_name)
            fail(doc, "UsageError", message, f"see {prog_name} --help", exit_code)
            emit(doc)
        if hasattr(err, "show"):
            err.show()
        else:
            print(f"error: {message}", file=sys.stderr)
        sys.exit(exit_code)
    sys.exit(code if isinstance(code, int) else 0)
