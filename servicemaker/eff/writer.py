"""Writing EFF archives (RMIRs, and test fixtures in NVIDIA's layout).

Output is deterministic for unencrypted archives: gzip header without name or time, tar members with mode 0600,
mtime 0, uid/gid 0 and no user names, artifacts in the order added, ``manifest.yaml`` written last (so every
artifact's digest is known without a second pass). Each artifact gets a ``size`` prop and a digest of its plaintext:
``sha256`` when it is stored plain (or legacy-encrypted), the keyed ``hmac_sha256`` when it is encrypted with
``aes-256-gcm``, so that the manifest of an encrypted archive does not let anyone confirm a guess of its content.
An encrypted archive derives its key once (one random salt per archive, one random nonce per artifact).
The archive is written to a temporary file beside the destination and renamed into place only by
:meth:`EffWriter.commit`; any failure removes the temporary file, so a failed run never leaves a partial output.
"""

from __future__ import annotations

import fcntl
import gzip
import io
import os
import secrets
import tarfile
from pathlib import Path
from typing import Any, BinaryIO

from servicemaker.eff.codecs import CIPHER_PROPS, GcmKeys, encoder_for
from servicemaker.errors import shown
from servicemaker.eff.manifest import MANIFEST_NAME, REGISTRY, Manifest, check_artifact_name
from servicemaker.errors import ArchiveError, OutputExistsError, UsageError
from servicemaker.keys import Secret

CHUNK = 1 << 20
_OWN_PROPS = {"encryption", "sha256", "size", *CIPHER_PROPS}
DEFAULT_COMPRESSLEVEL = 1


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


class _EncodingReader(io.RawIOBase):
    """Reads plaintext from ``src`` (exactly ``size`` bytes), digests it, yields header ‖ encoded body ‖ trailer."""

    def __init__(self, src: BinaryIO, size: int, encoder, name: str) -> None:
        super().__init__()
        self._src = src
        self._left = size
        self._enc = encoder
        self._name = name
        self.digest = encoder.new_digest()
        self._buf = bytearray(encoder.header())
        self._finished = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = CHUNK if n is None or n < 0 else n
        while len(self._buf) < n and not self._finished:
            if self._left > 0:
                chunk = self._src.read(min(CHUNK, self._left))
                if not chunk:
                    raise ArchiveError(f"source of artifact {shown(self._name)} ended {self._left} bytes early")
                self._left -= len(chunk)
                self.digest.update(chunk)
                self._buf += self._enc.update(chunk)
            else:
                if self._src.read(1):
                    raise ArchiveError(f"source of artifact {shown(self._name)} is longer than its declared size")
                self._buf += self._enc.finish()
                self._finished = True
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


