"""The Python-backend handlers, without Triton: tokenization, label decoding, word merging, QA spans."""

from __future__ import annotations

import ast

import numpy as np
import pytest

from servicemaker.pipelines import REGISTRY
from servicemaker.pipelines import FAMILIES
from servicemaker.runtime import common, nlp as h
from servicemaker.samples.models import tiny_vocab


@pytest.fixture()
def folder(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(tiny_vocab()) + "\n")
    (tmp_path / "labels.csv").write_text("O\nB-PER\nI-PER\n")
    return tmp_path


def strs(*rows):
    return np.array([[r.encode()] for r in rows], dtype=object)


@pytest.mark.parametrize("module", [common, h], ids=["common", "nlp"])
def test_handlers_import_nothing_of_servicemaker(module):
    tree = ast.parse(open(module.__file__).read())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert modules <= {"__future__", "json", "os", "typing", "numpy", "tokenizers", "onnxruntime", "svc_common", None}


def test_every_step_matches_its_handler_tensors():
    import importlib

    for pipeline in REGISTRY.values():
        if pipeline.family not in FAMILIES:
            continue
        runtime = importlib.import_module(f"servicemaker.runtime.{FAMILIES[pipeline.family].runtime}")
        for step in pipeline.ensemble.steps:
            comp = pipeline.component(step.component)
            if comp.kind == "network" or comp.handler is None:
                continue
            handler = runtime.HANDLERS[comp.handler]
            assert set(step.inputs) == {n for n, _, _ in handler.INPUTS}, (pipeline.name, comp.name)
            assert set(step.outputs) <= {n for n, _, _ in handler.OUTPUTS}, (pipeline.name, comp.name)


def test_tokenize_words_and_word_ids(folder):
    tok = h.Tokenize(str(folder), {"vocab": "vocab.txt", "lower_case": "true", "max_seq_length": "64"})
    out = tok({"TEXT": strs("John lives in LONDON", "hello")})
    assert out["input_ids"].shape == out["attention_mask"].shape == out["word_ids"].shape
    assert out["words"].tolist() == [[b"John", b"lives", b"in", b"LONDON"], [b"hello", b"", b"", b""]]
    vocab = tiny_vocab()
    row = [vocab[i] for i, m in zip(out["input_ids"][0], out["attention_mask"][0]) if m]
    assert row == ["[CLS]", "john", "lives", "in", "london", "[SEP]"]
    assert out["word_ids"][0].tolist()[:6] == [-1, 0, 1, 2, 3, -1]
    assert out["attention_mask"][1].tolist()[3:] == [0] * (out["attention_mask"].shape[1] - 3)


def test_tokenize_windows_give_every_word_one_label_position(folder):
    tok = h.Tokenize(str(folder), {"vocab": "vocab.txt", "lower_case": "true", "max_seq_length": "8"})
    text = "the rain in paris will rain tomorrow in london"
    out = tok({"TEXT": strs(text, "hello")})
    # 9 one-token words, 6 per window, starts 3 apart: windows 0-5, 3-8, then "hello"
    assert out["input_ids"].shape == (3, 8) and out["row_text"][:, 0].tolist() == [0, 0, 1]
    assert out["words"][0].tolist()[:9] == [w.encode() for w in text.split()] and set(out["words"][1]) == {b""}
    marks = out["word_ids"]
    # max context: word 4 has one token of context on its short side in either window (a tie: the earlier wins)
    assert marks[0].tolist() == [-1, 0, 1, 2, 3, 4, -1, -1]
    assert marks[1].tolist() == [-1, -1, -1, 5, 6, 7, 8, -1]
    assert marks[2].tolist()[:3] == [-1, 0, -1]


def test_tokenize_short_text_is_one_window(folder):
    tok = h.Tokenize(str(folder), {"vocab": "vocab.txt", "lower_case": "true", "max_seq_length": "64"})
    out = tok({"TEXT": strs("xylo lives in paris")})
    vocab = tiny_vocab()
    assert [vocab[i] for i in out["input_ids"][0]] == ["[CLS]", "x", "##y", "##l", "##o", "lives", "in", "paris",
                                                       "[SEP]"]
    assert out["word_ids"][0].tolist() == [-1, 0, -1, -1, -1, 1, 2, 3, -1]  # first subwords only
    assert out["row_text"].tolist() == [[0]] and out["attention_mask"].all()


