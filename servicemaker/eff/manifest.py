"""The EFF manifest: ``{metadata: {...}, artifacts: {<name>: {...props}}}``."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from servicemaker import yamlio
from servicemaker.errors import ArchiveError, first_line, shown

MANIFEST_NAME = "manifest.yaml"
REGISTRY = "artifacts"
#: YAML nodes a manifest may hold: a base for the metadata (an RMIR's pipeline spec is a few thousand) plus a few
#: dozen per member (an encrypted artifact's props are 28 nodes, its pipeline-spec reference about 10)
MANIFEST_BASE_NODES = 20_000
MANIFEST_NODES_PER_MEMBER = 40
#: An artifact name is one path component: printable, no separators, not '.'/'..'.
_NAME_RE = re.compile(r"^[^/\\\x00-\x1f\x7f]+$")


def check_artifact_name(name: str, where: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", "..") or len(name) > 255:
        raise ArchiveError(f"{where}: artifact name {shown(name)} is not allowed (one file name: no '/', '\\', "
                           "control characters, '.' or '..', at most 255 characters)")


@dataclass
class Manifest:
    metadata: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: bytes, where: str, members: int | None = None) -> Manifest:
        """``members``: how many members the archive holds; the manifest's node budget grows with it (a few dozen
        nodes per artifact), so a hostile manifest in a small archive is refused after a fraction of a second."""
        limits = yamlio.DEFAULT_LIMITS
        if members is not None:
            budget = MANIFEST_BASE_NODES + MANIFEST_NODES_PER_MEMBER * members
            limits = dataclasses.replace(limits, max_nodes=min(limits.max_nodes, budget))
        try:
            data = yamlio.load(text, limits)
        except yamlio.YamlError as err:
            raise ArchiveError(f"{where}: manifest.yaml is not valid YAML: {first_line(str(err), 200)}") from None
        if not isinstance(data, dict):
            raise ArchiveError(f"{where}: manifest.yaml must be a mapping with 'metadata' and 'artifacts'")
        unknown = sorted(str(k) for k in data if k not in ("metadata", "artifacts"))
        if unknown:
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise ArchiveError(f"{where}: manifest.yaml has unknown top-level keys: "
                               f"{', '.join(shown(k)[1:-1] for k in unknown[:5])}{more}")
        metadata = {} if data.get("metadata") is None else data["metadata"]
        artifacts = {} if data.get("artifacts") is None else data["artifacts"]
        if not isinstance(metadata, dict):
            raise ArchiveError(f"{where}: manifest.yaml 'metadata' must be a mapping")
        if not isinstance(artifacts, dict):
            raise ArchiveError(f"{where}: manifest.yaml 'artifacts' must be a mapping of name to properties")
        clean: dict[str, dict[str, Any]] = {}
        for name, props in artifacts.items():
            check_artifact_name(name, where)
            if not isinstance(props, dict):
                # null props included: reading such an artifact as plaintext could hand out ciphertext
                raise ArchiveError(f"{where}: properties of artifact {shown(name)} must be a mapping, not "
                                   f"{'null' if props is None else type(props).__name__}",
                                   hint="every artifact needs its props, at least 'encryption'; re-export the archive")
            clean[name] = props
        return cls(metadata=metadata, artifacts=clean)

    def dump(self) -> bytes:
        return yamlio.dump({"metadata": self.metadata, "artifacts": self.artifacts}).encode("utf-8")
