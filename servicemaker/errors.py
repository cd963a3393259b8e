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
"""

from __future__ import annotations


class ServiceMakerError(Exception):
    """Base of every error a user can cause. ``str(err)`` is the one-line message."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

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

    def __init__(self, message: str, violations: list[str] | None = None, *, hint: str | None = None) -> None:
        self.violations = list(violations or [])
        if self.violations:
            message = message + "\n" + "\n".join(f"  - {v}" for v in self.violations)
        super().__init__(message, hint=hint)


class SpecVersionError(ValidationError):
    """An RMIR was written by a newer servicemaker with a spec version this one cannot read."""


class NotFoundError(ServiceMakerError, FileNotFoundError):
    """A file named on the command line, or an artifact named by a manifest or config, does not exist."""

    exit_code = 6


class OutputExistsError(ServiceMakerError, FileExistsError):
    """The output exists and overwriting was not allowed."""

    exit_code = 7
