"""The ASR family's Python-backend handlers, without Triton: audio checks and resampling, the network's batching,
CTC decoding (against NeMo's own output), beam search with an n-gram LM, streaming."""

from __future__ import annotations

import ast
import json
import math
import os

import numpy as np
import pytest
import yaml

from servicemaker.runtime import asr
from servicemaker.runtime.common import StreamEvent

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "asr", "decoding")
CHARS = list(" abcdefghijklmnopqrstuvwxyz'")
BLANK = len(CHARS)


def folder_with(tmp_path, labels=CHARS, **files):
    (tmp_path / "model_config.yaml").write_text(yaml.safe_dump({"decoder": {"vocabulary": list(labels)}}))
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return str(tmp_path)


def peaked(path, classes, peak=8.0, seed=0):
    """Log-probs [T, classes] whose argmax follows ``path`` (label ids)."""
    logits = np.random.default_rng(seed).normal(0, 0.5, size=(len(path), classes))
    logits[np.arange(len(path)), path] += peak
    return (logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(np.float32)


def char_path(text):
    """'-' is blank; every other character is its label."""
    return [BLANK if c == "-" else CHARS.index(c) for c in text]


def decode_one(handler, logprobs):
    out = handler({"logprobs": logprobs[None], "encoded_lengths": np.array([[len(logprobs)]], np.int64)})
    return row(out, 0)


def row(out, b):
    words = [w.decode() for w in out["WORDS"][b]]
    n = len(words)
    while n and not words[n - 1]:
        n -= 1
    return (out["TRANSCRIPT"][b, 0].decode(), words[:n], out["WORD_START_MS"][b, :n].tolist(),
            out["WORD_END_MS"][b, :n].tolist())


def test_asr_imports_nothing_of_servicemaker():
    with open(asr.__file__) as f:
        tree = ast.parse(f.read())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules.discard(None)  # `from . import common`, only when imported as a package
    assert modules <= {"__future__", "math", "re", "time", "unicodedata", "typing", "numpy", "svc_common", "soxr",
                       "yaml", "sentencepiece", "pyctcdecode", "pyctcdecode.language_model", "kenlm"}
    assert set(asr.HANDLERS) == {"asr_audio", "asr_network", "ctc_decode", "asr_stream", "ctc_decode_stream", "onnx"}


def test_asr_runs_as_a_deployed_module(tmp_path):
    """Copied as svc_handlers.py beside svc_common.py, as svc-deploy lays out a model folder."""
    import shutil
    import subprocess
    import sys

    from servicemaker.runtime import common

    shutil.copy(common.__file__, tmp_path / "svc_common.py")
    shutil.copy(asr.__file__, tmp_path / "svc_handlers.py")
    folder_with(tmp_path)
    code = ("import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import svc_handlers as h; "
            "d = h.create('ctc_decode', sys.argv[1], {'model_config': 'model_config.yaml'}); "
            "lp = np.log(np.full((1, 3, 29), 1e-3, np.float32)); lp[0, :, 8] = 0; "
            "print(d({'logprobs': lp, 'encoded_lengths': np.array([[3]])})['TRANSCRIPT'][0, 0].decode())")
    out = subprocess.run([sys.executable, "-I", "-c", code, str(tmp_path)], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "h"


# --- audio -----------------------------------------------------------------------------------------------------------

def audio_inputs(*rows, rate=16000):
    return {"AUDIO_SIGNAL": np.array(rows, dtype=np.float32).reshape(len(rows), -1),
            "SAMPLE_RATE": np.full((len(rows), 1), rate, np.int32)}


RATE_FIX = "send the audio's sample rate in Hz, between 1000 and 384000"
FINITE = "AUDIO_SIGNAL holds NaN or infinite samples; send finite samples in [-1, 1]"


@pytest.mark.parametrize("inputs, message", [
    (audio_inputs([]), "AUDIO_SIGNAL is empty; send at least one sample of mono audio"),
    (audio_inputs([0.1, np.nan]), FINITE),
    (audio_inputs([0.1, np.inf]), FINITE),
    (audio_inputs([0.1, 0.2], [0.1, -np.inf]), FINITE),
    (audio_inputs([0.1], rate=0), f"SAMPLE_RATE is 0 Hz; {RATE_FIX}"),
    (audio_inputs([0.1], rate=-8000), f"SAMPLE_RATE is -8000 Hz; {RATE_FIX}"),
    (audio_inputs([0.1], rate=999), f"SAMPLE_RATE is 999 Hz; {RATE_FIX}"),
    (audio_inputs([0.1], rate=384001), f"SAMPLE_RATE is 384001 Hz; {RATE_FIX}"),
    (audio_inputs(np.zeros(312000), rate=1000),
     "the audio is 312.0 s long; this model takes at most 60 s; split the audio or rebuild with --max_audio_seconds"),
])
def test_audio_refuses_bad_requests(inputs, message):
    handler = asr.create("asr_audio", ".", {"sample_rate": "16000", "max_audio_seconds": "60"})
    results = handler.batch([inputs, audio_inputs([0.5, -0.5])])
    assert isinstance(results[0], ValueError) and str(results[0]) == message
    assert results[1]["length"].tolist() == [[2]]  # the other request is unaffected


def test_audio_passes_through_at_the_model_rate_unclipped():
    handler = asr.create("asr_audio", ".", {"sample_rate": "16000"})
    out = handler(audio_inputs([0.5, -1.5, 2.0], [0.25, 0.0, 0.0]))
    assert out["audio_signal"].tolist() == [[0.5, -1.5, 2.0], [0.25, 0.0, 0.0]]
    assert out["length"].tolist() == [[3], [3]] and out["length"].dtype == np.int64


def test_audio_resamples_8k_to_16k_keeping_the_frequency():
    t = np.arange(8000) / 8000.0
    sine = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    out = asr.create("asr_audio", ".", {"sample_rate": "16000"})(audio_inputs(sine, rate=8000))
    assert out["length"].tolist() == [[16000]] and out["audio_signal"].shape == (1, 16000)
    spectrum = np.abs(np.fft.rfft(out["audio_signal"][0]))
    assert np.argmax(spectrum) * 16000 / 16000 == pytest.approx(440.0, abs=1.0)
    assert np.abs(out["audio_signal"][0, 1000:15000]).max() == pytest.approx(0.5, abs=0.01)


# --- greedy decoding -----------------------------------------------------------------------------------------------

def test_greedy_char_decode_and_word_timings(tmp_path):
    handler = asr.create("ctc_decode", folder_with(tmp_path), {"model_config": "model_config.yaml",
                                                               "ms_per_timestep": "40"})
    # h@1 i@2 ' '@4 y@5 o@6 u@7; token i spans [emission of i-1, emission of i], the first from one frame before it
    text, words, starts, ends = decode_one(handler, peaked(char_path("-hi- you-"), BLANK + 1))
    assert (text, words, starts, ends) == ("hi you", ["hi", "you"], [0, 160], [80, 280])
    text, words, starts, ends = decode_one(handler, peaked(char_path("--hhe-ll-lo--w"), BLANK + 1))
    assert (text, words, starts, ends) == ("hellow", ["hellow"], [40], [520])  # h@2 ... w@13
    assert decode_one(handler, peaked(char_path("----"), BLANK + 1)) == ("", [], [], [])


@pytest.fixture(scope="module")
def tiny_spm(tmp_path_factory):
    spm = pytest.importorskip("sentencepiece")
    tmp = tmp_path_factory.mktemp("spm")
    (tmp / "text.txt").write_text("hello world\nthe world is big\nhello there\nsay hello to the big world\n" * 5)
    spm.SentencePieceTrainer.train(input=str(tmp / "text.txt"), model_prefix=str(tmp / "tok"), vocab_size=30,
                                   model_type="bpe", bos_id=-1, eos_id=-1, normalization_rule_name="identity",
                                   minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(tmp / "tok.model"))
    return tmp / "tok.model", [sp.id_to_piece(i) for i in range(sp.get_piece_size())], sp


def test_greedy_bpe_decode(tmp_path, tiny_spm):
    model, pieces, sp = tiny_spm
    (tmp_path / "tokenizer.model").write_bytes(model.read_bytes())
    handler = asr.create("ctc_decode", folder_with(tmp_path, pieces), {
        "model_config": "model_config.yaml", "tokenizer_model": "tokenizer.model", "ms_per_timestep": "80"})
    blank = len(pieces)
    path = [blank]
    for token in sp.encode("hello world big"):
        path += [token, token, blank]
    text, words, starts, ends = decode_one(handler, peaked(path, blank + 1))
    assert text == "hello world big" and words == ["hello", "world", "big"]
    assert starts[0] == 0 and ends[-1] == (len(path) - 3) * 80
    assert starts == sorted(starts) and all(s <= e for s, e in zip(starts, ends))
    beam = asr.create("ctc_decode", str(tmp_path), {"model_config": "model_config.yaml", "decoder_type": "flashlight",
                                                    "tokenizer_model": "tokenizer.model", "ms_per_timestep": "80"})
    assert decode_one(beam, peaked(path, blank + 1))[:2] == (text, words)


def test_greedy_matches_nemo(tmp_path):
    """Fixtures written by NeMo 3.0's CTCDecoding / CTCBPEDecoding (tests/fixtures/asr/make_decoding_fixtures.py):
    text, word frame offsets and NeMo's seconds (40 ms per frame)."""
    with open(os.path.join(FIXTURES, "expected.json"), encoding="utf-8") as f:
        expected = json.load(f)
    with open(os.path.join(FIXTURES, "tokenizer.model"), "rb") as f:
        (tmp_path / "tokenizer.model").write_bytes(f.read())
    params = {"model_config": "model_config.yaml", "ms_per_timestep": str(expected["ms_per_timestep"])}
    for case in expected["cases"]:
        if case["name"] == "bpe":
            import sentencepiece as spm

            sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
            labels = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
            handler = asr.create("ctc_decode", folder_with(tmp_path, labels),
                                 dict(params, tokenizer_model="tokenizer.model"))
        else:
            labels = expected["chars" if case["name"] == "char" else "chars_punct"]
            handler = asr.create("ctc_decode", folder_with(tmp_path, labels), params)
        logprobs = np.load(os.path.join(FIXTURES, case["name"] + ".npy")).astype(np.float32)
        lengths = np.array(case["lengths"], np.int64).reshape(-1, 1)
        out = handler({"logprobs": logprobs, "encoded_lengths": lengths})
        vocab = handler.decoder.vocab
        for b, (want, n) in enumerate(zip(case["rows"], case["lengths"])):
            tokens, frames = asr.collapse(logprobs[b, :n].argmax(-1), vocab.blank)
            assert asr.nemo_words(vocab, tokens, frames) == [
                (w["word"], w["start_offset"], w["end_offset"]) for w in want["words"]], (case["name"], b)
            text, words, starts, ends = row(out, b)
            assert text == want["text"], (case["name"], b)
            assert len(words) == len(want["words"])  # (NeMo may give an empty word: then row() would cut it)
            assert words == [w["word"] for w in want["words"]]
            assert starts == [round(w["start"] * 1000) for w in want["words"]]
            assert ends == [round(w["end"] * 1000) for w in want["words"]]


def test_rows_decode_as_alone(tmp_path):
    handler = asr.create("ctc_decode", folder_with(tmp_path), {"model_config": "model_config.yaml"})
    rng = np.random.default_rng(3)
    logprobs = np.stack([peaked(rng.integers(0, BLANK + 1, 30), BLANK + 1, peak=3.0, seed=s) for s in range(3)])
    lengths = [30, 21, 4]
    out = handler({"logprobs": logprobs, "encoded_lengths": np.array(lengths, np.int64).reshape(-1, 1)})
    for b, n in enumerate(lengths):
        assert row(out, b) == decode_one(handler, logprobs[b, :n])
    assert isinstance(handler.batch([{"logprobs": logprobs[:, :, :5], "encoded_lengths": np.array([3, 3, 3])}])[0],
                      ValueError)
    with pytest.raises(ValueError, match="encoded_lengths"):
        handler({"logprobs": logprobs, "encoded_lengths": np.array([31, 3, 3])})


# --- beam search ---------------------------------------------------------------------------------------------------

ARPA = """\\data\\
ngram 1=5
ngram 2=4

\\1-grams:
-1.0\t<unk>\t0
-99\t<s>\t-0.3
-1.0\t</s>\t0
-0.6\tthe\t-0.3
-0.9\tcat\t-0.3

\\2-grams:
-0.1\t<s> the
-0.1\tthe cat
-0.1\tcat </s>
-2.0\tthe </s>

\\end\\
"""


def cat_or_kat():
    """'the kat' by a hair at the frame of its first letter, else 'the cat'."""
    logprobs = peaked(char_path("-tthe- -c-aat-"), BLANK + 1, peak=10.0)
    probs = np.full(BLANK + 1, 1e-4)
    probs[CHARS.index("k")], probs[CHARS.index("c")] = 0.52, 0.47
    logprobs[8] = np.log(probs / probs.sum())
    return logprobs


def test_beam_with_lm_overrules_greedy(tmp_path):
    folder = folder_with(tmp_path, **{"lm.arpa": ARPA})
    greedy = asr.create("ctc_decode", folder, {"model_config": "model_config.yaml"})
    beam = asr.create("ctc_decode", folder, {"model_config": "model_config.yaml", "decoder_type": "flashlight",
                                             "beam_size": "16", "beam_threshold": "25", "lm_weight": "1.0",
                                             "word_insertion_score": "0.5", "language_model": "lm.arpa"})
    assert decode_one(greedy, cat_or_kat())[0] == "the kat"
    text, words, starts, ends = decode_one(beam, cat_or_kat())
    assert (text, words) == ("the cat", ["the", "cat"])
    assert (starts, ends) == ([40, 320], [200, 520])  # pyctcdecode's word frames: first, one past the last


def test_beam_lm_under_any_name_and_decoding_vocab(tmp_path):
    """An ARPA file is recognized by its content (its unigrams then come from it); decoding_vocab gives them."""
    folder = folder_with(tmp_path, **{"lm.bin": ARPA, "vocab.txt": "the\ncat\n"})
    for extra in ({}, {"decoding_vocab": "vocab.txt"}):
        beam = asr.create("ctc_decode", folder, dict({"model_config": "model_config.yaml", "lm_weight": "1.0",
                                                      "decoder_type": "flashlight", "language_model": "lm.bin"},
                                                     **extra))
        assert decode_one(beam, cat_or_kat())[0] == "the cat"
    with pytest.raises(ValueError, match="decoder_type 'beam' is unknown; use greedy or flashlight"):
        asr.create("ctc_decode", folder, {"model_config": "model_config.yaml", "decoder_type": "beam"})


def test_beam_without_lm_equals_greedy_on_peaked_logprobs(tmp_path):
    folder = folder_with(tmp_path)
    greedy = asr.create("ctc_decode", folder, {"model_config": "model_config.yaml"})
    beam = asr.create("ctc_decode", folder, {"model_config": "model_config.yaml", "decoder_type": "flashlight"})
    rng = np.random.default_rng(7)
    for seed in range(5):
        words = ["".join(rng.choice(list("abcdefgh"), rng.integers(1, 5))) for _ in range(rng.integers(1, 5))]
        path = "-" + "-".join(c * int(rng.integers(1, 3)) for c in " ".join(words)) + "-"
        logprobs = peaked(char_path(path), BLANK + 1, peak=12.0, seed=seed)
        assert decode_one(beam, logprobs)[:2] == decode_one(greedy, logprobs)[:2] == (" ".join(words), words)
    lengths = np.array([[9], [5]], np.int64)
    logprobs = np.stack([peaked(char_path("-ab- -cd-"), BLANK + 1), peaked(char_path("-ef-gh-ij"), BLANK + 1)])
    out = beam({"logprobs": logprobs, "encoded_lengths": lengths})
    assert [row(out, b)[0] for b in range(2)] == ["ab cd", "efg"]


# --- the network ----------------------------------------------------------------------------------------------------

def tiny_graph(path, classes=5):
    """audio_signal [B, S], length [B] → logprobs [B, S, classes] from each sample and the running sum of the
    masked signal (so padding would show if the mask were ignored), encoded_lengths = length."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(1, 1, classes)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(1, 1, classes)).astype(np.float32), "v"),
             numpy_helper.from_array(np.array([2], np.int64), "ax2"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.array(1, np.int64), "one"), numpy_helper.from_array(np.array(0, np.int64),
                                                                                           "zero"),
             numpy_helper.from_array(np.array(1, np.int32), "axis1")]
    nodes = [
        helper.make_node("Shape", ["audio_signal"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["samples"], axis=0),
        helper.make_node("Range", ["zero", "samples", "one"], ["positions"]),
        helper.make_node("Unsqueeze", ["length", "ax1"], ["len2"]),
        helper.make_node("Less", ["positions", "len2"], ["mask_b"]),
        helper.make_node("Cast", ["mask_b"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["audio_signal", "mask"], ["masked"]),
        helper.make_node("CumSum", ["masked", "axis1"], ["running"]),
        helper.make_node("Unsqueeze", ["masked", "ax2"], ["x3"]),
        helper.make_node("Unsqueeze", ["running", "ax2"], ["r3"]),
        helper.make_node("Mul", ["x3", "w"], ["a"]),
        helper.make_node("Mul", ["r3", "v"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["logits"]),
        helper.make_node("LogSoftmax", ["logits"], ["logprobs"], axis=-1),
        helper.make_node("Identity", ["length"], ["encoded_lengths"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_asr",
        [helper.make_tensor_value_info("audio_signal", TensorProto.FLOAT, ["B", "S"]),
         helper.make_tensor_value_info("length", TensorProto.INT64, ["B"])],
        [helper.make_tensor_value_info("logprobs", TensorProto.FLOAT, ["B", "S", classes]),
         helper.make_tensor_value_info("encoded_lengths", TensorProto.INT64, ["B"])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def test_network_runs_all_requests_in_one_session_run(tmp_path):
    tiny_graph(tmp_path / "model.onnx")
    net = asr.create("asr_network", str(tmp_path), {"model": "model.onnx"})
    rng = np.random.default_rng(1)
    requests = [{"audio_signal": rng.uniform(-1, 1, (1, 7)).astype(np.float32), "length": np.array([7])},
                {"audio_signal": rng.uniform(-1, 1, (2, 12)).astype(np.float32), "length": np.array([[12], [5]])},
                {"audio_signal": rng.uniform(-1, 1, (1, 3)).astype(np.float32), "length": np.array([9])},  # bad
                {"audio_signal": rng.uniform(-1, 1, (1, 4)).astype(np.float32), "length": np.array([4])}]
    calls = []
    run = net.session.run
    net.session.run = lambda *a, **k: calls.append(a[1]["audio_signal"].shape) or run(*a, **k)
    results = net.batch(requests)
    net.session.run = run
    assert calls == [(4, 12)]
    assert isinstance(results[2], ValueError) and "length [9]" in str(results[2])
    for req, res in zip([requests[0], requests[1], requests[3]], [results[0], results[1], results[3]]):
        lengths = req["length"].reshape(-1)
        assert res["logprobs"].shape == (len(lengths), lengths.max(), 5)
        assert res["encoded_lengths"].tolist() == lengths.tolist()
        for b, n in enumerate(lengths):
            alone = net({"audio_signal": req["audio_signal"][b:b + 1, :n], "length": np.array([n])})
            np.testing.assert_allclose(res["logprobs"][b, :n], alone["logprobs"][0], rtol=1e-6, atol=1e-6)


# --- streaming ------------------------------------------------------------------------------------------------------

HOP, LABELS = 640, 4  # 40 ms at 16 kHz; labels 0..3, blank 4


def fake_network(calls):
    """Frame-wise: frame k is the samples [k*HOP, (k+1)*HOP) of a row; its mean picks the label."""
    def run(inputs):
        audio, length = inputs["audio_signal"], inputs["length"]
        calls.append(len(audio))
        frames = [math.ceil(n / HOP) for n in length]
        logprobs = np.zeros((len(audio), max(frames), LABELS + 1), np.float32)
        for b, n in enumerate(length):
            for k in range(frames[b]):
                level = audio[b, k * HOP:min((k + 1) * HOP, n)].mean() * 10
                logits = -(level - np.arange(LABELS + 1)) ** 2
                logprobs[b, k] = logits - np.log(np.exp(logits).sum())
        return {"logprobs": logprobs, "encoded_lengths": np.array(frames, np.int64)}
    return run


def stream_params(**extra):
    params = {"sample_rate": "16000", "chunk_size": "0.16", "left_padding_size": "0.48",
              "right_padding_size": "0.32", "ms_per_timestep": "40", "max_audio_seconds": "30",
              "idle_timeout_s": "60", "model_config": "model_config.yaml"}
    params.update(extra)
    return params


def utterance(rng, seconds):
    labels = rng.integers(0, LABELS + 1, math.ceil(seconds * 16000 / HOP))
    audio = np.repeat(labels / 10.0, HOP)[: int(seconds * 16000)]
    return (audio + rng.normal(0, 0.002, audio.size)).astype(np.float32)


def event(corrid, samples, start=False, end=False, rate=16000):
    return StreamEvent(corrid, start, end, {"AUDIO_SIGNAL": np.asarray(samples, np.float32).reshape(1, -1),
                                            "SAMPLE_RATE": np.array([[rate]], np.int32)})


@pytest.fixture()
def stream_pair(tmp_path):
    folder = folder_with(tmp_path, labels=list("abc "))
    front = asr.create("asr_stream", folder, stream_params())
    calls = []
    front.network = fake_network(calls)
    return front, asr.create("ctc_decode_stream", folder, stream_params()), calls, folder


def test_interleaved_streams_equal_offline_decoding(stream_pair):
    front, back, calls, folder = stream_pair
    offline = asr.create("ctc_decode", folder, stream_params())
    rng = np.random.default_rng(11)
    audios = {42: utterance(rng, 3.3), 7: utterance(rng, 1.01), 1000: utterance(rng, 2.47), 3: utterance(rng, 0.2),
              77: utterance(rng, 0.1)}
    step = 2560  # 160 ms
    frames = {c: [] for c in audios}
    finals = {}
    for i in range(max(math.ceil(len(a) / step) for a in audios.values())):
        events = [event(c, a[i * step:(i + 1) * step], start=i == 0, end=(i + 1) * step >= len(a))
                  for c, a in audios.items() if i * step < len(a)]
        before = len(calls)
        outs = front.stream(events)
        assert len(calls) - before <= 1  # one network call per call, all streams together
        decoded = back.stream([StreamEvent(e.corrid, e.start, e.end, o) for e, o in zip(events, outs)])
        for e, o, d in zip(events, outs, decoded):
            frames[e.corrid].append(o["logprobs"][0])
            assert d["IS_FINAL"].tolist() == [[e.end]]
            if e.end:
                finals[e.corrid] = row(d, 0)
    assert not front.sequences.states and not back.sequences.states
    for c, audio in audios.items():
        whole = fake_network([])({"audio_signal": audio[None], "length": np.array([len(audio)])})
        np.testing.assert_array_equal(np.concatenate(frames[c]), whole["logprobs"][0])
        assert finals[c] == row(offline(whole), 0)
        assert finals[c][0]


def test_stream_needs_start_and_evicts_idle_streams(stream_pair):
    front, back, _, _ = stream_pair
    for handler, ev in ((front, event(42, np.zeros(10))),
                        (back, StreamEvent(42, False, False, {"logprobs": np.zeros((1, 2, 5), np.float32)}))):
        result = handler.stream([ev])[0]
        assert isinstance(result, ValueError) and str(result) == "sequence 42 was not started: send START first"
    now = [0.0]
    front.sequences.clock = lambda: now[0]
    assert isinstance(front.stream([event(5, np.zeros(100), start=True)])[0], dict)
    now[0] = 30.0
    assert isinstance(front.stream([event(5, np.zeros(100))])[0], dict)
    now[0] = 91.0  # 61 s idle
    assert isinstance(front.stream([event(6, np.zeros(100), start=True)])[0], dict)
    assert set(front.sequences.states) == {6}
    assert "sequence 5 was not started" in str(front.stream([event(5, np.zeros(100))])[0])


def test_end_flushes_and_memory_stays_bounded(stream_pair):
    front, _, _, _ = stream_pair
    audio = utterance(np.random.default_rng(5), 0.5)
    first = front.stream([event(9, audio[:7700], start=True)])[0]["logprobs"]
    assert first.shape == (1, 4, LABELS + 1)  # chunk 0 only: chunk 1 still waits for its right padding
    last = front.stream([event(9, audio[7700:], end=True)])[0]["logprobs"]
    whole = fake_network([])({"audio_signal": audio[None], "length": np.array([len(audio)])})["logprobs"][0]
    np.testing.assert_array_equal(np.concatenate([first[0], last[0]]), whole)
    front.stream([event(8, np.zeros(100), start=True)])
    for _ in range(60):
        front.stream([event(8, np.full(2560, 0.1))])
    st = front.sequences.states[8][0]
    assert st.total == 100 + 60 * 2560 and len(st.audio) <= front.left + front.chunk + front.right + 2560
    too_long = front.stream([event(8, np.zeros(16000 * 21))])[0]
    assert str(too_long) == ("the stream is 30.6 s long; this model takes at most 30 s per stream; end it and start "
                             "another, or rebuild with --max_audio_seconds")


def test_stream_resamples_and_keeps_its_rate(stream_pair):
    front, _, _, _ = stream_pair
    outs = [front.stream([event(1, np.zeros(1280), start=i == 0, end=i == 4, rate=8000)])[0] for i in range(5)]
    assert sum(o["logprobs"].shape[1] for o in outs) == 12800 // HOP  # 0.8 s at 16 kHz = 20 frames
    front.stream([event(2, np.zeros(100), start=True, rate=8000)])
    assert "SAMPLE_RATE changed from 8000 to 16000 Hz" in str(front.stream([event(2, np.zeros(100))])[0])


def test_stream_decoder_partials_are_greedy_and_the_final_uses_the_lm(tmp_path):
    folder = folder_with(tmp_path, **{"lm.arpa": ARPA})
    handler = asr.create("ctc_decode_stream", folder, {"model_config": "model_config.yaml", "lm_weight": "1.0",
                                                       "decoder_type": "flashlight", "language_model": "lm.arpa"})
    logprobs = cat_or_kat()
    parts = [logprobs[:10], logprobs[10:], logprobs[:0]]
    outs = [handler.stream([StreamEvent(3, i == 0, i == 2, {"logprobs": p[None]})])[0] for i, p in enumerate(parts)]
    assert [row(o, 0)[0] for o in outs] == ["the k", "the kat", "the cat"]
    assert [o["IS_FINAL"].tolist() for o in outs] == [[[False]], [[False]], [[True]]]
    assert not handler.sequences.states


def test_a_failing_network_fails_its_streams_only(stream_pair):
    front, _, _, _ = stream_pair
    front.stream([event(1, np.zeros(100), start=True), event(2, np.zeros(100), start=True)])

    def broken(inputs):
        raise RuntimeError("network down")
    front.network = broken
    results = front.stream([event(1, np.zeros(16000)), event(2, np.zeros(10))])
    assert isinstance(results[0], RuntimeError) and results[1]["logprobs"].shape[1] == 0
    assert set(front.sequences.states) == {2}
