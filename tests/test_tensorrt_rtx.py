"""The graphs and optimization profiles svc-deploy hands TensorRT parse and build — proven with TensorRT-RTX,
whose ONNX parser and builder run on the CPU. Standard TensorRT cannot be installed here; the real Triton plans
it would build are untested (docs/deploy.md says so)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import NLP


def test_tensorrt_target_builds_every_nlp_network_with_tensorrt_rtx(tiny_rmirs, tmp_path):
    repo = tmp_path / "repo"
    env = dict(os.environ, POLYGRAPHY_USE_TENSORRT_RTX="1", XDG_CACHE_HOME=str(tmp_path / "cache"))
    exe = Path(sys.executable).parent / "svc-deploy"
    run = subprocess.run([str(exe), *map(str, tiny_rmirs.values()), str(repo), "--target", "tensorrt"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "TensorRT-RTX" in run.stderr
    status = json.loads((repo / "deploy_status.json").read_text())
    step = next(s for s in status["steps"] if s["name"] == "choose_target")
    assert step["engine_builder"] == "tensorrt_rtx" and step["instance_kind"] == "KIND_GPU"
    plans = sorted(repo.glob("riva-trt-*/1/model.plan"))
    assert len(plans) == len(NLP)
    assert all(p.stat().st_size > 100_000 for p in plans)
    nets = next(s for s in status["steps"] if s["name"] == "prepare_networks")
    assert {v["file"] for k, v in nets.items() if isinstance(v, dict)} == {"model.plan"}


def test_without_tensorrt_the_target_stops_clearly(tiny_rmirs, tmp_path):
    """No TensorRT and no GPU here: the tensorrt target says so, exits 8 and writes nothing."""
    exe = Path(sys.executable).parent / "svc-deploy"
    env = {k: v for k, v in os.environ.items() if k != "POLYGRAPHY_USE_TENSORRT_RTX"}
    run = subprocess.run([str(exe), str(tiny_rmirs["qa"]), str(tmp_path / "repo"), "--target", "tensorrt"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 8
    assert "the tensorrt target cannot build engines here" in run.stderr and "Traceback" not in run.stderr
    assert list(tmp_path.iterdir()) == []


def _rtx_deploy(rmir: Path, repo: Path, tmp_path: Path, *flags: str) -> dict:
    env = dict(os.environ, POLYGRAPHY_USE_TENSORRT_RTX="1", XDG_CACHE_HOME=str(tmp_path / "cache"))
    exe = Path(sys.executable).parent / "svc-deploy"
    run = subprocess.run([str(exe), str(rmir), str(repo), "--target", "tensorrt", *flags],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    status = json.loads((repo / "deploy_status.json").read_text())
    return next(v for k, v in status["models"].items() if "-nn-" in k)["optimization"]


def test_int8_qdq_and_sparse_graphs_build_with_tensorrt_rtx(tiny_rmirs, tmp_path):
    """The compiled graphs handed to TensorRT — fused, INT8 Q/DQ (symmetric), 2:4-pruned — parse and build."""
    int8 = _rtx_deploy(tiny_rmirs["text_classification"], tmp_path / "int8", tmp_path, "--nn.precision=int8")
    assert int8["int8"]["quantized"] > 0 and int8["int8"]["activations"] == "int8 symmetric"
    assert int8["fusion"]["plugins"]["gelu"]["fused"] == 2 and int8["fusion"]["flavor"] == "onnx"
    assert int8["engine"]["int8_qdq"] is True and int8["engine"]["builder"] == "tensorrt_rtx"
    assert int8["engine_accuracy"]["status"] == "not run"
    meta = json.loads(next((tmp_path / "int8").glob("*-nn-*/1/model.plan.json")).read_text())
    assert meta["profile"]["input_ids"]["max"] == [64, 64] and meta["bytes"] > 100_000
    sparse = _rtx_deploy(tiny_rmirs["punctuation"], tmp_path / "sparse", tmp_path, "--nn.sparsity=2:4",
                         "--allow-accuracy-drop")
    assert sparse["sparsity"]["pruned"] > 0 and sparse["engine"]["bytes"] > 100_000


def test_speech_networks_build_with_tensorrt_rtx(tiny_dir, tmp_path):
    """The fused featurizer + acoustic model, offline (profile up to max_audio_seconds) and streaming (profile up
    to the window), parses and builds through the deploy's seam."""
    from servicemaker.build import BuildOptions, build
    from servicemaker.keys import ArchiveArg

    export = ArchiveArg(tiny_dir / "speech_recognition.riva", None)
    offline, streaming = tmp_path / "offline.rmir", tmp_path / "streaming.rmir"
    build(BuildOptions(pipeline="speech_recognition_offline", output=ArchiveArg(offline, None), inputs=[export],
                       name="asr-offline", overrides={"max_audio_seconds": "20"}))
    build(BuildOptions(pipeline="speech_recognition", output=ArchiveArg(streaming, None), inputs=[export],
                       name="asr-streaming"))
    for rmir, seconds in ((offline, 20.0), (streaming, 0.16 + 2 * 1.92)):
        repo = tmp_path / rmir.stem
        env = dict(os.environ, POLYGRAPHY_USE_TENSORRT_RTX="1", XDG_CACHE_HOME=str(tmp_path / "cache"))
        run = subprocess.run([str(Path(sys.executable).parent / "svc-deploy"), str(rmir), str(repo), "--target",
                              "tensorrt"], capture_output=True, text=True, timeout=600, env=env)
        assert run.returncode == 0, run.stderr[-3000:]
        meta = json.loads(next(repo.glob("riva-trt-*-am-*/1/model.plan.json")).read_text())
        assert meta["profile"]["audio_signal"]["max"] == [8, int(round(seconds * 16000))]
        assert meta["bytes"] > 10_000
        config = next(repo.glob("riva-trt-*-am-*/config.pbtxt")).read_text()
        assert 'platform: "tensorrt_plan"' in config and "reshape" in config


