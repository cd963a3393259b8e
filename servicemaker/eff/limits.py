"""Size caps the archive reader enforces, and the bound on values echoed in its messages.

Documented in docs/archive-format.md.
"""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: the most characters of an archive-supplied value that an error message shows


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
    #: tar headers, extended headers and padding, beyond the members' data (the inflated stream is refused once it
    #: passes ``max_total_bytes + max_overhead_bytes``)
    max_overhead_bytes: int = 256 * MiB
    #: number of tar entries
    max_members: int = 10_000
    #: inflated / compressed file size, checked while the stream inflates once past ``ratio_floor_bytes``
    max_compression_ratio: float = 200.0
    ratio_floor_bytes: int = 256 * MiB
    #: the data of one pax or GNU long-name header (tar reads it whole into memory)
    max_extended_header_bytes: int = 1 * MiB
    #: extended headers in front of one member
    max_extended_headers: int = 8
    #: scrypt work (n·r·p) summed over the distinct key derivations one archive asks for
    max_kdf_work: int = 2**26


DEFAULT_LIMITS = Limits()