def test_window_geometry():
    assert h.windows(0, 6, 3) == [(0, 0)]
    assert h.windows(5, 6, 3) == [(0, 5)]
    assert h.windows(9, 6, 3) == [(0, 6), (3, 6)]
    assert h.windows(10, 6, 3) == [(0, 6), (3, 6), (6, 4)]
    assert h.windows(10, 6, 100) == [(0, 6), (6, 4)]  # a stride over the width never skips tokens
    spans = h.windows(10, 6, 3)
    # position 4: 1 token of context on its short side in windows 0 and 1 → the earlier; position 7: window 1
    # (1 token + 0.06) beats window 2 (1 token + 0.04)
    assert h.owners(spans, 10).tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]


def test_word_without_tokens_becomes_unk(folder):
    tok = h.Tokenize(str(folder), {"vocab": "vocab.txt", "lower_case": "true", "max_seq_length": "64"})
    out = tok({"TEXT": strs("hello \u200b world")})  # the normalizer strips the zero-width space
    vocab = tiny_vocab()
    assert [vocab[i] for i in out["input_ids"][0]] == ["[CLS]", "hello", "[UNK]", "world", "[SEP]"]
    assert out["word_ids"][0].tolist() == [-1, 0, 1, 2, -1]


def test_request_limits_are_named(folder):
    tok = h.Tokenize(str(folder), {"vocab": "vocab.txt", "lower_case": "true", "max_seq_length": "8",
                                   "max_request_chars": "60", "network_rows": "2"})
    with pytest.raises(ValueError, match=r"text 1 of the request has 61 characters, more than the 60.*max_request_chars"):
        tok({"TEXT": strs("hello", "a" * 61)})
    with pytest.raises(ValueError, match=r"needs 3 windows of 8 tokens but the network takes at most 2.*max_batch_size"):
        tok({"TEXT": strs("the rain in paris will rain tomorrow in london hello")})


def test_tokenize_text_truncates_unless_mean(folder):
    params = {"vocab": "vocab.txt", "lower_case": "true", "max_seq_length": "8"}
    text = strs("the rain in paris will rain tomorrow in london")
    assert h.TokenizeText(str(folder), params)({"TEXT": text})["input_ids"].shape == (1, 8)
    assert h.TokenizeText(str(folder), {**params, "long_input": "mean"})({"TEXT": text})["input_ids"].shape == (2, 8)


