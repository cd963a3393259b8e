"""Batch-aware handlers, without Triton: every request Triton hands a model goes through the work once (one
``encode_batch``, one network run per shape, one softmax), rows padded to the longest row of the batch, the answers
split back per request; each request's answer equals its answer alone, and a bad request fails alone."""

from __future__ import annotations

import numpy as np
import pytest

from servicemaker.runtime import common, nlp as h
from servicemaker.samples.models import tiny_vocab

MAX_SEQ = 64
TEXTS = [["hello"], ["John lives in London", "the game was won"], ["will it rain tomorrow in paris " * 6],
         ["what weather", "acme works"]]


@pytest.fixture()
def folder(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(tiny_vocab()) + "\n")
    (tmp_path / "labels.csv").write_text("O\nB-PER\nI-PER\n")
    (tmp_path / "classes.csv").write_text("weather\nmusic\nsports\n")
    return tmp_path


def strs(*rows):
    return np.array([[r.encode() if isinstance(r, str) else r] for r in rows], dtype=object)


def params(**extra):
    return {"vocab": "vocab.txt", "lower_case": "true", "max_seq_length": str(MAX_SEQ), **extra}


class Network:
    """A stand-in network: per-token logits from a fixed table (padding-independent), sequence logits the masked
    mean of them."""

    def __init__(self, classes: int) -> None:
        self.table = np.random.default_rng(0).normal(size=(len(tiny_vocab()), classes)).astype(np.float32)

    def __call__(self, feeds):
        tokens = self.table[feeds["input_ids"]]
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        return tokens, (tokens * mask).sum(1) / mask.sum(1)


def answers_alone(handler, requests):
    return [handler(r) for r in requests]


def assert_same(batched, alone, width_axes=()):
    """Equal answers: strings and ints exactly, floats within 1e-5; ``width_axes`` (names) are compared on the
    request's own width (a batch pads rows to its longest)."""
    assert set(batched) == set(alone)
    for name, value in alone.items():
        got = batched[name]
        if name in width_axes:
            got = got[:, : value.shape[1]]
        if value.dtype == object or value.dtype.kind in "iub":
            assert got.tolist() == value.tolist(), name
        else:
            np.testing.assert_allclose(got, value, atol=1e-5, rtol=1e-5, err_msg=name)


def test_tokenizer_encodes_a_batch_once_and_pads_to_its_longest_row(folder, monkeypatch):
    tok = h.Tokenize(str(folder), params(doc_stride="8", max_seq_length="16"))
    requests = [{"TEXT": strs(*texts)} for texts in TEXTS]
    alone = answers_alone(tok, requests)
    calls = []
    real = tok.tok.encode_batch
    monkeypatch.setattr(tok.tok, "encode_batch", lambda *a, **k: calls.append(1) or real(*a, **k))
    batched = tok.batch(requests)
    assert len(calls) == 1
    widths = {b["input_ids"].shape[1] for b in batched}
    longest = max(int(a["attention_mask"].sum(1).max()) for a in alone)
    assert widths == {longest}  # one width for the batch: its longest row, not max_seq_length
    for b, a in zip(batched, alone):
        assert_same({k: v for k, v in b.items() if k != "words"}, {k: v for k, v in a.items() if k != "words"},
                    width_axes=("input_ids", "token_type_ids", "attention_mask", "word_ids"))
        assert [[w for w in row if w] for row in b["words"].tolist()] == \
               [[w for w in row if w] for row in a["words"].tolist()]
        assert b["row_text"].dtype == np.int32
        n = b["input_ids"].shape[1]
        w = a["input_ids"].shape[1]
        assert (b["attention_mask"][:, w:] == 0).all() and (b["input_ids"][:, w:] == tok.pad).all() and w <= n


def test_short_batch_is_not_padded_to_max_seq_length(folder):
    tok = h.Tokenize(str(folder), params())
    out = tok.batch([{"TEXT": strs("hello")}, {"TEXT": strs("john lives in london")}])
    assert out[0]["input_ids"].shape == out[1]["input_ids"].shape == (1, 6)


def test_a_bad_request_in_a_batch_fails_alone(folder):
    tok = h.Tokenize(str(folder), params(max_request_chars="200", network_rows="2", max_seq_length="8"))
    good = [{"TEXT": strs("hello world")}, {"TEXT": strs("john lives", "in london")}]
    bad = [{"TEXT": strs(b"\xff\xfe")}, {"TEXT": strs("a" * 201)}, {"TEXT": strs("will it rain tomorrow in paris " * 3)}]
    out = tok.batch([good[0], bad[0], bad[1], good[1], bad[2]])
    assert isinstance(out[1], ValueError) and "not valid UTF-8" in str(out[1])
    assert isinstance(out[2], ValueError) and "201 characters" in str(out[2])
    assert isinstance(out[4], ValueError) and "windows" in str(out[4])
    alone = answers_alone(tok, good)
    for b, a in zip((out[0], out[3]), alone):
        assert_same({k: v for k, v in b.items() if k != "words"}, {k: v for k, v in a.items() if k != "words"},
                    width_axes=("input_ids", "token_type_ids", "attention_mask", "word_ids"))


