"""svc-deploy without a server: layout, protobuf-valid configs, golden files, targets, -f/keep, and failures that
leave the repository as it was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from servicemaker.build import BuildOptions, build
from servicemaker.deploy import STATUS_FILE, DeployOptions, deploy
from servicemaker.deploy import optimize
from servicemaker.deploy import tensorrt as trt_seam
from servicemaker.deploy.config import ModelConfigSpec, TemplateError, TensorSpec, pbstr, render
from servicemaker.errors import (NotFoundError, SpecVersionError, UsageError, ValidationError, WrongKeyError)
from servicemaker.keys import ArchiveArg, Secret
from servicemaker.samples import models
from servicemaker.spec import SPEC_KEY

from conftest import edit_manifest, listing

GOLDEN = Path(__file__).parent / "golden"


def arg(path: Path, key: str | None = None) -> ArchiveArg:
    return ArchiveArg(Path(path), Secret(key) if key else None)


def run(rmirs, repo: Path, **kw):
    return deploy(DeployOptions(rmirs=[arg(p) for p in rmirs], repo=repo, **kw))


def parse(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def repo_all(tiny_rmirs, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("deploy") / "repo"
    run(tiny_rmirs.values(), repo, target="onnxruntime-python")
    return repo


def test_layout_and_every_config_parses(repo_all):
    names = sorted(p.name for p in repo_all.iterdir() if p.is_dir())
    assert "riva_text_classification_misc" in names and "riva-onnx-riva_ner-nn-tiny-bert" in names
    assert len(names) == 23
    for name in names:
        cfg = parse(repo_all / name / "config.pbtxt")
        assert cfg.name == name
        assert (repo_all / name / "1").is_dir()
        if cfg.backend == "python":
            assert {"model.py", "svc_handlers.py"} <= {p.name for p in (repo_all / name / "1").iterdir()}
    assert (repo_all / "requirements.txt").read_text() == "numpy<2\nonnxruntime>=1.17\ntokenizers>=0.15\n"


def test_repository_holds_no_absolute_paths(repo_all):
    for path in repo_all.rglob("*"):
        if path.is_file() and path.suffix in {".pbtxt", ".json", ".txt", ".py"}:
            text = path.read_text()
            assert str(repo_all) not in text and str(repo_all.parent) not in text, path
            assert "/tmp/" not in text, path


def test_status_records_steps_versions_and_inputs(repo_all, tiny_rmirs):
    status = json.loads((repo_all / STATUS_FILE).read_text())
    assert status["format"] == "servicemaker.deploy_status/1" and status["target"] == "onnxruntime-python"
    assert [s["name"] for s in status["steps"]] == ["choose_target", "read_rmirs", "plan_models", "lookup_cache",
                                                    "extract_artifacts", "check_graphs", "prepare_networks", "render_configs",
                                                    "write_models", "commit"]
    assert all(s["status"] == "OK" and s["seconds"] >= 0 for s in status["steps"])
    assert {"servicemaker", "onnx", "onnxruntime", "python"} <= set(status["versions"])
    from servicemaker.build import sha256_file
    assert {i["file"]: i["sha256"] for i in status["inputs"]} == {
        p.name: sha256_file(p)[0] for p in tiny_rmirs.values()}
    assert len(status["models"]) == 23


def test_network_is_constant_folded(repo_all, tiny_rmirs):
    import onnx

    from servicemaker.eff import EffReader

    with EffReader(tiny_rmirs["qa"]) as r:
        original = onnx.load_from_string(r.read_bytes("nn-model_graph.onnx"))
    folded = onnx.load(str(repo_all / "riva-onnx-riva_qa-nn-tiny-bert" / "1" / "model.onnx"))
    assert len(folded.graph.node) < len(original.graph.node)
    assert [i.name for i in folded.graph.input] == [i.name for i in original.graph.input]


def _golden(repo: Path, model: str, target: str) -> None:
    got = (repo / model / "config.pbtxt").read_text()
    want = GOLDEN / target / f"{model}.pbtxt"
    if os.environ.get("SERVICEMAKER_REGEN_GOLDEN") == "1":
        want.parent.mkdir(parents=True, exist_ok=True)
        want.write_text(got)
    assert got == want.read_text(), f"{model} differs from {want} (SERVICEMAKER_REGEN_GOLDEN=1 rewrites it)"


def test_golden_onnxruntime(tiny_rmirs, tmp_path):
    repo = tmp_path / "repo"
    result = run([tiny_rmirs["text_classification"]], repo, target="onnxruntime")
    assert (repo / "riva-onnx-riva_text_classification_misc-nn-tiny-bert" / "1" / "model.onnx").exists()
    for model in result.written:
        _golden(repo, model, "onnxruntime")


def test_golden_tensorrt_through_the_seam(tiny_rmirs, tmp_path, monkeypatch):
    """The tensorrt target up to the engine build: the seam receives the folded graph and the profile."""
    built = {}

    def fake_build(onnx_path, plan_path, settings):
        import onnx
        onnx.checker.check_model(str(onnx_path))
        built.update(settings=settings, onnx=onnx_path.read_bytes())
        plan_path.write_bytes(b"plan")
        return {"bytes": 4}

    def fake_run(plan_path, feeds, outputs):  # the "engine" is the graph handed to TensorRT, run by ONNX Runtime
        built["gate_feeds"] = len(feeds)
        return optimize.run(built["onnx"], feeds, outputs=outputs)

    monkeypatch.setattr(trt_seam, "missing", lambda: None)
    monkeypatch.setattr(trt_seam, "use_rtx", lambda: False)
    monkeypatch.setattr(trt_seam, "build_engine", fake_build)
    monkeypatch.setattr(trt_seam, "run_engine", fake_run)
    repo = tmp_path / "repo"
    result = run([tiny_rmirs["token_classification"]], repo, target="auto")
    assert result.target == "tensorrt"
    nn = "riva-trt-riva_ner-nn-tiny-bert"
    assert (repo / nn / "1" / "model.plan").read_bytes() == b"plan"
    assert built["settings"].profile["input_ids"] == ((1, 1), (4, 32), (64, 64))  # rows: windows
    assert built["settings"].fp16 is True and built["settings"].sparse_weights is False
    assert built["gate_feeds"] == 6   # the 48 sample sentences in batches of 8 went through the engine gate
    status = json.loads((repo / "deploy_status.json").read_text())
    assert status["models"][nn]["optimization"]["engine_accuracy"]["status"] == "passed"
    for model in result.written:
        _golden(repo, model, "tensorrt")


def test_tensorrt_missing_stops_before_writing(tiny_rmirs, tmp_path, monkeypatch):
    monkeypatch.setattr(trt_seam, "missing", lambda: "the Python package 'tensorrt' is not installed")
    repo = tmp_path / "repo"
    with pytest.raises(trt_seam.TensorRTUnavailableError) as err:
        run([tiny_rmirs["qa"]], repo, target="tensorrt")
    assert "tensorrt' is not installed" in str(err.value) and "--target onnxruntime" in err.value.hint
    assert listing(tmp_path) == []


def test_existing_models_kept_without_force_replaced_with(tiny_rmirs, tmp_path):
    repo = tmp_path / "repo"
    run([tiny_rmirs["text_classification"]], repo, target="onnxruntime-python")
    other = repo / "someone_elses_model"
    other.mkdir()
    (other / "config.pbtxt").write_text('name: "someone_elses_model"\n')
    tok = repo / "text_classification_tokenizer_misc" / "config.pbtxt"
    tok.write_text(tok.read_text() + "# edited\n")

    again = run([tiny_rmirs["text_classification"]], repo, target="onnxruntime-python")
    assert again.written == [] and len(again.kept) == 4
    assert tok.read_text().endswith("# edited\n")

    forced = run([tiny_rmirs["text_classification"]], repo, target="onnxruntime-python", force=True)
    assert sorted(forced.replaced) == sorted(again.kept)
    assert not tok.read_text().endswith("# edited\n")
    assert (other / "config.pbtxt").read_text() == 'name: "someone_elses_model"\n'
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # no staging folders left


def test_two_rmirs_sharing_a_model_name_differently_refused(tiny_dir, tmp_path):
    a, b = tmp_path / "a.rmir", tmp_path / "b.rmir"
    build(BuildOptions(pipeline="token_classification", output=arg(a), inputs=[arg(tiny_dir / "token_classification.riva")]))
    build(BuildOptions(pipeline="token_classification", output=arg(b), inputs=[arg(tiny_dir / "token_classification.riva")],
                       overrides={"label_tokens.max_batch_size": "4"}, name="riva_ner_b"))
    with pytest.raises(UsageError, match="token_classification_label_tokens would come from both"):
        run([a, b], tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def _assert_untouched(repo: Path, before: list[str]) -> None:
    assert listing(repo) == before
    assert not [p for p in repo.parent.iterdir() if ".svc-deploy-" in p.name]


@pytest.fixture()
def existing_repo(tiny_rmirs, tmp_path):
    repo = tmp_path / "repo"
    run([tiny_rmirs["qa"]], repo, target="onnxruntime-python")
    return repo


def test_wrong_key_leaves_repo_as_it_was(tiny_dir, existing_repo, tmp_path):
    enc = tmp_path / "enc.rmir"
    build(BuildOptions(pipeline="text_classification", output=arg(enc, "right"),
                       inputs=[arg(tiny_dir / "text_classification.riva")]))
    before = listing(existing_repo)
    with pytest.raises(WrongKeyError, match="wrong key"):
        deploy(DeployOptions(rmirs=[arg(enc, "wrong")], repo=existing_repo, force=True))
    _assert_untouched(existing_repo, before)
    ok = deploy(DeployOptions(rmirs=[arg(enc, "right")], repo=existing_repo, target="onnxruntime-python"))
    assert "riva_text_classification_misc" in ok.written


def test_missing_artifact_leaves_repo_as_it_was(tiny_rmirs, existing_repo, tmp_path):
    label = "label_tokens-"

    def drop(doc):
        for name in [n for n in doc["artifacts"] if n.startswith(label)]:
            del doc["artifacts"][name]

    bad = edit_manifest(tiny_rmirs["token_classification"], tmp_path / "bad.rmir", drop,
                        drop=tuple(n for n in _names(tiny_rmirs["token_classification"]) if n.startswith(label)))
    before = listing(existing_repo)
    with pytest.raises(NotFoundError) as err:
        run([tiny_rmirs["text_classification"], bad], existing_repo, force=True)
    assert "bad.rmir lacks artifacts its pipeline spec names: label_tokens.labels" in str(err.value)
    _assert_untouched(existing_repo, before)


def _names(rmir: Path) -> list[str]:
    from servicemaker.eff import EffReader
    with EffReader(rmir) as r:
        return list(r.artifacts)


def test_future_spec_version_leaves_repo_as_it_was(tiny_rmirs, existing_repo, tmp_path):
    def bump(doc):
        doc["metadata"][SPEC_KEY]["spec_version"] = 99

    bad = edit_manifest(tiny_rmirs["qa"], tmp_path / "future.rmir", bump)
    before = listing(existing_repo)
    with pytest.raises(SpecVersionError, match="spec version 99 is newer than this servicemaker reads"):
        run([bad], existing_repo, force=True)
    _assert_untouched(existing_repo, before)


def test_graph_that_does_not_fit_is_named(tmp_path, monkeypatch):
    """A token-level graph exported as a text classifier: svc-build refuses it (tests/test_build_graph_check.py); an
    RMIR made without that check (an older svc-build) is refused by svc-deploy before anything is written."""
    graph = models.export_onnx(models.TaskModel(models.tiny_encoder(), models.TASKS["token_classification"]),
                               ("logits",))
    vocab = "\n".join(models.tiny_vocab()) + "\n"
    from servicemaker.samples.export import nlp_export
    nlp_export(tmp_path / "odd.riva", "TextClassificationModel", graph, vocab=vocab, lm_config="{}",
               labels={"class_labels_file": ["a", "b"]}, pretrained_model_name="tiny-bert")
    from servicemaker.pipelines import _nlp
    monkeypatch.setattr(_nlp.NlpFamily, "check_scanned_graph", lambda self, pipeline, graph, component: None)
    build(BuildOptions(pipeline="text_classification", output=arg(tmp_path / "odd.rmir"),
                       inputs=[arg(tmp_path / "odd.riva")]))
    with pytest.raises(ValidationError) as err:
        run([tmp_path / "odd.rmir"], tmp_path / "repo", target="onnxruntime-python")
    assert "does not fit pipeline text_classification" in str(err.value)
    assert "graph output logits has rank 3, expected 2" in str(err.value)
    assert not (tmp_path / "repo").exists()


def test_repository_that_is_a_file_refused(tiny_rmirs, tmp_path):
    (tmp_path / "repo").write_text("x")
    with pytest.raises(UsageError, match="is not a folder"):
        run([tiny_rmirs["qa"]], tmp_path / "repo")


def test_template_output_is_validated_as_model_config():
    spec = ModelConfigSpec(name="m", template="python", max_batch_size=4, comment="c",
                           inputs=[TensorSpec("IN", "TYPE_STRING", (1,))], outputs=[TensorSpec("OUT", "TYPE_FP32", (-1,))],
                           parameters={"quote": 'a "b" \\ c\nd é'})
    text, parsed = render(spec)
    assert parsed.parameters["quote"].string_value == 'a "b" \\ c\nd é'
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 0 and not parsed.HasField("dynamic_batching")
    bad = ModelConfigSpec(name="m", template="python", max_batch_size=4, comment="c\nnot: a comment", inputs=[],
                          outputs=[])
    with pytest.raises(TemplateError, match="not a valid Triton ModelConfig"):
        render(bad)


def test_pbstr_escapes():
    assert pbstr('a"b') == '"a\\"b"' and pbstr("x\ty") == '"x\\ty"'
