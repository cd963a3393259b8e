"""speech_recognition through svc-build and svc-deploy without a server: Riva's flags, the repository each mode
writes, and exports that do not fit, each refused with one message naming the mismatch and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from servicemaker.build import BuildOptions, build
from servicemaker.deploy import DeployOptions, deploy
from servicemaker.errors import UsageError, ValidationError
from servicemaker.keys import ArchiveArg
from servicemaker.pipeline import parse_overrides
from servicemaker.pipelines import get_pipeline, variant
from servicemaker.samples import models
from servicemaker.samples.export import binary_artifact, text_artifact, write_export

CTC = "nemo.collections.asr.models.EncDecCTCModel"


def export(path: Path, *, graph_features: int = 16, config_features: int = 16, vocab=models.ASR_VOCAB) -> Path:
    """A tiny char CTC export whose graph and config can disagree."""
    torch.manual_seed(0)
    net = models.TinyCTC(graph_features, len(models.ASR_VOCAB))
    graph = models.export_traced(net, (torch.randn(1, graph_features, 20), torch.tensor([20])),
                                  ["audio_signal", "length"], ["logprobs"],
                                  {"audio_signal": {0: "batch", 2: "time"}, "length": {0: "batch"},
                                   "logprobs": {0: "batch", 1: "time"}})
    config = {"preprocessor": {"sample_rate": 16000, "features": config_features, "window_size": 0.025,
                               "window_stride": 0.01, "n_fft": 512},
              "decoder": {"vocabulary": list(vocab), "num_classes": len(vocab)}}
    return write_export(path, CTC, [binary_artifact("model_graph.onnx", graph, "acoustic model", onnx=True),
                                    text_artifact("model_config.yaml", yaml.safe_dump(config), "model config")])


def rmir(tmp_path: Path, source: Path, pipeline: str = "speech_recognition_offline", **overrides: str) -> Path:
    out = tmp_path / f"{pipeline}.rmir"
    build(BuildOptions(pipeline=pipeline, output=ArchiveArg(out, None), inputs=[ArchiveArg(source, None)],
                       name="asr", overrides=overrides, force=True))
    return out


def deployed(tmp_path: Path, rmir_path: Path) -> Path:
    repo = tmp_path / "repo"
    deploy(DeployOptions(rmirs=[ArchiveArg(rmir_path, None)], repo=repo, target="onnxruntime-python", force=True))
    return repo


def config(repo: Path, name: str):
    return text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_riva_flags_select_the_variant_and_set_parameters():
    pipeline = get_pipeline("speech_recognition")
    args = ["speech_recognition", "out.rmir", "in.riva", "--offline", "--decoder_type=flashlight",
            "--flashlight_decoder.beam_size", "8", "--chunk_size=0.32"]
    overrides, rest = parse_overrides(args, pipeline.aliases, pipeline.variants)
    assert rest == ["speech_recognition", "out.rmir", "in.riva"]
    assert variant(pipeline, overrides).name == "speech_recognition_offline" and "offline" not in overrides
    assert overrides == {"decoder_type": "flashlight", "flashlight_decoder.beam_size": "8", "chunk_size": "0.32"}
    with pytest.raises(UsageError, match="unknown option --chunk=1") as err:
        parse_overrides(["--chunk=1"], pipeline.aliases, pipeline.variants)
    assert "--chunk_size" in err.value.hint and "--offline" in err.value.hint


def test_two_flags_for_one_parameter_and_bad_values_are_refused(tmp_path):
    source = export(tmp_path / "asr.riva")
    (tmp_path / "lm.arpa").write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0\tyes\n\n\\end\\\n")
    with pytest.raises(UsageError, match="sets ctc_decoder.language_model, which another flag already sets"):
        rmir(tmp_path, source, decoding_language_model_arpa=str(tmp_path / "lm.arpa"),
             decoding_language_model_binary=str(tmp_path / "lm.arpa"))
    with pytest.raises(UsageError, match="decoder_type=beam: expected one of greedy, flashlight"):
        rmir(tmp_path, source, decoder_type="beam")
    assert not (tmp_path / "speech_recognition_offline.rmir").exists()


def test_offline_repository(tmp_path):
    repo = deployed(tmp_path, rmir(tmp_path, export(tmp_path / "asr.riva")))
    names = sorted(p.name for p in repo.iterdir() if p.is_dir())
    assert names == ["asr", "asr-ctc-decoder-cpu-offline", "asr-feature-extractor-offline",
                     "riva-onnx-asr-am-offline"]
    net = config(repo, "riva-onnx-asr-am-offline")
    assert [i.name for i in net.input] == ["audio_signal", "length"]
    assert net.input[0].allow_ragged_batch and list(net.input[1].reshape.shape) == []
    assert [o.name for o in net.output] == ["logprobs", "encoded_lengths"]
    params = {k: v.string_value for k, v in config(repo, "asr-ctc-decoder-cpu-offline").parameters.items()}
    assert params["handler"] == "ctc_decode" and params["ms_per_timestep"] == "10"
    assert (repo / "asr-ctc-decoder-cpu-offline" / "1" / params["model_config"]).is_file()
    for model in names[1:]:
        files = {p.name for p in (repo / model / "1").iterdir()}
        assert {"model.py", "svc_handlers.py", "svc_common.py"} <= files
    assert "soxr" in (repo / "requirements.txt").read_text()


def test_streaming_repository(tmp_path):
    repo = deployed(tmp_path, rmir(tmp_path, export(tmp_path / "asr.riva"), "speech_recognition"))
    front = config(repo, "asr-feature-extractor-streaming")
    assert front.sequence_batching.max_sequence_idle_microseconds == 60_000_000
    assert front.sequence_batching.HasField("oldest")
    assert [c.name for c in front.sequence_batching.control_input] == ["START", "READY", "END", "CORRID"]
    params = {k: v.string_value for k, v in front.parameters.items()}
    assert json.loads(params["network_models"]) == {"nn": {"model": "riva-onnx-asr-am-streaming", "batched": True,
                                                           "outputs": ["logprobs", "encoded_lengths"]}}
    assert params["chunk_size"] == "0.16"
    assert config(repo, "asr-ctc-decoder-cpu-streaming").HasField("sequence_batching")
    ensemble = config(repo, "asr")
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        "asr-feature-extractor-streaming", "asr-ctc-decoder-cpu-streaming"]
    assert "IS_FINAL" in [o.name for o in ensemble.output]


@pytest.mark.parametrize("kind, kwargs, overrides, message", [
    ("features", {"graph_features": 16, "config_features": 80}, {},
     "the graph expects 16 features but the preprocessor makes 80"),
    ("vocabulary", {"vocab": models.ASR_VOCAB[:-3]}, {},
     "the graph gives 29 classes per frame but decoder.vocabulary has 25 entries"),
    ("ms_per_timestep", {}, {"ms_per_timestep": "40"}, "ms_per_timestep=40 but the model's frames are 10 ms apart"),
    ("featurizer override", {}, {"featurizer.features": "64"},
     "the graph expects 16 features but the preprocessor makes 64"),
])
def test_exports_that_do_not_fit_are_refused_with_the_mismatch(tmp_path, kind, kwargs, overrides, message):
    path = rmir(tmp_path, export(tmp_path / "asr.riva", **kwargs), **overrides)
    with pytest.raises(ValidationError) as err:
        deployed(tmp_path, path)
    assert "does not fit pipeline speech_recognition_offline" in str(err.value)
    assert any(message in p for p in err.value.violations), err.value.violations
    assert not (tmp_path / "repo").exists()


def test_a_chunk_off_the_frame_grid_is_refused(tmp_path):
    path = rmir(tmp_path, export(tmp_path / "asr.riva"), "speech_recognition", chunk_size="0.165")
    with pytest.raises(ValidationError) as err:
        deployed(tmp_path, path)
    assert "chunk_size=0.165 s is not a whole number of 10 ms frames" in err.value.violations


def test_a_tts_export_is_not_a_speech_recognition_model(tmp_path):
    from servicemaker.samples import tts

    fastpitch, _ = tts.tts_exports(tmp_path / "fp.riva", tmp_path / "hg.riva")
    with pytest.raises(ValidationError) as err:
        rmir(tmp_path, fastpitch)
    assert "FastPitchModel" in str(err.value) + " ".join(err.value.violations)
