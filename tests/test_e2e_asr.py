"""Speech recognition end to end in a real Triton server (nvidia-pytriton's CPU build, loopback, free ports): the
trained sample deployed offline and streaming (target onnxruntime-python), real synthesized speech, answers checked
against the spoken words and against the same chain computed outside Triton; bad requests fail alone."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from servicemaker import yamlio
from servicemaker.build import BuildOptions, build
from servicemaker.client import connect, transcribe, transcribe_stream
from servicemaker.deploy import DeployOptions, deploy
from servicemaker.deploy.accuracy import word_error_rate
from servicemaker.eff import EffReader
from servicemaker.keys import ArchiveArg
from servicemaker.serve import TritonServer
from servicemaker.speech import acoustic, featurizer as feat

OFFLINE = "asr-offline"
STREAMING = "asr-streaming"
RATE = 16000


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    from servicemaker.samples.asr import asr_export

    return asr_export(tmp_path_factory.mktemp("asr") / "speech_recognition.riva")


@pytest.fixture(scope="module")
def utterances():
    from servicemaker.samples.asr import held_out_utterances

    return held_out_utterances(6)


@pytest.fixture(scope="module")
def server(sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("rmirs")
    rmirs = []
    for name, extra in ((OFFLINE, {"offline": "true", "max_audio_seconds": "8"}), (STREAMING, {})):
        rmirs.append(out / f"{name}.rmir")
        pipeline = "speech_recognition_offline" if "offline" in extra else "speech_recognition"
        overrides = {k: v for k, v in extra.items() if k != "offline"}
        build(BuildOptions(pipeline=pipeline, output=ArchiveArg(rmirs[-1], None), inputs=[ArchiveArg(sample, None)],
                           name=name, overrides=overrides))
    repo = tmp_path_factory.mktemp("repo") / "models"
    deploy(DeployOptions(rmirs=[ArchiveArg(p, None) for p in rmirs], repo=repo, target="onnxruntime-python"))
    with TritonServer(repo) as srv:
        yield srv


class Reference:
    """The export's own graph behind our featurizer, in ONNX Runtime, one utterance at a time, greedy CTC."""

    def __init__(self, export: Path) -> None:
        with EffReader(export) as r:
            config = yamlio.load(r.read_text("model_config.yaml"))
            am = r.read_bytes("model_graph.onnx")
        self.vocab = config["decoder"]["vocabulary"]
        cfg = feat.FeaturizerConfig.from_model_config(config)
        self.features = ort.InferenceSession(feat.build_featurizer(cfg).SerializeToString())
        self.am = ort.InferenceSession(am)
        self.stride = acoustic.time_stride(onnx.load_from_string(am))

    def transcript(self, audio: np.ndarray) -> str:
        """As NeMo decodes: the frames up to the encoded length of the valid feature frames (samples // hop)."""
        feats, n = self.features.run(None, {"audio_signal": audio[None].astype(np.float32),
                                            "length": np.array([len(audio)], np.int64)})
        logprobs = self.am.run(None, {"audio_signal": feats, "length": n})[0][0]
        ids = logprobs[:-(-int(n[0]) // self.stride)].argmax(-1)
        out, prev = [], -1
        for i in ids:
            if i != prev and i != len(self.vocab):
                out.append(self.vocab[i])
            prev = i
        return " ".join("".join(out).split())


def wer(ref: str, hyp: str) -> float:
    return word_error_rate([ref], [hyp])


def test_offline_transcribes_speech_like_the_reference(server, sample, utterances):
    ref = Reference(sample)
    client = connect(server.http_url)
    errors = []
    for text, audio in utterances:
        got = transcribe(client, OFFLINE, audio, RATE)
        assert got["TRANSCRIPT"] == ref.transcript(audio)
        words = got["WORDS"] if isinstance(got["WORDS"], list) else [got["WORDS"]]
        assert " ".join(words) == got["TRANSCRIPT"]
        starts, ends = np.atleast_1d(got["WORD_START_MS"]), np.atleast_1d(got["WORD_END_MS"])
        assert len(starts) == len(ends) == len(words)
        assert np.all(starts <= ends) and np.all(np.diff(starts) > 0) and ends[-1] <= len(audio) * 1000 / RATE + 40
        errors.append(wer(text, got["TRANSCRIPT"]))
    assert np.mean(errors) <= 0.15, errors


def test_other_sample_rates_are_resampled(server, utterances):
    import soxr

    client = connect(server.http_url)
    text, audio = utterances[0]
    alone = transcribe(client, OFFLINE, audio, RATE)["TRANSCRIPT"]
    audio_8k = soxr.resample(audio, RATE, 8000).astype(np.float32)
    assert wer(alone, transcribe(client, OFFLINE, audio_8k, 8000)["TRANSCRIPT"]) <= 0.34


def test_concurrent_requests_of_different_lengths_batch_and_equal_their_answer_alone(server, utterances):
    client = connect(server.http_url)
    alone = [transcribe(client, OFFLINE, audio, RATE) for _, audio in utterances]
    before = _executions(server)
    together: list = [None] * len(utterances)

    def send(i: int) -> None:
        together[i] = transcribe(connect(server.http_url), OFFLINE, utterances[i][1], RATE)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(utterances))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert together == alone
    inferences, executions = (a - b for a, b in zip(_executions(server), before))
    assert inferences == len(utterances) and executions <= inferences


def _executions(server) -> tuple[int, int]:
    stats = httpclient.InferenceServerClient(server.http_url).get_inference_statistics(f"riva-onnx-{OFFLINE}-am-offline")
    model = stats["model_stats"][0]
    return model["inference_count"], model["execution_count"]


def test_interleaved_streams_end_with_the_offline_transcripts(server, utterances):
    client = connect(server.http_url)
    offline = [transcribe(client, OFFLINE, audio, RATE)["TRANSCRIPT"] for _, audio in utterances[:4]]
    finals: list = [None] * 4
    partials: list = [None] * 4

    def stream(i: int) -> None:
        answers = transcribe_stream(connect(server.http_url), STREAMING, utterances[i][1], RATE,
                                    sequence_id=100 + i, chunk_seconds=0.16)
        partials[i], finals[i] = answers[:-1], answers[-1]

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(4):
        assert finals[i]["IS_FINAL"] is True
        assert not any(p["IS_FINAL"] for p in partials[i])
        assert finals[i]["TRANSCRIPT"] == offline[i], (i, finals[i]["TRANSCRIPT"], offline[i])


def _bad(client, model: str, audio, rate, dtype: str = "FP32", **sequence) -> str:
    array = np.asarray(audio).reshape(1, -1)
    signal = httpclient.InferInput("AUDIO_SIGNAL", list(array.shape), dtype)
    signal.set_data_from_numpy(array)
    sr = httpclient.InferInput("SAMPLE_RATE", [1, 1], "INT32")
    sr.set_data_from_numpy(np.array([[rate]], np.int32))
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, [signal, sr], **sequence)
    return str(err.value)


