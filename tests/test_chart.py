"""The Helm chart (charts/servicemaker): lint, render default and example values, validate every manifest against
the Kubernetes schemas, and check what the manifests say (keys only from Secrets, one Job/Deployment per GPU product,
the svc-deploy command line, claim mounts, security contexts), and that bad values fail with a clear message."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (PyPI) is not installed")
kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (PyPI) is not installed")

CHART = Path(__file__).resolve().parent.parent / "charts" / "servicemaker"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
KUBE_VERSION = "1.33.0"
VALUE_SETS = [("default", None)] + [(p.stem, p) for p in EXAMPLES]


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def values_of(path: Path | None) -> dict:
    return {} if path is None else yaml.safe_load(path.read_text())


def render(chart, values: dict | None = None, revision: int = 1) -> list[dict]:
    """Every Kubernetes object the chart renders for ``values`` (NOTES.txt left out)."""
    docs = []
    for name, text in chart.render(values or {}, name="sm", namespace="ml", revision=revision).items():
        if name.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def containers(doc: dict) -> list[dict]:
    spec = doc["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def gpu_values() -> dict:
    return values_of(CHART / "examples" / "gpu-tensorrt-s3.yaml")


# ---- lint, render, schemas -----------------------------------------------------------------------------------------

def test_examples_exist():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("label,path", VALUE_SETS, ids=[v[0] for v in VALUE_SETS])
def test_lint_strict(label, path):
    report = helm.lint(CHART, values=values_of(path), strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems


@pytest.mark.parametrize("label,path", VALUE_SETS, ids=[v[0] for v in VALUE_SETS])
def test_every_manifest_validates_against_kubernetes_schemas(chart, label, path):
    docs = render(chart, values_of(path))
    kinds = {d["kind"] for d in docs}
    assert {"Job", "Deployment", "Service"} <= kinds
    for doc in docs:
        kv.validate(doc, KUBE_VERSION, strict=True)  # raises kubernetes_validate.ValidationError


def test_schema_validation_is_real(chart):
    """The validator above rejects what Kubernetes would: an unknown field, a wrong type."""
    job = of_kind(render(chart), "Job")[0]
    broken = copy.deepcopy(job)
    broken["spec"]["template"]["spec"]["containers"][0]["commandd"] = ["svc-deploy"]
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, KUBE_VERSION, strict=True)
    broken = copy.deepcopy(job)
    broken["spec"]["backoffLimit"] = "one"
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, KUBE_VERSION, strict=True)


def test_app_version_is_the_package_version(chart):
    from servicemaker import __version__

    assert chart.metadata["appVersion"] == __version__
    job = of_kind(render(chart), "Job")[0]
    assert containers(job)[0]["image"] == f"localhost/servicemaker:{__version__}"


@pytest.mark.parametrize("label,path", VALUE_SETS, ids=[v[0] for v in VALUE_SETS])
def test_images_pinned_and_labels_standard(chart, label, path):
    for doc in render(chart, values_of(path)):
        labels = doc["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by", "app.kubernetes.io/component", "helm.sh/chart"):
            assert key in labels, (doc["metadata"]["name"], key)
        assert len(doc["metadata"]["name"]) <= 63
        if doc["kind"] in ("Job", "Deployment"):
            for c in containers(doc):
                repo, _, tag = c["image"].rpartition(":")
                assert repo and tag and tag != "latest", c["image"]


# ---- what the manifests say ----------------------------------------------------------------------------------------

def test_gpu_products_get_their_own_job_repository_and_triton(chart):
    values = gpu_values()
    docs = render(chart, values)
    products = values["gpu"]["products"]
    jobs, deployments, services = of_kind(docs, "Job"), of_kind(docs, "Deployment"), of_kind(docs, "Service")
    assert len(jobs) == len(deployments) == len(services) == len(products)
    repos = set()
    for product, job, deployment in zip(products, jobs, deployments):
        for workload in (job, deployment):
            spec = workload["spec"]["template"]["spec"]
            assert spec["nodeSelector"] == {"nvidia.com/gpu.product": product}
            main = spec["containers"][0]
            assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
            assert main["resources"]["limits"]["memory"]  # the values' own limits are kept beside the GPU
        repo = f"/models/{product.lower()}"
        assert containers(job)[0]["args"][len(values["deploy"]["rmirs"])] == repo
        assert f"--model-repository={repo}" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        repos.add(repo)
        # the Service selects exactly this product's Triton pods
        selector = next(s for s in services if s["metadata"]["name"] == deployment["metadata"]["name"])["spec"]
        assert selector["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert len(repos) == len(products)
    assert len({s["metadata"]["name"] for s in services}) == len(products)


def test_svc_deploy_command_line(chart):
    job = of_kind(render(chart, gpu_values()), "Job")[0]
    c = containers(job)[0]
    assert c["command"] == ["svc-deploy"]
    assert c["args"] == [
        "s3://models/speech/citrinet-en-US-asr-streaming.rmir:env:SVC_RMIR_KEY_0",
        "s3://models/nlp/weather.rmir:env:SVC_RMIR_KEY_1",
        "/models/nvidia-a100-sxm4-80gb",
        "--target", "tensorrt",
        "--cache", "s3://servicemaker-cache/engines",
        "-f", "--json",
        "--nn.precision=fp16",
    ]


def test_keys_and_credentials_only_as_secret_refs(chart):
    docs = render(chart, gpu_values())
    for job in of_kind(docs, "Job"):
        env = env_of(containers(job)[0])
        assert env["SVC_RMIR_KEY_0"]["valueFrom"]["secretKeyRef"] == {"name": "servicemaker-keys", "key": "asr"}
        assert env["SVC_RMIR_KEY_1"]["valueFrom"]["secretKeyRef"] == {"name": "servicemaker-keys", "key": "weather"}
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "servicemaker-s3" and ref["key"] == var
            assert ref.get("optional", False) is (var not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
        for name, e in env.items():
            if "KEY" in name or "SECRET" in name or "TOKEN" in name:
                assert "value" not in e, name
        # a key is never an argument: every ":" suffix of an RMIR argument names an environment variable
        for arg in containers(job)[0]["args"]:
            if ".rmir" in arg:
                assert arg.split(".rmir", 1)[1] in ("", ":env:SVC_RMIR_KEY_0", ":env:SVC_RMIR_KEY_1")


def test_plain_key_in_values_refused(chart):
    values = {"deploy": {"rmirs": [{"url": "s3://models/a.rmir", "key": "tlt_encode"}]}}
    with pytest.raises(helm.HelmValuesError, match=r"/deploy/rmirs/0.*additional properties 'key' not allowed"):
        render(chart, values)


def test_cpu_mode_requests_no_gpu(chart):
    docs = render(chart)
    job, deployment = of_kind(docs, "Job")[0], of_kind(docs, "Deployment")[0]
    for workload in (job, deployment):
        spec = workload["spec"]["template"]["spec"]
        assert "nodeSelector" not in spec
        for c in spec["containers"]:
            assert not any("nvidia.com" in k for k in c.get("resources", {}).get("limits", {}))
    assert containers(job)[0]["args"][:4] == ["s3://servicemaker-models/text_classification.rmir", "/models/cpu",
                                              "--target", "auto"]


def test_claim_mounted_rw_for_deploy_ro_for_triton(chart):
    docs = render(chart)
    pvc = of_kind(docs, "PersistentVolumeClaim")[0]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    claim = pvc["metadata"]["name"]
    for workload in of_kind(docs, "Job") + of_kind(docs, "Deployment"):
        spec = workload["spec"]["template"]["spec"]
        volume = next(v for v in spec["volumes"] if v["name"] == "models")
        assert volume["persistentVolumeClaim"]["claimName"] == claim
        for c in containers(workload):
            mount = next(m for m in c["volumeMounts"] if m["name"] == "models")
            assert mount["mountPath"] == "/models"
            assert mount.get("readOnly", False) is (workload["kind"] == "Deployment")
    env = env_of(containers(of_kind(docs, "Job")[0])[0])
    assert env["SERVICEMAKER_CACHE"]["value"] == "/models/.servicemaker-cache"


def test_existing_claim_is_used_not_created(chart):
    docs = render(chart, values_of(CHART / "examples" / "cpu-onnxruntime-minio.yaml"))
    assert of_kind(docs, "PersistentVolumeClaim") == []
    for workload in of_kind(docs, "Job") + of_kind(docs, "Deployment"):
        claims = [v["persistentVolumeClaim"]["claimName"] for v in workload["spec"]["template"]["spec"]["volumes"]
                  if "persistentVolumeClaim" in v]
        assert claims == ["triton-models"]


def test_rmir_from_secret_volume(chart):
    docs = render(chart, values_of(CHART / "examples" / "rmir-from-secret.yaml"))
    job = of_kind(docs, "Job")[0]
    spec = job["spec"]["template"]["spec"]
    assert {"name": "rmirs", "secret": {"secretName": "weather-rmir"}} in spec["volumes"]
    c = spec["containers"][0]
    assert {"name": "rmirs", "mountPath": "/rmirs", "readOnly": True} in c["volumeMounts"]
    assert c["args"][:2] == ["/rmirs/weather.rmir:env:SVC_RMIR_KEY_0", "/models/cpu"]
    assert "AWS_ACCESS_KEY_ID" not in env_of(c)  # no object store configured, no credentials passed


def test_cache_flags(chart):
    def args(cache: dict) -> list[str]:
        job = of_kind(render(chart, {"cache": cache}), "Job")[0]
        return containers(job)[0]["args"]

    assert "--cache" not in args({}) and "--no-cache" not in args({})
    shared = args({"url": "s3://bucket/prefix"})
    assert shared[shared.index("--cache") + 1] == "s3://bucket/prefix"
    off = args({"enabled": False, "url": "s3://bucket/prefix"})
    assert "--no-cache" in off and "--cache" not in off
    job = of_kind(render(chart, {"cache": {"enabled": False}}), "Job")[0]
    assert "SERVICEMAKER_CACHE" not in env_of(containers(job)[0])


def test_job_limits_and_reruns_per_revision(chart):
    first = of_kind(render(chart, revision=1), "Job")[0]
    second = of_kind(render(chart, revision=2), "Job")[0]
    assert first["metadata"]["name"] != second["metadata"]["name"]  # an upgrade runs the deploy again
    spec = first["spec"]
    assert spec["backoffLimit"] == 1 and spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_deploy_runs_as_the_image_user(chart):
    import re

    dockerfile = CHART.parent.parent / "Dockerfile"
    if not dockerfile.is_file():
        pytest.skip("no Dockerfile")
    user = re.findall(r"^USER\s+(\d+)(?::(\d+))?\s*$", dockerfile.read_text(), flags=re.M)[-1]
    pod = of_kind(render(chart), "Job")[0]["spec"]["template"]["spec"]["securityContext"]
    assert str(pod["runAsUser"]) == user[0] and str(pod["runAsGroup"]) == (user[1] or user[0])


@pytest.mark.parametrize("label,path", VALUE_SETS, ids=[v[0] for v in VALUE_SETS])
def test_security_contexts(chart, label, path):
    for workload in of_kind(render(chart, values_of(path)), "Job") + of_kind(render(chart, values_of(path)),
                                                                                 "Deployment"):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for c in containers(workload):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert "resources" in c, c["name"]


def test_triton_serves_the_repository(chart):
    deployment = of_kind(render(chart), "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    triton = pod["containers"][0]
    assert triton["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert {p["name"]: p["containerPort"] for p in triton["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    init = {c["name"]: c for c in pod["initContainers"]}
    assert "/models/cpu/deploy_status.json" in init["wait-for-repository"]["command"][-1]
    assert "/models/cpu/requirements.txt" in init["python-requirements"]["command"]
    assert env_of(triton)["PYTHONPATH"]["value"] == "/python-deps"
    without = of_kind(render(chart, {"triton": {"pythonRequirements": {"install": False}}}), "Deployment")[0]
    assert [c["name"] for c in without["spec"]["template"]["spec"]["initContainers"]] == ["wait-for-repository"]
    assert of_kind(render(chart, {"triton": {"enabled": False}}), "Deployment") == []


def test_long_and_similar_product_names_get_distinct_short_names(chart):
    products = ["NVIDIA-H100-80GB-HBM3-MIG-1g.10gb-SHARED-extra-long-name", "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb-OTHER",
                "NVIDIA-L4"]
    docs = render(chart, {"gpu": {"products": products}, "deploy": {"target": "tensorrt"},
                          "fullnameOverride": "a-rather-long-release-name-for-the-servicemaker-chart"})
    for kind in ("Job", "Deployment", "Service"):
        names = [d["metadata"]["name"] for d in of_kind(docs, kind)]
        assert len(set(names)) == 3 and all(len(n) <= 63 for n in names), names
    repos = [containers(j)[0]["args"][1] for j in of_kind(docs, "Job")]
    assert len(set(repos)) == 3 and "/models/nvidia-l4" in repos


# ---- bad values fail with one clear message --------------------------------------------------------------------------

@pytest.mark.parametrize("values,message", [
    ({"deploy": {"target": "tensorrt-llm"}},
     r"/deploy/target': value must be one of 'auto', 'tensorrt', 'onnxruntime', 'onnxruntime-python'"),
    ({"deploy": {"rmirs": [{"keySecret": {"name": "k", "key": "a"}}]}},
     r"/deploy/rmirs/0'.*\n.*missing property 'url'"),
    ({"deploy": {"rmirs": []}}, r"/deploy/rmirs': minItems: got 0, want 1"),
    ({"deploy": {"rmirs": [{"url": "bucket/a.rmir"}]}}, r"/deploy/rmirs/0/url'"),
    ({"gpu": {"products": ["NVIDIA L4"]}}, r"/gpu/products/0'"),
])
def test_bad_values_refused_by_schema(chart, values, message):
    with pytest.raises(helm.HelmValuesError, match=message):
        render(chart, values)


@pytest.mark.parametrize("values,message", [
    ({"deploy": {"target": "tensorrt"}}, r"deploy.target=tensorrt needs GPUs: list them in gpu.products"),
    ({"gpu": {"products": ["NVIDIA-L4", "nvidia-l4"]}, "deploy": {"target": "tensorrt"}},
     r"give the same repository folder \"nvidia-l4\""),
    ({"deploy": {"rmirs": [{"file": "a.rmir"}]}}, r"deploy.rmirs\[0\].file=a.rmir: set deploy.rmirVolume"),
    ({"deploy": {"rmirs": [{"file": "a.rmir", "url": "s3://b/a.rmir"}], "rmirVolume": {"secretName": "s"}}},
     r"deploy.rmirs\[0\]: give url or file, not both"),
])
def test_bad_values_refused_by_templates(chart, values, message):
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, values)
