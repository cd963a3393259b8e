"""The trained speech-recognition sample (samples/asr.py): espeak-ng speech, a valid EFF export that svc-build
accepts, byte-identical exports, held-out WER, and NeMo's masking (a padded batch row equals the row alone).

Training runs once per machine (≈ 2.5 min); later sessions read the cache
(``$SERVICEMAKER_CACHE``, default ``~/.cache/servicemaker/samples``).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from servicemaker import yamlio
from servicemaker.build import BuildOptions, build
from servicemaker.eff import EffReader
from servicemaker.keys import ArchiveArg
from servicemaker.samples import asr


@pytest.fixture(scope="session")
def trained():
    return asr.train_asr_sample()


@pytest.fixture(scope="session")
def export(trained, tmp_path_factory):
    return asr.asr_export(tmp_path_factory.mktemp("asr") / "speech_recognition.riva", trained=trained)


@pytest.fixture(scope="session")
def graph(export) -> bytes:
    with EffReader(export) as r:
        return r.read_bytes("model_graph.onnx")


@pytest.fixture(scope="session")
def held_out():
    utterances = asr.held_out_utterances(60)
    return [t for t, _ in utterances], asr.compute_features([a for _, a in utterances])


def test_synthesize_is_deterministic_16k_speech():
    a = asr.synthesize("seven three go", voice="en-us+m3", speed=150, pitch=40)
    b = asr.synthesize("seven three go", voice="en-us+m3", speed=150, pitch=40)
    assert a.dtype == np.float32 and a.ndim == 1 and np.array_equal(a, b)
    assert 0.5 < a.shape[0] / 16000 < 3.0 and 0.05 < np.abs(a).max() <= 1.0
    fast = asr.synthesize("seven three go", voice="en-us+m3", speed=300, pitch=40)
    assert fast.shape[0] < 0.8 * a.shape[0]
    assert asr.synthesize("go", sample_rate=22050).shape[0] > asr.synthesize("go").shape[0]
    with pytest.raises(ValueError, match="no voice"):
        asr.synthesize("go", voice="xx-nonexistent")


def test_held_out_voices_are_unseen():
    assert not set(asr.HELD_OUT_VOICES) & set(asr.TRAIN_VOICES)
    assert not set(asr.HELD_OUT_SPEEDS) & set(asr.TRAIN_SPEEDS)
    assert not set(asr.HELD_OUT_PITCHES) & set(asr.TRAIN_PITCHES)
    texts = [t for t, _ in asr.held_out_utterances(3)]
    assert texts == [u.text for u in asr.held_out_set(3)]
    assert all(w in asr.WORDS for t in texts for w in t.split())


def test_export_is_a_nemo_ctc_export(export):
    with EffReader(export) as r:
        assert r.metadata["obj_cls"] == "nemo.collections.asr.models.EncDecCTCModel"
        assert set(r.artifacts) == {"model_graph.onnx", "model_config.yaml"}
        assert r.artifacts["model_graph.onnx"]["onnx"] is True
        cfg = yamlio.load(r.read_text("model_config.yaml"))
        model = onnx.load_from_string(r.read_bytes("model_graph.onnx"))
    assert cfg["target"] == "nemo.collections.asr.models.ctc_models.EncDecCTCModel"
    assert cfg["labels"] == cfg["decoder"]["vocabulary"] == asr.LABELS and cfg["decoder"]["num_classes"] == 28
    assert cfg["preprocessor"]["features"] == 64 and cfg["encoder"]["stride"] == 2
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["audio_signal", "length"]
    assert [o.name for o in model.graph.output] == ["logprobs"]


def test_svc_build_accepts_the_export(export, tmp_path):
    out = tmp_path / "asr.rmir"
    result = build(BuildOptions(pipeline="speech_recognition", output=ArchiveArg(out, None),
                                inputs=[ArchiveArg(export, None)]))
    assert result.path == out and out.stat().st_size > 0


def test_exports_are_byte_identical(trained, export, tmp_path):
    again = asr.asr_export(tmp_path / "again.riva", trained=trained)
    assert again.read_bytes() == export.read_bytes()
    # the cached weights reproduce the cached graph, so an export after training equals one from the cache
    assert asr.export_graph(trained.model) == trained.graph


def test_featurizer_graph_fits_the_model(graph):
    from servicemaker.speech.acoustic import check_acoustic_model, time_stride
    from servicemaker.speech.featurizer import FeaturizerConfig

    model = onnx.load_from_string(graph)
    assert check_acoustic_model(model, FeaturizerConfig.from_model_config(asr.model_config())) == []
    assert time_stride(model) == asr.STRIDE


def test_held_out_word_error_rate(graph, held_out):
    texts, feats = held_out
    hyps = asr.transcribe(graph, feats)
    wer = asr.word_error_rate(texts, hyps)
    assert wer <= 0.10, list(zip(texts, hyps))


def test_padded_batch_rows_equal_rows_alone(graph, held_out):
    _, feats = held_out
    rows = sorted(feats[:6], key=lambda f: f.shape[1])
    assert rows[0].shape[1] < rows[-1].shape[1]
    batch = np.zeros((len(rows), rows[0].shape[0], rows[-1].shape[1]), np.float32)
    batch[:] = 7.0  # garbage beyond each row's length must not matter
    for i, f in enumerate(rows):
        batch[i, :, : f.shape[1]] = f
    lengths = np.array([f.shape[1] for f in rows], np.int64)
    session = asr._ort_session(graph)
    (together,) = session.run(["logprobs"], {"audio_signal": batch, "length": lengths})
    assert together.shape == (len(rows), -(-batch.shape[2] // 2), len(asr.LABELS) + 1)
    for i, f in enumerate(rows):
        (alone,) = session.run(["logprobs"], {"audio_signal": f[None], "length": lengths[i:i + 1]})
        valid = -(-f.shape[1] // 2)
        assert alone.shape[1] == valid
        np.testing.assert_allclose(together[i, :valid], alone[0], atol=1e-5, rtol=0)


def test_word_error_rate_and_greedy_decoding():
    assert asr.word_error_rate(["one two three"], ["one too three four"]) == pytest.approx(2 / 3)
    lp = np.full((6, len(asr.LABELS) + 1), -9.0, np.float32)
    for t, c in enumerate([asr.LABELS.index("g"), asr.LABELS.index("g"), asr.BLANK, asr.LABELS.index("o"),
                           asr.LABELS.index("o"), asr.BLANK]):
        lp[t, c] = 0.0
    assert asr.greedy_decode(lp) == "go"
