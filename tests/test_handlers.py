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
    assert modules <= {"__future__", "os", "typing", "numpy", "tokenizers", "onnxruntime", "svc_common", None}


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


def test_tokenize_truncates_to_max_seq_length(folder):
    tok = h.Tokenize(str(folder), {"vocab": "vocab.txt", "lower_case": "true", "max_seq_length": "8"})
    out = tok({"TEXT": strs("the rain in paris will rain tomorrow in london")})
    assert out["input_ids"].shape == (1, 8)
    first = h.first_subwords(out["word_ids"][0], 9)
    assert first[:6] == [1, 2, 3, 4, 5, 6] and first[6:] == [-1, -1, -1]


def test_missing_special_token_is_named(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(ValueError, match=r"no \[CLS\] token"):
        h.Tokenize(str(tmp_path), {"vocab": "vocab.txt", "lower_case": "true", "max_seq_length": "8"})


def test_classify_softmax_and_labels(folder):
    (folder / "labels.csv").write_text("weather\nmusic\n")
    out = h.Classify(str(folder), {"labels": "labels.csv"})({"logits": np.array([[0.0, 2.0], [1.0, 0.0]], np.float32)})
    assert out["LABEL"].tolist() == [[b"music"], [b"weather"]]
    np.testing.assert_allclose(out["SCORE"][:, 0], [1 / (1 + np.exp(-2)), 1 / (1 + np.exp(-1))], rtol=1e-6)


def test_classify_without_labels_uses_index(folder):
    out = h.Classify(str(folder), {})({"logits": np.array([[0.0, 2.0, 1.0]], np.float32)})
    assert out["LABEL"].tolist() == [[b"1"]]


def test_label_count_mismatch_is_named(folder):
    with pytest.raises(ValueError, match="gives 2 classes but there are 3 labels"):
        h.LabelTokens(str(folder), {"labels": "labels.csv"})({"logits": np.zeros((1, 4, 2), np.float32)})


def test_labels_file_with_ids(tmp_path):
    (tmp_path / "l.csv").write_text("O\t0\nB-PER\t1\n\n")
    assert h.read_labels(str(tmp_path / "l.csv")) == ["O", "B-PER"]


def test_ner_words_take_first_subword_label():
    inputs = {
        "token_labels": np.array([[b"O", b"B-PER", b"I-PER", b"O", b"O"]], dtype=object),
        "token_scores": np.array([[0.1, 0.9, 0.8, 0.7, 0.2]], np.float32),
        # [CLS] jo ##hn runs [SEP]
        "word_ids": np.array([[-1, 0, 0, 1, -1]], np.int32),
        "words": np.array([[b"john", b"runs", b"away"]], dtype=object),
    }
    out = h.NerWords("", {})(inputs)
    assert out["TOKENS"].tolist() == [[b"john", b"runs", b"away"]]
    assert out["LABELS"].tolist() == [[b"B-PER", b"O", b"O"]]  # 'away' was truncated away: first label, score 0
    np.testing.assert_allclose(out["SCORES"], [[0.9, 0.7, 0.0]])


def test_punctuate():
    assert h.punctuate(["hello", "world", "how", "are", "you"], ["O", ".", "O", "O", "?"],
                       ["U", "O", "U", "O", "O"]) == "Hello world. How are you?"


def test_best_span_respects_context_and_length():
    start = np.array([9, 1, 5, 0, 0], np.float32)  # token 0 (question) is best but not in the context
    end = np.array([9, 0, 0, 1, 4], np.float32)
    in_ctx = np.array([False, True, True, True, True])
    assert h.best_span(start, end, in_ctx, max_len=30)[:2] == (2, 4)
    assert h.best_span(start, end, in_ctx, max_len=2)[:2] == (2, 3)
    i, j, score = h.best_span(start, end, in_ctx, max_len=30)
    assert 0 < score < 1


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
    res = span({"logits": logits, "token_offsets": out["token_offsets"], "CONTEXT": strs(context)})
    assert res["ANSWER"].tolist() == [[b"lives in London"]]
    assert (res["ANSWER_START"][0, 0], res["ANSWER_END"][0, 0]) == (5, 20)
