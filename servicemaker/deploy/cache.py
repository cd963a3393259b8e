"""The content-addressed compile cache: the network step's outputs, reused by later deploys of the same network.

An **entry** is what ``prepare_networks`` wrote into a network's version folder (``model.onnx`` with any external
data file, or ``model.plan`` + ``model.plan.json``) plus ``meta.json`` (the optimization report and the step's
figures), stored under a **key** that digests everything that determines them (:func:`compile_key`; the inputs are
assembled in :mod:`servicemaker.deploy.networks`). An entry's ``entry.json`` lists the sha256 and size of every
stored file and is written last: a reader trusts only an entry whose ``entry.json`` exists and whose files match it,
and drops (deletes) one that does not, with a warning, so the network is compiled again and republished.

Stores, looked up in this order (a shared hit is copied into the local store; a miss is compiled, then published to
both):

- **local**: ``$SERVICEMAKER_CACHE``, else ``$XDG_CACHE_HOME/servicemaker``, else ``~/.cache/servicemaker``; entries
  in its ``compile/<key[:2]>/<key>/`` folders, each written into a temporary folder beside them and renamed into place
  (a writer that finds the name taken lost a race and discards its copy). Least recently used entries are evicted
  past ``$SERVICEMAKER_CACHE_SIZE`` (default 20G); a hit counts as a use.
- **shared** (``--cache URL``, any fsspec URL: ``s3://bucket/prefix``, ``file:///path``): files as content-addressed
  blobs ``blobs/<sha256>``, the entry as ``entries/<key>.json`` written after its blobs.

Entries of a network whose RMIR holds encrypted artifacts are **protected**: the key is an HMAC under a key derived
(scrypt) from the RMIR's key, and every stored file, ``meta.json`` included, is AES-256-GCM-encrypted under a key
derived from the RMIR's key with a random per-entry salt. A deploy without that key cannot compute the key nor read
the entry (a wrong key reads as a miss). docs/cache.md says what is stored where.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from servicemaker import objstore
from servicemaker.build import sha256_file
from servicemaker.eff.codecs import GcmKeys, scrypt_budget_problem
from servicemaker.errors import ServiceMakerError, UsageError
from servicemaker.keys import Secret

CACHE_ENV = "SERVICEMAKER_CACHE"
SIZE_ENV = "SERVICEMAKER_CACHE_SIZE"
DEFAULT_SIZE = "20G"
COMPILE_DIR = "compile"
KEY_FORMAT = "servicemaker.compile_key/1"
ENTRY_FORMAT = "servicemaker.compile_entry/1"
MANIFEST = "entry.json"
META = "meta.json"
#: file names an entry may hold (what the network step writes, and meta.json)
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KEY_NAME = re.compile(r"^[0-9a-f]{64}$")
KEY_SALT = b"servicemaker compile cache key v1"
GCM_AAD = b"servicemaker-cache-gcm-v1\x00"
CHUNK = 1 << 20
#: temporary folders of writers older than this are left-overs of killed deploys
STALE_SECONDS = 6 * 3600
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class CorruptEntry(Exception):
    """A stored entry does not match its entry.json (torn, truncated, altered)."""


def root() -> Path:
    """The local cache folder (the compile entries live in its ``compile/`` subfolder)."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "servicemaker"


def size_cap() -> int:
    """The local store's cap in bytes, from ``$SERVICEMAKER_CACHE_SIZE`` (``20G``, ``512M``, ``1.5T``, bytes)."""
    text = os.environ.get(SIZE_ENV, DEFAULT_SIZE).strip().upper().removesuffix("B").removesuffix("I")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)", text)
    if not m:
        raise UsageError(f"{SIZE_ENV}={os.environ.get(SIZE_ENV)!r} is not a size",
                         hint="give bytes or a number with K, M, G or T, e.g. 20G")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def canonical(inputs: dict[str, Any]) -> bytes:
    return json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


def compile_key(inputs: dict[str, Any], protection: Protection | None = None) -> str:
    """sha256 of the canonical JSON of ``inputs``; for a protected network an HMAC-SHA256 of it under a key only
    holders of the RMIR's key can derive (so the key reveals nothing about the plaintext, and a deploy with another
    key lands elsewhere)."""
    data = canonical({"format": KEY_FORMAT, **inputs})
    if protection is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(protection.key_key(), data, hashlib.sha256).hexdigest()


# --- protection ------------------------------------------------------------------------------------------------------

