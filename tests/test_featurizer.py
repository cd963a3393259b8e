"""NeMo's mel featurizer as an ONNX graph: checked against NeMo's own output on real speech (the fixtures under
tests/fixtures/asr were made by NeMo 3.0 with make_fixtures.py there), fused in front of small CTC acoustic models,
and built with TensorRT-RTX."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from servicemaker.errors import ValidationError
from servicemaker.speech.acoustic import acoustic_interface, check_acoustic_model, fuse, time_stride
from servicemaker.speech.featurizer import FeaturizerConfig, build_featurizer, window

FIXTURES = Path(__file__).parent / "fixtures" / "asr"
META = json.loads((FIXTURES / "configs.json").read_text())
CASES = sorted(META["cases"])
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def audio() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "audio.npz") as data:
        return {name: data[name].astype(np.float32) / 32768 for name in data.files}


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def padded(signals: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    batch = np.zeros((len(signals), max(len(s) for s in signals)), dtype=np.float32)
    for row, s in zip(batch, signals):
        row[: len(s)] = s
    return batch, np.array([len(s) for s in signals], dtype=np.int64)


def config(case: str) -> FeaturizerConfig:
    return FeaturizerConfig.from_model_config(META["cases"][case])


def assert_matches(ours: np.ndarray, ours_len: np.ndarray, nemo: np.ndarray, nemo_len: np.ndarray,
                   pad_value: float) -> float:
    """Shapes and lengths equal, valid frames within TOLERANCE, padding equal to pad_value; the max abs diff."""
    assert ours.shape == nemo.shape
    assert ours_len.tolist() == nemo_len.tolist()
    worst = 0.0
    for row, n in enumerate(nemo_len):
        worst = max(worst, float(np.abs(ours[row, :, :n] - nemo[row, :, :n]).max()))
        assert (ours[row, :, n:] == pad_value).all() and (nemo[row, :, n:] == pad_value).all()
    assert worst <= TOLERANCE
    return worst


# ---------------------------------------------------------------------------------------------------------------------
# against NeMo


@pytest.mark.parametrize("case", CASES)
def test_each_utterance_matches_nemo(case, audio):
    cfg = config(case)
    run = session(build_featurizer(cfg))
    with np.load(FIXTURES / f"features_{case}.npz") as nemo:
        for name, signal in audio.items():
            feats, lengths = run.run(None, {"audio_signal": signal[None], "length": np.array([len(signal)])})
            assert_matches(feats, lengths, nemo[f"features_{name}"], nemo[f"length_{name}"], cfg.pad_value)


@pytest.mark.parametrize("case", CASES)
def test_a_padded_batch_matches_nemo(case, audio):
    cfg = config(case)
    with np.load(FIXTURES / f"features_{case}.npz") as nemo:
        batch, lengths = padded([audio[str(n)] for n in nemo["batch_names"]])
        assert lengths[0] != lengths[1]
        feats, frames = session(build_featurizer(cfg)).run(None, {"audio_signal": batch, "length": lengths})
        assert_matches(feats, frames, nemo["batch_features"], nemo["batch_length"], cfg.pad_value)


def test_fixture_configs_cover_the_asked_cases():
    cfgs = {case: config(case) for case in CASES}
    assert (cfgs["quartznet"].features, cfgs["quartznet"].win_length, cfgs["quartznet"].hop_length) == (64, 320, 160)
    assert (cfgs["conformer"].features, cfgs["conformer"].win_length, cfgs["conformer"].n_fft_) == (80, 400, 512)
    assert cfgs["all_features"].normalize == "all_features" and cfgs["no_normalize"].normalize == "none"
    assert cfgs["pad_to_16"].pad_to == 16 and cfgs["variants"].window == "hamming"


# ---------------------------------------------------------------------------------------------------------------------
# the graph's own properties


@pytest.mark.parametrize("case", ["conformer", "all_features", "pad_to_16"])
def test_a_row_gives_in_any_batch_what_it_gives_alone(case, audio):
    cfg = config(case)
    run = session(build_featurizer(cfg))
    signals = [audio["lights"], audio["door"][:9000], audio["digits"]]
    batch, lengths = padded(signals)
    batch[1, 9000:] = 0.3      # whatever lies past a row's length does not leak in
    feats, frames = run.run(None, {"audio_signal": batch, "length": lengths})
    for row, signal in enumerate(signals):
        alone, n = run.run(None, {"audio_signal": signal[None], "length": np.array([len(signal)])})
        assert frames[row] == n[0] == len(signal) // cfg.hop_length
        np.testing.assert_allclose(feats[row, :, : n[0]], alone[0, :, : n[0]], atol=1e-4)
        assert (feats[row, :, n[0]:] == cfg.pad_value).all()
    assert feats.shape[2] % cfg.pad_to == 0 if cfg.pad_to else feats.shape[2] == batch.shape[1] // 160 + 1


def test_short_and_empty_rows_give_finite_features():
    run = session(build_featurizer(FeaturizerConfig()))
    batch = np.random.default_rng(0).normal(size=(3, 1000)).astype(np.float32)
    feats, frames = run.run(None, {"audio_signal": batch, "length": np.array([1000, 200, 0])})
    assert frames.tolist() == [6, 1, 0]
    assert np.isfinite(feats).all()
    assert (feats[2] == 0).all() and (feats[1, :, 1:] == 0).all()


@pytest.mark.parametrize("opset", [13, 16, 18, 21])
def test_any_opset_from_13_builds_and_agrees(opset, audio):
    cfg = config("conformer")
    feeds = {"audio_signal": audio["digits"][None], "length": np.array([len(audio["digits"])])}
    model = build_featurizer(cfg, opset=opset)
    assert model.ir_version == helper.find_min_ir_version_for(list(model.opset_import))
    np.testing.assert_allclose(session(model).run(None, feeds)[0], session(build_featurizer(cfg)).run(None, feeds)[0],
                               atol=1e-6)


def test_graph_is_static_math_only():
    ops = {n.op_type for n in build_featurizer(config("variants"), opset=16).graph.node}
    assert not ops & {"STFT", "DFT", "Loop", "Scan", "If", "MelWeightMatrix"}
    assert {"Conv", "MatMul", "ReduceSum", "Where"} <= ops


@pytest.mark.parametrize("name", ["hann", "hamming", "blackman", "bartlett"])
def test_windows_are_torchs_symmetric_windows(name):
    torch = pytest.importorskip("torch")
    ref = getattr(torch, f"{name}_window")(400, periodic=False, dtype=torch.float64).numpy()
    np.testing.assert_allclose(window(name, 400), ref, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# the config


def test_omitted_keys_take_nemos_defaults():
    cfg = FeaturizerConfig.from_model_config({"preprocessor": {"_target_": "nemo.collections.asr.modules."
                                                                          "AudioToMelSpectrogramPreprocessor"}})
    assert (cfg.win_length, cfg.hop_length, cfg.n_fft_, cfg.features) == (320, 160, 512, 64)
    assert (cfg.normalize, cfg.window, cfg.preemph, cfg.log_zero_guard_value, cfg.pad_to) == (
        "per_feature", "hann", 0.97, 2 ** -24, 0)


def test_nemo_spellings_overrides_and_references():
    cfg = FeaturizerConfig.from_model_config(
        {"sample_rate": 8000, "preprocessor": {"sample_rate": "${sample_rate}", "nfilt": 40, "n_window_size": 200,
                                               "n_window_stride": 80, "normalize": "NA", "dither": 1e-5,
                                               "pad_to": 16, "stft_conv": False}},
        overrides={"pad_to": 0})
    assert (cfg.sample_rate, cfg.features, cfg.win_length, cfg.hop_length, cfg.n_fft_) == (8000, 40, 200, 80, 256)
    assert cfg.normalize == "none" and cfg.pad_to == 0
    nested = FeaturizerConfig.from_model_config({"model": {"preprocessor": {"features": 80}}})
    assert nested.features == 80
    spelled = FeaturizerConfig.from_model_config({"preprocessor": {"features": 64, "window_size": 0.025}},
                                                 overrides={"nfilt": 80, "n_window_size": 512})
    assert (spelled.features, spelled.win_length, spelled.n_fft_) == (80, 512, 512)


@pytest.mark.parametrize("settings, message", [
    ({"log_zero_guard_type": "max"}, "log_zero_guard_type 'max' is not supported"),
    ({"window": "kaiser"}, "window 'kaiser' is not supported"),
    ({"normalize": {"fixed_mean": [0.0], "fixed_std": [1.0]}}, "normalize with fixed_mean/fixed_std"),
    ({"normalize": "per_utterance"}, "normalize 'per_utterance' is not supported"),
    ({"exact_pad": True}, "exact_pad true"),
    ({"frame_splicing": 3}, "frame_splicing 3 is not supported"),
    ({"pad_to": "max"}, "pad_to 'max' is not supported"),
    ({"mel_norm": 1}, "mel_norm '1' is not supported"),
    ({"n_fft": 256, "window_size": 0.025}, "n_fft 256 is shorter than the window (400 samples)"),
    ({"highfreq": 9000}, "does not fit 0..8000.0 Hz"),
    ({"window_size": 0.025, "n_window_size": 320}, "window_size 0.025 and n_window_size 320, which disagree"),
    ({"features": 64, "nfilt": 80}, "sets features twice"),
    ({"spectrogram_mode": "fancy"}, "settings this featurizer does not know"),
])
def test_unsupported_settings_are_refused_clearly(settings, message):
    with pytest.raises(ValidationError) as err:
        FeaturizerConfig.from_model_config({"preprocessor": settings})
    assert message in str(err.value)
    assert err.value.hint


def test_a_config_without_a_mel_preprocessor_is_refused():
    with pytest.raises(ValidationError, match="no preprocessor section"):
        FeaturizerConfig.from_model_config({"encoder": {}})
    with pytest.raises(ValidationError, match="AudioToMFCCPreprocessor is not supported"):
        FeaturizerConfig.from_model_config({"preprocessor": {"_target_": "nemo.collections.asr.modules."
                                                                         "AudioToMFCCPreprocessor"}})


# ---------------------------------------------------------------------------------------------------------------------
# acoustic models: a small conv CTC model built in code, like NeMo's exports (opset 16, IR 11)


def tiny_am(n_mels: int = 64, stride: int = 2, *, length_input: str | None = "length", length_dtype: int = 7,
            length_output: bool = False, vocab: int = 29, opset: int = 16, seed: int = 0) -> onnx.ModelProto:
    """Conv1d (k3, p1) stages of stride 2 (or one of stride 1) → ReLU → Conv1d to vocab → [B, T', V] →
    LogSoftmax. With a length input, frames past each row's length are zeroed first (so the length matters)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "audio_signal"
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["B", n_mels, "T"])]
    if length_input:
        inputs.append(helper.make_tensor_value_info(length_input, length_dtype, ["B"]))
        inits += [numpy_helper.from_array(np.array(0, np.int64), "c0"), numpy_helper.from_array(np.array(1, np.int64),
                  "c1"), numpy_helper.from_array(np.array([1], np.int64), "ax1"),
                  numpy_helper.from_array(np.array(2, np.int64), "c2")]
        nodes += [helper.make_node("Shape", [x], ["shape"]), helper.make_node("Gather", ["shape", "c2"], ["t"]),
                  helper.make_node("Range", ["c0", "t", "c1"], ["steps"]),
                  helper.make_node("Cast", [length_input], ["len64"], to=TensorProto.INT64),
                  helper.make_node("Unsqueeze", ["len64", "ax1"], ["lencol"]),
                  helper.make_node("Less", ["steps", "lencol"], ["valid"]),
                  helper.make_node("Unsqueeze", ["valid", "ax1"], ["valid3"]),
                  helper.make_node("Cast", ["valid3"], ["validf"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", [x, "validf"], ["masked"])]
        x = "masked"
    channels = n_mels
    stages = max(1, int(np.log2(stride))) if stride > 1 else 1
    for i in range(stages):
        w = rng.normal(scale=0.2, size=(32, channels, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"h{i}"], kernel_shape=[3], pads=[1, 1],
                                   strides=[2 if stride > 1 else 1]),
                  helper.make_node("Relu", [f"h{i}"], [f"r{i}"])]
        x, channels = f"r{i}", 32
    inits.append(numpy_helper.from_array(rng.normal(scale=0.2, size=(vocab, 32, 1)).astype(np.float32), "wo"))
    nodes += [helper.make_node("Conv", [x, "wo"], ["logits"], kernel_shape=[1]),
              helper.make_node("Transpose", ["logits"], ["logits_t"], perm=[0, 2, 1]),
              helper.make_node("LogSoftmax", ["logits_t"], ["logprobs"], axis=-1)]
    outputs = [helper.make_tensor_value_info("logprobs", TensorProto.FLOAT, ["B", "T_out", vocab])]
    if length_output:
        inits += [numpy_helper.from_array(np.array(stride - 1, np.int64), "sm1"),
                  numpy_helper.from_array(np.array(stride, np.int64), "st")]
        nodes += [helper.make_node("Add", ["len64" if length_input else "length", "sm1"], ["up"]),
                  helper.make_node("Div", ["up", "st"], ["encoded_len"])]
        outputs.append(helper.make_tensor_value_info("encoded_len", TensorProto.INT64, ["B"]))
    graph = helper.make_graph(nodes, "tiny_ctc", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 11 if opset >= 16 else 8
    onnx.checker.check_model(model)
    return model


def run_separately(featurizer, am, batch, lengths):
    feats, frames = session(featurizer).run(None, {"audio_signal": batch, "length": lengths})
    names = {i.name for i in am.graph.input}
    feeds = {"audio_signal": feats}
    for v in am.graph.input:
        if v.name != "audio_signal" and v.name in names:
            feeds[v.name] = frames.astype(helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
    return session(am).run(None, feeds), frames


@pytest.mark.parametrize("variant", [
    {"length_input": None},                                     # NeMo char (ConvASR) exports: no length input
    {"length_input": "length"},
    {"length_input": "length", "length_dtype": TensorProto.INT32},
    {"length_input": "length", "length_output": True},
    {"length_input": None, "stride": 4},
    {"length_input": "length", "stride": 1, "opset": 17},
])
def test_fused_graph_equals_featurizer_then_acoustic_model(variant, audio):
    stride = variant.get("stride", 2)
    cfg = config("quartznet")
    featurizer = build_featurizer(cfg)
    am = tiny_am(**{"stride": stride, **variant})
    am_bytes = am.SerializeToString()
    fused = fuse(featurizer, am, time_stride(am))
    assert am.SerializeToString() == am_bytes                       # the caller's model is left alone
    assert [i.name for i in fused.graph.input] == ["audio_signal", "length"]
    assert [o.name for o in fused.graph.output] == ["logprobs", "encoded_lengths"]
    assert fused.opset_import[0].version == variant.get("opset", 16) and fused.ir_version == 11
    batch, lengths = padded([audio["lights"], audio["digits"], audio["door"][:4321]])
    logprobs, encoded = session(fused).run(None, {"audio_signal": batch, "length": lengths})
    (ref, *_), frames = run_separately(featurizer, am, batch, lengths)
    np.testing.assert_allclose(logprobs, ref, atol=1e-5)
    assert encoded.dtype == np.int64
    assert encoded.tolist() == [-(-int(f) // stride) for f in frames]


def test_fusion_keeps_the_acoustic_models_names_apart(audio):
    """An acoustic model whose internal tensors are called 'length' and 'encoded_lengths' still fuses."""
    am = tiny_am(length_input="feature_len")
    for node in am.graph.node:
        node.output[:] = ["length" if o == "len64" else "encoded_lengths" if o == "lencol" else o
                          for o in node.output]
        node.input[:] = ["length" if i == "len64" else "encoded_lengths" if i == "lencol" else i for i in node.input]
    fused = fuse(build_featurizer(config("quartznet")), am, 2)
    batch, lengths = padded([audio["digits"], audio["door"]])
    logprobs, encoded = session(fused).run(None, {"audio_signal": batch, "length": lengths})
    (ref,), frames = run_separately(build_featurizer(config("quartznet")), tiny_am(length_input="feature_len"),
                                    batch, lengths)
    np.testing.assert_allclose(logprobs, ref, atol=1e-5)
    assert encoded.tolist() == [-(-int(f) // 2) for f in frames]


@pytest.mark.parametrize("out_name", ["length", "audio_signal", "enc_len"])
def test_an_int32_length_output_of_any_name_becomes_int64_encoded_lengths(out_name, audio):
    am = tiny_am(length_output=True)
    am.graph.node.append(helper.make_node("Cast", ["encoded_len"], [out_name], to=TensorProto.INT32))
    am.graph.output[1].CopyFrom(helper.make_tensor_value_info(out_name, TensorProto.INT32, ["B"]))
    if out_name == "length":    # the model's own length input must then be called otherwise
        for node in am.graph.node:
            node.input[:] = ["feat_len" if i == "length" else i for i in node.input]
        am.graph.input[1].name = "feat_len"
    fused = fuse(build_featurizer(config("quartznet")), am, 2)
    assert [o.name for o in fused.graph.output] == ["logprobs", "encoded_lengths"]
    batch, lengths = padded([audio["digits"], audio["door"]])
    _, encoded = session(fused).run(None, {"audio_signal": batch, "length": lengths})
    assert encoded.dtype == np.int64 and encoded.tolist() == [-(-(int(n) // 160) // 2) for n in lengths]


def test_fuse_refuses_a_model_that_does_not_take_the_features():
    with pytest.raises(ValidationError, match="the graph expects 80 features but the preprocessor makes 64"):
        fuse(build_featurizer(FeaturizerConfig()), tiny_am(n_mels=80), 2)
    with pytest.raises(ValidationError, match="does not look like a CTC acoustic model"):
        fuse(build_featurizer(FeaturizerConfig()), build_featurizer(FeaturizerConfig()), 2)


@pytest.mark.parametrize("stride", [1, 2, 4, 8])
def test_time_stride_measures_the_subsampling(stride):
    assert time_stride(tiny_am(stride=stride)) == stride
    assert time_stride(tiny_am(stride=stride, length_input=None)) == stride


def test_time_stride_refuses_what_is_not_a_ctc_model():
    with pytest.raises(ValidationError, match="no rank-3 float input"):
        time_stride(build_featurizer(FeaturizerConfig()))


def test_check_acoustic_model_messages():
    cfg = FeaturizerConfig()
    assert check_acoustic_model(tiny_am(n_mels=64), cfg) == []
    assert check_acoustic_model(tiny_am(n_mels=80), cfg) == [
        "the graph expects 80 features but the preprocessor makes 64"]
    no_logits = tiny_am()
    no_logits.graph.output[0].CopyFrom(helper.make_tensor_value_info("logprobs", TensorProto.FLOAT, ["B", "T"]))
    assert any("no rank-3 float output" in p for p in check_acoustic_model(no_logits, cfg))
    fixed = tiny_am()
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    fixed.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 100
    problems = check_acoustic_model(fixed, cfg)
    assert any("fixed batch size 1" in p for p in problems) and any("fixed number of frames 100" in p
                                                                     for p in problems)
    extra = tiny_am()
    extra.graph.input.append(helper.make_tensor_value_info("speaker", TensorProto.FLOAT, ["B", 16]))
    assert any("graph input speaker float32 ['B', 16] is neither" in p for p in check_acoustic_model(extra, cfg))
    face = acoustic_interface(tiny_am(length_output=True))
    assert (face.features.name, face.length.name, face.logprobs.name, face.encoded_lengths.name) == (
        "audio_signal", "length", "logprobs", "encoded_len")


@pytest.mark.parametrize("name", ["char", "conformer"])
def test_fused_nemo_exports_give_nemos_logprobs(name, audio):
    """Tiny random EncDecCTCModels exported by NeMo's own export() (char ConvASR: no length input; Conformer: a
    length input), fused with the featurizer of their model config: NeMo's forward() log-probs and lengths."""
    am = onnx.load(str(FIXTURES / f"am_{name}.onnx"))
    cfg = FeaturizerConfig.from_model_config(META["models"][name])
    assert check_acoustic_model(am, cfg) == []
    assert [i.name for i in am.graph.input] == (["audio_signal"] if name == "char" else ["audio_signal", "length"])
    stride = time_stride(am)
    assert stride == {"char": 2, "conformer": 4}[name]
    fused = fuse(build_featurizer(cfg), am, stride)
    with np.load(FIXTURES / f"e2e_{name}.npz") as nemo:
        batch, lengths = padded([audio[str(n)] for n in nemo["names"]])
        logprobs, encoded = session(fused).run(None, {"audio_signal": batch, "length": lengths})
        assert logprobs.shape == nemo["logprobs"].shape
        assert encoded.tolist() == nemo["encoded_lengths"].tolist()
        for row, n in enumerate(encoded):
            assert np.abs(logprobs[row, :n] - nemo["logprobs"][row, :n]).max() <= TOLERANCE


# ---------------------------------------------------------------------------------------------------------------------
# TensorRT (RTX, whose ONNX parser and builder run on the CPU)


def test_fused_graph_builds_with_tensorrt_rtx(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    pytest.importorskip("polygraphy")
    for case, am in (("conformer", tiny_am(n_mels=80, stride=4)), ("pad_to_16", tiny_am(n_mels=80, length_input=None)),
                     ("all_features", tiny_am(n_mels=80, length_output=True))):
        onnx.save(fuse(build_featurizer(config(case)), am, time_stride(am)), str(tmp_path / f"{case}.onnx"))
    onnx.save(build_featurizer(config("variants")), str(tmp_path / "variants.onnx"))
    for name in ("char", "conformer"):
        am = onnx.load(str(FIXTURES / f"am_{name}.onnx"))
        cfg = FeaturizerConfig.from_model_config(META["models"][name])
        onnx.save(fuse(build_featurizer(cfg), am, time_stride(am)), str(tmp_path / f"nemo_{name}.onnx"))
    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        from servicemaker.deploy.tensorrt import EngineSettings, build_engine
        profile = {"audio_signal": ((1, 160), (2, 16000), (4, 320000)), "length": ((1,), (2,), (4,))}
        for path in sorted(Path(sys.argv[1]).glob("*.onnx")):
            meta = build_engine(path, path.with_suffix(".plan"), EngineSettings(profile=profile, workspace_mib=512))
            print("BUILT", path.stem, meta["builder"], meta["bytes"])
    """)
    env = dict(os.environ, POLYGRAPHY_USE_TENSORRT_RTX="1", XDG_CACHE_HOME=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=600,
                         env=env, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    built = dict(line.split(" ", 2)[1:] for line in run.stdout.splitlines() if line.startswith("BUILT "))
    assert sorted(built) == ["all_features", "conformer", "nemo_char", "nemo_conformer", "pad_to_16", "variants"]
    assert all(v.startswith("tensorrt_rtx ") for v in built.values())
