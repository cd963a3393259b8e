"""Reading EFF archives. The reader is a security boundary: archives are untrusted input.

Opening an archive inflates it once, to the end (:class:`~servicemaker.eff.gzstream.InflatedStream`): every gzip
member's CRC32 and size are verified, trailing data is refused, and a decompression bomb is refused while it
inflates. On the way, every tar header is read and the reader refuses, before any payload is used: absolute paths,
``..``, links, devices, sparse files and other special members, oversized or chained extended headers, duplicate
names, members not listed in the manifest, members or manifests over the :class:`~servicemaker.eff.limits.Limits`,
too many members, data after the tar end-of-archive marker, and contradictory or over-budget encryption props.
Payloads are then streamed (never held whole in memory) from the verified stream, in any order at a bounded cost,
and checked against their digest prop (``sha256``, or the keyed ``hmac_sha256``) and GCM tag at their end.
Extraction writes only inside the destination folder.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from servicemaker.eff.codecs import (DIGEST_PROP, GCM_NAME, KeyRing, check_encryption_props, decoder_for,
                                     encryption_of, hex_prop)
from servicemaker.eff.gzstream import InflatedStream
from servicemaker.eff.limits import DEFAULT_LIMITS, Limits
from servicemaker.errors import first_line, shown
from servicemaker.eff.manifest import MANIFEST_NAME, REGISTRY, Manifest
from servicemaker.errors import (ArchiveError, NotFoundError, ServiceMakerError, UnsafeArchiveError,
                                 WrongKeyError)

CHUNK = 1 << 20
_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError, UnicodeDecodeError, ValueError)
_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
             tarfile.GNUTYPE_LONGLINK)


def normalize_member_name(raw: str, where: str) -> str:
    """``./a/b`` → ``a/b``; refuse absolute paths, ``..`` and other oddities."""
    if "\x00" in raw or "\\" in raw:
        raise UnsafeArchiveError(f"{where}: member {shown(raw)} has a NUL or backslash in its name")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise UnsafeArchiveError(f"{where}: member {shown(raw)} has an absolute path")
    parts = [p for p in PurePosixPath(raw).parts if p != "."]
    if ".." in parts:
        raise UnsafeArchiveError(f"{where}: member {shown(raw)} has a '..' path component")
    return "/".join(parts)


def check_member_type(info: tarfile.TarInfo, where: str) -> None:
    if info.issym() or info.islnk():
        raise UnsafeArchiveError(f"{where}: member {shown(info.name)} is a link (to {shown(info.linkname)}); links "
                                 "are not allowed")
    if info.ischr() or info.isblk() or info.isfifo():
        raise UnsafeArchiveError(f"{where}: member {shown(info.name)} is a device or FIFO; only regular files are "
                                 "allowed")
    if info.issparse():
        raise UnsafeArchiveError(f"{where}: member {shown(info.name)} is a sparse file; only regular files are "
                                 "allowed")
    if not (info.isreg() or info.isdir()):
        raise UnsafeArchiveError(f"{where}: member {shown(info.name)} has unsupported tar type {shown(info.type)}")


def bounded_tarinfo(where: str, limits: Limits) -> type[tarfile.TarInfo]:
    """A TarInfo class for ``tarfile.open(tarinfo=...)`` that refuses, before tarfile reads them into memory,
    extended headers (pax, GNU long names) over ``max_extended_header_bytes``, more than ``max_extended_headers``
    of them in front of one member (tarfile recurses on each), and sparse members."""

    class BoundedTarInfo(tarfile.TarInfo):
        depth = 0

        def _proc_member(self, tf):  # the hook tarfile documents for subclasses
            if self.type == tarfile.GNUTYPE_SPARSE:
                raise UnsafeArchiveError(f"{where}: member {shown(self.name)} is a sparse file; only regular files "
                                         "are allowed")
            if self.type in _EXTENDED:
                if self.size > limits.max_extended_header_bytes:
                    raise UnsafeArchiveError(f"{where}: a tar extended header (pax or GNU long name) of {self.size} "
                                             f"bytes is over the {limits.max_extended_header_bytes}-byte limit")
                if BoundedTarInfo.depth >= limits.max_extended_headers:
                    raise UnsafeArchiveError(f"{where}: more than {limits.max_extended_headers} tar extended "
                                             "headers in front of one member")
            BoundedTarInfo.depth += 1
            try:
                return super()._proc_member(tf)
            finally:
                BoundedTarInfo.depth -= 1

        def _proc_gnusparse_10(self, next, pax_headers, tf):  # pax sparse 1.0 reads an unbounded map
            raise UnsafeArchiveError(f"{where}: member {shown(next.name)} is a sparse file; only regular files are "
                                     "allowed")

    return BoundedTarInfo


def scan_members(tf: tarfile.TarFile, where: str, limits: Limits,
                 compressed_size: int | None = None) -> dict[str, tarfile.TarInfo]:
    """Read every header of an open tar; return regular files by normalized name. Raises on anything unsafe.

    With ``compressed_size``, the declared sizes are also held to the compression-ratio limit as each header is
    read, so a bomb is refused before its data is inflated."""
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
                raise UnsafeArchiveError(f"{where}: member {shown(name)} appears more than once")
            seen.add(name)
            if info.isdir():
                continue
            if info.size > limits.max_member_bytes:
                raise UnsafeArchiveError(f"{where}: member {shown(name)} is {info.size} bytes, over the "
                                         f"{limits.max_member_bytes}-byte limit per member")
            total += info.size
            if total > limits.max_total_bytes:
                raise UnsafeArchiveError(f"{where}: members add up to more than the {limits.max_total_bytes}-byte "
                                         "limit for an archive")
            if compressed_size is not None and total > limits.ratio_floor_bytes \
                    and total > limits.max_compression_ratio * max(compressed_size, 1):
                raise UnsafeArchiveError(f"{where}: expands {total / max(compressed_size, 1):.0f}x "
                                         f"(limit {limits.max_compression_ratio:.0f}x): refusing a likely "
                                         "decompression bomb")
            files[name] = info
    except ServiceMakerError:
        raise
    except RecursionError:
        raise UnsafeArchiveError(f"{where}: too many nested tar extended headers") from None
    except _TAR_ERRORS as err:
        raise ArchiveError(f"{where}: not a readable tar archive, or truncated/corrupt ({_describe(err)})",
                           hint="check the file is complete (compare its size/sha256 with the source)") from None
    return files


def _describe(err: BaseException) -> str:
    return first_line(str(err) or type(err).__name__)


class _MemberView:
    """``size`` bytes at ``offset`` of the shared inflated stream; keeps its own position."""

    def __init__(self, stream: InflatedStream, offset: int, size: int) -> None:
        self._stream = stream
        self._offset = offset
        self._left = size

    def read(self, n: int) -> bytes:
        n = min(n, self._left)
        if n <= 0:
            return b""
        if self._stream.tell() != self._offset:
            self._stream.seek(self._offset)
        data = self._stream.read(n)
        self._offset += len(data)
        self._left -= len(data)
        return data


class ArtifactStream(io.RawIOBase):
    """Plaintext of one artifact, decoded while read; checks its digest props and GCM tag at the end."""

    def __init__(self, raw: BinaryIO | _MemberView, stored_size: int, name: str, props: dict[str, Any],
                 ring: KeyRing, where: str, want_sha256: bool = False) -> None:
        super().__init__()
        self._raw = raw
        self._name = name
        self._where = where
        self._decoder = decoder_for(name, props, ring)
        body = stored_size - self._decoder.header_size - self._decoder.trailer_size
        if body < 0:
            raise ArchiveError(f"{where}: artifact {shown(name)} is shorter than its encryption header")
        self.size = body
        self._left = body
        self._expected = hex_prop(props.get("sha256"))
        self._expected_keyed = props.get(DIGEST_PROP)
        self._keyed = self._decoder.keyed_digest() if self._expected_keyed is not None else None
        #: legacy EFF has no MAC: its sha256 is what tells a wrong key
        self._legacy = encryption_of(props) not in (None, GCM_NAME)
        self._hash = hashlib.sha256() if (want_sha256 or self._expected is not None) else None
        self._pending = b""
        self._done = False
        if self._decoder.header_size:
            self._decoder.start(self._read_exact(self._decoder.header_size))

    def _read_exact(self, n: int) -> bytes:
        data = self._raw.read(n)
        if len(data) != n:
            raise ArchiveError(f"{self._where}: artifact {shown(self._name)} is truncated")
        return data

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def _digest(self, plain: bytes) -> None:
        if self._hash is not None:
            self._hash.update(plain)
        if self._keyed is not None:
            self._keyed.update(plain)

    def read(self, n: int | None = -1) -> bytes:
        parts = [self._pending] if self._pending else []
        got = len(self._pending)
        self._pending = b""
        want = self.size if n is None or n < 0 else n
        try:
            while got < want and self._left > 0:
                chunk = self._raw.read(min(CHUNK, self._left))
                if not chunk:
                    raise ArchiveError(f"{self._where}: artifact {shown(self._name)} is truncated")
                self._left -= len(chunk)
                plain = self._decoder.update(chunk)
                self._digest(plain)
                parts.append(plain)
                got += len(plain)
            if self._left == 0 and not self._done:
                self._done = True
                tail = self._decoder.finish(self._read_exact(self._decoder.trailer_size))
                self._digest(tail)
                parts.append(tail)
                self._verify()
        except ServiceMakerError:
            raise
        except _TAR_ERRORS as err:
            raise ArchiveError(f"{self._where}: artifact {shown(self._name)} cannot be read: truncated or corrupt "
                               f"({_describe(err)})") from None
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        if n is not None and 0 <= n < len(out):
            self._pending = out[n:]
            out = out[:n]
        return out

    def _verify(self) -> None:
        art = f"artifact {shown(self._name)}"
        if self._keyed is not None and not hmac.compare_digest(self._keyed.hexdigest(), str(self._expected_keyed)):
            raise ArchiveError(f"{self._where}: {art} is corrupt ({DIGEST_PROP} does not match the manifest)",
                               hint="rebuild or re-download the archive")
        if self._hash is None or self._expected is None:
            return
        if self._hash.hexdigest() != self._expected:
            if self._legacy:
                raise WrongKeyError(f"{self._where}: wrong key for {art} (the sha256 of the decrypted content does "
                                    "not match the manifest)",
                                    hint="check the key given after the ':' (or in the key file / variable)")
            raise ArchiveError(f"{self._where}: {art} is corrupt (sha256 does not match the manifest)")

    @property
    def sha256(self) -> str:
        """Hex sha256 of the plaintext; valid once the stream has been read to the end (opened with
        ``want_sha256`` or with a ``sha256`` prop)."""
        if self._hash is None:
            raise ValueError("sha256 was not asked for when the artifact was opened")
        return self._hash.hexdigest()


class EffReader:
    """An open EFF archive. Use as a context manager. Artifacts may be read in any order: a read restarts the
    inflation from the nearest checkpoint, not from the start of the archive."""

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
        self._stream: InflatedStream | None = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        self._stream = stream = InflatedStream(self._fh, self.where, self.limits)
        try:
            tf = tarfile.open(fileobj=stream, mode="r:", tarinfo=bounded_tarinfo(self.where, self.limits))
        except ServiceMakerError:
            raise
        except RecursionError:
            raise UnsafeArchiveError(f"{self.where}: too many nested tar extended headers") from None
        except _TAR_ERRORS as err:
            raise ArchiveError(f"{self.where}: not an EFF archive (not a gzip-compressed tar: {_describe(err)})",
                               hint="give a .riva/.rmir/.eff file written by nemo2riva, TAO or svc-build") from None
        with tf:
            files = scan_members(tf, self.where, self.limits, stream.compressed_size)
            end = tf.offset
        self._check_end(end)
        if MANIFEST_NAME not in files:
            hint = None
            if any(n.endswith((".ckpt", ".pt")) for n in files) and "model_config.yaml" in files:
                hint = "this looks like a .nemo checkpoint; export it with nemo2riva first"
            raise ArchiveError(f"{self.where}: no manifest.yaml at the archive root: not an EFF archive", hint=hint)
        minfo = files.pop(MANIFEST_NAME)
        if minfo.size > self.limits.max_manifest_bytes:
            raise UnsafeArchiveError(f"{self.where}: manifest.yaml is {minfo.size} bytes, over the "
                                     f"{self.limits.max_manifest_bytes}-byte limit")
        self.manifest = Manifest.parse(self._member_bytes(minfo), self.where, members=len(files))
        self._members: dict[str, tarfile.TarInfo] = {}
        claimed: set[str] = set()
        derivations: set[tuple] = set()
        for name, props in self.manifest.artifacts.items():
            in_registry, at_root = f"{REGISTRY}/{name}", name
            if in_registry in files and at_root in files:
                raise UnsafeArchiveError(f"{self.where}: artifact {shown(name)} is stored twice (at the root and in "
                                         f"{REGISTRY}/)")
            member = in_registry if in_registry in files else at_root
            if member not in files:
                raise ArchiveError(f"{self.where}: manifest.yaml lists artifact {shown(name)} but the archive has no "
                                   f"member {REGISTRY}/{name}",  # names are at most 255 characters
                                   hint="the archive is incomplete: re-export it")
            kdf = check_encryption_props(name, props, self.where)
            if kdf is not None:
                derivations.add(kdf)
            self._members[name] = files[member]
            claimed.add(member)
        kinds = {name: encryption_of(props) for name, props in self.manifest.artifacts.items()}
        if GCM_NAME in kinds.values() and None in kinds.values():
            plain = sorted(name for name, kind in kinds.items() if kind is None)
            raise UnsafeArchiveError(f"{self.where}: artifact {shown(plain[0])} is stored in plaintext but the archive's "
                                     f"other artifacts are {GCM_NAME}-encrypted; servicemaker never writes such a mix, "
                                     "so manifest.yaml was altered", hint="rebuild the archive from its inputs")
        extra = sorted(set(files) - claimed)
        if extra:
            raise UnsafeArchiveError(f"{self.where}: member {shown(extra[0])} is not listed in manifest.yaml"
                                     + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
        work = sum(n * r * p for _, n, r, p in derivations)
        if work > self.limits.max_kdf_work:
            raise UnsafeArchiveError(f"{self.where}: its {GCM_NAME} artifacts ask for {len(derivations)} scrypt key "
                                     f"derivations of total work n·r·p = {work}, over the {self.limits.max_kdf_work} "
                                     "budget for one archive",
                                     hint="archives written by svc-build need one derivation; rebuild it")
        self.layout = "registry" if any(m.startswith(REGISTRY + "/") for m in claimed) else "root"

    def _check_end(self, end: int) -> None:
        """After the last header: an end-of-archive block (or nothing), then only NUL padding to the end of the
        gzip stream, which is inflated to its end here (so every gzip trailer is verified at open)."""
        stream = self._stream
        assert stream is not None
        stream.seek(end)
        block = stream.read(tarfile.BLOCKSIZE)
        if block and block != bytes(tarfile.BLOCKSIZE):
            raise ArchiveError(f"{self.where}: the tar stream is corrupt at offset {end} (an invalid header, or no "
                               "end-of-archive marker)", hint="the file is damaged: copy or download it again")
        while chunk := stream.read(CHUNK):
            if chunk.count(0) != len(chunk):
                at = stream.tell() - len(chunk.lstrip(bytes(1)))
                raise UnsafeArchiveError(f"{self.where}: data after the tar end-of-archive marker (at offset {at})",
                                         hint="other tar readers might see members there that this one does not")
        stream.finish()

    # -- access ------------------------------------------------------------------------------------------------------

    @property
    def metadata(self) -> dict[str, Any]:
        return self.manifest.metadata

    @property
    def artifacts(self) -> dict[str, dict[str, Any]]:
        return self.manifest.artifacts

    @property
    def inflated_bytes(self) -> int:
        """Bytes inflated so far, the pass at open included: the work reading has cost."""
        return self._stream.inflated if self._stream is not None else 0

    def stored_size(self, name: str) -> int:
        return self._member(name).size

    def _member(self, name: str) -> tarfile.TarInfo:
        try:
            return self._members[name]
        except KeyError:
            names = sorted(self._members)
            listed = ", ".join(shown(n) for n in names[:20])
            listed += f" and {len(names) - 20} more" if len(names) > 20 else ""
            raise NotFoundError(f"{self.where}: no artifact named {shown(name)}",
                                hint=f"artifacts: {listed or '(none)'}") from None

    def _view(self, info: tarfile.TarInfo) -> _MemberView:
        assert self._stream is not None
        return _MemberView(self._stream, info.offset_data, info.size)

    def _member_bytes(self, info: tarfile.TarInfo) -> bytes:
        view = self._view(info)
        data = bytearray()
        while chunk := view.read(CHUNK):
            data += chunk
        if len(data) != info.size:
            raise ArchiveError(f"{self.where}: member {shown(info.name)} is truncated")
        return bytes(data)

    def open(self, name: str, *, want_sha256: bool = False) -> ArtifactStream:
        """Stream the plaintext of artifact ``name`` (``want_sha256``: also hash it, see ``ArtifactStream.sha256``)."""
        info = self._member(name)
        return ArtifactStream(self._view(info), info.size, name, self.manifest.artifacts[name], self.ring,
                              self.where, want_sha256=want_sha256)

    def read_bytes(self, name: str, max_bytes: int | None = None) -> bytes:
        """The whole plaintext of a (small) artifact, refusing it past ``max_bytes``."""
        cap = self.limits.max_parsed_artifact_bytes if max_bytes is None else max_bytes
        stream = self.open(name)
        if stream.size > cap:
            raise UnsafeArchiveError(f"{self.where}: artifact {shown(name)} is {stream.size} bytes, over the "
                                     f"{cap}-byte limit for files that are parsed in memory")
        return stream.read()

    def read_text(self, name: str) -> str:
        data = self.read_bytes(name)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ArchiveError(f"{self.where}: artifact {shown(name)} is not UTF-8 text") from None

    def hash_artifact(self, name: str) -> tuple[str, int]:
        """(sha256, size) of the plaintext, streaming; also verifies the key/integrity."""
        stream = self.open(name, want_sha256=True)
        while stream.read(CHUNK):
            pass
        return stream.sha256, stream.size

    def extract(self, name: str, dest_dir: str | os.PathLike, as_name: str | None = None) -> Path:
        """Write the plaintext of ``name`` to ``dest_dir/<as_name or name>``; never outside ``dest_dir``."""
        dest_dir = Path(dest_dir).resolve()
        target_name = as_name or name
        target = (dest_dir / target_name).resolve()
        if target.parent != dest_dir:
            raise UnsafeArchiveError(f"{self.where}: refusing to write {shown(target_name)} outside {dest_dir}")
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
        if self._stream is not None:
            self._stream.close()
        self._fh.close()

    def __enter__(self) -> EffReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
