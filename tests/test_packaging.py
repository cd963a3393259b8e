"""A non-editable install ships everything inside the servicemaker namespace: no generic top-level names."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contents(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, timeout=300)
    wheel = next(tmp_path.glob("servicemaker-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"servicemaker", next(t for t in tops if t.endswith(".dist-info"))}
    for sub in ("pipelines/text_classification.py", "schemas/nlp-intent-slot.yaml", "samples/models.py",
                "eff/reader.py", "cli/build.py", "speech/featurizer.py", "speech/data/utterances.npz",
                "runtime/asr.py", "runtime/common.py", "pipelines/_asr.py", "templates/python/model.py"):
        assert f"servicemaker/{sub}" in names
    assert not any("/tests/" in n or n.startswith("tests/") for n in names)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    command = next(line.strip() for line in ci.splitlines() if line.strip() and not line.startswith("#")
                   and not line.startswith(("set ", "cd ")))
    assert f"\n{command}\n" in readme
