"""Archive arguments with keys: ``PATH``, ``PATH:KEY``, ``PATH:env:VAR`` and ``PATH:file:KEYFILE``.

Riva's syntax ``model.riva:tlt_encode`` works as is. The two other forms keep the key out of ``ps`` and shell
history. ``SERVICEMAKER_KEY`` is the fallback key for encrypted inputs given without one. A key is held in a
:class:`Secret`, whose ``repr``/``str`` never show it.

Parsing rule: if the whole argument names an existing file it is a path without a key; otherwise the argument is
split at its first ``:``. A literal key that itself begins with ``env:`` or ``file:`` is written ``PATH:raw:KEY``.
An argument that begins with ``scheme://`` is a URL (``s3://bucket/x.rmir:env:VAR``, ``file:///data/x.rmir``): it
is split at the first ``:`` after the ``://``, so the scheme's colon is never taken for the key separator.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from servicemaker.errors import MissingKeyError, NotFoundError, UsageError

KEY_ENV = "SERVICEMAKER_KEY"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class Secret:
    """A key. Compares and hashes by value; prints as ``***``."""

    __slots__ = ("_value", "origin")

    def __init__(self, value: str, origin: str = "command line") -> None:
        if not value:
            raise UsageError(f"the key from {origin} is empty", hint="give a non-empty key")
        self._value = value
        self.origin = origin

    def reveal(self) -> str:
        return self._value

    def encode(self) -> bytes:
        return self._value.encode("utf-8")

    def __repr__(self) -> str:
        return f"Secret(*** from {self.origin})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


@dataclass(frozen=True)
class ArchiveArg:
    """A parsed archive argument. ``shown`` is what messages print: the path (or URL), never the key. For a URL,
    ``path`` is the object's base name (where a local copy goes) and ``url`` the whole URL."""

    path: Path
    key: Secret | None
    url: str | None = None

    @property
    def shown(self) -> str:
        if self.url is not None:
            from servicemaker.objstore import redact

            return redact(self.url)
        return str(self.path)


def _read_key_file(name: str, arg_path: str) -> Secret:
    p = Path(name).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFoundError(f"key file {p} for {arg_path} does not exist",
                            hint="write the key into that file, or give the key another way") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read key file {p} for {arg_path}: {type(err).__name__}") from None
    lines = text.splitlines()
    return Secret(lines[0].strip() if lines else "", origin=f"key file {p}")


def _url_arg(arg: str) -> ArchiveArg:
    scheme_end = arg.index("://") + 3
    url, sep, rest = arg[scheme_end:].partition(":")
    url = arg[:scheme_end] + url
    name = url[scheme_end:].rstrip("/").rsplit("/", 1)[-1]
    if not name:
        raise UsageError(f"archive URL {arg[:scheme_end]}... names no object", hint="give s3://bucket/path/x.rmir")
    return ArchiveArg(Path(name), _key(rest, url) if sep else None, url=url)


def _key(rest: str, where: str) -> Secret:
    if rest.startswith("env:"):
        var = rest[4:]
        value = os.environ.get(var)
        if value is None:
            raise MissingKeyError(f"environment variable {var!r} named as the key of {where} is not set",
                                  hint=f"export {var}=... before running, or give the key another way")
        return Secret(value, origin=f"environment variable {var}")
    if rest.startswith("file:"):
        return _read_key_file(rest[5:], where)
    if rest.startswith("raw:"):
        rest = rest[4:]
    return Secret(rest)


def parse_archive_arg(arg: str) -> ArchiveArg:
    """Split ``PATH[:KEY|:env:VAR|:file:KEYFILE|:raw:KEY]`` or ``URL[:KEY...]`` (see the module docstring)."""
    if not arg:
        raise UsageError("an archive argument is empty")
    if _URL.match(arg):
        return _url_arg(arg)
    if ":" not in arg or os.path.isfile(arg):
        return ArchiveArg(Path(arg), None)
    path, rest = arg.split(":", 1)
    if not path:
        raise UsageError(f"archive argument '{arg.split(':', 1)[0]}:...' has no path before the ':'")
    return ArchiveArg(Path(path), _key(rest, path))


def parse_local_archive_arg(arg: str, tool: str) -> ArchiveArg:
    """As :func:`parse_archive_arg`, for tools that read and write local files only (svc-build, svc-inspect)."""
    parsed = parse_archive_arg(arg)
    if parsed.url is not None:
        raise UsageError(f"{tool} works on local files, not {parsed.shown}",
                         hint="copy the archive from the object store first (svc-deploy alone reads RMIR URLs); "
                              "upload an RMIR after svc-build")
    return parsed


def fallback_key() -> Secret | None:
    """The key from ``SERVICEMAKER_KEY``, used for encrypted inputs given without a key."""
    value = os.environ.get(KEY_ENV)
    return Secret(value, origin=f"environment variable {KEY_ENV}") if value else None
