"""svc-build: every pipeline, determinism, the spec, keys, interop layouts, and clean failures."""

from __future__ import annotations

import gzip
import tarfile

import pytest

from servicemaker import yamlio
from servicemaker.build import BuildOptions, build
from servicemaker.eff import EffReader, KeyRing
from servicemaker.errors import (ArchiveError, OutputExistsError, SpecVersionError, UnsafeArchiveError,
                                 UsageError, ValidationError, WrongKeyError)
from servicemaker.keys import ArchiveArg, Secret, parse_archive_arg
from servicemaker.pipelines import REGISTRY
from servicemaker.samples import models
from servicemaker.spec import SPEC_KEY, read_spec

from conftest import CIPHER_ID, listing, rewrite_tar

INPUTS = {name: [f"{name}.riva"] for name in REGISTRY}
INPUTS["speech_synthesis"] = ["fastpitch.riva", "hifigan.riva"]
INPUTS["speech_recognition_offline"] = ["speech_recognition.riva"]


def opts(pipeline, out, inputs, **kw):
    return BuildOptions(pipeline=pipeline, output=parse_archive_arg(str(out)),
                        inputs=[parse_archive_arg(str(i)) for i in inputs], **kw)


def spec_of(path, key=None):
    with EffReader(path, KeyRing(key=Secret(key) if key else None)) as r:
        return read_spec(r.metadata, str(path)), r.artifacts


@pytest.mark.parametrize("pipeline", list(REGISTRY))
def test_every_pipeline_builds(tiny, pipeline):
    out = tiny / f"{pipeline}.rmir"
    result = build(opts(pipeline, out, [tiny / i for i in INPUTS[pipeline]]))
    spec, artifacts = spec_of(out)
    assert spec == result.spec and spec.pipeline == pipeline
    assert list(spec.components) == [c.name for c in REGISTRY[pipeline].components]
    for comp, cs in spec.components.items():
        for ref in cs.artifacts.values():
            assert ref.name in artifacts and artifacts[ref.name]["sha256"] == ref.sha256
        assert {p.name for p in REGISTRY[pipeline].component(comp).params} == set(cs.params)
    for name, props in artifacts.items():
        assert name == f"{props['component']}-{props['source']}"
    # every input artifact is bundled exactly once
    n_in = 0
    for i in INPUTS[pipeline]:
        with EffReader(tiny / i) as r:
            n_in += len(r.artifacts)
    assert len(artifacts) == n_in


def test_text_classification_spec(tiny):
    out = tiny / "tc.rmir"
    build(opts("text_classification", out, [tiny / "text_classification.riva"], domain_name="weather",
               max_batch_size=16, overrides={"nn.max_batch_size": "4", "nn.precision": "int8"}))
    spec, artifacts = spec_of(out)
    assert spec.name == "riva_text_classification_weather"
    c = spec.components
    assert c["tokenizer"].model_name == "text_classification_tokenizer_weather"
    assert c["nn"].model_name == "riva-{runtime}-riva_text_classification_weather-nn-tiny-bert"
    assert c["tokenizer"].params["max_batch_size"] == 16      # global option
    assert c["nn"].params["max_batch_size"] == 4               # override beats global
    assert c["nn"].params["precision"] == "int8"
    assert c["tokenizer"].params["max_seq_length"] == 64      # from model_config.yaml dataset.max_seq_length
    assert set(c["nn"].artifacts) == {"graph", "model_config", "lm_config"}
    assert c["nn"].artifacts["graph"].name == "nn-model_graph.onnx"
    assert c["tokenizer"].artifacts["vocab"].name.startswith("tokenizer-") and \
        c["tokenizer"].artifacts["vocab"].name.endswith("_vocab.txt")
    assert c["label_tokens"].artifacts["labels"].source.endswith("_class_labels.csv")
    assert spec.inputs[0].file == "text_classification.riva" and len(spec.inputs[0].sha256) == 64
    assert spec.provenance.tool == "servicemaker"
    text = out.read_bytes()
    assert str(tiny).encode() not in gzip.decompress(text)  # no absolute paths


