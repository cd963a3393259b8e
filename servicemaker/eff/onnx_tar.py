"""``<file>.onnx.tar``: an ONNX graph over 2 GB with its external-data files, as one artifact.

The inner archive is an uncompressed tar: exactly one ``*.onnx`` file at its root plus the external-data files
the graph names (relative paths, possibly in sub-folders). Reading applies the same checks as the outer archive
(member names and types, extended-header caps, member count and sizes).
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import BinaryIO

from servicemaker.eff.limits import DEFAULT_LIMITS, Limits
from servicemaker.errors import shown
from servicemaker.eff.reader import (CHUNK, _TAR_ERRORS, _describe, bounded_tarinfo, check_member_type,
                                     normalize_member_name)
from servicemaker.eff.writer import _tarinfo
from servicemaker.errors import ArchiveError, ServiceMakerError, UnsafeArchiveError

SUFFIX = ".onnx.tar"


def _iter_safe(stream: BinaryIO, where: str, limits: Limits):
    """Yield (tar, info, normalized name) for each regular file of a streamed tar, refusing unsafe members.

    After the last member the rest of ``stream`` is read to its end and must be NUL padding: an artifact stream
    verifies its digest and GCM tag only there, so stopping at the tar end marker would trust unverified bytes."""
    seen: set[str] = set()
    total = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=bounded_tarinfo(where, limits)) as tf:
            for count, info in enumerate(tf, 1):
                if count > limits.max_members:
                    raise UnsafeArchiveError(f"{where}: more than {limits.max_members} members")
                check_member_type(info, where)
                name = normalize_member_name(info.name, where)
                if not name or info.isdir():
                    continue
                if name in seen:
                    raise UnsafeArchiveError(f"{where}: member {shown(name)} appears more than once")
                seen.add(name)
                total += info.size
                if info.size > limits.max_member_bytes or total > limits.max_total_bytes:
                    raise UnsafeArchiveError(f"{where}: member {shown(name)} exceeds the size limits")
                yield tf, info, name
        while chunk := stream.read(CHUNK):
            if chunk.count(0) != len(chunk):
                raise UnsafeArchiveError(f"{where}: data after the tar end-of-archive marker")
    except ServiceMakerError:
        raise
    except RecursionError:
        raise UnsafeArchiveError(f"{where}: too many nested tar extended headers") from None
    except _TAR_ERRORS as err:
        raise ArchiveError(f"{where}: not a readable tar ({_describe(err)})") from None


def _graph_of(names: list[str], where: str) -> str:
    graphs = [n for n in names if n.endswith(".onnx") and "/" not in n]
    if len(graphs) != 1:
        raise ArchiveError(f"{where}: must hold exactly one .onnx graph at its root, found {len(graphs)}")
    return graphs[0]


def scan(stream: BinaryIO, where: str, limits: Limits = DEFAULT_LIMITS) -> dict[str, int]:
    """Validate a streamed ``.onnx.tar``; return member sizes by name (the graph first)."""
    sizes = {name: info.size for _, info, name in _iter_safe(stream, where, limits)}
    graph = _graph_of(list(sizes), where)
    return {graph: sizes.pop(graph), **sizes}


def extract(stream: BinaryIO, dest_dir: str | os.PathLike, where: str, limits: Limits = DEFAULT_LIMITS) -> Path:
    """Extract a streamed ``.onnx.tar`` into ``dest_dir`` (which must be empty or new); return the graph path."""
    dest = Path(dest_dir).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    written: list[Path] = []
    try:
        for tf, info, name in _iter_safe(stream, where, limits):
            target = (dest / name).resolve()
            if dest not in target.parents:
                raise UnsafeArchiveError(f"{where}: member {shown(name)} would be written outside {dest}")
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(info)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            with os.fdopen(os.open(target, flags, 0o600), "wb") as out:
                written.append(target)
                while chunk := src.read(CHUNK):
                    out.write(chunk)
            names.append(name)
        return dest / _graph_of(names, where)
    except BaseException:
        for path in written:  # nothing half-written: the stream is verified only at its end
            path.unlink(missing_ok=True)
        raise


def pack(graph: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Pack an ONNX file saved with external data (``onnx.save(..., save_as_external_data=True)``) and the
    files it references into ``out`` (deterministic). Needs the ``onnx`` package."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    graph = Path(graph)
    model = onnx.load(str(graph), load_external_data=False)
    files: list[str] = []
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            loc = next(e.value for e in tensor.external_data if e.key == "location")
            norm = normalize_member_name(loc, str(graph))
            if norm not in files:
                files.append(norm)
    out = Path(out)
    with open(out, "wb") as fh, tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, path in [(graph.name, graph)] + [(f, graph.parent / f) for f in sorted(files)]:
            with open(path, "rb") as src:
                tf.addfile(_tarinfo(name, os.fstat(src.fileno()).st_size), src)
    return out