def test_speech_synthesis_networks_build_with_tensorrt_rtx(tmp_path):
    """NeMo's ragged FastPitch export (optionals removed, its batching loop cut out: TensorRT-RTX's builder fails on
    the loop, the padded core builds; padding leak masked) and HiFi-GAN in FP16, with profiles over symbols and
    frames, parse and build through the deploy's seam."""
    from servicemaker.build import BuildOptions, build
    from servicemaker.keys import ArchiveArg
    from tts_fixtures import nemo_exports

    fp, hg = nemo_exports(tmp_path / "in")
    rmir = tmp_path / "tts.rmir"
    build(BuildOptions(pipeline="speech_synthesis", output=ArchiveArg(rmir, None),
                       inputs=[ArchiveArg(fp, None), ArchiveArg(hg, None)]))
    repo = tmp_path / "repo"
    env = dict(os.environ, POLYGRAPHY_USE_TENSORRT_RTX="1", XDG_CACHE_HOME=str(tmp_path / "cache"))
    run = subprocess.run([str(Path(sys.executable).parent / "svc-deploy"), str(rmir), str(repo), "--target",
                          "tensorrt"], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    voice = "English-US"
    fastpitch = json.loads((repo / f"riva-trt-fastpitch_encoder-{voice}" / "1" / "model.plan.json").read_text())
    hifigan = json.loads((repo / f"riva-trt-hifigan-{voice}" / "1" / "model.plan.json").read_text())
    assert fastpitch["profile"]["text"]["max"] == [8, 402] and "batch_lengths" not in fastpitch["profile"]
    assert hifigan["profile"]["spec"]["max"] == [8, 80, 2048] and hifigan["profile"]["spec"]["min"] == [1, 80, 1]
    assert fastpitch["bytes"] > 100_000 and hifigan["bytes"] > 100_000
    status = json.loads((repo / "deploy_status.json").read_text())["models"]
    report = status[f"riva-trt-fastpitch_encoder-{voice}"]["optimization"]
    assert "cut out" in report["unragged"] and report["padding_leak"]["sentence_batching"] == "any"
    # FP16 for HiFi-GAN, FP32 for FastPitch (its durations round to frames); TensorRT-RTX itself takes no precision
    # flag (strongly typed networks): the FP16 build flag is what standard TensorRT would get
    assert report["precision"] == "fp32"
    assert status[f"riva-trt-hifigan-{voice}"]["optimization"]["precision"] == "fp16"
    assert 'platform: "tensorrt_plan"' in (repo / f"riva-trt-hifigan-{voice}" / "config.pbtxt").read_text()
    synth = (repo / f"tts_synthesizer-{voice}" / "config.pbtxt").read_text()
    assert '"spectrogram_layout"' in synth and 'string_value: "padded"' in synth