@pytest.mark.parametrize("long_input", ["truncate", "mean"])
def test_classify_and_intent_decode_a_batch_per_text(folder, long_input):
    tok = h.TokenizeText(str(folder), params(long_input=long_input, max_seq_length="16", doc_stride="8"))
    net = Network(3)
    classify = h.Classify(str(folder), {"labels": "classes.csv"})
    intents = h.IntentSlots(str(folder), {"intent_labels": "classes.csv", "slot_labels": "labels.csv",
                                          "long_input": long_input})
    encoded = tok.batch([{"TEXT": strs(*texts)} for texts in TEXTS])
    decoder_in = []
    for enc in encoded:
        token_logits, seq_logits = net(enc)
        decoder_in.append({"logits": seq_logits, "intent_logits": seq_logits, "slot_logits": token_logits,
                           "row_text": enc["row_text"]})
    for handler, keys in ((classify, ("logits", "row_text")), (intents, ("intent_logits", "slot_logits", "row_text"))):
        requests = [{k: r[k] for k in keys} for r in decoder_in]
        batched, alone = handler.batch(requests), answers_alone(handler, requests)
        for b, a, texts in zip(batched, alone, TEXTS):
            assert_same(b, a)
            first = next(iter(b.values()))
            assert len(first) in (len(texts), len(decoder_in[TEXTS.index(texts)]["row_text"]))


def test_token_pipeline_answers_in_a_batch_as_alone(folder):
    tok = h.Tokenize(str(folder), params(max_seq_length="16", doc_stride="8"))
    net = Network(3)
    label = h.LabelTokens(str(folder), {"labels": "labels.csv"})
    words = h.NerWords(str(folder), {})
    requests = [{"TEXT": strs(*texts)} for texts in TEXTS]

    def chain(enc_list, run):
        logits = [{"logits": net(e)[0]} for e in enc_list]
        labels = run(label, logits)
        return run(words, [{"token_labels": lab["token_labels"], "token_scores": lab["token_scores"],
                            "word_ids": e["word_ids"], "words": e["words"], "row_text": e["row_text"]}
                           for lab, e in zip(labels, enc_list)])

    batched = chain(tok.batch(requests), lambda handler, reqs: handler.batch(reqs))
    alone = [chain([tok(r)], lambda handler, reqs: [handler(reqs[0])])[0] for r in requests]
    for b, a in zip(batched, alone):
        assert [[w for w in row if w] for row in b["TOKENS"].tolist()] == \
               [[w for w in row if w] for row in a["TOKENS"].tolist()]
        assert_same(b, a)


def test_qa_tokenizer_batches_and_checks_pairs(folder):
    tok = h.TokenizeQA(str(folder), params(max_query_length="8", max_seq_length="16", doc_stride="4"))
    requests = [{"QUESTION": strs("who lives in london"), "CONTEXT": strs("john lives in london and works at acme")},
                {"QUESTION": strs("what", "who"), "CONTEXT": strs("hello world", "the game was won")}]
    batched, alone = tok.batch(requests), answers_alone(tok, requests)
    for b, a in zip(batched, alone):
        assert_same(b, a, width_axes=("input_ids", "token_type_ids", "attention_mask", "token_offsets",
                                      "max_context"))
    with pytest.raises(ValueError, match="2 questions but 1 contexts"):
        tok({"QUESTION": strs("a", "b"), "CONTEXT": strs("c")})


def test_onnx_network_runs_once_per_shape(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1])
    graph = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["y"], axes=[1], keepdims=1)], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=8), str(tmp_path / "m.onnx"))
    net = common.OnnxNetwork(str(tmp_path), {"model": "m.onnx", "intra_op_threads": "1"})
    runs = []
    real = net.session.run
    net.session = type("S", (), {"run": lambda self, *a: runs.append(1) or real(*a)})()
    rng = np.random.default_rng(1)
    requests = [{"x": rng.normal(size=(r, n)).astype(np.float32)} for r, n in ((1, 4), (3, 4), (2, 5), (1, 4))]
    out = net.batch(requests)
    assert len(runs) == 2  # widths 4 and 5
    for o, r in zip(out, requests):
        np.testing.assert_allclose(o["y"], r["x"].sum(1, keepdims=True), rtol=1e-5)
    bad = net.batch([requests[0], {"x": np.zeros((1, 4), np.float64)}, requests[1]])
    assert isinstance(bad[1], Exception) and not isinstance(bad[0], Exception) and not isinstance(bad[2], Exception)
