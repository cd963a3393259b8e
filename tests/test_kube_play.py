"""The chart's deploy Job, run for real: its pod template (rendered by Helm with CPU values) becomes a Pod that
`podman kube play` runs against the servicemaker image and a local S3 server (moto, 127.0.0.1). The encrypted RMIR
is read from S3 with its key from a Secret; the first deploy fills the S3 compile cache, a second one into a fresh
folder (no local cache left) takes the network from it.

Skipped, with the reason, where podman or the image localhost/servicemaker:latest is missing (`make image`)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "servicemaker"
IMAGE = "localhost/servicemaker:latest"
CONTAINERS_CONF = ROOT / "docker" / "containers.conf"
RUN_SECONDS = 600  # one deploy of the tiny sample in the container takes well under a minute
PODMAN_SECONDS = 120


def _podman_env() -> dict[str, str]:
    env = dict(os.environ)
    if CONTAINERS_CONF.is_file():
        env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    return env


def podman(*args: str, check: bool = True, timeout: float = PODMAN_SECONDS) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=_podman_env())
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}: {done.stderr[-3000:]}")
    return done


def _skip_reason() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman buildah runc)"
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        return f"the image {IMAGE} is missing: build it with `make image`"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
helm = pytest.importorskip("helm_python", reason="helm-python-sdk (PyPI) is not installed")


@pytest.fixture(scope="module")
def rmir(tmp_path_factory) -> tuple[Path, str]:
    """An encrypted text_classification RMIR built on the host with svc-build from a tiny code-built export."""
    from servicemaker.samples.models import tiny_nlp_export

    folder = tmp_path_factory.mktemp("kube-play-rmir")
    riva = tiny_nlp_export("text_classification", folder / "text_classification.riva")
    key = secrets.token_hex(16)
    out = folder / "text_classification.rmir"
    build = subprocess.run([str(Path(sys.executable).with_name("svc-build")), "text_classification",
                            f"{out}:env:KUBE_PLAY_KEY", str(riva), "--domain_name=weather"],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "KUBE_PLAY_KEY": key})
    assert build.returncode == 0, build.stderr
    return out, key


def job_pod(values: dict, name: str, host_folder: Path, scratch: Path) -> dict:
    """The chart's deploy Job for ``values``, as a Pod podman can play: its pod template, restartPolicy Never, the
    host's network (the S3 server listens on 127.0.0.1), the claim replaced by ``host_folder``, and each emptyDir by
    a world-writable folder under ``scratch`` (Kubernetes makes emptyDirs writable for any user; podman 4 creates
    them owned by root)."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name="kp", namespace="default")
    jobs = [d for file, text in rendered.items() if not file.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d and d.get("kind") == "Job"]
    assert len(jobs) == 1
    template = jobs[0]["spec"]["template"]
    spec = template["spec"]
    spec["restartPolicy"] = "Never"
    spec["hostNetwork"] = True
    models = [v for v in spec["volumes"] if v["name"] == "models"]
    assert len(models) == 1 and "persistentVolumeClaim" in models[0]
    models[0].pop("persistentVolumeClaim")
    models[0]["hostPath"] = {"path": str(host_folder), "type": "Directory"}
    for volume in spec["volumes"]:
        if "emptyDir" in volume:
            volume.pop("emptyDir")
            folder = scratch / volume["name"]
            folder.mkdir()
            folder.chmod(0o1777)
            volume["hostPath"] = {"path": str(folder), "type": "Directory"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": template["metadata"]["labels"]},
            "spec": spec}


def secret_file(folder: Path, name: str, data: dict[str, str]) -> Path:
    """A Secret's ``data`` (key → base64 of the value, as JSON): what podman 4's `kube play` reads from its secret
    store for a secretKeyRef."""
    path = folder / f"{name}.json"
    path.write_text(json.dumps({k: base64.b64encode(v.encode()).decode() for k, v in data.items()}))
    return path


def json_document(stdout: str) -> dict:
    """The --json result document svc-deploy printed (the last JSON object on stdout)."""
    decoder = json.JSONDecoder()
    found = None
    for i, ch in enumerate(stdout):
        if ch == "{" and (i == 0 or stdout[i - 1] == "\n"):
            try:
                doc, _ = decoder.raw_decode(stdout[i:])
            except ValueError:
                continue
            if isinstance(doc, dict):
                found = doc
    assert found is not None, f"no JSON document in the deploy's output:\n{stdout[-3000:]}"
    return found


