"""Speech synthesis end to end in a real Triton server (nvidia-pytriton's CPU build, loopback, free ports): NeMo's own
FastPitch and HiFi-GAN exports (fixtures/tts) deployed for onnxruntime-python, five sentences against the graphs'
own output and NeMo's audio, concurrent requests batched and each equal to its answer alone, streaming over gRPC,
bad requests answered alone while the server keeps answering, and svc-serve --say."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import wave
from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from servicemaker.build import BuildOptions, build
from servicemaker.client import connect, synthesize, synthesize_stream
from servicemaker.deploy import DeployOptions, deploy
from servicemaker.keys import ArchiveArg
from servicemaker.serve import TritonServer
from tts_fixtures import FIXTURES, graphs_audio, nemo_exports, reference

VOICE = "English-US"
ENSEMBLE = f"fastpitch_hifigan_ensemble-{VOICE}"
STREAMING = f"{ENSEMBLE}-streaming"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tts_e2e")
    fp, hg = nemo_exports(tmp / "in")
    rmir = tmp / "tts.rmir"
    build(BuildOptions(pipeline="speech_synthesis", output=ArchiveArg(rmir, None),
                       inputs=[ArchiveArg(fp, None), ArchiveArg(hg, None)]))
    deploy(DeployOptions(rmirs=[ArchiveArg(rmir, None)], repo=tmp / "models", target="onnxruntime-python"))
    return tmp / "models"


@pytest.fixture(scope="module")
def server(repo):
    with TritonServer(repo) as srv:
        yield srv


def test_five_sentences_equal_the_graphs_and_nemo(server):
    """Each sentence through Triton: exactly the length and (to float noise) the samples of the exported graphs run
    directly (FastPitch alone, HiFi-GAN on its whole spectrogram), and of NeMo's own models."""
    ref = reference()
    client = connect(server.http_url)
    for i, sentence in enumerate(ref["sentences"]):
        audio, rate = synthesize(client, ENSEMBLE, str(sentence))
        own = graphs_audio(ref[f"tokens_{i}"], FIXTURES / "fastpitch_ragged.onnx", FIXTURES / "hifigan.onnx")
        assert rate == 22050 and len(audio) == len(own) == len(ref[f"audio_{i}"])
        assert np.corrcoef(audio, own)[0, 1] >= 0.999 and np.abs(audio - own).max() < 1e-4
        np.testing.assert_allclose(audio, ref[f"audio_{i}"], atol=1e-4)


def test_concurrent_requests_batch_and_each_equals_it_alone(server):
    client = connect(server.http_url)
    texts = ["Hello world.", "The weather is good today, isn't it?", "A short one.", "One, two, three, four, five!"]
    alone = {t: synthesize(client, ENSEMBLE, t, pace=1.1)[0] for t in texts}
    model = f"tts_synthesizer-{VOICE}"
    before = client.get_inference_statistics(model)["model_stats"][0]
    results: dict[int, np.ndarray] = {}
    errors: list[Exception] = []

    def send(k: int) -> None:
        try:
            results[k] = synthesize(connect(server.http_url), ENSEMBLE, texts[k % 4], pace=1.1)[0]
        except Exception as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 24
    for k, audio in results.items():
        np.testing.assert_allclose(audio, alone[texts[k % 4]], atol=1e-5)
    after = client.get_inference_statistics(model)["model_stats"][0]
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 24 and executions < inferences  # requests shared executions: batched


def test_streaming_chunks_over_grpc_reassemble_the_audio(server):
    ref = reference()
    paragraph = " ".join(str(s) for s in ref["sentences"][:3])
    whole, _ = synthesize(connect(server.http_url), ENSEMBLE, paragraph)
    chunks = list(synthesize_stream(connect(server.grpc_url, "grpc"), STREAMING, paragraph))
    assert len(chunks) > 3 and all(rate == 22050 for _, rate in chunks)
    audio = np.concatenate([a for a, _ in chunks])
    assert len(audio) == len(whole) and np.corrcoef(audio, whole)[0, 1] > 0.9999
    assert len(chunks[0][0]) <= 32 * 256


def test_bad_requests_fail_alone_and_the_server_keeps_answering(server):
    client = connect(server.http_url)
    for kwargs, message in (({"speaker": 5}, "SPEAKER 5 is not a speaker of this voice"),
                            ({"pace": 0.0}, "PACE 0 is outside 0.25..2.5"),
                            ({"pitch_shift": -9.0}, "PITCH_SHIFT -9 is outside")):
        with pytest.raises(InferenceServerException, match=message):
            synthesize(client, ENSEMBLE, "Hello world.", **kwargs)
    with pytest.raises(InferenceServerException, match="TEXT has 10001 characters"):
        synthesize(client, ENSEMBLE, "a" * 10_001)
    with pytest.raises(InferenceServerException, match="PACE 9 is outside"):
        list(synthesize_stream(connect(server.grpc_url, "grpc"), STREAMING, "Hello world.", pace=9.0))
    empty, rate = synthesize(client, ENSEMBLE, "")
    assert empty.size == 0 and rate == 22050
    assert [a.size for a, _ in synthesize_stream(connect(server.grpc_url, "grpc"), STREAMING, "@@@")] == [0]
    audio, _ = synthesize(client, ENSEMBLE, "Still here.")
    assert audio.size > 0


def test_normalized_text_is_spoken(server):
    """The default (built-in) normalizer: numbers are spoken words, so the audio is that of the words."""
    client = connect(server.http_url)
    digits, _ = synthesize(client, ENSEMBLE, "I have 3 cats.")
    words, _ = synthesize(client, ENSEMBLE, "I have three cats.")
    np.testing.assert_allclose(digits, words, atol=1e-6)


def test_svc_serve_says_a_text_into_a_wav_file(repo, tmp_path):
    exe = Path(sys.executable).parent / "svc-serve"
    out = tmp_path / "hello.wav"
    run = subprocess.run([str(exe), str(repo), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
                          "--say", "Hello world. A short one.", "--out", str(out), "--streaming"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    answer = json.loads(run.stdout)
    assert answer["model"] == STREAMING and answer["chunks"] >= 2 and answer["first_chunk_seconds"] > 0
    with wave.open(str(out)) as f:
        assert f.getframerate() == 22050 and f.getnchannels() == 1 and f.getnframes() == answer["samples"] > 0
    bad = subprocess.run([str(exe), str(repo), "--say", "Hello"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--say needs --out FILE.wav" in bad.stderr and "Traceback" not in bad.stderr
