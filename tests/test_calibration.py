"""Calibration quality: labeled accuracy-gate data (nn.gate_data) reports top-1 on the examples' real labels, and
nn.calibration_method=auto keeps the method that scores best on them; bad gate data is refused clearly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from servicemaker.build import BuildOptions, build
from servicemaker.deploy import DeployOptions, deploy
from servicemaker.errors import ValidationError
from servicemaker.keys import ArchiveArg
from servicemaker.runtime import common, nlp
from servicemaker.samples.models import HELD_OUT, write_gate_data

NN = "riva-onnx-riva_text_classification_misc-nn-tiny-bert"


def rmir(tiny, tmp_path, gate_file, name="tc.rmir"):
    out = tmp_path / name
    build(BuildOptions(pipeline="text_classification", output=ArchiveArg(out, None),
                       inputs=[ArchiveArg(tiny / "text_classification.riva", None)],
                       overrides={"nn.gate_data": str(gate_file), "nn.precision": "int8"}))
    return out


def report(repo, model=NN):
    return json.loads((repo / "deploy_status.json").read_text())["models"][model]["optimization"]


def deployed_accuracy(repo) -> float:
    """Top-1 of the deployed (INT8) network on the labeled sentences, with the repository's own handlers."""
    folder = repo / "text_classification_tokenizer_misc" / "1"
    tok = nlp.TokenizeText(str(folder), {"vocab": next(p.name for p in folder.iterdir() if p.suffix == ".txt"),
                                         "lower_case": "true", "max_seq_length": "64"})
    net = common.OnnxNetwork(str(repo / NN / "1"), {"model": "model.onnx"})
    labels = list(HELD_OUT)
    texts = [(labels.index(label), text) for label, items in HELD_OUT.items() for text in items]
    hits = 0
    for start in range(0, len(texts), 8):  # the gate's batches of 8, padded to each batch's longest row
        batch = texts[start:start + 8]
        enc = tok({"TEXT": common.strings([[t] for _, t in batch])})
        logits = net({k: enc[k] for k in ("input_ids", "token_type_ids", "attention_mask")})["logits"]
        hits += int(np.sum(logits.argmax(-1) == np.array([i for i, _ in batch])))
    return hits / len(texts)


def test_labeled_gate_data_reports_top1_on_the_real_labels(tiny, tmp_path):
    gate = write_gate_data(tmp_path / "gate.tsv")
    repo = tmp_path / "repo"
    deploy(DeployOptions(rmirs=[ArchiveArg(rmir(tiny, tmp_path, gate), None)], repo=repo,
                         target="onnxruntime-python"))
    acc = report(repo)["accuracy"]
    assert acc["labeled_examples"] == sum(len(v) for v in HELD_OUT.values())
    for key in ("labels_top1_fp32", "labels_top1", "labels_agreement"):
        assert 0.0 <= acc[key] <= 1.0
    assert acc["labels_top1"] == pytest.approx(deployed_accuracy(repo), abs=1e-6)


@pytest.mark.parametrize("lines, message", [
    (["weather\twill it rain", "rainy\tis it wet outside"], "line 2 of nn.gate_data has label 'rainy'"),
    (["weather\twill it rain", "is it wet outside"], "line 2 of nn.gate_data has no 'label<TAB>text'"),
    (["# nothing but a comment"], "has no examples"),
])
def test_bad_gate_data_is_refused_before_anything_is_written(tiny, tmp_path, lines, message):
    gate = tmp_path / "gate.tsv"
    gate.write_text("\n".join(lines) + "\n")
    repo = tmp_path / "repo"
    with pytest.raises(ValidationError, match=message) as err:
        deploy(DeployOptions(rmirs=[ArchiveArg(rmir(tiny, tmp_path, gate), None)], repo=repo,
                             target="onnxruntime-python"))
    if "rainy" in message:
        assert "weather, music, sports" in err.value.message
    assert not repo.exists()


def test_auto_keeps_the_best_scoring_method_and_records_them_all(tiny, tmp_path):
    gate = write_gate_data(tmp_path / "gate.tsv")
    repo = tmp_path / "repo"
    deploy(DeployOptions(rmirs=[ArchiveArg(rmir(tiny, tmp_path, gate), None)], repo=repo,
                         target="onnxruntime-python", overrides={"nn.calibration_method": "auto"}))
    int8 = report(repo)["int8"]
    scores = int8["auto"]["scores"]
    assert set(scores) == {"minmax", "entropy", "percentile"}
    best = max(scores, key=lambda m: (scores[m].get("labels_top1", 0.0), -scores[m]["drop"],
                                      -scores[m]["kept_fp32"]))
    assert int8["auto"]["chosen"] == best == int8["method"]
    assert all("labels_top1" in s for s in scores.values())
    assert report(repo)["accuracy"]["labels_top1"] == scores[best]["labels_top1"]


def test_the_cache_key_follows_the_gate_data_and_the_method(tiny, tmp_path):
    gate = write_gate_data(tmp_path / "gate.tsv")
    first = rmir(tiny, tmp_path, gate, "a.rmir")
    other = tmp_path / "other.tsv"
    other.write_text(gate.read_text().replace("tonight", "this night"))
    second = rmir(tiny, tmp_path, other, "b.rmir")

    def status(path, repo, **overrides):
        result = deploy(DeployOptions(rmirs=[ArchiveArg(path, None)], repo=tmp_path / repo,
                                      target="onnxruntime-python", overrides=overrides))
        return result.cache[NN]

    assert status(first, "r1") == "miss"
    assert status(first, "r2") == "hit"
    assert status(second, "r3") == "miss"
    assert status(first, "r4", **{"nn.calibration_method": "minmax"}) == "miss"