def test_byte_identical_rebuild(tiny):
    a, b = tiny / "a.rmir", tiny / "b.rmir"
    for out in (a, b):
        build(opts("intent_slot", out, [tiny / "intent_slot.riva"], overrides={"nn.fuse": "false"}))
    assert a.read_bytes() == b.read_bytes()


def test_refuses_overwrite_without_force(tiny):
    out = tiny / "tc.rmir"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="exists"):
        build(opts("text_classification", out, [tiny / "text_classification.riva"]))
    assert out.read_bytes() == b"precious"
    build(opts("text_classification", out, [tiny / "text_classification.riva"], force=True))
    assert out.read_bytes() != b"precious"


def test_encrypted_output_and_input(tmp_path):
    models.tiny_nlp_export("qa", tmp_path / "qa.riva", key="in-key")
    out = tmp_path / "qa.rmir"
    build(BuildOptions(pipeline="qa", output=ArchiveArg(out, Secret("out-key")),
                       inputs=[ArchiveArg(tmp_path / "qa.riva", Secret("in-key"))]))
    spec, artifacts = spec_of(out, "out-key")
    assert all(p["encryption"] == "aes-256-gcm" for p in artifacts.values())
    with EffReader(out, KeyRing(key=Secret("out-key"))) as r:
        r.hash_artifact("nn-model_graph.onnx")
    with EffReader(out, KeyRing(key=Secret("nope"))) as r, pytest.raises(WrongKeyError):
        r.open("nn-model_graph.onnx")


def test_legacy_input_with_salts(tmp_path, salt, salt_table):
    models.tiny_nlp_export("punctuation", tmp_path / "p.riva", key="tlt_encode", legacy=(CIPHER_ID, salt))
    out = tmp_path / "p.rmir"
    build(opts("punctuation", out, [f"{tmp_path / 'p.riva'}:tlt_encode"], salts=salt_table))
    spec, artifacts = spec_of(out)
    assert all(p["encryption"] is False for p in artifacts.values())


def test_wrong_legacy_key_leaves_nothing(tmp_path, salt, salt_table):
    models.tiny_nlp_export("punctuation", tmp_path / "p.riva", key="tlt_encode", legacy=(CIPHER_ID, salt))
    before = listing(tmp_path)
    with pytest.raises(WrongKeyError):
        build(opts("punctuation", tmp_path / "p.rmir", [f"{tmp_path / 'p.riva'}:wrong"], salts=salt_table))
    assert listing(tmp_path) == before


def test_key_from_environment_fallback(tmp_path, monkeypatch):
    models.tiny_nlp_export("qa", tmp_path / "qa.riva", key="env-key")
    monkeypatch.setenv("SERVICEMAKER_KEY", "env-key")
    build(opts("qa", tmp_path / "qa.rmir", [tmp_path / "qa.riva"]))
    assert (tmp_path / "qa.rmir").exists()


def test_hostile_member_leaves_nothing(tiny):
    def add_link(members):
        link = tarfile.TarInfo("artifacts/evil")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        return members + [(link, b"")]

    bad = rewrite_tar(tiny / "qa.riva", tiny / "bad.riva", add_link)
    before = listing(tiny)
    with pytest.raises(UnsafeArchiveError, match="is a link"):
        build(opts("qa", tiny / "out.rmir", [bad]))
    assert listing(tiny) == before