def test_missing_special_token_is_named(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(ValueError, match=r"no \[CLS\] token"):
        h.Tokenize(str(tmp_path), {"vocab": "vocab.txt", "lower_case": "true", "max_seq_length": "8"})


def test_classify_softmax_and_labels(folder):
    (folder / "labels.csv").write_text("weather\nmusic\n")
    out = h.Classify(str(folder), {"labels": "labels.csv"})({"logits": np.array([[0.0, 2.0], [1.0, 0.0]], np.float32),
                                                             "row_text": np.array([[0], [1]], np.int32)})
    assert out["LABEL"].tolist() == [[b"music"], [b"weather"]]
    np.testing.assert_allclose(out["SCORE"][:, 0], [1 / (1 + np.exp(-2)), 1 / (1 + np.exp(-1))], rtol=1e-6)


def test_classify_without_labels_uses_index(folder):
    out = h.Classify(str(folder), {})({"logits": np.array([[0.0, 2.0, 1.0]], np.float32),
                                       "row_text": np.array([[0]], np.int32)})
    assert out["LABEL"].tolist() == [[b"1"]]


def test_classify_averages_a_texts_windows(folder):
    logits = np.array([[0.0, 2.0], [2.0, 0.0], [1.0, 0.0], [0.0, 3.0]], np.float32)
    out = h.Classify(str(folder), {})({"logits": logits, "row_text": np.array([[0], [0], [0], [1]], np.int32)})
    np.testing.assert_allclose(out["LOGITS"], [[1.0, 2.0 / 3], [0.0, 3.0]], rtol=1e-6)
    assert out["LABEL"].tolist() == [[b"0"], [b"1"]]


def test_intent_reads_first_window_or_mean(folder):
    (folder / "intents.csv").write_text("a\nb\n")
    inputs = {"intent_logits": np.array([[1.0, 0.0], [0.0, 5.0]], np.float32),
              "slot_logits": np.zeros((2, 3, 3), np.float32), "row_text": np.array([[0], [0]], np.int32)}
    params = {"intent_labels": "intents.csv", "slot_labels": "labels.csv"}
    assert h.IntentSlots(str(folder), params)(inputs)["INTENT"].tolist() == [[b"a"]]
    mean = h.IntentSlots(str(folder), {**params, "long_input": "mean"})(inputs)
    assert mean["INTENT"].tolist() == [[b"b"]] and mean["slot_labels"].shape == (2, 3)


def test_label_count_mismatch_is_named(folder):
    with pytest.raises(ValueError, match="gives 2 classes but there are 3 labels"):
        h.LabelTokens(str(folder), {"labels": "labels.csv"})({"logits": np.zeros((1, 4, 2), np.float32)})


def test_labels_file_with_ids(tmp_path):
    (tmp_path / "l.csv").write_text("O\t0\nB-PER\t1\n\n")
    assert h.read_labels(str(tmp_path / "l.csv")) == ["O", "B-PER"]


def test_ner_words_take_their_marked_token():
    inputs = {
        "token_labels": np.array([[b"O", b"B-PER", b"I-PER", b"O", b"O"], [b"O", b"O", b"B-LOC", b"O", b"O"]],
                                 dtype=object),
        "token_scores": np.array([[0.1, 0.9, 0.8, 0.7, 0.2], [0.1, 0.3, 0.6, 0.4, 0.2]], np.float32),
        # window 0: [CLS] jo ##hn runs [SEP]; window 1: [CLS] ##hn runs away [SEP] (word 2 decided there)
        "word_ids": np.array([[-1, 0, -1, 1, -1], [-1, -1, -1, 2, -1]], np.int32),
        "words": np.array([[b"john", b"runs", b"away"], [b"", b"", b""]], dtype=object),
        "row_text": np.array([[0], [0]], np.int32),
    }
    out = h.NerWords("", {})(inputs)
    assert out["TOKENS"].tolist() == [[b"john", b"runs", b"away"]]
    assert out["LABELS"].tolist() == [[b"B-PER", b"O", b"O"]]
    np.testing.assert_allclose(out["SCORES"], [[0.9, 0.7, 0.4]])


def test_punctuate():
    assert h.punctuate(["hello", "world", "how", "are", "you"], ["O", ".", "O", "O", "?"],
                       ["U", "O", "U", "O", "O"]) == "Hello world. How are you?"


def test_qa_offsets_point_into_the_context(folder):
    tok = h.TokenizeQA(str(folder), {"vocab": "vocab.txt", "lower_case": "true", "max_seq_length": "64",
                                     "max_query_length": "3"})
    context = "John lives in London"
    out = tok({"QUESTION": strs("who lives in london it is"), "CONTEXT": strs(context)})
    offsets = out["token_offsets"][0]
    spans = [context[a:b] for a, b in offsets if a >= 0]
    assert spans == ["John", "lives", "in", "London"]
    assert int((out["token_type_ids"][0] == 1).sum()) == 5  # context tokens + final [SEP]
    # the question was cut to 3 tokens: [CLS] who lives in [SEP]
    assert int(out["token_type_ids"][0][: int(out["attention_mask"][0].sum())].tolist().index(1)) == 5
    span = h.QASpan("", {"max_answer_length": "30"})
    logits = np.full((1, offsets.shape[0], 2), -5.0, np.float32)
    logits[0, 6, 0] = logits[0, 8, 1] = 5.0
    res = span({**out, "logits": logits})
    assert res["ANSWER"].tolist() == [[b"lives in London"]]
    assert (res["ANSWER_START"][0, 0], res["ANSWER_END"][0, 0]) == (5, 20)
    assert 0 < res["SCORE"][0, 0] <= 1
    short = h.QASpan("", {"max_answer_length": "2"})({**out, "logits": logits})
    # 'lives in London' is 3 tokens: too long; 'lives' (5 - 5) and 'London' (-5 + 5) tie, the best start's first
    assert short["ANSWER"].tolist() == [[b"lives"]]


def qa_windows(folder, context, **params):
    tok = h.TokenizeQA(str(folder), {"vocab": "vocab.txt", "lower_case": "true", "max_seq_length": "16",
                                     "max_query_length": "4", "doc_stride": "5", **params})
    return tok({"QUESTION": strs("who won"), "CONTEXT": strs(context)})


def test_qa_finds_a_span_in_a_later_window(folder):
    words = ["the"] * 40
    words[33] = "acme"
    context = " ".join(words)
    out = qa_windows(folder, context)
    assert out["input_ids"].shape[0] > 3 and set(out["row_text"][:, 0]) == {0}
    acme = tiny_vocab().index("acme")
    logits = np.repeat(np.where(out["input_ids"] == acme, 8.0, 0.0)[..., None], 2, axis=-1).astype(np.float32)
    res = h.QASpan("", {"max_answer_length": "5"})({**out, "logits": logits})
    start = int(res["ANSWER_START"][0, 0])
    assert res["ANSWER"][0, 0] == b"acme" and context[start:int(res["ANSWER_END"][0, 0])] == "acme"
    assert start == len(" ".join(words[:33])) + 1
    # every context token is the max-context token of exactly one window
    assert int(out["max_context"].sum()) == 40


def test_qa_null_answer_by_threshold(folder):
    context = "john lives in london"
    out = qa_windows(folder, context)
    logits = np.zeros(out["input_ids"].shape + (2,), np.float32)
    logits[0, 0] = 3.0             # [CLS]: null score 6
    logits[0, 5:7] = 2.5           # best span: 5
    feeds = {**out, "logits": logits}
    plain = h.QASpan("", {"max_answer_length": "5"})(feeds)
    assert plain["ANSWER"][0, 0] != b""
    null = h.QASpan("", {"max_answer_length": "5", "version_2_with_negative": "true"})(feeds)
    assert null["ANSWER"][0, 0] == b"" and 0 < null["SCORE"][0, 0] < 1
    kept = h.QASpan("", {"max_answer_length": "5", "version_2_with_negative": "true",
                         "null_score_diff_threshold": "1.5"})(feeds)
    assert kept["ANSWER"][0, 0] == plain["ANSWER"][0, 0]


def test_long_calibration_examples_become_window_rows(folder):
    """Calibration and the accuracy gate feed the network what the tokenizer makes: a long example is several rows."""
    from servicemaker.deploy import feeds

    tok = h.Tokenize(str(folder), {"vocab": "vocab.txt", "lower_case": "true", "max_seq_length": "8"})
    batches = feeds.tokenized(["the rain in paris will rain tomorrow in london", "hello"], tok)
    assert len(batches) == 1 and batches[0]["input_ids"].shape == (3, 8)
    assert set(batches[0]) == {"input_ids", "token_type_ids", "attention_mask"}


def test_non_utf8_text_is_named():
    with pytest.raises(ValueError, match=r"text 1 of the request is not valid UTF-8: byte 0xe9 at offset 3"):
        common.texts(np.array([[b"ok"], [b"caf\xe9"]], dtype=object))


def test_a_failed_request_keeps_no_traceback(folder):
    """A failed request's exception must not hold the frames (and arrays) of the failed call until the batch ends."""
    tok = h.Tokenize(str(folder), {"vocab": "vocab.txt", "lower_case": "true", "max_seq_length": "8",
                                   "max_request_chars": "10"})
    ok, bad = tok.batch([{"TEXT": strs("hello")}, {"TEXT": strs("a" * 11)}])
    assert isinstance(ok, dict) and isinstance(bad, ValueError) and bad.__traceback__ is None
