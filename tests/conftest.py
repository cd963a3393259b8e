"""Shared fixtures: tiny exports for every pipeline (built once per session), a random legacy salt table."""

from __future__ import annotations

import os
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


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("SERVICEMAKER_KEY", "SERVICEMAKER_EFF_SALTS", "SERVICEMAKER_DEBUG"):
        monkeypatch.delenv(var, raising=False)


def listing(folder: Path) -> list[str]:
    """Every file below ``folder`` (hidden ones included), to prove nothing was left behind."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
