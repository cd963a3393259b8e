"""svc-inspect: what an EFF archive holds — metadata, artifacts and, for an RMIR, the pipeline spec.

``inspect_archive`` returns the document ``svc-inspect --json`` prints (format ``servicemaker.inspect/1``,
documented in docs/cli.md) with the values as the manifest's YAML gave them; :func:`to_json` writes it as strict
JSON (:func:`jsonable` says how YAML-only values become JSON). ``verify=True`` also decrypts every artifact and
checks its sha256/tag. A key given with the archive is always checked (:func:`check_key`).
"""

from __future__ import annotations

import base64
import datetime
import json
import math
from typing import Any

from servicemaker.build import sha256_file
from servicemaker.eff.codecs import KeyRing, SaltTable, describe_encryption, encryption_of
from servicemaker.eff.reader import EffReader
from servicemaker.keys import ArchiveArg, fallback_key
from servicemaker.spec import SPEC_KEY, read_spec

INSPECT_FORMAT = "servicemaker.inspect/1"
_HIDDEN_PROPS = {"salt", "nonce", "key_check", "kdf", "kdf_n", "kdf_r", "kdf_p"}
#: non-finite floats become these strings (the names protobuf's JSON mapping uses)
NONFINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def inspect_archive(arg: ArchiveArg, salts: SaltTable | None = None, verify: bool = False) -> dict[str, Any]:
    with EffReader(arg.path, ring=KeyRing(key=arg.key or fallback_key(), salts=salts)) as reader:
        if arg.key is not None and not verify:  # --verify decrypts everything anyway
            check_key(reader)
        file_sha256, file_size = sha256_file(arg.path)
        artifacts = []
        for name, props in reader.artifacts.items():
            stored = reader.stored_size(name)
            entry: dict[str, Any] = {
                "name": name,
                "stored_size": stored,
                "encryption": describe_encryption(props),
                "encrypted": encryption_of(props) is not None,
                "props": {k: v for k, v in props.items() if k not in _HIDDEN_PROPS},
            }
            if verify:
                digest, size = reader.hash_artifact(name)
                entry["size"] = size
                entry["sha256"] = digest
            artifacts.append(entry)
        metadata = {k: v for k, v in reader.metadata.items() if k != SPEC_KEY}
        spec = read_spec(reader.metadata, arg.shown).to_metadata() if SPEC_KEY in reader.metadata else None
        return {
            "format": INSPECT_FORMAT,
            "file": arg.path.name,
            "file_size": file_size,
            "file_sha256": file_sha256,
            "kind": "rmir" if spec is not None else "export",
            "layout": reader.layout,
            "metadata": metadata,
            "artifacts": artifacts,
            "pipeline_spec": spec,
            "verified": verify,
        }


def check_key(reader: EffReader) -> str | None:
    """Prove the reader's key by decrypting the smallest encrypted artifact; its name, or ``None`` if none is.

    Decrypting checks what the archive offers for that: the key check value and GCM tag of an artifact written
    by servicemaker, the sha256 of the plaintext of a legacy EFF one. A wrong key raises ``WrongKeyError``
    (exit 4); a legacy cipher whose salt is unknown raises ``SaltsError`` (exit 4).
    """
    encrypted = [name for name, props in reader.artifacts.items() if encryption_of(props) is not None]
    if not encrypted:
        return None
    name = min(encrypted, key=lambda n: (reader.stored_size(n), n))
    reader.hash_artifact(name)
    return name


def jsonable(value: Any) -> Any:
    """``value`` with every YAML-only type turned into JSON (the rules docs/cli.md lists).

    date/datetime/time → ISO 8601 text; bytes (``!!binary``) → base64 text; set (``!!set``) → sorted list;
    tuple (``!!omap``/``!!pairs`` entries) → list; NaN/±infinity → ``"NaN"``/``"Infinity"``/``"-Infinity"``;
    a mapping key that is not text → the text of its JSON value (``1`` → ``"1"``, ``true`` → ``"true"``,
    a date → its ISO text). Anything else → ``str(value)``.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else NONFINITE[repr(value)]
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {_json_key(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted((jsonable(v) for v in value), key=_order)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


def _json_key(key: Any) -> str:
    key = jsonable(key)
    return key if isinstance(key, str) else json.dumps(key, allow_nan=False)


def _order(value: Any) -> tuple:
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, (int, float)):
        return (2, value)
    if isinstance(value, str):
        return (3, value)
    return (4, json.dumps(value, sort_keys=True, allow_nan=False))


def to_json(doc: dict[str, Any]) -> str:
    """The strict JSON text of an inspect document (no NaN/Infinity tokens: any miss raises, never prints)."""
    return json.dumps(jsonable(doc), indent=2, sort_keys=False, allow_nan=False)
