"""svc-inspect: what an EFF archive holds — metadata, artifacts and, for an RMIR, the pipeline spec.

``inspect_archive`` returns the document ``svc-inspect --json`` prints (format ``servicemaker.inspect/1``,
documented in docs/cli.md); ``verify=True`` also decrypts every artifact and checks its sha256/tag.
"""

from __future__ import annotations

from typing import Any

from servicemaker.build import sha256_file
from servicemaker.eff.codecs import KeyRing, SaltTable, describe_encryption, encryption_of
from servicemaker.eff.reader import EffReader
from servicemaker.keys import ArchiveArg, fallback_key
from servicemaker.spec import SPEC_KEY, read_spec

INSPECT_FORMAT = "servicemaker.inspect/1"
_HIDDEN_PROPS = {"salt", "nonce", "key_check", "kdf", "kdf_n", "kdf_r", "kdf_p"}


def inspect_archive(arg: ArchiveArg, salts: SaltTable | None = None, verify: bool = False) -> dict[str, Any]:
    with EffReader(arg.path, ring=KeyRing(key=arg.key or fallback_key(), salts=salts)) as reader:
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
