"""Artifact codecs: plain, legacy EFF (AES-256-CTR), and servicemaker's authenticated AES-256-GCM.

A codec turns an artifact's stored payload into plaintext (and back). Payload layouts:

* plain: the plaintext.
* legacy EFF (``encryption: <10-letter cipher id>``): 16-byte IV ‖ AES-256-CTR(key, IV as the initial big-endian
  counter block). key = PBKDF2-HMAC-SHA256(passphrase, salt[cipher id], 100000 iterations, 32 bytes). The salt
  table comes from the user (:class:`SaltTable`). There is no MAC: the ``sha256`` prop of the plaintext is the only
  way to tell a wrong key, and the reader checks it.
* ``aes-256-gcm``: ciphertext ‖ 16-byte tag. A random 16-byte salt per archive (per artifact in archives
  written before) and a random 12-byte nonce per artifact; 64 bytes = scrypt(passphrase, salt, n, r, p): the first
  32 are the AES key, the last 32 the check key. HMAC-SHA256(check key, ``key check`` label) truncated
  (``key_check``) tells a wrong key before any payload byte is read; HMAC-SHA256(check key, ``digest`` label) keys
  the artifact's ``hmac_sha256`` prop (HMAC-SHA256 of the plaintext), which replaces the plaintext ``sha256``
  that would let anyone confirm a guess of the content. The artifact name is authenticated data, so artifacts
  cannot be swapped. scrypt costs are capped on read (:func:`scrypt_budget_problem`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from servicemaker import yamlio
from servicemaker.errors import first_line, shown
from servicemaker.errors import ArchiveError, MissingKeyError, NotFoundError, SaltsError, WrongKeyError
from servicemaker.keys import Secret

SALTS_ENV = "SERVICEMAKER_EFF_SALTS"
LEGACY_ITERATIONS = 100_000
LEGACY_ID = re.compile(r"^[a-z]{10}$")
GCM_NAME = "aes-256-gcm"
GCM_AAD_PREFIX = b"servicemaker-eff-gcm-v1\x00"
GCM_CHECK_LABEL = b"servicemaker key check v1"
GCM_DIGEST_LABEL = b"servicemaker artifact digest v1"
#: the keyed digest of an encrypted artifact's plaintext (replaces ``sha256``)
DIGEST_PROP = "hmac_sha256"
#: props that only an encrypted artifact has; a plain one carrying any of them is refused
CIPHER_PROPS = ("kdf", "kdf_n", "kdf_r", "kdf_p", "salt", "nonce", "key_check", DIGEST_PROP)
#: scrypt cost written by this version (64 MiB of memory, about 0.2 s)
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**16, 8, 1
#: the budget accepted on read: memory 128·r·n, work n·r·p (about 0.75 s here), parallelism p
SCRYPT_MAX_MEMORY = 256 * 1024 * 1024
SCRYPT_MAX_WORK = 2**21
SCRYPT_MAX_P = 4

KEY_HINT = "give the key as PATH:KEY, PATH:env:VAR or PATH:file:KEYFILE, or set SERVICEMAKER_KEY"


class SaltTable:
    """Legacy cipher id → 32-byte salt, loaded from a YAML file of ``<id>: <64 hex chars>`` lines."""

    def __init__(self, salts: dict[str, bytes], origin: str) -> None:
        self._salts = salts
        self.origin = origin

    def __contains__(self, cipher_id: str) -> bool:
        return cipher_id in self._salts

    def get(self, cipher_id: str) -> bytes:
        try:
            return self._salts[cipher_id]
        except KeyError:
            raise SaltsError(f"the salt table {self.origin} has no entry for legacy cipher id '{cipher_id}'",
                             hint=f"add a line '{cipher_id}: <64 hex chars>' to {self.origin}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> SaltTable:
        p = Path(path).expanduser()
        try:
            text = p.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"EFF salt file {p} does not exist",
                                hint="pass --eff-salts FILE (or set SERVICEMAKER_EFF_SALTS) with an existing file") from None
        except OSError as err:
            raise SaltsError(f"cannot read EFF salt file {p}: {err.strerror}") from None
        if len(text) > 1024 * 1024:
            raise SaltsError(f"EFF salt file {p} is larger than 1 MiB; it should hold '<id>: <64 hex>' lines")
        try:
            data = yamlio.load(text)
        except yamlio.YamlError as err:
            raise SaltsError(f"EFF salt file {p} is not valid YAML: {first_line(str(err), 200)}") from None
        if not isinstance(data, dict):
            raise SaltsError(f"EFF salt file {p} must be a mapping of '<cipher id>: <64 hex chars>'")
        salts: dict[str, bytes] = {}
        bad: list[str] = []
        for k, v in data.items():
            k = str(k)
            if not LEGACY_ID.match(k):
                bad.append(f"'{k}' is not a cipher id (10 lowercase letters)")
                continue
            v = str(v)
            if not re.fullmatch(r"[0-9a-fA-F]{64}", v):
                bad.append(f"the salt of '{k}' is not 64 hex characters")
                continue
            salts[k] = bytes.fromhex(v)
        if bad:
            raise SaltsError(f"EFF salt file {p} has bad entries: " + "; ".join(bad))
        return cls(salts, origin=str(p))

    @classmethod
    def from_option(cls, path: str | Path | None) -> SaltTable | None:
        """The table from ``--eff-salts`` if given, else from ``SERVICEMAKER_EFF_SALTS``, else ``None``."""
        if path:
            return cls.from_file(path)
        env = os.environ.get(SALTS_ENV)
        return cls.from_file(env) if env else None


@dataclass
class KeyRing:
    """What a reader needs to decrypt: the archive's key, the legacy salt table, and a cache of derived keys."""

    key: Secret | None = None
    salts: SaltTable | None = None
    archive: str = "archive"
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    def require_key(self, artifact: str) -> Secret:
        if self.key is None:
            raise MissingKeyError(f"{self.archive}: artifact {shown(artifact)} is encrypted and no key was given",
                                  hint=KEY_HINT)
        return self.key

    def derive(self, cache_key: Any, fn) -> Any:
        if cache_key not in self._cache:
            self._cache[cache_key] = fn()
        return self._cache[cache_key]


