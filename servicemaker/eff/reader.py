"""Reading EFF archives. The reader is a security boundary: archives are untrusted input.

Opening an archive reads every tar header once (one pass over the compressed stream) and refuses, before any
payload is used: absolute paths, ``..``, links, devices and other special members, duplicate names, members not
listed in the manifest, members or manifests over the :class:`~servicemaker.eff.limits.Limits`, too many members,
and decompression bombs. Payloads are then streamed (never held whole in memory) and checked against their
``sha256`` prop at the end of the stream. Extraction writes only inside the destination folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from servicemaker.eff.codecs import KeyRing, check_encryption_props, decoder_for, encryption_of
from servicemaker.eff.limits import DEFAULT_LIMITS, Limits
from servicemaker.eff.manifest import MANIFEST_NAME, REGISTRY, Manifest
from servicemaker.errors import (ArchiveError, NotFoundError, ServiceMakerError, UnsafeArchiveError,
                                 WrongKeyError)

CHUNK = 1 << 20
_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError, UnicodeDecodeError)


def normalize_member_name(raw: str, where: str) -> str:
    """``./a/b`` → ``a/b``; refuse absolute paths, ``..`` and other oddities."""
    if "\x00" in raw or "\\" in raw:
        raise UnsafeArchiveError(f"{where}: member {raw!r} has a NUL or backslash in its name")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise UnsafeArchiveError(f"{where}: member {raw!r} has an absolute path")
    parts = [p for p in PurePosixPath(raw).parts if p != "."]
    if ".." in parts:
        raise UnsafeArchiveError(f"{where}: member {raw!r} has a '..' path component")
    return "/".join(parts)


def check_member_type(info: tarfile.TarInfo, where: str) -> None:
    if info.issym() or info.islnk():
        raise UnsafeArchiveError(f"{where}: member {info.name!r} is a link (to {info.linkname!r}); links are not allowed")
    if info.ischr() or info.isblk() or info.isfifo():
        raise UnsafeArchiveError(f"{where}: member {info.name!r} is a device or FIFO; only regular files are allowed")
    if not (info.isreg() or info.isdir()):
        raise UnsafeArchiveError(f"{where}: member {info.name!r} has unsupported tar type {info.type!r}")


def scan_members(tf: tarfile.TarFile, where: str, limits: Limits) -> dict[str, tarfile.TarInfo]:
    """Read every header of an open tar; return regular files by normalized name. Raises on anything unsafe."""
    files: dict[str, tarfile.TarInfo] = {}
    seen: set[str] = set()
    total = 0
    count = 0
    try:
        while True:
            info = tf.next()
            if info is None:
                break
            count += 1
            if count > limits.max_members:
                raise UnsafeArchiveError(f"{where}: more than {limits.max_members} members")
            check_member_type(info, where)
            name = normalize_member_name(info.name, where)
            if name == "":
                continue  # the archive root itself ('.' or './')
            if name in seen:
                raise UnsafeArchiveError(f"{where}: member {name!r} appears more than once")
            seen.add(name)
            if info.isdir():
                continue
            if info.size > limits.max_member_bytes:
                raise UnsafeArchiveError(f"{where}: member {name!r} is {info.size} bytes, over the "
                                         f"{limits.max_member_bytes}-byte limit per member")
            total += info.size
            if total > limits.max_total_bytes:
                raise UnsafeArchiveError(f"{where}: members add up to more than the {limits.max_total_bytes}-byte "
                                         "limit for an archive")
            files[name] = info
    except ServiceMakerError:
        raise
    except _TAR_ERRORS as err:
        raise ArchiveError(f"{where}: not a readable tar archive, or truncated/corrupt ({_describe(err)})",
                           hint="check the file is complete (compare its size/sha256 with the source)") from None
    return files


def _describe(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text.splitlines()[0][:200]


def _hex_prop(value: Any) -> str | None:
    """A sha256 prop as lowercase hex. Unquoted all-digit hex reads back from YAML as an int: restore it."""
    if value is None or value is False:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).zfill(64)
    return str(value).strip().lower()


class ArtifactStream(io.RawIOBase):
    """Plaintext of one artifact, decoded while read; checks the ``sha256`` prop (or GCM tag) at the end."""

    def __init__(self, raw: BinaryIO, stored_size: int, name: str, props: dict[str, Any], ring: KeyRing,
                 where: str) -> None:
        super().__init__()
        self._raw = raw
        self._name = name
        self._where = where
        self._decoder = decoder_for(name, props, ring)
        body = stored_size - self._decoder.header_size - self._decoder.trailer_size
        if body < 0:
            raise ArchiveError(f"{where}: artifact '{name}' is shorter than its encryption header")
        self.size = body
        self._left = body
        self._expected = _hex_prop(props.get("sha256"))
        self._encrypted = encryption_of(props) is not None
        self._hash = hashlib.sha256()
        self._pending = b""
        self._done = False
        if self._decoder.header_size:
            self._decoder.start(self._read_exact(self._decoder.header_size))

    def _read_exact(self, n: int) -> bytes:
        data = self._raw.read(n)
        if len(data) != n:
            raise ArchiveError(f"{self._where}: artifact '{self._name}' is truncated")
        return data

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def read(self, n: int = -1) -> bytes:
        out = bytearray(self._pending)
        self._pending = b""
        want = self.size if n is None or n < 0 else n
        try:
            while len(out) < want and self._left > 0:
                chunk = self._raw.read(min(CHUNK, self._left))
                if not chunk:
                    raise ArchiveError(f"{self._where}: artifact '{self._name}' is truncated")
                self._left -= len(chunk)
                plain = self._decoder.update(chunk)
                self._hash.update(plain)
                out += plain
            if self._left == 0 and not self._done:
                self._done = True
                tail = self._decoder.finish(self._read_exact(self._decoder.trailer_size))
                self._hash.update(tail)
                out += tail
                self._verify()
        except ServiceMakerError:
            raise
        except _TAR_ERRORS as err:
            raise ArchiveError(f"{self._where}: artifact '{self._name}' cannot be read: truncated or corrupt "
                               f"({_describe(err)})") from None
        if n is not None and 0 <= n < len(out):
            self._pending = bytes(out[n:])
            del out[n:]
        return bytes(out)

    def _verify(self) -> None:
        if self._expected is None:
            return
        if self._hash.hexdigest() != self._expected:
            if self._encrypted:
                raise WrongKeyError(f"{self._where}: wrong key for artifact '{self._name}' (the sha256 of the "
                                    "decrypted content does not match the manifest)",
                                    hint="check the key given after the ':' (or in the key file / variable)")
            raise ArchiveError(f"{self._where}: artifact '{self._name}' is corrupt (sha256 does not match the manifest)")

    @property
    def sha256(self) -> str:
        """Hex sha256 of the plaintext; valid once the stream has been read to the end."""
        return self._hash.hexdigest()


class EffReader:
    """An open EFF archive. Use as a context manager; artifacts are best read in archive order."""

    def __init__(self, path: str | os.PathLike, ring: KeyRing | None = None, limits: Limits = DEFAULT_LIMITS) -> None:
        self.path = Path(path)
        self.where = str(path)
        self.limits = limits
        self.ring = ring or KeyRing()
        self.ring.archive = self.where
        if not self.path.exists():
            raise NotFoundError(f"{self.where} does not exist")
        if not self.path.is_file():
            raise ArchiveError(f"{self.where} is not a regular file")
        self._fh = open(self.path, "rb")
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        compressed = os.fstat(self._fh.fileno()).st_size
        try:
            self._tf = tarfile.open(fileobj=self._fh, mode="r:*")
        except _TAR_ERRORS as err:
            raise ArchiveError(f"{self.where}: not an EFF archive (not a gzip-compressed tar: {_describe(err)})",
                               hint="give a .riva/.rmir/.eff file written by nemo2riva, TAO or svc-build") from None
        files = scan_members(self._tf, self.where, self.limits)
        total = sum(i.size for i in files.values())
        if total > self.limits.ratio_floor_bytes and total > self.limits.max_compression_ratio * max(compressed, 1):
            raise UnsafeArchiveError(f"{self.where}: expands {total / max(compressed, 1):.0f}x "
                                     f"(limit {self.limits.max_compression_ratio:.0f}x): refusing a likely "
                                     "decompression bomb")
        if MANIFEST_NAME not in files:
            hint = None
            if any(n.endswith((".ckpt", ".pt")) for n in files) and "model_config.yaml" in files:
                hint = "this looks like a .nemo checkpoint; export it with nemo2riva first"
            raise ArchiveError(f"{self.where}: no manifest.yaml at the archive root: not an EFF archive", hint=hint)
        minfo = files.pop(MANIFEST_NAME)
        if minfo.size > self.limits.max_manifest_bytes:
            raise UnsafeArchiveError(f"{self.where}: manifest.yaml is {minfo.size} bytes, over the "
                                     f"{self.limits.max_manifest_bytes}-byte limit")
        self.manifest = Manifest.parse(self._member_bytes(minfo), self.where)
        self._members: dict[str, tarfile.TarInfo] = {}
        claimed: set[str] = set()
        for name, props in self.manifest.artifacts.items():
            in_registry, at_root = f"{REGISTRY}/{name}", name
            if in_registry in files and at_root in files:
                raise UnsafeArchiveError(f"{self.where}: artifact '{name}' is stored twice (at the root and in "
                                         f"{REGISTRY}/)")
            member = in_registry if in_registry in files else at_root
            if member not in files:
                raise ArchiveError(f"{self.where}: manifest.yaml lists artifact '{name}' but the archive has no "
                                   f"member {REGISTRY}/{name}", hint="the archive is incomplete: re-export it")
            check_encryption_props(name, props)
            self._members[name] = files[member]
            claimed.add(member)
        extra = sorted(set(files) - claimed)
        if extra:
            raise UnsafeArchiveError(f"{self.where}: member '{extra[0]}' is not listed in manifest.yaml"
                                     + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
        self.layout = "registry" if any(m.startswith(REGISTRY + "/") for m in claimed) else "root"

    # -- access ------------------------------------------------------------------------------------------------------

    @property
    def metadata(self) -> dict[str, Any]:
        return self.manifest.metadata

    @property
    def artifacts(self) -> dict[str, dict[str, Any]]:
        return self.manifest.artifacts

    def stored_size(self, name: str) -> int:
        return self._member(name).size

    def _member(self, name: str) -> tarfile.TarInfo:
        try:
            return self._members[name]
        except KeyError:
            raise NotFoundError(f"{self.where}: no artifact named '{name}'",
                                hint=f"artifacts: {', '.join(sorted(self._members)) or '(none)'}") from None

    def _member_bytes(self, info: tarfile.TarInfo) -> bytes:
        try:
            fh = self._tf.extractfile(info)
            assert fh is not None
            data = fh.read()
        except _TAR_ERRORS as err:
            raise ArchiveError(f"{self.where}: member '{info.name}' cannot be read: truncated or corrupt "
                               f"({_describe(err)})") from None
        if len(data) != info.size:
            raise ArchiveError(f"{self.where}: member '{info.name}' is truncated")
        return data

    def open(self, name: str) -> ArtifactStream:
        """Stream the plaintext of artifact ``name``."""
        info = self._member(name)
        try:
            raw = self._tf.extractfile(info)
        except _TAR_ERRORS as err:
            raise ArchiveError(f"{self.where}: artifact '{name}' cannot be read ({_describe(err)})") from None
        assert raw is not None
        return ArtifactStream(raw, info.size, name, self.manifest.artifacts[name], self.ring, self.where)

    def read_bytes(self, name: str, max_bytes: int | None = None) -> bytes:
        """The whole plaintext of a (small) artifact, refusing it past ``max_bytes``."""
        cap = self.limits.max_parsed_artifact_bytes if max_bytes is None else max_bytes
        stream = self.open(name)
        if stream.size > cap:
            raise UnsafeArchiveError(f"{self.where}: artifact '{name}' is {stream.size} bytes, over the {cap}-byte "
                                     "limit for files that are parsed in memory")
        return stream.read()

    def read_text(self, name: str) -> str:
        data = self.read_bytes(name)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ArchiveError(f"{self.where}: artifact '{name}' is not UTF-8 text") from None

    def hash_artifact(self, name: str) -> tuple[str, int]:
        """(sha256, size) of the plaintext, streaming; also verifies the key/integrity."""
        stream = self.open(name)
        while stream.read(CHUNK):
            pass
        return stream.sha256, stream.size

    def extract(self, name: str, dest_dir: str | os.PathLike, as_name: str | None = None) -> Path:
        """Write the plaintext of ``name`` to ``dest_dir/<as_name or name>``; never outside ``dest_dir``."""
        dest_dir = Path(dest_dir).resolve()
        target_name = as_name or name
        target = (dest_dir / target_name).resolve()
        if target.parent != dest_dir:
            raise UnsafeArchiveError(f"{self.where}: refusing to write '{target_name}' outside {dest_dir}")
        tmp = dest_dir / f".{target_name}.part"
        stream = self.open(name)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
            with os.fdopen(os.open(tmp, flags, 0o600), "wb") as out:
                while chunk := stream.read(CHUNK):
                    out.write(chunk)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

    def close(self) -> None:
        tf = getattr(self, "_tf", None)
        if tf is not None:
            tf.close()
        self._fh.close()

    def __enter__(self) -> EffReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
