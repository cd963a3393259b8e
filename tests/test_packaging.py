"""A non-editable install ships everything inside the servicemaker namespace: no generic top-level names."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contents(tmp_path):
    # from a fresh copy: a build/ folder left by an earlier build would ship files pyproject no longer lists
    source = _source_copy(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, timeout=300)
    wheel = next(tmp_path.glob("servicemaker-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"servicemaker", next(t for t in tops if t.endswith(".dist-info"))}
    for sub in ("pipelines/text_classification.py", "schemas/nlp-intent-slot.yaml", "samples/models.py",
                "eff/reader.py", "cli/build.py", "speech/featurizer.py", "speech/data/utterances.npz",
                "runtime/asr.py", "runtime/common.py", "pipelines/_asr.py", "templates/python/model.py"):
        assert f"servicemaker/{sub}" in names
    assert not any("/tests/" in n or n.startswith("tests/") for n in names)
    # every Python source of the package's folders ships (a sub-package missing from pyproject's list would not)
    mapped = {"servicemaker": "", "pipelines": "pipelines/", "schemas": "schemas/", "templates": "templates/",
              "plugins": "plugins/", "samples": "samples/"}
    for folder, prefix in mapped.items():
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                rel = path.relative_to(ROOT / folder).as_posix()
                assert f"servicemaker/{prefix}{rel}" in names, f"{folder}/{rel} is not in the wheel"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    command = next(line.strip() for line in ci.splitlines() if line.strip() and not line.startswith("#")
                   and not line.startswith(("set ", "cd ")))
    assert f"\n{command}\n" in readme


def _source_copy(dest: Path) -> Path:
    """The project's files as a fresh checkout has them (no build/ or egg-info left by an earlier build)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            timeout=60) if (ROOT / ".git").exists() and shutil.which("git") else None
    if listed is not None and listed.returncode == 0:
        for name in listed.stdout.decode().split("\0"):
            if name and (ROOT / name).is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, dest / name)
    else:
        shutil.copytree(ROOT, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "demo-out"))
    return dest


# setuptools tells every editable install of a package-dir layout how it was installed; that is all it may say
EDITABLE_NOTICE = "Editable installation."


@pytest.mark.parametrize("hook", ["build_wheel", "build_editable"])
def test_builds_without_setuptools_warnings(tmp_path, hook):
    """``pip install .`` and ``make`` (an editable install) print no packaging warnings of ours: setuptools'
    build hooks run on a fresh copy, every warning made visible."""
    src = _source_copy(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run([sys.executable, "-W", "always", "-c",
                           f"from setuptools import build_meta; print(build_meta.{hook}({str(out)!r}))"],
                          cwd=src, capture_output=True, text=True, timeout=300,
                          # a caller's "write no .pyc" makes distutils say it skips byte-compiling: not ours
                          env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(out.glob("servicemaker-*.whl"))
    text = done.stdout + done.stderr
    warnings = [line for line in text.splitlines() if "Warning" in line or "warning:" in line.lower()
                or "InformationOnly" in line]
    if hook == "build_editable":
        warnings = [w for w in warnings if not w.rstrip().endswith(f"InformationOnly: {EDITABLE_NOTICE}")]
    assert warnings == [], "\n".join(warnings)
