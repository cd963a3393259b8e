"""Object stores through fsspec: the compile cache's shared store and RMIRs given as URLs.

A URL is ``scheme://...``: ``s3://bucket/prefix`` (s3fs; endpoint and credentials from the standard AWS environment
variables, ``AWS_ENDPOINT_URL`` included, which botocore reads itself), ``file:///path``, or any other protocol
fsspec knows and whose package is installed. Every failure becomes one typed error naming the URL and the fix.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Callable

from servicemaker.errors import NotFoundError, ServiceMakerError, UsageError

URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: botocore's connection behaviour for s3:// (bounded: an unreachable endpoint fails in seconds, not minutes)
S3_CONFIG = {"connect_timeout": 10, "read_timeout": 120, "retries": {"max_attempts": 3, "mode": "standard"}}
CHUNK = 1 << 20
S3_HINT = ("set AWS_ENDPOINT_URL (for a non-AWS server), AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a profile) "
           "and AWS_DEFAULT_REGION")


def scheme_of(text: str) -> str | None:
    """The URL scheme of ``text`` (lower case), or None for a plain path."""
    m = URL.match(text)
    return m.group(1).lower() if m else None


def redact(url: str) -> str:
    """``url`` without any ``user:password@`` part, for messages."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", url)


def filesystem(url: str, what: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` for ``url``; a typed error for an unknown scheme or a missing
    package. Instances are never shared (the AWS environment may change between calls)."""
    import fsspec

    scheme = scheme_of(url)
    shown = redact(url)
    if scheme is None:
        raise UsageError(f"{what} {shown} is not a URL", hint="write it as s3://bucket/prefix or file:///path")
    opts: dict[str, Any] = {"skip_instance_cache": True}
    if scheme in ("s3", "s3a"):
        opts.update(config_kwargs=S3_CONFIG, use_listings_cache=False)
    try:
        fs, path = fsspec.core.url_to_fs(url, **opts)
    except ImportError as err:
        extra = " 'servicemaker[s3]'" if scheme in ("s3", "s3a") else ""
        raise UsageError(f"{what} {shown}: the package for {scheme}:// is not installed ({err})",
                         hint=f"pip install{extra or ' the fsspec implementation for ' + scheme}") from None
    except ValueError as err:
        raise UsageError(f"{what} {shown}: unknown URL scheme {scheme}:// ({err})",
                         hint="use s3://bucket/prefix or file:///path") from None
    return fs, path.rstrip("/")


def describe(err: BaseException) -> str:
    """One line for an error an fsspec implementation raised (botocore's included)."""
    name = type(err).__name__
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{name}: {text}"[:300] if text else name


def store_error(err: BaseException, what: str, url: str) -> ServiceMakerError:
    """The typed error for ``err``, raised while using ``url``."""
    shown = redact(url)
    name = type(err).__name__
    if isinstance(err, FileNotFoundError):
        return NotFoundError(f"{what} {shown} does not exist ({describe(err)})",
                             hint="create the bucket / folder, or check the URL")
    if isinstance(err, PermissionError) or name in ("NoCredentialsError", "PartialCredentialsError",
                                                     "ClientError", "NoRegionError"):
        return UsageError(f"{what} {shown}: access refused ({describe(err)})", hint=S3_HINT)
    if "Endpoint" in name or "Connect" in name or "Timeout" in name:
        return UsageError(f"{what} {shown}: the object store is unreachable ({describe(err)})",
                          hint="check AWS_ENDPOINT_URL, that the server runs, and the network")
    return UsageError(f"{what} {shown}: the object store failed ({describe(err)})", hint=S3_HINT)


def guarded(fn: Callable[[], Any], what: str, url: str) -> Any:
    """``fn()``, with any store failure turned into one typed error."""
    try:
        return fn()
    except ServiceMakerError:
        raise
    except Exception as err:  # noqa: BLE001 - fsspec implementations raise OSError, botocore and aiohttp errors
        raise store_error(err, what, url) from None


def check_store(url: str, what: str = "the compile cache") -> tuple[Any, str]:
    """Open ``url`` and make sure its bucket (or, for file://, the nearest existing folder) is there and can be
    listed; the filesystem and path."""
    fs, path = filesystem(url, what)
    if scheme_of(url) == "file":
        parent = Path(path)
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise UsageError(f"{what} {redact(url)}: {parent} is not a folder", hint="give a folder URL")
        return fs, path
    top = path.split("/", 1)[0]
    try:
        guarded(lambda: fs.info(top), what, url)  # exists() would read a credentials problem as "no bucket"
    except NotFoundError:
        raise NotFoundError(f"{what} {redact(url)}: bucket {top} does not exist",
                            hint=f"create it first (e.g. aws s3 mb s3://{top}), or check the URL") from None
    return fs, path


def download(url: str, dest: Path, max_bytes: int, what: str = "RMIR") -> tuple[str, int]:
    """Stream the object at ``url`` into ``dest`` (refused past ``max_bytes``); its sha256 and size."""
    fs, path = filesystem(url, what)

    def fetch() -> tuple[str, int]:
        digest, size = hashlib.sha256(), 0
        with fs.open(path, "rb") as src, open(dest, "wb") as out:
            while True:
                block = src.read(CHUNK)
                if not block:
                    break
                size += len(block)
                if size > max_bytes:
                    raise UsageError(f"{what} {redact(url)} is larger than the {max_bytes} bytes an archive may be",
                                     hint="check the URL names an RMIR")
                digest.update(block)
                out.write(block)
        return digest.hexdigest(), size

    try:
        return guarded(fetch, what, url)
    except NotFoundError:
        dest.unlink(missing_ok=True)
        raise NotFoundError(f"{what} {redact(url)} does not exist", hint="check the URL; build one with svc-build "
                            "and upload it there") from None
    except ServiceMakerError:
        dest.unlink(missing_ok=True)
        raise
