"""svc-serve REPO: a Triton server for a model repository on 127.0.0.1; optionally answer one query and stop."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Optional

import typer

from servicemaker import __version__
from servicemaker.cli.common import DEBUG_HELP, err_console, reported_errors
from servicemaker.client import connect, ensembles, infer, readable
from servicemaker.errors import UsageError
from servicemaker.serve import TritonServer

app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)


def _query(server: TritonServer, repo: Path, model: str | None, text: str, context: str | None) -> None:
    found = ensembles(repo)
    names = [model] if model else sorted(found)
    if model and model not in found:
        raise UsageError(f"--model {model} is not an ensemble of {repo}", hint=f"ensembles: {', '.join(found)}")
    client = connect(server.http_url)
    answers = {}
    for name in names:
        wanted = found[name]
        if "CONTEXT" in wanted:
            if context is None:
                if model:
                    raise UsageError(f"{name} answers a QUESTION about a CONTEXT", hint="add --context TEXT")
                continue
            inputs = {"QUESTION": [text], "CONTEXT": [context]}
        else:
            inputs = {"TEXT": [text]}
        answers[name] = readable(infer(client, name, inputs))[0]
    print(json.dumps(answers, indent=2, ensure_ascii=False))


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops the server the same way Ctrl-C does."""
    raise KeyboardInterrupt


@app.command()
def svc_serve(
    repo: Path = typer.Argument(..., help="the model repository (svc-deploy's output)"),
    http_port: int = typer.Option(8000, "--http-port", help="HTTP port on 127.0.0.1 (0: a free one)"),
    grpc_port: int = typer.Option(8001, "--grpc-port", help="gRPC port on 127.0.0.1 (0: a free one)"),
    metrics_port: int = typer.Option(8002, "--metrics-port", help="metrics port on 127.0.0.1 (0: a free one)"),
    tritonserver: Optional[str] = typer.Option(None, "--tritonserver",
                                               help="tritonserver binary (default: PATH, else nvidia-pytriton's)"),
    query: Optional[str] = typer.Option(None, "--query", help="send this text to the ensembles, print the answers, "
                                                               "and stop the server"),
    context: Optional[str] = typer.Option(None, "--context", help="with --query: the context of a QA ensemble"),
    model: Optional[str] = typer.Option(None, "--model", help="with --query: only this ensemble"),
    timeout: float = typer.Option(180.0, "--timeout", help="seconds to wait for the server to load the models"),
    verbose: int = typer.Option(0, "--log-verbose", help="Triton's --log-verbose level"),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Serve a model repository with Triton on 127.0.0.1 until Ctrl-C (or, with --query, for one query)."""
    with reported_errors(debug):
        if not repo.is_dir():
            raise UsageError(f"{repo} is not a folder", hint="svc-serve MODEL_REPOSITORY")
        server = TritonServer(repo, http_port=http_port or None, grpc_port=grpc_port or None,
                              metrics_port=metrics_port or None, binary=tritonserver, verbose=verbose)
        err_console.print(f"svc-serve (servicemaker) {__version__}: starting Triton for {repo}", markup=False)
        started = time.perf_counter()
        server.start()
        try:
            server.wait_ready(timeout)
            err_console.print(f"Triton ({server.origin}) ready in {time.perf_counter() - started:.1f} s: "
                              f"HTTP {server.http_url}, gRPC {server.grpc_url}, "
                              f"metrics 127.0.0.1:{server.metrics_port}", markup=False)
            if query is not None:
                _query(server, repo, model, query, context)
                return
            signal.signal(signal.SIGTERM, _interrupt)
            err_console.print("Press Ctrl-C to stop.", markup=False)
            while server.process is not None and server.process.poll() is None:
                time.sleep(0.5)
            raise UsageError(f"tritonserver stopped by itself (exit code {server.process.returncode})")
        finally:
            server.stop()
            err_console.print("Triton stopped.", markup=False)


def main() -> None:
    app(prog_name="svc-serve")
