"""The README's commands work: `make demo` runs the quick start (MiniLM export → svc-build → svc-deploy → a real
Triton server answers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_names_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "\nmake demo\n" in readme and "\nmake test\n" in readme


@pytest.mark.slow
def test_make_demo(tmp_path):
    venv = Path(sys.prefix)
    stamp = venv / "bin" / ".installed"
    result = subprocess.run(["make", "-C", str(ROOT), "-o", str(stamp), "demo", f"VENV={venv}", f"DEMO={tmp_path}"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "riva_text_classification_weather" in result.stdout
    doc, _ = json.JSONDecoder().raw_decode(result.stdout[result.stdout.index("{\n"):])
    answer = doc["riva_text_classification_weather"]
    assert answer["LABEL"] == "weather" and answer["SCORE"] > 0.5
    assert (tmp_path / "model_repository" / "deploy_status.json").exists()
    spoken = (tmp_path / "speech_recognition.txt").read_text().strip()
    assert f"spoken: {spoken}" in result.stdout
    tail = result.stdout[result.stdout.index("spoken: "):]
    heard, _ = json.JSONDecoder().raw_decode(tail[tail.index("{\n"):])
    assert heard["asr-offline"]["TRANSCRIPT"].split() == spoken.split()
    said, _ = json.JSONDecoder().raw_decode(tail[tail.index('{\n  "model": "fastpitch'):])
    assert said["model"] == "fastpitch_hifigan_ensemble-English-US" and said["audio_seconds"] > 1.0
    assert (tmp_path / "speech_synthesis.wav").stat().st_size == 44 + 2 * said["samples"]
    rmir = tmp_path / "text_classification.rmir"
    doc = json.loads(subprocess.run([str(venv / "bin" / "svc-inspect"), str(rmir), "--json", "--verify"],
                                    capture_output=True, text=True, check=True).stdout)
    spec = doc["pipeline_spec"]
    assert spec["components"]["nn"]["model_name"] == (
        "riva-{runtime}-riva_text_classification_weather-nn-sentence-transformers-all-MiniLM-L6-v2")
    assert spec["components"]["tokenizer"]["params"]["max_seq_length"] == 128
    assert spec["inputs"][0]["model_class"] == "TextClassificationModel"


@pytest.mark.slow
def test_minilm_sample_is_meaningful(tmp_path):
    """The MiniLM text-classification sample classifies real sentences by its prototype head (ONNX Runtime)."""
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from servicemaker.eff import EffReader
    from servicemaker.samples import models

    path = models.minilm_export("text_classification", tmp_path / "tc.riva")
    with EffReader(path) as r:
        graph = r.read_bytes("model_graph.onnx", max_bytes=1 << 30)
    tok = Tokenizer.from_file(str(models.minilm_dir() / "tokenizer.json"))
    sess = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    labels = list(models.PROTOTYPES)
    for text, want in [("is it going to snow in berlin", "weather"), ("put on a rock song", "music"),
                       ("did the lakers win their match", "sports")]:
        enc = tok.encode(text)
        feed = {"input_ids": np.array([enc.ids], dtype=np.int64),
                "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
                "attention_mask": np.array([enc.attention_mask], dtype=np.int64)}
        logits = sess.run(["logits"], feed)[0]
        assert labels[int(logits.argmax())] == want, (text, logits)
