"""``svc-build --json`` and ``svc-deploy --json``: one result document on stdout, success or failure, with the
outputs' sha256 and size checked against the files, and the compile-cache flags reaching the deploy."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import servicemaker.cli.deploy as deploy_cli
from servicemaker import __version__
from servicemaker.cli.build import app as build_app
from servicemaker.cli.deploy import app as deploy_app
from servicemaker.errors import UsageError

BUILD_KEYS = {"format", "tool", "version", "ok", "pipeline", "name", "outputs", "inputs", "seconds", "error"}
DEPLOY_KEYS = {"format", "tool", "version", "ok", "repository", "target", "models", "outputs", "inputs", "cache",
               "steps", "warnings", "seconds", "error"}
BIN = Path(sys.executable).parent


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def invoke(runner, app, args):
    """Exit code, the stdout document, stderr."""
    result = runner.invoke(app, args)
    return result.exit_code, json.loads(result.stdout), result.stderr


def build_tc(runner, tiny: Path) -> Path:
    out = tiny / "tc.rmir"
    code, doc, err = invoke(runner, build_app, ["text_classification", str(out),
                                                str(tiny / "text_classification.riva"), "--json"])
    assert code == 0, err
    return out


def test_build_json_success(runner, tiny):
    out = tiny / "tc.rmir"
    code, doc, err = invoke(runner, build_app, ["text_classification", str(out),
                                                str(tiny / "text_classification.riva"), "--domain_name=weather",
                                                "--json"])
    assert code == 0, err
    assert set(doc) == BUILD_KEYS
    assert doc["format"] == "servicemaker.build_result/1" and doc["tool"] == "svc-build"
    assert doc["version"] == __version__ and doc["ok"] is True and doc["error"] is None
    assert doc["pipeline"] == "text_classification" and doc["name"] == "riva_text_classification_weather"
    [output] = doc["outputs"]
    assert Path(output["path"]) == out.absolute()
    assert output["sha256"] == sha256(out) and output["size"] == out.stat().st_size
    [source] = doc["inputs"]
    riva = tiny / "text_classification.riva"
    assert source["file"] == riva.name and source["sha256"] == sha256(riva) and source["size"] == riva.stat().st_size
    assert doc["seconds"] > 0
    assert "Finished building" not in err      # --json keeps the human progress quiet


def test_build_json_failure(runner, tiny):
    code, doc, err = invoke(runner, build_app, ["qa", str(tiny / "o.rmir"), str(tiny / "missing.riva"), "--json"])
    assert code == 6
    assert set(doc) == BUILD_KEYS and doc["ok"] is False and doc["outputs"] == []
    assert doc["error"] == {"type": "NotFoundError", "message": f"input {tiny / 'missing.riva'} does not exist",
                            "hint": None, "exit_code": 6}
    assert "does not exist" in err and "Traceback" not in err
    assert not (tiny / "o.rmir").exists()


@pytest.mark.parametrize("tool,args,fmt", [
    ("svc-build", ["qa", "o.rmir", "i.riva", "--compression-level", "high"], "servicemaker.build_result/1"),
    ("svc-deploy", ["x.rmir", "repo", "--target"], "servicemaker.deploy_result/1"),
])
def test_option_errors_give_a_document_too(tmp_path, tool, args, fmt):
    """Errors click finds before the command runs (ill-typed value, missing value) — the console script."""
    # "--json" first: after "--target" it would be taken for the target's value
    done = subprocess.run([str(BIN / tool), "--json", *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    doc = json.loads(done.stdout)
    assert doc["format"] == fmt and doc["ok"] is False
    assert doc["error"]["type"] == "UsageError" and doc["error"]["exit_code"] == 2
    assert ("--compression-level" if tool == "svc-build" else "--target") in doc["error"]["message"]
    assert "Traceback" not in done.stderr
    # without --json: click's usual message, nothing on stdout
    plain = subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert plain.returncode == 2 and plain.stdout == "" and "Error:" in plain.stderr


def test_debug_keeps_the_traceback_on_stderr(tmp_path):
    done = subprocess.run([str(BIN / "svc-deploy"), "missing.rmir", "repo", "--json", "--debug"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 6
    assert "Traceback" in done.stderr and "Traceback" not in done.stdout
    assert json.loads(done.stdout)["error"]["type"] == "NotFoundError"


def _files(repo: Path, models: list[str]) -> set[str]:
    found = {p.relative_to(repo).as_posix() for m in models for p in (repo / m).rglob("*") if p.is_file()}
    return found | {n for n in ("deploy_status.json", "requirements.txt") if (repo / n).is_file()}


def test_deploy_json_write_keep_replace(runner, tiny, tmp_path):
    rmir = build_tc(runner, tiny)
    repo = tmp_path / "repo"
    code, doc, err = invoke(runner, deploy_app, [str(rmir), str(repo), "--target", "onnxruntime-python", "--json"])
    assert code == 0, err
    assert set(doc) == DEPLOY_KEYS
    assert doc["format"] == "servicemaker.deploy_result/1" and doc["tool"] == "svc-deploy" and doc["ok"] is True
    assert doc["repository"] == str(repo.absolute()) and doc["target"] == "onnxruntime-python"
    written = doc["models"]["written"]
    assert sorted(written) == sorted(p.name for p in repo.iterdir() if p.is_dir())
    assert doc["models"]["kept"] == [] and doc["models"]["replaced"] == []
    assert {o["path"] for o in doc["outputs"]} == _files(repo, written)
    assert "deploy_status.json" in {o["path"] for o in doc["outputs"]}
    for o in doc["outputs"]:
        assert o["sha256"] == sha256(repo / o["path"]) and o["size"] == (repo / o["path"]).stat().st_size
    assert [i["sha256"] for i in doc["inputs"]] == [sha256(rmir)]
    steps = [s["name"] for s in doc["steps"]]
    assert steps[0] == "choose_target" and steps[-1] == "commit"
    assert all(s["status"] in ("OK", "SKIPPED") and s["seconds"] >= 0 for s in doc["steps"])
    network = next(m for m in written if (repo / m / "1" / "model.onnx").exists())
    assert doc["cache"] == {network: "miss"}     # each test has its own, empty local cache (conftest)
    assert doc["error"] is None and doc["seconds"] > 0
    assert "Finished deploying" not in err and "wrote:" not in err

    code, again, err = invoke(runner, deploy_app, [str(rmir), str(repo), "--target", "onnxruntime-python", "--json"])
    assert code == 0, err
    assert sorted(again["models"]["kept"]) == sorted(written) and again["models"]["written"] == []
    assert {o["path"] for o in again["outputs"]} <= {"deploy_status.json", "requirements.txt"}

    code, forced, err = invoke(runner, deploy_app, [str(rmir), str(repo), "--target", "onnxruntime-python", "-f",
                                                    "--json"])
    assert code == 0, err
    assert sorted(forced["models"]["replaced"]) == sorted(written)
    assert {o["path"] for o in forced["outputs"]} == _files(repo, written)
    assert forced["cache"] == {network: "hit"}

    code, cold, err = invoke(runner, deploy_app, [str(rmir), str(repo), "--target", "onnxruntime-python", "-f",
                                                  "--no-cache", "--json"])
    assert code == 0, err
    assert cold["cache"] == {network: "off"}


@pytest.mark.parametrize("args,code,kind,message", [
    (["{tmp}/x.rmir", "{tmp}/repo"], 6, "NotFoundError", "x.rmir does not exist"),
    (["x.rmir", "{tmp}/repo", "--target", "tpu"], 2, "UsageError", "--target=tpu"),
    (["{tmp}/repo"], 2, "UsageError", "missing arguments"),
    (["x.rmir", "{tmp}/repo", "--cache", "s3://b/p", "--no-cache"], 2, "UsageError", "not both"),
])
def test_deploy_json_failure(runner, tmp_path, args, code, kind, message):
    got, doc, err = invoke(runner, deploy_app, [a.format(tmp=tmp_path) for a in args] + ["--json"])
    assert got == code
    assert set(doc) == DEPLOY_KEYS and doc["ok"] is False
    assert doc["error"]["type"] == kind and doc["error"]["exit_code"] == code and message in doc["error"]["message"]
    assert doc["outputs"] == [] and doc["models"] == {"written": [], "replaced": [], "kept": []}
    assert "Traceback" not in err
    assert not (tmp_path / "repo").exists()


class _Stop(UsageError):
    pass


@pytest.mark.parametrize("args,env,cache,use_cache", [
    ([], None, None, True),
    (["--cache", "s3://bucket/prefix"], None, "s3://bucket/prefix", True),
    ([], "file:///srv/cache", "file:///srv/cache", True),
    (["--cache", "s3://b/cli"], "s3://b/env", "s3://b/cli", True),
    (["--no-cache"], "s3://b/env", None, False),
])
def test_cache_flags_reach_the_deploy(runner, tmp_path, monkeypatch, args, env, cache, use_cache):
    seen = []

    def recording(opts, reporter=None):
        seen.append(opts)
        raise _Stop("stopped before deploying")

    monkeypatch.setattr(deploy_cli, "deploy", recording)
    if env is not None:
        monkeypatch.setenv("SERVICEMAKER_CACHE_URL", env)
    rmir = "s3://bucket/models/tc.rmir"     # an object-store RMIR passes through the argument parsing untouched
    code, doc, err = invoke(runner, deploy_app, [rmir, str(tmp_path / "repo"), *args, "--json"])
    assert code == 2 and doc["error"]["message"] == "stopped before deploying", err
    [opts] = seen
    assert (opts.cache, opts.use_cache) == (cache, use_cache)
    assert [getattr(a, "url", None) or str(a.path) for a in opts.rmirs] == [rmir]


def test_warnings_show_even_when_quiet_and_are_listed(capsys):
    from servicemaker.cli.common import RichReporter

    reporter = RichReporter(quiet=True)
    reporter.step("progress")
    reporter.warn("warning: compile cache entry 0123 is corrupt; compiling")
    reporter.warn("cannot publish")
    assert reporter.warnings == ["compile cache entry 0123 is corrupt; compiling", "cannot publish"]
    err = capsys.readouterr().err
    assert "progress" not in err
    assert err.splitlines() == ["warning: compile cache entry 0123 is corrupt; compiling", "warning: cannot publish"]
