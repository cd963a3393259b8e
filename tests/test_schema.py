"""Schemas: nemo2riva format, version-aware comparisons, every violation reported together."""

from __future__ import annotations

import pytest

from servicemaker.pipelines import REGISTRY
from servicemaker.schema import Schema, load_schemas

DESIGN_CLASSES = {"TextClassificationModel", "TokenClassificationModel", "IntentSlotClassificationModel",
                  "PunctuationCapitalizationModel", "QAModel", "EncDecCTCModel", "EncDecCTCModelBPE",
                  "FastPitchModel", "HifiGanModel"}

NEMO2RIVA_STYLE = """
metadata:
  - obj_cls: nemo.collections.nlp.models.IntentSlotClassificationModel
  - encryption: True
  - min_nemo_version: 1.1
file_properties:
  - model_config.yaml
  - model_graph.onnx:
      onnx: True
      encrypted: True
file_content:
  - model_config.yaml:
    - class_labels.intent_labels_file: True
    - tokenizer.vocab_file: True
    - language_model.lm_checkpoint # NULL!
"""


def test_every_class_has_a_schema():
    assert set(load_schemas()) == DESIGN_CLASSES


@pytest.mark.parametrize("name", list(REGISTRY))
def test_pipeline_classes_have_schemas(name):
    for cls in REGISTRY[name].accepted_classes():
        assert cls in load_schemas()


def _check(schema, metadata, artifacts, config):
    return schema.check(metadata, artifacts, lambda n: config)


def test_nemo2riva_file_keys_and_directives():
    s = Schema.parse(NEMO2RIVA_STYLE, "t")
    arts = {"model_config.yaml": {}, "model_graph.onnx": {"onnx": True}, "v.txt": {}, "i.csv": {}}
    cfg = {"class_labels": {"intent_labels_file": "nemo:i.csv"}, "tokenizer": {"vocab_file": "nemo:v.txt"},
           "language_model": {"lm_checkpoint": None}}
    meta = {"obj_cls": "nemo.collections.nlp.models.intent_slot.IntentSlotClassificationModel",
            "min_nemo_version": "1.3"}
    assert _check(s, meta, arts, cfg) == []  # encryption/encrypted are export directives, not checked


def test_versions_compare_as_versions():
    s = Schema.parse(NEMO2RIVA_STYLE, "t")
    arts = {"model_config.yaml": {}, "model_graph.onnx": {"onnx": True}}
    base = {"obj_cls": "x.IntentSlotClassificationModel"}
    only = lambda v: [x for x in v if "min_nemo_version" in x]  # noqa: E731
    assert only(_check(s, {**base, "min_nemo_version": "1.10"}, arts, {})) == []  # 1.10 > 1.1 (a float says <)
    assert only(_check(s, {**base, "min_nemo_version": 1.3}, arts, {})) == []
    assert only(_check(s, {**base, "min_nemo_version": "1.0.2"}, arts, {})) == [
        "metadata min_nemo_version is 1.0.2, older than the 1.1 this schema needs"]
    assert only(_check(s, {**base, "min_nemo_version": "one"}, arts, {})) == [
        "metadata min_nemo_version 'one' is not a version"]


def test_all_violations_reported():
    s = load_schemas()["IntentSlotClassificationModel"]
    meta = {"obj_cls": "nemo.collections.nlp.models.TextClassificationModel", "min_nemo_version": "1.0"}
    arts = {"model_config.yaml": {}, "model_graph.onnx": {"onnx": False}}
    cfg = {"tokenizer": {"vocab_file": "nemo:missing_vocab.txt"}, "language_model": {"config_file": None},
           "class_labels": {"intent_labels_file": 7}}
    assert _check(s, meta, arts, cfg) == [
        "metadata obj_cls is nemo.collections.nlp.models.TextClassificationModel, expected "
        "nemo.collections.nlp.models.IntentSlotClassificationModel",
        "metadata min_nemo_version is 1.0, older than the 1.1 this schema needs",
        "artifact 'model_graph.onnx' property 'onnx' is False, expected True",
        "model_config.yaml: 'tokenizer.vocab_file' names artifact 'missing_vocab.txt', which is not in the archive",
        "model_config.yaml: key 'language_model.pretrained_model_name' is missing",
        "model_config.yaml: 'language_model.config_file' must name an artifact of the archive, but is None",
        "model_config.yaml: 'class_labels.intent_labels_file' must name an artifact of the archive, but is 7",
        "model_config.yaml: key 'class_labels.slot_labels_file' is missing",
    ]


def test_missing_metadata_and_artifacts():
    s = load_schemas()["FastPitchModel"]
    assert _check(s, {}, {}, {}) == [
        "metadata 'obj_cls' is missing (expected nemo.collections.tts.models.FastPitchModel)",
        "metadata 'min_nemo_version' is missing (expected 1.1)",
        "artifact 'model_config.yaml' is missing",
        "artifact 'model_graph.onnx' is missing",
        "artifact 'model_config.yaml' is missing (its content is checked)",
    ]


def test_onnx_tar_satisfies_onnx():
    s = load_schemas()["HifiGanModel"]
    arts = {"model_config.yaml": {}, "model_graph.onnx.tar": {"onnx": True}}
    meta = {"obj_cls": "nemo.collections.tts.models.HifiGanModel", "min_nemo_version": "1.9"}
    assert _check(s, meta, arts, {"sample_rate": 22050, "n_mel_channels": 80}) == []


def test_real_nemo_speech_configs_are_accepted():
    """What NeMo 3.0 + nemo2riva 2.22 really write: the BPE tokenizer as ``model_path``, a HiFi-GAN config with
    no top-level sample_rate or n_mel_channels, a char model with no preprocessor keys beyond NeMo's defaults."""
    schemas = load_schemas()
    bpe_meta = {"obj_cls": "nemo.collections.asr.models.EncDecCTCModelBPE", "min_nemo_version": "1.3"}
    bpe_arts = {"model_config.yaml": {}, "model_graph.onnx": {"onnx": True}, "3f2c_tokenizer.model": {}}
    bpe_cfg = {"decoder": {"vocabulary": ["▁a", "b"]},
               "tokenizer": {"type": "bpe", "model_path": "nemo:3f2c_tokenizer.model", "dir": "/tmp/x"}}
    assert _check(schemas["EncDecCTCModelBPE"], bpe_meta, bpe_arts, bpe_cfg) == []
    assert _check(schemas["EncDecCTCModelBPE"], bpe_meta, {k: v for k, v in bpe_arts.items() if "token" not in k},
                  bpe_cfg) != []
    hifi_meta = {"obj_cls": "nemo.collections.tts.models.HifiGanModel", "min_nemo_version": "1.3"}
    assert _check(schemas["HifiGanModel"], hifi_meta, {"model_config.yaml": {}, "model_graph.onnx": {"onnx": True}},
                  {"generator": {"upsample_rates": [8, 8, 2, 2]}}) == []
    ctc_meta = {"obj_cls": "nemo.collections.asr.models.EncDecCTCModel", "min_nemo_version": "1.3"}
    assert _check(schemas["EncDecCTCModel"], ctc_meta, {"model_config.yaml": {}, "model_graph.onnx": {"onnx": True}},
                  {"decoder": {"vocabulary": [" ", "a"]}}) == []
