"""Console scripts: messages, exit codes, no tracebacks (unless --debug), keys never printed, JSON output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from servicemaker.cli.build import app as build_app
from servicemaker.cli.deploy import app as deploy_app
from servicemaker.cli.inspect import app as inspect_app
from servicemaker.samples import models

from conftest import CIPHER_ID, listing


def run(runner, app, args):
    result = runner.invoke(app, args)
    return result.exit_code, result.output


def test_build_and_inspect_json(runner, tiny):
    code, out = run(runner, build_app, ["text_classification", str(tiny / "tc.rmir"), str(tiny / "text_classification.riva"),
                                        "--domain_name=weather", "--nn.precision", "fp32", "-q"])
    assert code == 0, out
    code, out = run(runner, inspect_app, [str(tiny / "tc.rmir"), "--json", "--verify"])
    assert code == 0, out
    doc = json.loads(out)
    assert set(doc) == {"format", "file", "file_size", "file_sha256", "kind", "layout", "metadata", "artifacts",
                        "pipeline_spec", "verified"}
    assert doc["format"] == "servicemaker.inspect/1" and doc["kind"] == "rmir"
    assert doc["pipeline_spec"]["components"]["nn"]["params"]["precision"] == "fp32"
    for a in doc["artifacts"]:
        assert a["sha256"] == a["props"]["sha256"] and a["size"] == a["props"]["size"]
    code, out = run(runner, inspect_app, [str(tiny / "tc.rmir")])
    assert code == 0 and "riva_text_classification_weather" in out


def test_inspect_export(runner, tiny):
    code, out = run(runner, inspect_app, [str(tiny / "qa.riva"), "--json"])
    doc = json.loads(out)
    assert code == 0 and doc["kind"] == "export" and doc["pipeline_spec"] is None
    assert doc["metadata"]["obj_cls"] == "nemo.collections.nlp.models.QAModel"


@pytest.mark.parametrize("args,code,message", [
    (["bogus", "o.rmir", "i.riva"], 2, "error: unknown pipeline 'bogus'"),
    (["qa", "o.rmir", "missing.riva"], 6, "error: input missing.riva does not exist"),
    (["qa", "o.rmir", "x.riva", "--nn.max_batch_size=big"], 2, "error: --nn.max_batch_size=big: expected an integer"),
    (["qa", "o.rmir", "x.riva", "--nn.bogus=1"], 2, "error: --nn.bogus is not a parameter of pipeline qa"),
    (["qa"], 2, "error: missing arguments"),
])
def test_build_usage_errors(runner, tmp_path, monkeypatch, args, code, message):
    monkeypatch.chdir(tmp_path)
    got, out = run(runner, build_app, args)
    assert got == code
    assert out.splitlines()[0] == message
    assert "Traceback" not in out


def test_wrong_key_message_exit_code_and_no_output(runner, tmp_path, salt, salts_file):
    models.tiny_nlp_export("qa", tmp_path / "qa.riva", key="tlt_encode", legacy=(CIPHER_ID, salt))
    before = listing(tmp_path)
    code, out = run(runner, build_app, ["qa", str(tmp_path / "qa.rmir"), f"{tmp_path / 'qa.riva'}:hunter2",
                                        "--eff-salts", str(salts_file)])
    assert code == 4
    assert "wrong key for artifact" in out and "hint:" in out
    assert "hunter2" not in out and "Traceback" not in out
    assert listing(tmp_path) == before


def test_debug_shows_traceback(runner, tmp_path):
    (tmp_path / "junk.riva").write_bytes(b"junk")
    code, out = run(runner, inspect_app, [str(tmp_path / "junk.riva")])
    assert code == 3 and "Traceback" not in out and "not an EFF archive" in out
    code, out = run(runner, inspect_app, [str(tmp_path / "junk.riva"), "--debug"])
    assert code == 3 and "Traceback" in out


def test_wrong_key_inspect_verify(runner, tmp_path):
    models.tiny_nlp_export("qa", tmp_path / "qa.riva", key="right")
    code, out = run(runner, inspect_app, [f"{tmp_path / 'qa.riva'}:wrong", "--verify"])
    assert code == 4 and "wrong key" in out and "'wrong'" not in out


def test_key_file_and_env_forms(runner, tmp_path, monkeypatch):
    models.tiny_nlp_export("qa", tmp_path / "qa.riva", key="s3cret")
    (tmp_path / "k").write_text("s3cret\n")
    monkeypatch.setenv("QA_KEY", "s3cret")
    code, out = run(runner, build_app, ["qa", f"{tmp_path / 'a.rmir'}:env:QA_KEY", f"{tmp_path / 'qa.riva'}:file:{tmp_path / 'k'}", "-q"])
    assert code == 0, out and "s3cret" not in out
    code, out = run(runner, inspect_app, [f"{tmp_path / 'a.rmir'}:file:{tmp_path / 'k'}", "--verify", "--json"])
    assert code == 0 and all(a["encrypted"] for a in json.loads(out)["artifacts"])
    assert "s3cret" not in out


def test_overwrite_refused_exit_7(runner, tiny):
    (tiny / "o.rmir").write_bytes(b"x")
    code, out = run(runner, build_app, ["qa", str(tiny / "o.rmir"), str(tiny / "qa.riva")])
    assert code == 7 and "exists" in out and "-f" in out


def test_list_params(runner):
    code, out = run(runner, build_app, ["--list-params", "punctuation"])
    assert code == 0 and "--nn.precision (fp32|fp16|int8, default 'fp16')" in out


def test_deploy_missing_rmir_exit_6(runner, tmp_path):
    code, out = run(runner, deploy_app, [str(tmp_path / "x.rmir"), str(tmp_path / "repo")])
    assert code == 6 and "x.rmir does not exist" in out and "Traceback" not in out
    assert not (tmp_path / "repo").exists()


def test_deploy_bad_target_exit_2(runner, tmp_path):
    code, out = run(runner, deploy_app, ["x.rmir", str(tmp_path / "repo"), "--target", "tpu"])
    assert code == 2 and "--target=tpu" in out and "onnxruntime-python" in out


@pytest.mark.parametrize("script", ["svc-build", "svc-deploy", "svc-inspect", "svc-samples", "svc-serve"])
def test_console_scripts_installed(script):
    bindir = __import__("pathlib").Path(sys.executable).parent
    result = subprocess.run([str(bindir / script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Usage:" in result.stdout


def test_permission_denied_is_one_clear_error(capsys):
    """An input this user may not read (a container's UID, a file mode) is named with the fix, exit 6: not a bug."""
    import typer

    from servicemaker.cli.common import reported_errors

    with pytest.raises(typer.Exit) as exc:
        with reported_errors(debug=False):
            raise PermissionError(13, "Permission denied", "/in/model.riva")
    assert exc.value.exit_code == 6
    err = capsys.readouterr().err
    assert "permission denied: /in/model.riva" in err and "chmod" in err and "internal error" not in err


@pytest.mark.parametrize("tool", ["svc-build", "svc-deploy", "svc-inspect", "svc-serve"])
def test_every_tool_prints_its_version(tool):
    from pathlib import Path

    from servicemaker import __version__

    exe = Path(sys.executable).parent / tool
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"{tool} (servicemaker) {__version__}"


@pytest.mark.parametrize("tool,args", [
    ("svc-build", ["text_classification", "s3://bucket/out.rmir", "in.riva"]),
    ("svc-build", ["text_classification", "out.rmir", "s3://bucket/in.riva:tlt_encode"]),
    ("svc-inspect", ["file:///tmp/x.rmir"]),
])
def test_tools_of_local_files_refuse_urls(tool, args, tmp_path):
    """Only svc-deploy reads RMIR URLs: svc-build must not quietly write ./out.rmir for an s3:// output."""
    from pathlib import Path

    exe = Path(sys.executable).parent / tool
    out = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "works on local files" in out.stderr and "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []
