"""One error hierarchy for the whole project.

Every error a user can cause derives from :class:`ServiceMakerError`; it carries a one-line message naming the
problem, an optional hint naming the fix, and the process exit code the CLI uses. Each class also derives from
the matching standard exception type, so library users can catch ``FileNotFoundError`` and the like.

Exit codes (documented in docs/cli.md):

====  =========================================================
 1    internal error (a bug: please report it with ``--debug``)
 2    bad usage: unknown or ill-typed option, bad argument
 3    unreadable, corrupt or unsafe archive
 4    missing or wrong key, unknown cipher salt
 5    the inputs do not satisfy the model-class schema or pipeline
 6    a file that was asked for does not exist
 7    the output exists and ``-f`` was not given
====  =========================================================

Messages are bounded: a message or hint longer than :data:`MAX_MESSAGE_CHARS` is cut in the middle
(``… (N characters omitted) …``), so no code path can echo an unbounded value (a 2 MiB manifest field, say)
to the terminal. A :class:`ValidationError` bounds each violation the same way and lists at most
:data:`MAX_VIOLATIONS_SHOWN` of them.
"""

from __future__ import annotations

from typing import Any

#: the longest message (and hint) an error carries; longer ones are cut in the middle
MAX_MESSAGE_CHARS = 2000
#: the most violations a ValidationError message lists (``err.violations`` keeps them all, each bounded)
MAX_VIOLATIONS_SHOWN = 50


def bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text``, or its beginning and end with ``… (N characters omitted) …`` between them if it is too long."""
    text = str(text)
    if len(text) <= limit:
        return text
    marker = "… ({} characters omitted) …"
    room = max(limit - len(marker.format(len(text))), 2)
    head, tail = room - room // 2, room // 2
    cut = text[:head] + marker.format(len(text) - head - tail) + text[len(text) - tail:]
    return cut if len(cut) < len(text) else text


#: characters of an attacker-controlled value an error message quotes
SHOWN_CHARS = 80


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters with an ellipsis: archive values are attacker-controlled."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - e.g. an int too long to print
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def first_line(text: str, limit: int = 2 * SHOWN_CHARS) -> str:
    """The first line of ``text`` (a library's error message that may quote archive bytes), cut to ``limit``."""
    line = (text or "").splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


class ServiceMakerError(Exception):
    """Base of every error a user can cause. ``str(err)`` is the one-line message."""

    exit_code = 1
    #: a subclass that assembles an already bounded multi-part message may raise this
    max_message_chars = MAX_MESSAGE_CHARS

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        message = bounded(message, self.max_message_chars)
        super().__init__(message)
        self.message = message
        self.hint = None if hint is None else bounded(hint)

    def __str__(self) -> str:
        return self.message


class UsageError(ServiceMakerError, ValueError):
    """A command-line argument or option value is wrong."""

    exit_code = 2


class ArchiveError(ServiceMakerError, ValueError):
    """An archive cannot be read: not gzip/tar, truncated, or its manifest is malformed."""

    exit_code = 3


class UnsafeArchiveError(ArchiveError):
    """An archive holds something a safe reader must refuse (path traversal, links, bombs, ...)."""


class KeyProblemError(ServiceMakerError, PermissionError):
    """Base for key problems."""

    exit_code = 4


class MissingKeyError(KeyProblemError):
    """An archive is encrypted and no key was given."""


class WrongKeyError(KeyProblemError):
    """The key given does not decrypt the archive."""


class SaltsError(KeyProblemError):
    """The legacy EFF salt table is missing, unreadable, or lacks a cipher id."""


class ValidationError(ServiceMakerError, ValueError):
    """An input does not satisfy its schema or the pipeline. Holds every violation found."""

    exit_code = 5
    max_message_chars = MAX_MESSAGE_CHARS * (MAX_VIOLATIONS_SHOWN + 2)

    def __init__(self, message: str, violations: list[str] | None = None, *, hint: str | None = None) -> None:
        self.violations = [bounded(v) for v in violations or []]
        message = bounded(message)
        if self.violations:
            shown = self.violations[:MAX_VIOLATIONS_SHOWN]
            message = message + "\n" + "\n".join(f"  - {v}" for v in shown)
            if len(self.violations) > len(shown):
                message += f"\n  ... and {len(self.violations) - len(shown)} more"
        super().__init__(message, hint=hint)


class SpecVersionError(ValidationError):
    """An RMIR was written by a newer servicemaker with a spec version this one cannot read."""


class NotFoundError(ServiceMakerError, FileNotFoundError):
    """A file named on the command line, or an artifact named by a manifest or config, does not exist."""

    exit_code = 6


class AccessError(ServiceMakerError, PermissionError):
    """A file or folder this user may not read or write (ownership, mode, a container's user)."""

    exit_code = 6


class OutputExistsError(ServiceMakerError, FileExistsError):
    """The output exists and overwriting was not allowed."""

    exit_code = 7
