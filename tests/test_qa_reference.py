"""QA windows and answers against the reference NeMo 1.x's QA inference was taken from: Hugging Face transformers'
SQuAD code (BERT's run_squad.py), run by ``tests/fixtures/qa/make_fixtures.py`` on the tiny vocabulary with seeded
logits. The fixture stores, per case, the settings, each example's question and context, every reference window's
``input_ids`` with its start/end logits, and the reference's answer; this test needs no transformers.

- Windows: TokenizeQA gives the reference's windows, in order, with the same ids (the truncated question, the
  ``doc_stride`` windows of the context) and token types.
- Answers: the reference's logits through QASpan (on padding: a large logit, which must not matter) give the
  reference's answer and, where the n-best lists are the same, its n-best probability as SCORE.

How answers compare. The reference returns text, rebuilt from the context's whitespace words joined by one space
(``get_final_text``); QASpan returns the context's characters between the span's offsets. So:

- the word pieces of our ANSWER, de-tokenized as BERT does, equal the winning span's (``tok_text``): the same
  tokens were chosen;
- where ``get_final_text`` mapped those pieces back onto the words (``aligned``), our ANSWER equals its text once
  runs of whitespace are one space; where it could not (a piece is [UNK], e.g. '-' or a number) it returns the span's
  whole words, and our ANSWER lies within them;
- the fixture holds two reference runs: transformers 4.x as it is (``hf``), and with BERT's/NeMo 1.x's word-piece
  text (``bert``: every '##' removed). They differ only for a span that starts inside a word: transformers keeps that
  '##', cannot find it and returns the whole words ('londoner' where NeMo and we say 'er');
- SCORE is compared where the fixture says the reference's n-best list is keyed on exactly the span texts we key it
  on (``score_comparable``); elsewhere the reference merges spans whose rebuilt text is the same and its
  probabilities differ from ours by design.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import BertWordPieceTokenizer

from servicemaker.runtime import nlp as h
from servicemaker.samples.models import tiny_vocab

DATA = json.loads((Path(__file__).parent / "fixtures" / "qa" / "cases.json").read_text(encoding="utf-8"))
CASES = DATA["cases"]
IDS = [c["name"] for c in CASES]
#: what the padding of a row gets as logits: larger than any real one, so reading it would change the answer
PAD = 100.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("qa_vocab")
    (path / "vocab.txt").write_text("\n".join(tiny_vocab()) + "\n", encoding="utf-8")
    return path


def strs(items):
    return np.array([[s.encode("utf-8")] for s in items], dtype=object)


def tokenize(folder, case):
    p = case["params"]
    tok = h.TokenizeQA(str(folder), {"vocab": "vocab.txt", "lower_case": "true",
                                     "max_seq_length": str(p["max_seq_length"]),
                                     "max_query_length": str(p["max_query_length"]),
                                     "doc_stride": str(p["doc_stride"])})
    examples = case["examples"]
    return tok({"QUESTION": strs([e["question"] for e in examples]), "CONTEXT": strs([e["context"] for e in examples])})


def reference_rows(case):
    return [(i, f) for i, e in enumerate(case["examples"]) for f in e["features"]]


def test_fixture_vocabulary_is_the_tiny_vocabulary():
    assert DATA["vocab"] == tiny_vocab()


def test_fixture_covers_the_settings():
    params = [c["params"] for c in CASES]
    windows = [len(e["features"]) for c in CASES for e in c["examples"]]
    assert len(CASES) >= 25 and max(windows) >= 10 and sum(w >= 3 for w in windows) >= 10
    assert {p["version_2_with_negative"] for p in params} == {True, False}
    assert len({p["doc_stride"] for p in params}) >= 5 and len({p["max_seq_length"] for p in params}) >= 4
    assert min(p["n_best_size"] for p in params) == 1 and min(p["max_answer_length"] for p in params) == 1
    assert any(len(c["examples"]) > 1 for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_windows_equal_the_reference(folder, case):
    out = tokenize(folder, case)
    rows = reference_rows(case)
    assert out["row_text"][:, 0].tolist() == [i for i, _ in rows]
    for r, (_, feature) in enumerate(rows):
        n = int(out["attention_mask"][r].sum())
        assert out["attention_mask"][r, :n].all() and not out["attention_mask"][r, n:].any()
        assert out["input_ids"][r, :n].tolist() == feature["input_ids"], f"window {r}"
        types = out["token_type_ids"][r, :n].tolist()
        assert types == [0] * feature["type0"] + [1] * (n - feature["type0"]), f"window {r}"


def collapse(text: str) -> str:
    return " ".join(text.split())


def piece_text(wordpiece: BertWordPieceTokenizer, text: str) -> str:
    """The word pieces of ``text`` as BERT's run_squad.py rebuilds a span's text from them."""
    tokens = wordpiece.encode(text, add_special_tokens=False).tokens
    return collapse(" ".join(tokens).replace(" ##", "").replace("##", ""))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_answers_equal_the_reference(folder, case):
    p = case["params"]
    tok = tokenize(folder, case)
    rows = reference_rows(case)
    logits = np.full(tok["input_ids"].shape + (2,), PAD, dtype=np.float32)
    for r, (_, feature) in enumerate(rows):
        n = len(feature["input_ids"])
        logits[r, :n, 0], logits[r, :n, 1] = feature["start"], feature["end"]
    span = h.QASpan("", {"max_answer_length": str(p["max_answer_length"]), "n_best_size": str(p["n_best_size"]),
                         "version_2_with_negative": "true" if p["version_2_with_negative"] else "false",
                         "null_score_diff_threshold": repr(p["null_score_diff_threshold"])})
    contexts = [e["context"] for e in case["examples"]]
    out = span({**tok, "logits": logits, "CONTEXT": strs(contexts)})
    wordpiece = BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=True)
    for b, example in enumerate(case["examples"]):
        ours = out["ANSWER"][b, 0].decode("utf-8")
        start, end = int(out["ANSWER_START"][b, 0]), int(out["ANSWER_END"][b, 0])
        score = float(out["SCORE"][b, 0])
        bert, hf = example["bert"], example["hf"]
        where = f"example {b}: ours {ours!r}, reference {bert['text']!r} (transformers {hf['text']!r})"
        assert (ours == "") == (bert["text"] == "") == (hf["text"] == ""), where
        if ours:
            assert example["context"][start:end] == ours, where
            assert piece_text(wordpiece, ours) == collapse(bert["tok_text"]), where
            for ref in (bert, hf):
                if ref["aligned"]:
                    assert collapse(ours) == collapse(ref["text"]), where
                else:  # get_final_text gave up and returned the span's whole words
                    assert ref["text"] == ref["orig_text"] and collapse(ours) in collapse(ref["text"]), where
        else:
            assert (start, end) == (0, 0), where
        if bert["score_comparable"]:
            assert score == pytest.approx(bert["probability"], abs=1e-5), where
        if hf["score_comparable"]:
            assert score == pytest.approx(hf["probability"], abs=1e-5), where
