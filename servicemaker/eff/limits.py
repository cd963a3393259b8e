"""Size caps the archive reader enforces. Documented in docs/archive-format.md."""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True)
class Limits:
    #: manifest.yaml larger than this is refused before it is parsed
    max_manifest_bytes: int = 16 * MiB
    #: YAML/text artifacts that are parsed in memory (model_config.yaml, label files, vocabularies)
    max_parsed_artifact_bytes: int = 64 * MiB
    #: any single member
    max_member_bytes: int = 64 * GiB
    #: the sum of all members (the archive uncompressed)
    max_total_bytes: int = 256 * GiB
    #: number of tar entries
    max_members: int = 10_000
    #: uncompressed / compressed, checked once the uncompressed total exceeds ``ratio_floor_bytes``
    max_compression_ratio: float = 200.0
    ratio_floor_bytes: int = 256 * MiB


DEFAULT_LIMITS = Limits()