def test_corrupt_artifact_midway_leaves_nothing(tiny):
    """A payload that fails its sha256 after part of the RMIR was streamed: the partial file is removed."""
    def corrupt(members):
        out = []
        for info, data in members:
            if info.name.endswith("model_graph.onnx"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            out.append((info, data))
        return out

    def add_sha(members):
        import hashlib
        out = []
        for info, data in members:
            if info.name == "manifest.yaml":
                m = yamlio.load(data)
                for name, props in m["artifacts"].items():
                    props["sha256"] = hashlib.sha256(dict((i.name, d) for i, d in members)[f"artifacts/{name}"]).hexdigest()
                data = yamlio.dump(m).encode()
                info.size = len(data)
            out.append((info, data))
        return out

    hashed = rewrite_tar(tiny / "qa.riva", tiny / "hashed.riva", add_sha)
    bad = rewrite_tar(hashed, tiny / "bad.riva", corrupt)
    before = listing(tiny)
    with pytest.raises(ArchiveError, match="is corrupt"):
        build(opts("qa", tiny / "out.rmir", [bad]))
    assert listing(tiny) == before


def test_wrong_model_class(tiny):
    with pytest.raises(ValidationError) as err:
        build(opts("text_classification", tiny / "o.rmir", [tiny / "qa.riva"]))
    assert err.value.violations == [
        f"{tiny / 'qa.riva'} is a QAModel; pipeline text_classification takes TextClassificationModel "
        "(a QAModel builds with: svc-build qa ...)"]
    assert not (tiny / "o.rmir").exists()


def test_wrong_input_count(tiny):
    with pytest.raises(UsageError) as err:
        build(opts("speech_synthesis", tiny / "o.rmir", [tiny / "fastpitch.riva"]))
    assert str(err.value) == ("pipeline speech_synthesis takes 2 input model(s) (FastPitchModel + HifiGanModel); "
                              "1 given")


def test_schema_violations_all_reported(tmp_path):
    from servicemaker.samples.export import nlp_export

    nlp_export(tmp_path / "bad.riva", "IntentSlotClassificationModel", b"graph", vocab="[PAD]\n", lm_config="{}",
               labels={"intent_labels_file": ["a"]}, pretrained_model_name="x",
               metadata={"min_nemo_version": "1.0"})
    with pytest.raises(ValidationError) as err:
        build(opts("intent_slot", tmp_path / "o.rmir", [tmp_path / "bad.riva"]))
    where = str(tmp_path / "bad.riva")
    assert err.value.violations == [
        f"{where}: metadata min_nemo_version is 1.0, older than the 1.1 this schema needs",
        f"{where}: model_config.yaml: key 'class_labels.slot_labels_file' is missing",
        f"{where}: model_config.yaml has no 'class_labels.slot_labels_file' (label_tokens needs its slot_labels)",
    ]
    assert not (tmp_path / "o.rmir").exists()


def test_calibration_data_is_bundled(tiny, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text("will it rain\nplay music\n")
    out = tiny / "tc.rmir"
    build(opts("text_classification", out, [tiny / "text_classification.riva"],
               overrides={"nn.calibration_data": str(calib), "nn.precision": "int8"}))
    spec, artifacts = spec_of(out)
    name = spec.components["nn"].params["calibration_data"]
    assert name == "nn-calibration_data-calib.txt" and spec.components["nn"].artifacts["calibration_data"].name == name
    with EffReader(out) as r:
        assert r.read_text(name) == "will it rain\nplay music\n"


def test_future_spec_version_refused(tiny):
    out = tiny / "tc.rmir"
    build(opts("text_classification", out, [tiny / "text_classification.riva"]))
    with EffReader(out) as r:
        meta = dict(r.metadata)
    meta[SPEC_KEY] = dict(meta[SPEC_KEY], spec_version=99)
    with pytest.raises(SpecVersionError) as err:
        read_spec(meta, "x.rmir")
    assert str(err.value) == "x.rmir: pipeline spec version 99 is newer than this servicemaker reads (1)"


@pytest.mark.parametrize("style", [dict(layout="root"), dict(flow=True), dict(prefix="./"),
                                   dict(layout="root", flow=True, prefix="./")])
def test_archives_in_other_layouts(tmp_path, style):
    """Exports as other tools write them: root layout, flow-style YAML, './' prefixes, manifest first."""
    src = models.tiny_nlp_export("token_classification", tmp_path / "t.riva", **style)
    with EffReader(src) as r:
        assert r.layout == ("root" if style.get("layout") == "root" else "registry")
    build(opts("token_classification", tmp_path / "t.rmir", [src]))
    spec, _ = spec_of(tmp_path / "t.rmir")
    assert spec.name == "riva_ner"
