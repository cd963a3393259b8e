"""The speech-synthesis handlers of a deployed repository, run in-process (servicemaker.local, no Triton): NeMo's
own tokenizer + FastPitch + HiFi-GAN audio (fixtures/tts, made with nemo_toolkit) reproduced, a batch equal to its
requests alone, long text sentence by sentence, streaming chunks that reassemble the batch audio, and bad inputs
each answered alone with a clear error or a documented empty audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from servicemaker.build import BuildOptions, build
from servicemaker.deploy import DeployOptions, deploy
from servicemaker.keys import ArchiveArg
from servicemaker.local import LocalRepository
from tts_fixtures import nemo_exports, reference

VOICE = "English-US"
ENSEMBLE = f"fastpitch_hifigan_ensemble-{VOICE}"
STREAMING = f"{ENSEMBLE}-streaming"
PRE, SYN, STREAM = f"tts_preprocessor-{VOICE}", f"tts_synthesizer-{VOICE}", f"tts_synthesizer_streaming-{VOICE}"


def deployed(tmp: Path, fastpitch: Path, hifigan: Path, **overrides: str) -> Path:
    rmir = tmp / "tts.rmir"
    build(BuildOptions(pipeline="speech_synthesis", output=ArchiveArg(rmir, None),
                       inputs=[ArchiveArg(fastpitch, None), ArchiveArg(hifigan, None)], overrides=overrides, force=True))
    repo = tmp / "repo"
    deploy(DeployOptions(rmirs=[ArchiveArg(rmir, None)], repo=repo, target="onnxruntime-python", force=True))
    return repo


@pytest.fixture(scope="module")
def nemo_repo(tmp_path_factory) -> LocalRepository:
    tmp = tmp_path_factory.mktemp("nemo_tts")
    return LocalRepository(deployed(tmp, *nemo_exports(tmp / "in"), **{"preprocessor.text_normalization": "none"}))


def text(value, **extra) -> dict:
    out = {"TEXT": np.array([[value.encode("utf-8") if isinstance(value, str) else value]], dtype=object)}
    for name, v in extra.items():
        out[name] = np.array([[v]], dtype=np.int32 if name == "SPEAKER" else np.float32)
    return out


def audio_of(answer) -> np.ndarray:
    assert not isinstance(answer, Exception), answer
    assert int(answer["SAMPLE_RATE"][0, 0]) == 22050
    return answer["AUDIO"].reshape(-1)


def streamed(answer) -> tuple[np.ndarray, list[int]]:
    assert isinstance(answer, list) and answer[-1][1] is True and all(not f for _, f in answer[:-1]), answer
    chunks = [a["AUDIO"].reshape(-1) for a, _ in answer]
    return np.concatenate(chunks), [len(c) for c in chunks]


def test_audio_equals_nemo(nemo_repo):
    """NeMo's tokenizer, FastPitch.generate_spectrogram and HiFiGan.convert_spectrogram_to_audio, one sentence at a
    time, against the deployed chain on the NeMo export (its ragged graph repaired): same samples, to float noise."""
    ref = reference()
    answers = nemo_repo.run(ENSEMBLE, [text(str(s)) for s in ref["sentences"]])
    for i, answer in enumerate(answers):
        got = audio_of(answer)
        assert len(got) == len(ref[f"audio_{i}"]) == int(ref["frames"][i]) * 256
        np.testing.assert_allclose(got, ref[f"audio_{i}"], atol=1e-5)
    tokens = nemo_repo.handler(PRE)(text(str(ref["sentences"][1])))["tokens"][0]
    assert tokens.tolist() == ref["tokens_1"].tolist()


def test_a_batch_equals_its_requests_alone(nemo_repo):
    """Sentences of different lengths, paces and pitch shifts in one batch: each answer equals it alone (FastPitch
    ran them together: the padding leak is masked)."""
    requests = [text("Hello world.", PACE=1.3), text("The weather is good today, isn't it?", PITCH_SHIFT=-1.5),
                text("A short one."), text("One, two, three, four, five!", PACE=0.8, PITCH_SHIFT=2.0)]
    together = nemo_repo.run(ENSEMBLE, requests)
    for request, answer in zip(requests, together):
        alone = nemo_repo.run(ENSEMBLE, [request])[0]
        np.testing.assert_allclose(audio_of(answer), audio_of(alone), atol=1e-5)
    assert nemo_repo.params(SYN)["sentence_batching"] == "any"
    slow, fast = (len(audio_of(nemo_repo.run(ENSEMBLE, [text("Hello world.", PACE=p)])[0])) for p in (0.5, 2.0))
    assert slow > 3 * fast


def test_long_text_is_its_sentences_concatenated(nemo_repo):
    ref = reference()
    paragraph = " ".join(str(s) for s in ref["sentences"])
    got = audio_of(nemo_repo.run(ENSEMBLE, [text(paragraph)])[0])
    np.testing.assert_allclose(got, np.concatenate([ref[f"audio_{i}"] for i in range(5)]), atol=1e-5)


def test_streaming_chunks_reassemble_the_batch_audio(nemo_repo):
    """A first chunk of 32 frames, then chunks doubling up to 256, each with 16 frames of context: the concatenation
    has the batch audio's exact length, each sentence ends on a chunk boundary, and the seams stay within 1e-4
    (docs/tts.md)."""
    ref = reference()
    paragraph = " ".join(str(s) for s in ref["sentences"][:3])
    whole = audio_of(nemo_repo.run(ENSEMBLE, [text(paragraph)])[0])
    audio, sizes = streamed(nemo_repo.run(STREAMING, [text(paragraph)])[0])
    assert len(audio) == len(whole)
    first = int(ref["frames"][0])  # 93 frames: 32, then the 61 left (at most 64)
    assert sizes[:2] == [32 * 256, (first - 32) * 256] and max(sizes) <= 256 * 256
    bounds = np.cumsum(sizes).tolist()
    assert all(b in bounds for b in np.cumsum([len(ref[f"audio_{i}"]) for i in range(3)]).tolist())
    assert np.abs(audio - whole).max() < 1e-4 and np.corrcoef(audio, whole)[0, 1] > 0.9999


def test_streaming_batches_round_by_round(nemo_repo):
    """Four requests stream together: each gets its own chunks (equal to its stream alone), the first chunk of each
    before any second one."""
    requests = [text("Hello world. A short one."), text("Speech synthesis turns text into audio."),
                text(""), text("One, two, three!", PACE=1.5)]
    handler = nemo_repo.handler(STREAM)
    order, sent = [], {k: [] for k in range(4)}
    feeds = [nemo_repo.handler(PRE)(r) for r in requests]

    def send(k, result, final):
        order.append(k)
        sent[k].append((result, final))

    handler.stream_batch(feeds, send)
    assert order.index(1) < len(requests) and sent[2] == [(sent[2][0][0], True)]
    assert sent[2][0][0]["AUDIO"].size == 0
    for k in (0, 1, 3):
        alone = nemo_repo.run(STREAMING, [requests[k]])[0]
        np.testing.assert_allclose(streamed(sent[k])[0], streamed(alone)[0], atol=1e-5)


@pytest.mark.parametrize("request_,message", [
    (text("x" * 10_001), "TEXT has 10001 characters; this voice takes at most 10000"),
    (text("hello", SPEAKER=3), "SPEAKER 3 is not a speaker of this voice; send one of 0"),
    (text("hello", PACE=0.0), "PACE 0 is outside 0.25..2.5"),
    (text("hello", PACE=-1.0), "PACE -1 is outside"),
    (text("hello", PACE=float("nan")), "PACE is nan; send a finite number"),
    (text("hello", PITCH_SHIFT=5.0), "PITCH_SHIFT 5 is outside -3..3"),
    (text(b"caf\xe9"), "not valid UTF-8"),
    ({"TEXT": np.array([[b"one"], [b"two"]], dtype=object)}, "the request has 2 TEXT rows; send one text"),
])
def test_bad_requests_fail_alone_with_the_fix_named(nemo_repo, request_, message):
    good = text("Hello world.")
    answers = nemo_repo.run(ENSEMBLE, [good, request_, good])
    assert isinstance(answers[1], ValueError) and message in str(answers[1])
    np.testing.assert_array_equal(audio_of(answers[0]), audio_of(answers[2]))


@pytest.mark.parametrize("value", ["", "   ", "\u0283\u0283 \u4e2d\u6587 @#~"])
def test_text_with_nothing_to_say_is_empty_audio(nemo_repo, value):
    for ensemble in (ENSEMBLE, STREAMING):
        answer = nemo_repo.run(ensemble, [text(value)])[0]
        audio = audio_of(answer) if ensemble == ENSEMBLE else streamed(answer)[0]
        assert audio.size == 0


def test_ten_thousand_characters_are_synthesized(nemo_repo):
    paragraph = ("The weather is good today, isn't it? " * 300)[:10_000]
    got = audio_of(nemo_repo.run(ENSEMBLE, [text(paragraph)])[0])
    one = audio_of(nemo_repo.run(ENSEMBLE, [text("The weather is good today, isn't it?")])[0])
    assert len(got) > 250 * len(one)


def test_a_failing_network_fails_only_its_requests(nemo_repo, monkeypatch):
    handler = nemo_repo.handler(SYN)
    real = handler.networks["spectrogram_generator"]

    def flaky(feeds):
        if 7 in np.asarray(feeds["text"]).reshape(-1).tolist():  # 'g': only sentences with a g
            raise RuntimeError("out of memory")
        return real(feeds)

    monkeypatch.setitem(handler.networks, "spectrogram_generator", flaky)
    answers = nemo_repo.run(ENSEMBLE, [text("Hello world."), text("A big dog."), text("The weather is good.")])
    assert not isinstance(answers[0], Exception)
    assert isinstance(answers[1], RuntimeError) and "FastPitch failed on a sentence: out of memory" in str(answers[1])
    assert isinstance(answers[2], RuntimeError)


@pytest.fixture(scope="module")
def speakers_repo(tmp_path_factory) -> LocalRepository:
    from servicemaker.samples.tts import tts_exports

    tmp = tmp_path_factory.mktemp("speakers")
    exports = tts_exports(tmp / "fp.riva", tmp / "hg.riva", speakers=3)
    return LocalRepository(deployed(tmp, *exports, subvoices="Female-1:0,Male-1:2"))


def test_subvoices_choose_speakers(speakers_repo):
    female, male = (audio_of(speakers_repo.run(ENSEMBLE, [text("Hello there.", SPEAKER=s)])[0]) for s in (0, 2))
    default = audio_of(speakers_repo.run(ENSEMBLE, [text("Hello there.")])[0])
    np.testing.assert_array_equal(default, female)
    assert len(female) != len(male) or not np.allclose(female, male)
    answer = speakers_repo.run(ENSEMBLE, [text("Hello there.", SPEAKER=1)])[0]
    assert isinstance(answer, ValueError) and "send one of 0 (Female-1), 2 (Male-1)" in str(answer)


def test_a_request_joins_the_streams_already_running(nemo_repo):
    """As Triton runs it (wait=False: the rounds in the handler's thread): a request handed over while another
    streams gets its first chunk before the other's last, and both reassemble their audio alone."""
    import threading

    handler, pre = nemo_repo.handler(STREAM), nemo_repo.handler(PRE)
    long_text = " ".join(["The weather is good today, isn't it?"] * 6)
    events, finished = [], {"long": threading.Event(), "short": threading.Event()}
    sent: dict[str, list] = {"long": [], "short": []}

    def sender(name):
        def send(k, result, final):
            events.append((name, final))
            sent[name].append((result, final))
            if final:
                finished[name].set()
        return send

    handler.stream_batch([pre(text(long_text))], sender("long"), wait=False)
    while not any(name == "long" for name, _ in events):
        threading.Event().wait(0.005)
    handler.stream_batch([pre(text("Hello world."))], sender("short"), wait=False)
    assert finished["long"].wait(60) and finished["short"].wait(60)
    first_short = next(i for i, (name, _) in enumerate(events) if name == "short")
    assert first_short < events.index(("long", True))
    for name, value in (("long", long_text), ("short", "Hello world.")):
        alone = nemo_repo.run(STREAMING, [text(value)])[0]
        np.testing.assert_allclose(streamed(sent[name])[0], streamed(alone)[0], atol=1e-5)
