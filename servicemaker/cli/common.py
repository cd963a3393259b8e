"""What the console scripts share: error reporting, exit codes, progress, common options."""

from __future__ import annotations

import os
import sys
import time
import traceback
from contextlib import contextmanager
from typing import Any, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from servicemaker.errors import AccessError, ServiceMakerError

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
out_console = Console(highlight=False, soft_wrap=True)

DEBUG_HELP = "show a traceback on errors"
JSON_HELP = "print one machine-readable result document on stdout (docs/cli.md); progress stays quiet"
BUG_HINT = "this is a bug in servicemaker; run again with --debug and report the traceback"
SALTS_HELP = "YAML file of legacy EFF cipher salts ('<id>: <64 hex>'); default: $SERVICEMAKER_EFF_SALTS"


@contextmanager
def reported_errors(debug: bool, doc: dict[str, Any] | None = None) -> Iterator[None]:
    """Turn errors into one clear message and the documented exit code; tracebacks only with --debug.

    With ``doc`` (``--json``), the result document is printed on stdout when the block ends, with ``ok``,
    ``seconds`` and, on failure, ``error`` filled in; the messages still go to stderr.
    """
    debug = debug or os.environ.get("SERVICEMAKER_DEBUG") == "1"
    started = time.perf_counter()

    def finish(kind: str | None = None, message: str = "", hint: str | None = None, code: int = 0) -> None:
        if doc is None:
            return
        from servicemaker.cli.result import emit, fail

        doc["seconds"] = round(time.perf_counter() - started, 3)
        if kind is None:
            doc["ok"], doc["error"] = True, None
        else:
            fail(doc, kind, message, hint, code)
        emit(doc)

    try:
        try:
            yield
        except PermissionError as err:
            if isinstance(err, ServiceMakerError):
                raise
            raise AccessError(f"permission denied: {err.filename or err}",
                              hint="make it readable (and its folder writable) for this user: chmod/chown, or run "
                                   "the container with a user that owns the mounted folder") from err
    except ServiceMakerError as err:
        if debug:
            traceback.print_exc()
        # archive text may look like markup ('[/]'): print the message as it is
        err_console.print(f"[bold red]error:[/] {escape(err.message)}", markup=True, highlight=False)
        if err.hint:
            err_console.print(f"[bold]hint:[/] {escape(err.hint)}", markup=True, highlight=False)
        finish(type(err).__name__, err.message, err.hint, err.exit_code)
        raise typer.Exit(err.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        finish("KeyboardInterrupt", "interrupted", None, 130)
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except Exception as err:  # noqa: BLE001 - a bug: say so, keep the traceback for --debug
        if debug:
            traceback.print_exc()
        message = f"internal error: {type(err).__name__}: {err}"
        err_console.print(message, markup=False)
        err_console.print(BUG_HINT, markup=False)
        finish(type(err).__name__, message, BUG_HINT, 1)
        raise typer.Exit(1) from None
    else:
        finish()


class RichReporter:
    """Progress for long steps on a terminal; plain step lines otherwise."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.interactive = err_console.is_terminal
        #: every warning given, in order (``svc-deploy --json`` lists them)
        self.warnings: list[str] = []

    def step(self, message: str) -> None:
        if not self.quiet:
            err_console.print(message, markup=False)

    def warn(self, message: str) -> None:
        """Something the user should know even with -q or --json (a corrupt cache entry dropped, say)."""
        if message.lower().startswith("warning:"):
            message = message[len("warning:"):].strip()
        self.warnings.append(message)
        err_console.print(f"warning: {message}", markup=False)

    @contextmanager
    def activity(self, label: str) -> Iterator[None]:
        """A long step without a byte count: a spinner on a terminal, then 'Finished <label> in N s'."""
        started = time.perf_counter()
        if self.quiet:
            yield
            return
        if self.interactive:
            with err_console.status(label + " ..."):
                yield
        else:
            err_console.print(label + " ...", markup=False)
            yield
        err_console.print(f"Finished {label[0].lower() + label[1:]} in {time.perf_counter() - started:.1f} s",
                          markup=False)

    def track(self, stream: Any, label: str, total: int) -> Any:
        if self.quiet or not self.interactive or total < (64 << 20):
            return stream
        return _Tracked(stream, label, total)


class _Tracked:
    def __init__(self, stream: Any, label: str, total: int) -> None:
        self._stream = stream
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), console=err_console, transient=True)
        self._task = self._progress.add_task(label, total=total)
        self._progress.start()

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._progress.advance(self._task, len(data))
        if not data:
            self._progress.stop()
        return data


def echo_json(text: str) -> None:
    sys.stdout.write(text + "\n")


def version_option(tool: str) -> Any:
    """``--version``: print ``TOOL (servicemaker) VERSION`` and exit, before any argument is checked."""
    from servicemaker import __version__

    def show(value: bool) -> None:
        if value:
            out_console.print(f"{tool} (servicemaker) {__version__}", markup=False)
            raise typer.Exit()

    return typer.Option(False, "--version", help="print the version and exit", is_eager=True, callback=show)
