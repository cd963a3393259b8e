"""svc-serve refuses, before starting any server, a repository whose models need a backend its Triton lacks, and
names the target to redeploy with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from servicemaker.cli.build import app as build_app
from servicemaker.cli.deploy import app as deploy_app
from servicemaker.cli.serve import app as serve_app
from servicemaker.serve import Binary, UnservableRepositoryError, _bundle_root, check_servable, locate, model_backends

PORTS = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]

needs_bundle = pytest.mark.skipif(shutil.which("tritonserver") is not None or _bundle_root() is None,
                                  reason="needs nvidia-pytriton's CPU Triton (and no other tritonserver on PATH)")


def _config(repo: Path, name: str, text: str, files: tuple[str, ...] = ()) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(f'name: "{name}"\n' + text)
    for f in files:
        (repo / name / "1" / f).write_bytes(b"\0")


def _binary(tmp_path: Path, backends: tuple[str, ...] | None) -> Binary:
    folder = None
    if backends is not None:
        folder = tmp_path / "backends"
        for b in backends:
            (folder / b).mkdir(parents=True)
    return Binary(tmp_path / "tritonserver", [], {}, "test", folder)


@needs_bundle
def test_bundled_triton_backends_come_from_its_folder(tmp_path):
    have = locate(None, tmp_path).backend_names()
    assert have == {p.name for p in (_bundle_root() / "backends").iterdir() if p.is_dir()}
    assert "python" in have and "onnxruntime" not in have and "tensorrt" not in have


@needs_bundle
def test_onnxruntime_target_refused_before_start(runner, tiny, tmp_path):
    rmir, repo = tiny / "tc.rmir", tmp_path / "repo"
    result = runner.invoke(build_app, ["text_classification", str(rmir), str(tiny / "text_classification.riva"),
                                       "-q"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(deploy_app, [str(rmir), str(repo), "--target", "onnxruntime", "-q"])
    assert result.exit_code == 0, result.output
    network = next(name for name, b in model_backends(repo).items() if b == "onnxruntime")
    before = sorted(p.name for p in Path(repo).rglob("*"))
    result = runner.invoke(serve_app, [str(repo), *PORTS, "--query", "hello"])
    assert result.exit_code == 2, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("error: this tritonserver (nvidia-pytriton) cannot serve")
    assert f"{network} (backend onnxruntime, deployed with --target onnxruntime)" in first
    assert "--target onnxruntime-python" in result.output
    assert "starting Triton" not in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in Path(repo).rglob("*")) == before


@needs_bundle
def test_hand_written_tensorrt_plan_refused(runner, tmp_path):
    repo = tmp_path / "repo"
    _config(repo, "engine", 'platform: "tensorrt_plan"\nmax_batch_size: 8\n', ("model.plan",))
    _config(repo, "pre", 'backend: "python"\n', ("model.py",))
    result = runner.invoke(serve_app, [str(repo), *PORTS])
    assert result.exit_code == 2, result.output
    assert "engine (backend tensorrt)" in result.output and "pre" not in result.output.splitlines()[0]
    assert "svc-deploy RMIR... " in result.output and "-f --target onnxruntime-python" in result.output
    assert "starting Triton" not in result.output


def test_backend_from_platform_backend_or_model_file(tmp_path):
    repo = tmp_path / "repo"
    _config(repo, "a", 'platform: "onnxruntime_onnx"\n')
    _config(repo, "b", 'backend: "onnxruntime"\n')
    _config(repo, "c", "max_batch_size: 1\n", ("model.plan",))
    _config(repo, "d", 'platform: "ensemble"\n')
    _config(repo, "e", 'backend: "python"\n', ("model.py",))
    _config(repo, "f", "this is { not a config\n")
    assert model_backends(repo) == {"a": "onnxruntime", "b": "onnxruntime", "c": "tensorrt", "d": "", "e": "python"}


def test_the_target_named_is_one_the_server_can_run(tmp_path):
    repo = tmp_path / "repo"
    _config(repo, "net", 'platform: "tensorrt_plan"\n', ("model.plan",))
    _config(repo, "pipeline_x", 'platform: "ensemble"\n')
    (repo / "deploy_status.json").write_text(json.dumps({"target": "tensorrt", "models": {
        "net": {"target": "tensorrt"}, "pipeline_x": {"target": "tensorrt"}}}))
    with pytest.raises(UnservableRepositoryError) as err:
        check_servable(repo, _binary(tmp_path, ("onnxruntime", "python")))
    assert err.value.exit_code == 2
    assert "net (backend tensorrt, deployed with --target tensorrt)" in err.value.message
    assert "pipeline_x" not in err.value.message
    assert "-f --target onnxruntime;" in err.value.hint          # the best target this server has
    # a server with every backend needed, or one whose backends cannot be told: no objection
    check_servable(repo, _binary(tmp_path / "all", ("tensorrt", "python")))
    check_servable(repo, _binary(tmp_path / "unknown", None))


def test_no_target_fits_names_the_backend_instead(tmp_path):
    repo = tmp_path / "repo"
    _config(repo, "pre", 'backend: "python"\n', ("model.py",))
    with pytest.raises(UnservableRepositoryError) as err:
        check_servable(repo, _binary(tmp_path, ("onnxruntime",)))
    assert "pre (backend python)" in err.value.message
    assert "--target" not in err.value.hint and "python backend" in err.value.hint
