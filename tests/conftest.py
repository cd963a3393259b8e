"""Shared fixtures: tiny exports for every pipeline (built once per session), a random legacy salt table."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from servicemaker.eff.codecs import SaltTable

CIPHER_ID = "qwertyuiop"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from servicemaker.samples.__main__ import ALL, make_samples

    out = tmp_path_factory.mktemp("tiny")
    make_samples(out, ALL, tiny=True)
    return out


@pytest.fixture()
def tiny(tiny_dir, tmp_path) -> Path:
    """A private copy of the tiny exports (tests may write beside them)."""
    dst = tmp_path / "in"
    shutil.copytree(tiny_dir, dst)
    return dst


@pytest.fixture(scope="session")
def salt() -> bytes:
    return os.urandom(32)


@pytest.fixture()
def salts_file(tmp_path, salt) -> Path:
    p = tmp_path / "salts.yaml"
    p.write_text(f"{CIPHER_ID}: {salt.hex()}\n")
    return p


@pytest.fixture()
def salt_table(salt) -> SaltTable:
    return SaltTable({CIPHER_ID: salt}, origin="test")


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Session- and module-scoped fixtures that deploy get a compile cache of the session's, never the developer's."""
    patch = pytest.MonkeyPatch()
    patch.setenv("SERVICEMAKER_CACHE", str(tmp_path_factory.mktemp("session-cache")))
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path_factory):
    for var in ("SERVICEMAKER_KEY", "SERVICEMAKER_EFF_SALTS", "SERVICEMAKER_DEBUG", "SERVICEMAKER_CACHE_URL",
                "SERVICEMAKER_CACHE_SIZE"):
        monkeypatch.delenv(var, raising=False)
    # every test gets its own, empty compile cache: never the developer's, and no test sees another's entries
    monkeypatch.setenv("SERVICEMAKER_CACHE", str(tmp_path_factory.mktemp("cache")))


def listing(folder: Path) -> list[str]:
    """Every file below ``folder`` (hidden ones included), to prove nothing was left behind."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def gate_refuses_then_allows(args: list[str], folder: Path, message: str, timeout: int) -> None:
    """A deploy command whose network fails the accuracy gate: exit 5 naming ``message`` and the override, nothing
    left in ``folder``; the same command with --allow-accuracy-drop succeeds."""
    import subprocess

    failed = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert failed.returncode == 5 and "Traceback" not in failed.stderr
    assert message in failed.stderr
    assert "--allow-accuracy-drop" in failed.stderr
    assert listing(folder) == []
    ok = subprocess.run(args + ["--allow-accuracy-drop"], capture_output=True, text=True, timeout=timeout)
    assert ok.returncode == 0, ok.stderr[-2000:]


def rewrite_tar(src: Path, dst: Path, change) -> Path:
    """Copy a tar.gz applying ``change(members)`` to its list of (TarInfo, bytes)."""
    with tarfile.open(src) as tf:
        members = [(m, tf.extractfile(m).read() if m.isfile() else b"") for m in tf.getmembers()]
    members = change(members)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for info, data in members:
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if info.isfile() else None)
    dst.write_bytes(gzip.compress(buf.getvalue()))
    return dst


def edit_manifest(src: Path, dst: Path, change, drop: tuple[str, ...] = ()) -> Path:
    """Copy an archive with ``change(manifest_dict)`` applied to its manifest and the members ``drop`` removed."""
    from servicemaker import yamlio

    def apply(members):
        out = []
        for info, data in members:
            if info.name.split("/")[-1] in drop:
                continue
            if info.name.endswith("manifest.yaml"):
                doc = yamlio.load(data.decode())
                change(doc)
                data = yamlio.dump(doc).encode()
            out.append((info, data))
        return out

    return rewrite_tar(src, dst, apply)


NLP = ("text_classification", "token_classification", "intent_slot", "punctuation", "qa")


@pytest.fixture(scope="session")
def tiny_rmirs(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    """RMIRs of the five NLP pipelines, built from the tiny exports."""
    from servicemaker.build import BuildOptions, build
    from servicemaker.keys import ArchiveArg

    out = tmp_path_factory.mktemp("rmirs")
    paths = {}
    for name in NLP:
        paths[name] = out / f"{name}.rmir"
        build(BuildOptions(pipeline=name, output=ArchiveArg(paths[name], None),
                           inputs=[ArchiveArg(tiny_dir / f"{name}.riva", None)]))
    return paths