class Protection:
    """Encryption of one protected network's entries, keyed by its RMIR's key."""

    def __init__(self, secret: Secret) -> None:
        self._secret = secret
        self._key_key: bytes | None = None
        self._read: dict[tuple, GcmKeys] = {}

    def key_key(self) -> bytes:
        if self._key_key is None:
            self._key_key = GcmKeys.derive(self._secret, KEY_SALT).check_key
        return self._key_key

    def new(self) -> tuple[GcmKeys, dict[str, Any]]:
        """Fresh keys for writing an entry, and the entry.json record of their derivation."""
        keys = GcmKeys.new(self._secret)
        return keys, {"cipher": "aes-256-gcm", **keys.derivation()}

    def open(self, record: Any) -> GcmKeys | None:
        """The keys of an entry written under ``record``; None when this key is not the entry's (or ``record`` is
        not a derivation this version accepts)."""
        if not isinstance(record, dict) or record.get("cipher") != "aes-256-gcm" or record.get("kdf") != "scrypt":
            return None
        n, r, p = record.get("kdf_n"), record.get("kdf_r"), record.get("kdf_p")
        if scrypt_budget_problem(n, r, p) is not None:
            return None
        try:
            salt = bytes.fromhex(str(record.get("salt")))
        except ValueError:
            return None
        ident = (salt, n, r, p)
        if ident not in self._read:
            self._read[ident] = GcmKeys.derive(self._secret, salt, n, r, p)
        keys = self._read[ident]
        return keys if hmac.compare_digest(keys.key_check, str(record.get("key_check"))) else None


def _aad(key: str, name: str) -> bytes:
    return GCM_AAD + key.encode() + b"\x00" + name.encode()


def _write_stored(src: Path, dst: Path, keys: GcmKeys | None, aad: bytes) -> dict[str, Any]:
    """Copy ``src`` to ``dst`` as stored (encrypted: nonce ‖ AES-256-GCM ciphertext ‖ tag); the stored bytes'
    sha256 and size."""
    digest, size = hashlib.sha256(), 0
    ctx = None
    with open(src, "rb") as fin, open(dst, "wb") as out:
        def put(data: bytes) -> None:
            nonlocal size
            digest.update(data)
            size += len(data)
            out.write(data)

        if keys is not None:
            nonce = os.urandom(12)
            ctx = Cipher(algorithms.AES(keys.aes_key), modes.GCM(nonce)).encryptor()
            ctx.authenticate_additional_data(aad)
            put(nonce)
        while block := fin.read(CHUNK):
            put(ctx.update(block) if ctx is not None else block)
        if ctx is not None:
            put(ctx.finalize() + ctx.tag)
    return {"sha256": digest.hexdigest(), "size": size}


def _read_stored(src: Path, out: BinaryIO, want: dict[str, Any], keys: GcmKeys | None, aad: bytes) -> None:
    """Verify ``src`` against its entry.json record while writing its plaintext to ``out``; CorruptEntry if not."""
    digest, size = hashlib.sha256(), 0
    total = int(want["size"])
    with open(src, "rb") as fin:
        ctx = None
        if keys is not None:
            nonce = fin.read(12)
            if len(nonce) != 12 or total < 28:
                raise CorruptEntry(f"{src.name} is truncated")
            digest.update(nonce)
            size = 12
            ctx = Cipher(algorithms.AES(keys.aes_key), modes.GCM(nonce)).decryptor()
            ctx.authenticate_additional_data(aad)
        body = total - size - (16 if ctx is not None else 0)
        while body > 0:
            block = fin.read(min(CHUNK, body))
            if not block:
                break
            body -= len(block)
            digest.update(block)
            size += len(block)
            out.write(ctx.update(block) if ctx is not None else block)
        tag = fin.read(16) if ctx is not None else b""
        digest.update(tag)
        size += len(tag)
        extra = fin.read(1)
    if body or extra or size != total or not hmac.compare_digest(digest.hexdigest(), str(want["sha256"])):
        raise CorruptEntry(f"{src.name} does not match its sha256")
    if ctx is not None:
        try:
            out.write(ctx.finalize_with_tag(tag))
        except InvalidTag:
            raise CorruptEntry(f"{src.name} failed authentication") from None


# --- entries ----------------------------------------------------------------------------------------------------------