class EffWriter:
    """Write an EFF archive atomically. Add artifacts, then :meth:`commit` with the metadata."""

    def __init__(self, dest: str | os.PathLike, *, key: Secret | None = None, force: bool = False,
                 compresslevel: int = DEFAULT_COMPRESSLEVEL, registry: bool = True,
                 legacy: tuple[str, bytes] | None = None) -> None:
        self.dest = Path(dest)
        self.force = force
        self.key = key
        self.legacy = legacy
        self.registry = registry
        if not 0 <= compresslevel <= 9:
            raise UsageError(f"compression level must be 0..9, not {compresslevel}")
        if self.dest.exists() and not force:
            raise OutputExistsError(f"{self.dest} exists", hint="pass -f to overwrite it")
        if self.dest.is_dir():
            raise UsageError(f"{self.dest} is a directory; give a file name for the archive")
        parent = self.dest.parent
        if not parent.is_dir():
            raise UsageError(f"the folder of {self.dest} does not exist", hint=f"create {parent} first")
        _sweep_dead_temps(parent, self.dest.name)
        self.artifacts: dict[str, dict[str, Any]] = {}
        self._gcm: GcmKeys | None = None
        self._tmp, self._raw = _locked_temp(parent, self.dest.name)
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0, compresslevel=compresslevel)
        self._tf = tarfile.open(fileobj=self._gz, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK)
        self._closed = False

    def add_stream(self, name: str, src: BinaryIO, size: int, props: dict[str, Any] | None = None,
                   legacy_iv: bytes | None = None) -> dict[str, Any]:
        """Add ``size`` bytes of plaintext read from ``src``; returns the artifact's final props."""
        check_artifact_name(name, str(self.dest))
        if name in self.artifacts:
            raise ArchiveError(f"{self.dest}: artifact {shown(name)} added twice")
        if self.key is not None and self.legacy is None and self._gcm is None:
            self._gcm = GcmKeys.new(self.key)
        enc = encoder_for(name, self.key, legacy=self.legacy, legacy_iv=legacy_iv, gcm=self._gcm)
        reader = _EncodingReader(src, size, enc, name)
        member = f"{REGISTRY}/{name}" if self.registry else name
        self._tf.addfile(_tarinfo(member, enc.header_size + size + enc.trailer_size), reader)
        if reader.read(1):
            raise ArchiveError(f"{self.dest}: artifact {shown(name)} produced more bytes than declared")
        # codec props come from this writer only: one carried from a source archive would contradict them
        final = {k: v for k, v in (props or {}).items() if k not in _OWN_PROPS}
        final.update(enc.props)
        final[enc.digest_name] = reader.digest.hexdigest()
        final["size"] = size
        self.artifacts[name] = final
        return final

    def add_bytes(self, name: str, data: bytes, props: dict[str, Any] | None = None, **kw) -> dict[str, Any]:
        return self.add_stream(name, io.BytesIO(data), len(data), props, **kw)

    def add_file(self, name: str, path: str | os.PathLike, props: dict[str, Any] | None = None) -> dict[str, Any]:
        with open(path, "rb") as fh:
            return self.add_stream(name, fh, os.fstat(fh.fileno()).st_size, props)

    def commit(self, metadata: dict[str, Any]) -> Path:
        """Write manifest.yaml, close, and move the archive into place."""
        data = Manifest(metadata=metadata, artifacts=self.artifacts).dump()
        self._tf.addfile(_tarinfo(MANIFEST_NAME, len(data)), io.BytesIO(data))
        self._tf.close()
        self._gz.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._closed = True
        try:  # the temp file stays locked until it is renamed: a sweeping writer never takes a finished one
            if self.force:
                os.replace(self._tmp, self.dest)
            else:
                try:
                    os.link(self._tmp, self.dest)
                except FileExistsError:
                    raise OutputExistsError(f"{self.dest} exists", hint="pass -f to overwrite it") from None
                except OSError:  # file systems without hard links
                    if self.dest.exists():
                        raise OutputExistsError(f"{self.dest} exists", hint="pass -f to overwrite it") from None
                    os.replace(self._tmp, self.dest)
        finally:
            self._tmp.unlink(missing_ok=True)
            self._raw.close()
        return self.dest

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            for closer in (self._tf.close, self._gz.close, self._raw.close):
                try:
                    closer()
                except Exception:  # noqa: BLE001 - best effort on the failure path
                    pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> EffWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._closed:
            self.abort()


def _locked_temp(parent: Path, name: str) -> tuple[Path, BinaryIO]:
    """A new temp file beside the archive, locked for as long as this writer lives (the OS drops the lock when the
    process dies, so a later writer can tell a dead writer's leftover from a live one's file)."""
    while True:
        tmp = parent / f".{name}.tmp-{secrets.token_hex(4)}"
        raw = open(tmp, "xb")
        fcntl.flock(raw.fileno(), fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(raw.fileno()), os.stat(tmp)):
                return tmp, raw
        except FileNotFoundError:
            pass  # swept between create and lock: take another name
        raw.close()


def _sweep_dead_temps(parent: Path, name: str) -> None:
    """Remove temp files a killed writer of the same archive left (unlocked ones); live writers hold their lock."""
    prefix = f".{name}.tmp-"
    for entry in os.scandir(parent):
        if not entry.name.startswith(prefix) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.samestat(os.fstat(fd), os.lstat(entry.path)):
                os.unlink(entry.path)
        except OSError:
            pass  # locked (a live writer) or already gone
        finally:
            os.close(fd)