class Decoder(Protocol):
    header_size: int
    trailer_size: int

    def keyed_digest(self) -> hmac.HMAC | None: ...
    def start(self, header: bytes) -> None: ...
    def update(self, data: bytes) -> bytes: ...
    def finish(self, trailer: bytes) -> bytes: ...


class Encoder(Protocol):
    header_size: int
    trailer_size: int
    props: dict[str, Any]
    #: the prop that records ``new_digest()`` of the plaintext: ``sha256``, or the keyed ``hmac_sha256``
    digest_name: str

    def new_digest(self) -> Any: ...
    def header(self) -> bytes: ...
    def update(self, data: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


# --- plain ---------------------------------------------------------------------------------------------------------

class _Plain:
    header_size = 0
    trailer_size = 0
    digest_name = "sha256"

    def __init__(self) -> None:
        self.props: dict[str, Any] = {"encryption": False}

    def new_digest(self) -> Any:
        return hashlib.sha256()

    def keyed_digest(self) -> None:
        return None

    def start(self, header: bytes) -> None:
        pass

    def header(self) -> bytes:
        return b""

    def update(self, data: bytes) -> bytes:
        return data

    def finish(self, trailer: bytes = b"") -> bytes:
        return b""


# --- legacy EFF ----------------------------------------------------------------------------------------------------

def legacy_key(passphrase: Secret, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", passphrase.encode(), salt, LEGACY_ITERATIONS, 32)


class _LegacyDecoder:
    header_size = 16
    trailer_size = 0

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._ctx = None

    def keyed_digest(self) -> None:
        return None

    def start(self, header: bytes) -> None:
        self._ctx = Cipher(algorithms.AES(self._key), modes.CTR(header)).decryptor()

    def update(self, data: bytes) -> bytes:
        return self._ctx.update(data)

    def finish(self, trailer: bytes) -> bytes:
        return self._ctx.finalize()


class _LegacyEncoder:
    header_size = 16
    trailer_size = 0
    digest_name = "sha256"

    def __init__(self, key: bytes, cipher_id: str, iv: bytes | None = None) -> None:
        self._iv = iv if iv is not None else os.urandom(16)
        self._ctx = Cipher(algorithms.AES(key), modes.CTR(self._iv)).encryptor()
        self.props = {"encryption": cipher_id}

    def new_digest(self) -> Any:
        return hashlib.sha256()

    def header(self) -> bytes:
        return self._iv

    def update(self, data: bytes) -> bytes:
        return self._ctx.update(data)

    def finish(self) -> bytes:
        self._ctx.finalize()
        return b""


# --- servicemaker AES-256-GCM ----------------------------------------------------------------------------------------

def _scrypt(passphrase: Secret, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=64, n=n, r=r, p=p).derive(passphrase.encode())


def _key_check(check_key: bytes) -> str:
    return hmac.new(check_key, GCM_CHECK_LABEL, hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class GcmKeys:
    """What one scrypt derivation gives: the AES key, the published key check, and the keyed-digest key."""

    salt: bytes
    n: int
    r: int
    p: int
    aes_key: bytes = field(repr=False)
    check_key: bytes = field(repr=False)

    @classmethod
    def derive(cls, passphrase: Secret, salt: bytes, n: int = SCRYPT_N, r: int = SCRYPT_R,
               p: int = SCRYPT_P) -> GcmKeys:
        derived = _scrypt(passphrase, salt, n, r, p)
        return cls(salt, n, r, p, derived[:32], derived[32:])

    @classmethod
    def new(cls, passphrase: Secret) -> GcmKeys:
        """Fresh keys for writing: a random salt and this version's scrypt cost."""
        return cls.derive(passphrase, os.urandom(16))

    @property
    def key_check(self) -> str:
        return _key_check(self.check_key)

    def derivation(self) -> dict[str, Any]:
        """How these keys were derived (what a reader needs besides the passphrase), as archive props record it."""
        return {"kdf": "scrypt", "kdf_n": self.n, "kdf_r": self.r, "kdf_p": self.p, "salt": self.salt.hex(),
                "key_check": self.key_check}

    def digest(self) -> hmac.HMAC:
        """A keyed digest of plaintext: HMAC-SHA256 under a key derived from the check key with its own label."""
        return hmac.new(hmac.new(self.check_key, GCM_DIGEST_LABEL, hashlib.sha256).digest(), digestmod=hashlib.sha256)


class _GcmDecoder:
    header_size = 0
    trailer_size = 16

    def __init__(self, keys: GcmKeys, nonce: bytes, name: str, where: str) -> None:
        self._ctx = Cipher(algorithms.AES(keys.aes_key), modes.GCM(nonce)).decryptor()
        self._ctx.authenticate_additional_data(GCM_AAD_PREFIX + name.encode("utf-8"))
        self._name = name
        self._where = where
        self._keys = keys

    def keyed_digest(self) -> hmac.HMAC:
        return self._keys.digest()

    def start(self, header: bytes) -> None:
        pass

    def update(self, data: bytes) -> bytes:
        return self._ctx.update(data)

    def finish(self, trailer: bytes) -> bytes:
        try:
            return self._ctx.finalize_with_tag(trailer)
        except InvalidTag:
            raise ArchiveError(f"{self._where}: artifact {shown(self._name)} failed authentication: the archive is "
                               "corrupt or was tampered with", hint="rebuild or re-download the archive") from None


class _GcmEncoder:
    header_size = 0
    trailer_size = 16
    digest_name = DIGEST_PROP

    def __init__(self, keys: GcmKeys, name: str) -> None:
        nonce = os.urandom(12)
        self._keys = keys
        self._ctx = Cipher(algorithms.AES(keys.aes_key), modes.GCM(nonce)).encryptor()
        self._ctx.authenticate_additional_data(GCM_AAD_PREFIX + name.encode("utf-8"))
        self.props = {"encryption": GCM_NAME, **keys.derivation(), "nonce": nonce.hex()}

    def new_digest(self) -> hmac.HMAC:
        return self._keys.digest()

    def header(self) -> bytes:
        return b""

    def update(self, data: bytes) -> bytes:
        return self._ctx.update(data)

    def finish(self) -> bytes:
        self._ctx.finalize()
        return self._ctx.tag


# --- dispatch ------------------------------------------------------------------------------------------------------

def encryption_of(props: dict[str, Any]) -> str | None:
    """``None`` for plain artifacts, else the ``encryption`` value (a legacy cipher id or ``aes-256-gcm``)."""
    enc = props.get("encryption", False)
    if enc in (False, None, "", "false", "False", "none"):
        return None
    return str(enc)


def describe_encryption(props: dict[str, Any]) -> str:
    enc = encryption_of(props)
    if enc is None:
        return "none"
    if enc == GCM_NAME:
        return "aes-256-gcm (servicemaker)"
    return f"legacy EFF ({enc})"


def digest_of(props: dict[str, Any]) -> str | None:
    """The integrity digest the manifest records for an artifact, as the reader verifies it: the keyed
    ``hmac_sha256`` of an encrypted artifact written by this version, else the plaintext ``sha256``."""
    keyed = props.get(DIGEST_PROP)
    if isinstance(keyed, str):
        return keyed.lower()
    return hex_prop(props.get("sha256"))


def hex_prop(value: Any) -> str | None:
    """A sha256 prop as lowercase hex. Unquoted all-digit hex reads back from YAML as an int: restore it."""
    if value is None or value is False:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).zfill(64)
    return str(value).strip().lower()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def scrypt_budget_problem(n: Any, r: Any, p: Any) -> str | None:
    """Why scrypt parameters are refused, or ``None`` when they fit the budget."""
    if not (_is_int(n) and _is_int(r) and _is_int(p)):
        return "kdf_n, kdf_r and kdf_p must be integers"
    if n < 2 or n & (n - 1) or r < 1 or p < 1:
        return f"scrypt cost n={shown(n)} r={shown(r)} p={shown(p)} is invalid (n a power of two >= 2, r and p >= 1)"
    if p > SCRYPT_MAX_P or 128 * r * n > SCRYPT_MAX_MEMORY or n * r * p > SCRYPT_MAX_WORK:
        return (f"asks for scrypt cost n={shown(n)} r={shown(r)} p={shown(p)}, beyond the accepted maximum "
                f"(budget: memory 128·r·n <= {SCRYPT_MAX_MEMORY >> 20} MiB, work n·r·p <= 2^21, "
                f"p <= {SCRYPT_MAX_P})")
    return None


def check_encryption_props(name: str, props: dict[str, Any], where: str = "") -> tuple | None:
    """Refuse an artifact whose encryption props are malformed or contradictory (before any key work).

    Returns the scrypt derivation an ``aes-256-gcm`` artifact needs, as ``(salt, n, r, p)``, else ``None``.
    """
    at = f"{where}: " if where else ""
    art = f"artifact {shown(name)}"
    enc = encryption_of(props)
    if enc is None:
        marks = [k for k in CIPHER_PROPS if k in props]
        if marks:
            raise ArchiveError(f"{at}{art} is marked unencrypted (encryption: {shown(props.get('encryption'))}) but "
                               f"has encryption props ({', '.join(marks)}): refusing to read it as plaintext",
                               hint="the manifest is corrupt or was edited: rebuild or re-export the archive")
        return None
    if enc == GCM_NAME:
        n, r, p = props.get("kdf_n"), props.get("kdf_r"), props.get("kdf_p")
        try:
            salt, nonce = bytes.fromhex(props["salt"]), bytes.fromhex(props["nonce"])
            check = props["key_check"]
        except (KeyError, ValueError, TypeError):
            raise ArchiveError(f"{at}{art} is marked {GCM_NAME} but its kdf_n/kdf_r/kdf_p/salt/nonce/"
                               "key_check props are missing or malformed") from None
        if props.get("kdf") != "scrypt" or len(salt) < 16 or len(nonce) != 12 or not _is_hex(check, 32):
            raise ArchiveError(f"{at}{art} has unsupported {GCM_NAME} parameters")
        problem = scrypt_budget_problem(n, r, p)
        if problem:
            raise ArchiveError(f"{at}{art} {problem}",
                               hint="servicemaker writes n=2^16 r=8 p=1; rebuild the archive with svc-build")
        if DIGEST_PROP in props and not _is_hex(props[DIGEST_PROP], 64):
            raise ArchiveError(f"{at}{art} has a malformed {DIGEST_PROP} prop (64 hex characters expected)")
        return (salt, n, r, p)
    if not LEGACY_ID.match(enc):
        raise ArchiveError(f"{at}{art} uses unknown encryption {shown(enc)}",
                           hint=f"servicemaker reads legacy EFF cipher ids (10 lowercase letters) and {GCM_NAME}")
    if not _is_hex(props.get("sha256"), 64):
        raise ArchiveError(f"{at}{art} is legacy-encrypted but has no valid sha256 prop of its plaintext")
    if DIGEST_PROP in props:
        raise ArchiveError(f"{at}{art} is legacy-encrypted but has a {DIGEST_PROP} prop (only {GCM_NAME} has one)")
    return None


def _is_hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and re.fullmatch(f"[0-9a-f]{{{length}}}", value) is not None


def decoder_for(name: str, props: dict[str, Any], ring: KeyRing) -> Decoder:
    """A decoder for one artifact; checks a GCM key at once (legacy keys are checked by the reader's sha256)."""
    enc = encryption_of(props)
    kdf = check_encryption_props(name, props, ring.archive)
    if enc is None:
        return _Plain()
    key = ring.require_key(name)
    if kdf is not None:
        salt, n, r, p = kdf
        keys = ring.derive(("gcm", key, salt, n, r, p), lambda: GcmKeys.derive(key, salt, n, r, p))
        if not hmac.compare_digest(keys.key_check, str(props["key_check"])):
            raise WrongKeyError(f"{ring.archive}: wrong key for artifact {shown(name)} (the key check does not match)",
                                hint="check the key given after the ':' (or in the key file / variable)")
        return _GcmDecoder(keys, bytes.fromhex(props["nonce"]), name, ring.archive)
    if ring.salts is None:
        raise SaltsError(f"{ring.archive}: artifact {shown(name)} is encrypted with legacy EFF cipher '{enc}', whose "
                         "salt is not known",
                         hint="pass --eff-salts FILE or set SERVICEMAKER_EFF_SALTS to a YAML file of "
                              "'<cipher id>: <64 hex chars>' lines")
    salt = ring.salts.get(enc)
    return _LegacyDecoder(ring.derive(("legacy", key, salt), lambda: legacy_key(key, salt)))


def encoder_for(name: str, key: Secret | None, *, legacy: tuple[str, bytes] | None = None,
                legacy_iv: bytes | None = None, gcm: GcmKeys | None = None) -> Encoder:
    """Encoder for writing: plain without a key, GCM with one (``gcm``: keys shared by the artifacts of one
    archive, derived once); legacy ``(cipher_id, salt)`` only for tests/interop."""
    if key is None:
        return _Plain()
    if legacy is not None:
        cipher_id, salt = legacy
        return _LegacyEncoder(legacy_key(key, salt), cipher_id, iv=legacy_iv)
    return _GcmEncoder(gcm or GcmKeys.new(key), name)