def pack(key: str, files: dict[str, Path], meta: dict[str, Any], protection: Protection | None,
         into: Path) -> dict[str, Any]:
    """Write an entry's stored files into the (new, empty) folder ``into``, entry.json last; the manifest."""
    keys, record = protection.new() if protection is not None else (None, None)
    (into / ".meta.plain").write_text(json.dumps(meta, sort_keys=True), encoding="utf-8")
    sources = {**files, META: into / ".meta.plain"}
    listed = {}
    for name, src in sources.items():
        if not FILE_NAME.match(name):
            raise ValueError(f"not an entry file name: {name!r}")
        listed[name] = _write_stored(src, into / name, keys, _aad(key, name))
    (into / ".meta.plain").unlink()
    manifest = {"format": ENTRY_FORMAT, "key": key, "created": int(time.time()), "files": listed,
                "protection": record}
    (into / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def parse_manifest(text: bytes, key: str) -> dict[str, Any]:
    try:
        manifest = json.loads(text)
    except ValueError:
        raise CorruptEntry("entry.json is not JSON") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if (not isinstance(files, dict) or manifest.get("format") != ENTRY_FORMAT or manifest.get("key") != key
            or META not in files):
        raise CorruptEntry("entry.json is not a compile-cache entry of this key")
    for name, rec in files.items():
        if (not FILE_NAME.match(str(name)) or not isinstance(rec, dict) or not isinstance(rec.get("size"), int)
                or not re.fullmatch(r"[0-9a-f]{64}", str(rec.get("sha256")))):
            raise CorruptEntry(f"entry.json lists a bad file record {str(name)[:64]!r}")
    return manifest


def unpack(folder: Path, manifest: dict[str, Any], dest: Path, protection: Protection | None,
           check: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
    """Verify and write an entry's files into ``dest``; its meta. None: the entry is protected under another key
    (or not protected while this network must be). CorruptEntry: the files do not match entry.json, or ``check``
    refused the meta (ValueError), before any file is written.
    FileNotFoundError: the entry went away while being read (evicted by another deploy). Nothing is written into
    ``folder``: other deploys may be reading it too."""
    record = manifest.get("protection")
    if (record is None) != (protection is None):
        return None
    keys = protection.open(record) if protection is not None else None
    if protection is not None and keys is None:
        return None
    key = manifest["key"]
    written: list[Path] = []
    try:
        meta_bytes = io.BytesIO()
        _read_stored(folder / META, meta_bytes, manifest["files"][META], keys, _aad(key, META))
        meta = json.loads(meta_bytes.getvalue())
        if not isinstance(meta, dict) or not isinstance(meta.get("report"), dict) or \
                not isinstance(meta.get("detail"), dict):
            raise CorruptEntry("meta.json is not an entry's meta")
        if check is not None:
            try:
                check(meta)
            except ValueError as err:
                raise CorruptEntry(f"meta.json: {err}") from None
        for name, want in manifest["files"].items():
            if name == META:
                continue
            written.append(dest / name)
            with open(dest / name, "wb") as out:
                _read_stored(folder / name, out, want, keys, _aad(key, name))
        return meta
    except BaseException as err:
        for path in written:
            path.unlink(missing_ok=True)
        if isinstance(err, ValueError):
            raise CorruptEntry(f"meta.json is unreadable ({type(err).__name__})") from None
        raise


# --- the local store -------------------------------------------------------------------------------------------------

class LocalStore:
    name = "local"

    def __init__(self, folder: Path) -> None:
        self.folder = folder / COMPILE_DIR
        self.folder.mkdir(parents=True, exist_ok=True)

    def entry(self, key: str) -> Path:
        return self.folder / key[:2] / key

    def scratch(self) -> Path:
        """A new temporary folder on the store's filesystem (so renames into place are atomic)."""
        path = self.folder / f".tmp-{uuid.uuid4().hex}"
        path.mkdir()
        return path

    def load(self, key: str) -> dict[str, Any] | None:
        """The entry's manifest, or None when there is none; CorruptEntry for an unreadable one."""
        try:
            text = (self.entry(key) / MANIFEST).read_bytes()
        except FileNotFoundError:
            return None
        return parse_manifest(text, key)

    def touch(self, key: str) -> None:
        try:
            os.utime(self.entry(key) / MANIFEST)
        except OSError:
            pass

    def drop(self, key: str) -> None:
        self._remove(self.entry(key))

    def _remove(self, path: Path) -> None:
        """Rename away first, so no reader sees a half-deleted entry."""
        if not path.exists():
            return
        gone = self.folder / f".tmp-{uuid.uuid4().hex}"
        try:
            path.rename(gone)
        except OSError:
            return
        shutil.rmtree(gone, ignore_errors=True)

    def publish(self, scratch: Path, key: str) -> bool:
        """Move a packed entry into place; False (and the copy discarded) when another writer's is there."""
        final = self.entry(key)
        final.parent.mkdir(exist_ok=True)
        try:
            scratch.rename(final)
            return True
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
            return False

    def entries(self) -> list[tuple[float, int, str]]:
        """(last use, bytes, key) of every entry."""
        out = []
        for shard in self.folder.iterdir():
            if shard.name.startswith(".") or not shard.is_dir():
                continue
            for entry in shard.iterdir():
                try:
                    used = (entry / MANIFEST).stat().st_mtime
                    size = sum(p.stat().st_size for p in entry.iterdir())
                except OSError:
                    continue
                out.append((used, size, entry.name))
        return out

    def evict(self, cap: int, keep: str) -> list[str]:
        """Remove least recently used entries (never ``keep``) until the store holds at most ``cap`` bytes; and
        temporary folders killed writers left."""
        now = time.time()
        for tmp in self.folder.glob(".tmp-*"):
            try:
                if now - tmp.stat().st_mtime > STALE_SECONDS:
                    shutil.rmtree(tmp, ignore_errors=True)
            except OSError:
                pass
        listing = sorted(self.entries())
        total = sum(size for _, size, _ in listing)
        evicted = []
        for _, size, key in listing:
            if total <= cap:
                break
            if key == keep:
                continue
            self.drop(key)
            total -= size
            evicted.append(key)
        return evicted


# --- the shared store ------------------------------------------------------------------------------------------------

class SharedStore:
    """Blobs ``<prefix>/blobs/<sha256>`` and entries ``<prefix>/entries/<key>.json`` in an fsspec store."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = objstore.redact(url)
        self.fs, self.path = objstore.check_store(url, "the compile cache")
        self._local = objstore.scheme_of(url) == "file"

    def _guard(self, fn: Callable[[], Any]) -> Any:
        return objstore.guarded(fn, "the compile cache", self.url)

    def _entry(self, key: str) -> str:
        return f"{self.path}/entries/{key}.json"

    def _blob(self, sha: str) -> str:
        return f"{self.path}/blobs/{sha}"

    def _put(self, src: Path | bytes, dest: str) -> None:
        """Write one object; on a local filesystem through a temporary name and a rename (S3 PUTs are atomic)."""
        target = f"{dest}.tmp-{uuid.uuid4().hex}" if self._local else dest
        if self._local:
            self.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
        if isinstance(src, bytes):
            self.fs.pipe_file(target, src)
        else:
            self.fs.put_file(str(src), target)
        if self._local:
            self.fs.mv(target, dest)

    def fetch(self, key: str, into: Path) -> dict[str, Any] | None:
        """Download the entry into the empty folder ``into`` (verified later, by :func:`unpack`); its manifest, or
        None when the store has none. CorruptEntry for an unreadable entry.json or a missing blob."""
        try:
            text = self._guard(lambda: self.fs.cat_file(self._entry(key)))
        except ServiceMakerError as err:
            if isinstance(err, FileNotFoundError):
                return None
            raise
        manifest = parse_manifest(text, key)
        for name, rec in manifest["files"].items():
            try:
                self._guard(lambda: self.fs.get_file(self._blob(rec["sha256"]), str(into / name)))
            except ServiceMakerError as err:
                if isinstance(err, FileNotFoundError):
                    raise CorruptEntry(f"blob of {name} is missing") from None
                raise
        (into / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        return manifest

    def has(self, key: str) -> bool:
        return bool(self._guard(lambda: self.fs.exists(self._entry(key))))

    def publish(self, folder: Path, manifest: dict[str, Any]) -> None:
        """Upload a packed entry: its blobs, then its entry.json."""
        for name, rec in manifest["files"].items():
            blob = self._blob(rec["sha256"])
            if not self._guard(lambda: self.fs.exists(blob)):
                self._guard(lambda: self._put(folder / name, blob))
        text = json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n"
        self._guard(lambda: self._put(text, self._entry(manifest["key"])))

    def drop(self, key: str, manifest: dict[str, Any] | None, bad: list[str]) -> None:
        """Remove an entry that failed verification, and the blobs that do not match their names."""
        for sha in bad:
            self._guard(lambda: self.fs.rm_file(self._blob(sha)))
        try:
            self._guard(lambda: self.fs.rm_file(self._entry(key)))
        except ServiceMakerError as err:
            if not isinstance(err, FileNotFoundError):
                raise


# --- the cache a deploy uses ------------------------------------------------------------------------------------------

def _bad_blobs(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """The recorded sha256 of every downloaded file whose bytes do not match it."""
    bad = []
    for name, rec in manifest["files"].items():
        try:
            if sha256_file(folder / name)[0] != rec["sha256"]:
                bad.append(rec["sha256"])
        except OSError:
            continue
    return bad


class CompileCache:
    """The local store and, with ``--cache URL``, the shared one. Made (and the shared store checked) before any
    compile work starts; lookups and publishes never fail a deploy: a store problem is a warning and a miss."""

    def __init__(self, shared_url: str | None, warn: Callable[[str], None]) -> None:
        self.cap = size_cap()
        folder = root()
        try:
            self.local = LocalStore(folder)
        except OSError as err:
            raise UsageError(f"cannot use the compile cache folder {folder}: {err.strerror or err}",
                             hint=f"set {CACHE_ENV} to a writable folder, or pass --no-cache") from None
        self.shared = SharedStore(shared_url) if shared_url else None
        self.warn = warn

    def describe(self) -> dict[str, Any]:
        return {"local": True, "size_cap": self.cap, "shared": self.shared.name if self.shared else None}

    def lookup(self, key: str, dest: Path, protection: Protection | None,
               check: Callable[[dict[str, Any]], None] | None = None
               ) -> tuple[dict[str, Any] | None, str | None, bool]:
        """Write the entry's files into ``dest``: ``(meta, store name, False)``; ``(None, None, corrupt)`` on a
        miss, ``corrupt`` when a corrupt entry (or one whose meta ``check`` refused) was dropped on the way."""
        corrupt = False
        try:
            manifest = self.local.load(key)
            if manifest is not None:
                try:
                    meta = unpack(self.local.entry(key), manifest, dest, protection, check)
                except FileNotFoundError as err:
                    if not (self.local.entry(key) / MANIFEST).exists():
                        raise  # evicted by another deploy while being read: a miss
                    raise CorruptEntry(f"{Path(err.filename or '?').name} is missing") from None
                if meta is not None:
                    self.local.touch(key)
                    self._share(key, manifest)
                    return meta, "local", False
        except CorruptEntry as err:
            self.local.drop(key)
            self.warn(f"warning: compile cache entry {key[:16]} in the local cache is corrupt ({err}); "
                      "dropped it, compiling again")
            corrupt = True
        except OSError:
            pass  # evicted or dropped by another deploy while being read: a miss
        if self.shared is None:
            return None, None, corrupt
        scratch = self.local.scratch()
        try:
            manifest = self.shared.fetch(key, scratch)
            if manifest is None:
                return None, None, corrupt
            try:
                meta = unpack(scratch, manifest, dest, protection, check)
            except CorruptEntry as err:
                self.shared.drop(key, manifest, _bad_blobs(scratch, manifest))
                raise CorruptEntry(str(err)) from None
            if meta is None:
                return None, None, corrupt
            if self.local.publish(scratch, key):
                self.local.evict(self.cap, keep=key)
            return meta, self.shared.name, False
        except CorruptEntry as err:
            try:
                self.shared.drop(key, None, [])
            except ServiceMakerError:
                pass
            self.warn(f"warning: compile cache entry {key[:16]} in {self.shared.name} is corrupt ({err}); "
                      "dropped it, compiling again")
            return None, None, True
        except (ServiceMakerError, OSError) as err:
            self.warn(f"warning: cannot read the compile cache {self.shared.name}: {err}; compiling")
            return None, None, corrupt
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _share(self, key: str, manifest: dict[str, Any]) -> None:
        """Upload a local entry the shared store lacks (compiled before --cache was given)."""
        if self.shared is None:
            return
        try:
            if not self.shared.has(key):
                self.shared.publish(self.local.entry(key), manifest)
        except (ServiceMakerError, OSError) as err:
            self.warn(f"warning: cannot publish to the compile cache {self.shared.name}: {err}")

    def publish(self, key: str, files: dict[str, Path], meta: dict[str, Any], protection: Protection | None
                ) -> list[str]:
        """Store a compiled network; the stores that hold it now."""
        published: list[str] = []
        scratch = self.local.scratch()
        try:
            manifest = pack(key, files, meta, protection, scratch)
            if self.shared is not None:
                try:
                    if not self.shared.has(key):
                        self.shared.publish(scratch, manifest)
                    published.append(self.shared.name)
                except (ServiceMakerError, OSError) as err:
                    self.warn(f"warning: cannot publish to the compile cache {self.shared.name}: {err}")
            if self.local.publish(scratch, key):
                self.local.evict(self.cap, keep=key)
            published.insert(0, "local")
        except OSError as err:
            self.warn(f"warning: cannot write the local compile cache: {err}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return published