def play(pod: dict, work: Path) -> tuple[int, str, str]:
    """Run ``pod`` with podman kube play; wait for its container; return (exit code, stdout, stderr)."""
    name = pod["metadata"]["name"]
    container = f"{name}-{pod['spec']['containers'][0]['name']}"
    kube = work / f"{name}.yaml"
    kube.write_text(yaml.safe_dump(pod))
    podman("kube", "play", str(kube))
    code = podman("wait", container, timeout=RUN_SECONDS).stdout.strip().splitlines()[-1]
    logs = subprocess.run(["podman", "logs", container], capture_output=True, text=True, timeout=PODMAN_SECONDS,
                          env=_podman_env())
    return int(code), logs.stdout, logs.stderr


def cache_records(repo: Path) -> dict[str, dict]:
    """Network model → its compile cache record in deploy_status.json ({"status": "hit"|"miss"|..., "key", ...})."""
    status = json.loads((repo / "deploy_status.json").read_text())
    records = {name: m["cache"] for name, m in status["models"].items() if "cache" in m}
    assert records, f"deploy_status.json records no compile cache use: {status['models']}"
    return records


def test_job_pod_deploys_from_s3_and_reuses_the_s3_cache(rmir, tmp_path):
    from s3server import make_buckets, s3_server

    rmir_path, key = rmir
    run_id = uuid.uuid4().hex[:8]
    keys_secret, s3_secret = f"svc-kp-keys-{run_id}", f"svc-kp-s3-{run_id}"
    pods: list[str] = []
    created_secrets: list[str] = []
    folders: list[Path] = []
    try:
        with s3_server(set_env=False) as endpoint:
            import boto3

            make_buckets(endpoint, ("models", "cache"))
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing")
            s3.upload_file(str(rmir_path), "models", "nlp/text_classification.rmir")
            for name, data in ((keys_secret, {"rmir": key}),
                               (s3_secret, {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                                            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})):
                podman("secret", "create", name, str(secret_file(tmp_path, name, data)))
                created_secrets.append(name)
            values = {
                "image": {"repository": "localhost/servicemaker", "tag": "latest", "pullPolicy": "Never"},
                "deploy": {"target": "onnxruntime-python",
                           "rmirs": [{"url": "s3://models/nlp/text_classification.rmir",
                                      "keySecret": {"name": keys_secret, "key": "rmir"}}],
                           "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}},
                "cache": {"url": "s3://cache/engines"},
                "s3": {"secretName": s3_secret},
                "triton": {"enabled": False},
            }
            results = []
            for run in (1, 2):
                # a fresh host folder per run: the claim (and the local cache on it) starts empty both times
                scratch = Path(tempfile.mkdtemp(prefix="svc-kube-play-"))
                folders.append(scratch)
                scratch.chmod(0o755)
                folder = scratch / "claim"
                folder.mkdir()
                folder.chmod(0o777)  # the pod runs as the chart's non-root user
                pod = job_pod(values, f"svc-kp-{run_id}-{run}", folder, scratch)
                text = yaml.safe_dump(pod)
                assert key not in text and "testing" not in text  # keys and credentials only through Secrets
                pods.append(pod["metadata"]["name"])
                code, out, err = play(pod, tmp_path)
                assert code == 0, f"deploy run {run} exited {code}:\n{err[-4000:]}\n{out[-2000:]}"
                assert "Traceback" not in err
                doc = json_document(out)
                assert doc["ok"] is True and doc["error"] is None, doc
                repo = folder / "cpu"
                assert doc["repository"] == "/models/cpu" and doc["target"] == "onnxruntime-python"
                assert any(p.name == "config.pbtxt" for p in repo.rglob("config.pbtxt"))
                results.append((doc, cache_records(repo)))
                if run == 1:
                    objects = s3.list_objects_v2(Bucket="cache", Prefix="engines/").get("Contents", [])
                    assert any(o["Key"].startswith("engines/entries/") for o in objects), objects
                    for o in objects:  # the RMIR's key never reaches the shared cache
                        body = s3.get_object(Bucket="cache", Key=o["Key"])["Body"].read()
                        assert key.encode() not in body, o["Key"]
            (first_doc, first), (second_doc, second) = results
            shared = "s3://cache/engines"
            assert first and all(r["status"] == "miss" and shared in r["published"] for r in first.values()), first
            assert set(second) == set(first), second
            for name, record in second.items():
                assert record["status"] == "hit" and record["store"] == shared, record
                assert record["key"] == first[name]["key"]
            assert first_doc["cache"] == {name: "miss" for name in first}
            assert second_doc["cache"] == {name: "hit" for name in first}
    finally:
        for name in pods:
            podman("pod", "rm", "-f", name, check=False)
        for name in created_secrets:
            podman("secret", "rm", name, check=False)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
