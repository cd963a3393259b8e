"""Artifact codecs: plain, legacy EFF (AES-256-CTR), and servicemaker's authenticated AES-256-GCM.

A codec turns an artifact's stored payload into plaintext (and back). Payload layouts:

* plain: the plaintext.
* legacy EFF (``encryption: <10-letter cipher id>``): 16-byte IV ‖ AES-256-CTR(key, IV as the initial big-endian
  counter block). key = PBKDF2-HMAC-SHA256(passphrase, salt[cipher id], 100000 iterations, 32 bytes). The salt
  table comes from the user (:class:`SaltTable`). There is no MAC: the ``sha256`` prop of the plaintext is the only
  way to tell a wrong key, and the reader checks it.
* ``aes-256-gcm``: ciphertext ‖ 16-byte tag. Per artifact a random 16-byte salt and 12-byte nonce;
  64 bytes = scrypt(passphrase, salt, n, r, p): the first 32 are the AES key, the last 32 key an HMAC whose
  truncated value over a fixed label (``key_check``) tells a wrong key before any payload byte is read. The
  artifact name is authenticated data, so artifacts cannot be swapped.
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
from servicemaker.errors import ArchiveError, MissingKeyError, NotFoundError, SaltsError, WrongKeyError
from servicemaker.keys import Secret

SALTS_ENV = "SERVICEMAKER_EFF_SALTS"
LEGACY_ITERATIONS = 100_000
LEGACY_ID = re.compile(r"^[a-z]{10}$")
GCM_NAME = "aes-256-gcm"
GCM_AAD_PREFIX = b"servicemaker-eff-gcm-v1\x00"
GCM_CHECK_LABEL = b"servicemaker key check v1"
#: scrypt cost written by this version (64 MiB of memory, about 0.2 s) and the largest accepted on read
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**16, 8, 1
SCRYPT_MAX_N, SCRYPT_MAX_R, SCRYPT_MAX_P = 2**20, 16, 4

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
            raise SaltsError(f"EFF salt file {p} is not valid YAML: {err}") from None
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
    _cache: dict[Any, bytes] = field(default_factory=dict, repr=False)

    def require_key(self, artifact: str) -> Secret:
        if self.key is None:
            raise MissingKeyError(f"{self.archive}: artifact '{artifact}' is encrypted and no key was given", hint=KEY_HINT)
        return self.key

    def derive(self, cache_key: Any, fn) -> bytes:
        if cache_key not in self._cache:
            self._cache[cache_key] = fn()
        return self._cache[cache_key]


class Decoder(Protocol):
    header_size: int
    trailer_size: int

    def start(self, header: bytes) -> None: ...
    def update(self, data: bytes) -> bytes: ...
    def finish(self, trailer: bytes) -> bytes: ...


class Encoder(Protocol):
    header_size: int
    trailer_size: int
    props: dict[str, Any]

    def header(self) -> bytes: ...
    def update(self, data: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


# --- plain ---------------------------------------------------------------------------------------------------------

class _Plain:
    header_size = 0
    trailer_size = 0

    def __init__(self) -> None:
        self.props: dict[str, Any] = {"encryption": False}

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

    def start(self, header: bytes) -> None:
        self._ctx = Cipher(algorithms.AES(self._key), modes.CTR(header)).decryptor()

    def update(self, data: bytes) -> bytes:
        return self._ctx.update(data)

    def finish(self, trailer: bytes) -> bytes:
        return self._ctx.finalize()


class _LegacyEncoder:
    header_size = 16
    trailer_size = 0

    def __init__(self, key: bytes, cipher_id: str, iv: bytes | None = None) -> None:
        self._iv = iv if iv is not None else os.urandom(16)
        self._ctx = Cipher(algorithms.AES(key), modes.CTR(self._iv)).encryptor()
        self.props = {"encryption": cipher_id}

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


class _GcmDecoder:
    header_size = 0
    trailer_size = 16

    def __init__(self, key: bytes, nonce: bytes, name: str) -> None:
        self._ctx = Cipher(algorithms.AES(key), modes.GCM(nonce)).decryptor()
        self._ctx.authenticate_additional_data(GCM_AAD_PREFIX + name.encode("utf-8"))
        self._name = name

    def start(self, header: bytes) -> None:
        pass

    def update(self, data: bytes) -> bytes:
        return self._ctx.update(data)

    def finish(self, trailer: bytes) -> bytes:
        try:
            return self._ctx.finalize_with_tag(trailer)
        except InvalidTag:
            raise ArchiveError(f"artifact '{self._name}' failed authentication: the archive is corrupt or was "
                               "tampered with", hint="rebuild or re-download the archive") from None


class _GcmEncoder:
    header_size = 0
    trailer_size = 16

    def __init__(self, passphrase: Secret, name: str) -> None:
        salt, nonce = os.urandom(16), os.urandom(12)
        derived = _scrypt(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        self._ctx = Cipher(algorithms.AES(derived[:32]), modes.GCM(nonce)).encryptor()
        self._ctx.authenticate_additional_data(GCM_AAD_PREFIX + name.encode("utf-8"))
        self.props = {
            "encryption": GCM_NAME,
            "kdf": "scrypt",
            "kdf_n": SCRYPT_N,
            "kdf_r": SCRYPT_R,
            "kdf_p": SCRYPT_P,
            "salt": salt.hex(),
            "nonce": nonce.hex(),
            "key_check": _key_check(derived[32:]),
        }

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


def check_encryption_props(name: str, props: dict[str, Any]) -> None:
    """Refuse an artifact whose encryption props are malformed (before any key work)."""
    enc = encryption_of(props)
    if enc is None:
        return
    if enc == GCM_NAME:
        try:
            n, r, p = int(props["kdf_n"]), int(props["kdf_r"]), int(props["kdf_p"])
            salt, nonce = bytes.fromhex(props["salt"]), bytes.fromhex(props["nonce"])
            check = str(props["key_check"])
        except (KeyError, ValueError, TypeError):
            raise ArchiveError(f"artifact '{name}' is marked {GCM_NAME} but its kdf_n/kdf_r/kdf_p/salt/nonce/"
                               "key_check props are missing or malformed") from None
        if props.get("kdf") != "scrypt" or len(salt) < 16 or len(nonce) != 12 or len(check) != 32:
            raise ArchiveError(f"artifact '{name}' has unsupported {GCM_NAME} parameters")
        if not (2 <= n <= SCRYPT_MAX_N and n & (n - 1) == 0 and 1 <= r <= SCRYPT_MAX_R and 1 <= p <= SCRYPT_MAX_P):
            raise ArchiveError(f"artifact '{name}' asks for scrypt cost n={n} r={r} p={p}, beyond the accepted "
                               f"maximum n={SCRYPT_MAX_N} r={SCRYPT_MAX_R} p={SCRYPT_MAX_P}")
        return
    if not LEGACY_ID.match(enc):
        raise ArchiveError(f"artifact '{name}' uses unknown encryption '{enc}'",
                           hint=f"servicemaker reads legacy EFF cipher ids (10 lowercase letters) and {GCM_NAME}")
    sha = props.get("sha256")
    if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise ArchiveError(f"artifact '{name}' is legacy-encrypted but has no valid sha256 prop of its plaintext")


def decoder_for(name: str, props: dict[str, Any], ring: KeyRing) -> Decoder:
    """A decoder for one artifact; checks a GCM key at once (legacy keys are checked by the reader's sha256)."""
    enc = encryption_of(props)
    if enc is None:
        return _Plain()
    check_encryption_props(name, props)
    key = ring.require_key(name)
    if enc == GCM_NAME:
        salt = bytes.fromhex(props["salt"])
        n, r, p = int(props["kdf_n"]), int(props["kdf_r"]), int(props["kdf_p"])
        derived = ring.derive(("gcm", key, salt, n, r, p), lambda: _scrypt(key, salt, n, r, p))
        if not hmac.compare_digest(_key_check(derived[32:]), str(props["key_check"])):
            raise WrongKeyError(f"{ring.archive}: wrong key for artifact '{name}' (the key check does not match)",
                                hint="check the key given after the ':' (or in the key file / variable)")
        return _GcmDecoder(derived[:32], bytes.fromhex(props["nonce"]), name)
    if ring.salts is None:
        raise SaltsError(f"{ring.archive}: artifact '{name}' is encrypted with legacy EFF cipher '{enc}', whose "
                         "salt is not known",
                         hint="pass --eff-salts FILE or set SERVICEMAKER_EFF_SALTS to a YAML file of "
                              "'<cipher id>: <64 hex chars>' lines")
    salt = ring.salts.get(enc)
    return _LegacyDecoder(ring.derive(("legacy", key, salt), lambda: legacy_key(key, salt)))


def encoder_for(name: str, key: Secret | None, *, legacy: tuple[str, bytes] | None = None,
                legacy_iv: bytes | None = None) -> Encoder:
    """Encoder for writing: plain without a key, GCM with one; legacy ``(cipher_id, salt)`` only for tests/interop."""
    if key is None:
        return _Plain()
    if legacy is not None:
        cipher_id, salt = legacy
        return _LegacyEncoder(legacy_key(key, salt), cipher_id, iv=legacy_iv)
    return _GcmEncoder(key, name)