def test_bad_requests_fail_alone_and_the_server_keeps_answering(server, utterances):
    client = httpclient.InferenceServerClient(server.http_url)
    good = utterances[0][1]
    assert "empty" in _bad(client, OFFLINE, np.zeros(0, np.float32), RATE)
    nan = good.copy()
    nan[100] = np.nan
    assert "NaN" in _bad(client, OFFLINE, nan, RATE)
    assert "SAMPLE_RATE" in _bad(client, OFFLINE, good, 0)
    assert "SAMPLE_RATE" in _bad(client, OFFLINE, good, 10_000_000)
    assert "at most 8" in _bad(client, OFFLINE, np.zeros(9 * RATE, np.float32), RATE)
    assert "FP32" in _bad(client, OFFLINE, (good * 1000).astype(np.int16), RATE, dtype="INT16")
    assert "START" in _bad(client, STREAMING, good[:2560], RATE, sequence_id=777, sequence_start=False)
    assert "START" in _bad(client, STREAMING, good[:2560], RATE, sequence_id=778)
    assert transcribe(client, OFFLINE, good, RATE)["TRANSCRIPT"]
    answers = transcribe_stream(client, STREAMING, good, RATE, sequence_id=779)
    assert answers[-1]["IS_FINAL"] is True and answers[-1]["TRANSCRIPT"]
