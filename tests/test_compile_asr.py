"""INT8 for speech recognition: Q/DQ on the acoustic model's convolutions (the fused featurizer stays FP32), the
accuracy gate on transcripts (character error rate against the FP32 transcripts), and the INT8 network through
svc-deploy on ONNX Runtime and TensorRT-RTX. The network is the trained sample (servicemaker.samples.asr: trained
once, then read from ~/.cache/servicemaker/samples)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from servicemaker.build import BuildOptions, build
from servicemaker.deploy import DeployOptions, deploy, quantize
from servicemaker.deploy.accuracy import char_error_rate, edit_distance
from servicemaker.deploy.optimize import run
from servicemaker.keys import ArchiveArg
from servicemaker.pipelines import get_family, get_pipeline
from servicemaker.speech import audio

from conftest import gate_refuses_then_allows

FEATURIZER = "featurizer/"
LAYERS = ("Conv", "MatMul", "Gemm")


@pytest.fixture(scope="module")
def asr_rmir(tmp_path_factory) -> Path:
    """``svc-build speech_recognition --offline`` of the trained sample."""
    from servicemaker.samples.asr import asr_export

    out = tmp_path_factory.mktemp("asr")
    riva = asr_export(out / "speech_recognition.riva")
    rmir = out / "asr.rmir"
    build(BuildOptions(pipeline="speech_recognition_offline", output=ArchiveArg(rmir, None),
                       inputs=[ArchiveArg(riva, None)]))
    return rmir


def _deploy(rmir: Path, repo: Path, **overrides: str):
    return deploy(DeployOptions(rmirs=[ArchiveArg(rmir, None)], repo=repo, target="onnxruntime-python",
                                overrides={f"nn.{k}": v for k, v in overrides.items()}))


def _network(repo: Path) -> tuple[dict, onnx.ModelProto]:
    status = json.loads((repo / "deploy_status.json").read_text())
    report = next(v for k, v in status["models"].items() if "-am-" in k)["optimization"]
    return report, onnx.load(str(next(repo.glob("*-am-*/1/model.onnx"))))


@pytest.fixture(scope="module")
def fused_fp32(asr_rmir, tmp_path_factory) -> onnx.ModelProto:
    """The FP32 network svc-deploy compiles: featurizer fused in front of the acoustic model."""
    repo = tmp_path_factory.mktemp("fp32") / "repo"
    _deploy(asr_rmir, repo, precision="fp32")
    report, model = _network(repo)
    assert report["precision"] == "fp32" and report["accuracy"]["cer_vs_fp32"] == 0.0
    return quantize._ensure_names(model)


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


@pytest.mark.parametrize("symmetric", [False, True], ids=["cpu-uint8", "tensorrt-int8"])
def test_qdq_covers_the_acoustic_model_and_leaves_the_featurizer_fp32(fused_fp32, tmp_path, symmetric):
    settings = quantize.QuantSettings(method="percentile", symmetric_activations=symmetric,
                                      exclude_prefixes=(FEATURIZER,))
    q = quantize.quantize(fused_fp32, audio.feeds("calibration", 16000), settings, tmp_path)
    onnx.checker.check_model(q)
    fp32_inits = {t.name for t in fused_fp32.graph.initializer}
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    prod = _producers(q)
    layers = [n for n in q.graph.node if n.op_type in LAYERS and not n.name.startswith(FEATURIZER)]
    originals = {n.name: n for n in fused_fp32.graph.node}
    assert len(layers) > 20 and all(originals[n.name].input[1] in fp32_inits for n in layers)
    depthwise = 0
    for node in layers:
        act, weight = prod[node.input[0]], prod[node.input[1]]
        assert act.op_type == "DequantizeLinear" and prod[act.input[0]].op_type == "QuantizeLinear", node.name
        zero = inits[act.input[2]]
        assert zero.dtype == (np.int8 if symmetric else np.uint8)
        if symmetric:
            assert zero == 0  # TensorRT's Q/DQ layers take zero point 0 only
        w = inits[weight.input[0]]
        assert weight.op_type == "DequantizeLinear" and w.dtype == np.int8
        axis = next(a.i for a in weight.attribute if a.name == "axis")
        scale, w_zero = inits[weight.input[1]], inits[weight.input[2]]
        if node.op_type == "Conv":  # per output channel, grouped and depthwise convolutions too
            assert axis == 0 and scale.shape == (w.shape[0],) and not w_zero.any()
            groups = next((a.i for a in node.attribute if a.name == "group"), 1)
            depthwise += groups > 1 and groups == w.shape[0]
            if len(node.input) > 2 and node.input[2]:
                assert inits[node.input[2]].dtype == np.float32  # biases stay FP32
    assert depthwise > 5
    # nothing of the featurizer is quantized: no Q/DQ node of its own, none of its nodes reads a dequantized value
    qdq = [n for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and not any(n.name.startswith(FEATURIZER) for n in qdq)
    dq_out = {n.output[0] for n in qdq if n.op_type == "DequantizeLinear"}
    featurizer = [n for n in q.graph.node if n.name.startswith(FEATURIZER)]
    assert featurizer and not any(set(n.input) & dq_out for n in featurizer)
    assert {n.op_type for n in featurizer} >= {"Conv", "MatMul", "Log"}
    # ONNX Runtime runs it, and on the CPU fuses Q/DQ convolutions into QLinearConv
    feeds = audio.feeds("samples", 16000)
    for a, b in zip(run(fused_fp32, feeds), run(q, feeds)):
        assert a[0].shape == b[0].shape and np.array_equal(a[1], b[1])
    if not symmetric:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(tmp_path / "ort-optimized.onnx")
        ort.InferenceSession(q.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        fused = [n for n in onnx.load(opts.optimized_model_filepath).graph.node if n.op_type == "QLinearConv"]
        assert len(fused) >= depthwise


def test_greedy_ctc_and_the_character_error_rate():
    family = get_family(get_pipeline("speech_recognition_offline"))
    vocab = [" ", "a", "b", "\u2581c"]
    frames = [[1, 1, 4, 1, 2, 4, 4, 0, 0, 3, 3], [2, 2, 2, 4, 2, 1, 4, 4, 4, 4, 1]]  # blank = 4, the last class
    logprobs = np.log(np.eye(5, dtype=np.float32)[frames] * 0.9 + 0.02)
    lengths = np.array([11, 7])
    assert family._greedy_ctc(logprobs, lengths, vocab) == ["aab c", "bba"]
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("", "ab") == 2
    assert char_error_rate(["abcd", "ef"], ["abed", "ef"]) == pytest.approx(1 / 6)
    assert char_error_rate([""], [""]) == 0.0


def test_deploy_int8_is_gated_by_the_error_rate_of_the_transcripts(asr_rmir, tmp_path):
    repo = tmp_path / "repo"
    _deploy(asr_rmir, repo, precision="int8")
    report, model = _network(repo)
    int8, gate = report["int8"], report["accuracy"]
    assert report["precision"] == "int8" and int8["activations"] == "uint8"
    assert int8["excluded"] == {"prefixes": [FEATURIZER], "layers": 2}  # pre-emphasis and STFT convolutions
    assert int8["calibration_data"] == "servicemaker's bundled synthesized English utterances"
    assert int8["quantized"] > 0 and int8["quantized"] == int8["layers"] - len(int8["kept_fp32"])
    assert gate["status"] == "passed" and gate["gated_by"] == "cer_vs_fp32"
    assert 0.0 <= gate["cer_vs_fp32"] <= gate["tolerance"] == 0.01
    assert gate["transcripts"] == len(audio.utterances("samples")) and gate["fp32_characters"] > 100
    assert 0.9 < gate["cosine"] <= 1.0
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    assert not any(n.name.startswith(FEATURIZER) for n in model.graph.node if "Quantize" in n.op_type)
    status = json.loads((repo / "deploy_status.json").read_text())
    step = next(s for s in status["steps"] if s["name"] == "prepare_networks")
    summary = next(v for v in step.values() if isinstance(v, dict))
    assert summary["accuracy"]["cer_vs_fp32"] == gate["cer_vs_fp32"] and summary["int8_layers"] == int8["quantized"]


def test_a_strict_tolerance_sends_convolutions_back_to_fp32_until_the_transcripts_agree(asr_rmir, tmp_path):
    repo = tmp_path / "repo"
    _deploy(asr_rmir, repo, precision="int8", accuracy_tolerance="0")
    report, _ = _network(repo)
    int8 = report["int8"]
    assert int8["first_attempt"]["status"] == "failed" and int8["first_attempt"]["cer_vs_fp32"] > 0
    assert int8["kept_fp32"] and all("Conv" in name for name in int8["kept_fp32"])
    assert int8["quantized"] == int8["layers"] - len(int8["kept_fp32"])
    assert report["accuracy"]["status"] == "passed" and report["accuracy"]["cer_vs_fp32"] == 0.0


def test_a_failed_transcript_gate_exits_5_and_writes_nothing(asr_rmir, tmp_path):
    """svc-deploy with no layer allowed back to FP32 (the fallback would otherwise restore the FP32 transcripts):
    the INT8 transcripts miss a tolerance of 0, the deploy refuses with exit 5 and leaves nothing behind; with
    --allow-accuracy-drop it deploys and reports the failure."""
    script = ("from servicemaker.deploy import quantize\n"
              "quantize.sensitivity = lambda *args, **kwargs: []\n"
              "from servicemaker.cli.deploy import main\n"
              "main()\n")
    args = [sys.executable, "-c", script, str(asr_rmir), str(tmp_path / "repo"), "--target", "onnxruntime-python",
            "--nn.precision=int8", "--nn.accuracy_tolerance=0"]
    gate_refuses_then_allows(args, tmp_path, "loses more accuracy than nn.accuracy_tolerance=0.0 allows: cer_vs_fp32 ",
                             600)
    report, _ = _network(tmp_path / "repo")
    assert report["accuracy"]["status"] == "failed" and report["accuracy"]["cer_vs_fp32"] > 0
    assert report["int8"]["kept_fp32"] == []


def test_int8_network_builds_with_tensorrt_rtx(asr_rmir, tmp_path):
    """The symmetric INT8 Q/DQ network (featurizer FP32 in front) that the tensorrt target hands TensorRT parses
    and builds with TensorRT-RTX, gated on the CPU by its transcripts first."""
    repo = tmp_path / "repo"
    env = dict(os.environ, POLYGRAPHY_USE_TENSORRT_RTX="1", XDG_CACHE_HOME=str(tmp_path / "cache"))
    exe = Path(sys.executable).parent / "svc-deploy"
    run_ = subprocess.run([str(exe), str(asr_rmir), str(repo), "--target", "tensorrt", "--nn.precision=int8"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert run_.returncode == 0, run_.stderr[-3000:]
    status = json.loads((repo / "deploy_status.json").read_text())
    report = next(v for k, v in status["models"].items() if "-am-" in k)["optimization"]
    assert report["int8"]["activations"] == "int8 symmetric" and report["int8"]["quantized"] > 0
    assert report["accuracy"]["gated_by"] == "cer_vs_fp32" and report["accuracy"]["status"] == "passed"
    assert report["engine"]["builder"] == "tensorrt_rtx" and report["engine"]["int8_qdq"] is True
    assert next(repo.glob("riva-trt-*-am-*/1/model.plan")).stat().st_size > 100_000
