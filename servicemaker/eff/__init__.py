"""The EFF container: read and write ``.riva``/``.eff``/``.rmir`` archives (see docs/archive-format.md)."""

from servicemaker.eff.codecs import GCM_NAME, KeyRing, SaltTable, describe_encryption, digest_of, encryption_of
from servicemaker.eff.limits import DEFAULT_LIMITS, Limits
from servicemaker.eff.manifest import MANIFEST_NAME, REGISTRY, Manifest
from servicemaker.eff.reader import EffReader
from servicemaker.eff.writer import EffWriter

__all__ = [
    "DEFAULT_LIMITS", "GCM_NAME", "MANIFEST_NAME", "REGISTRY", "EffReader", "EffWriter", "KeyRing", "Limits",
    "Manifest", "SaltTable", "describe_encryption", "digest_of", "encryption_of",
]
