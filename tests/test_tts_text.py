"""The TTS text front end against NeMo itself: symbol ids of every tokenizer case equal NeMo's own
``FastPitchModel.parse()`` (fixtures made with nemo_toolkit 3.0 by ``fixtures/tts/make_fixtures.py``), the symbol
table equals NeMo's, ``mapping.txt`` equals what nemo2riva's own code writes; sentence splitting; clear errors."""

from __future__ import annotations

import json

import pytest

from servicemaker.runtime import tts_text
from tts_fixtures import FIXTURES

CASES = json.loads((FIXTURES / "tokenizers.json").read_text(encoding="utf-8"))


def _tokenizer(config: dict) -> tts_text.Tokenizer:
    g2p = config.get("g2p") or {}
    return tts_text.from_config(config, str(FIXTURES / g2p["phoneme_dict"]) if "phoneme_dict" in g2p else None,
                                str(FIXTURES / g2p["heteronyms"]) if "heteronyms" in g2p else None)


@pytest.mark.parametrize("name", sorted(CASES))
def test_symbol_table_and_mapping_equal_nemo_and_nemo2riva(name):
    case = CASES[name]
    tok = _tokenizer(case["config"])
    assert tok.tokens == case["tokens"]
    assert "\n".join(tts_text.mapping_lines(tok)) == case["mapping"]
    assert tts_text.check_mapping(tok, case["mapping"]) is None


@pytest.mark.parametrize("name", sorted(CASES))
def test_ids_equal_nemo_parse(name):
    case = CASES[name]
    tok = _tokenizer(case["config"])
    compared = 0
    for c in case["cases"]:
        if "ids" in c:
            assert tok.encode(c["text"]) == c["ids"], c["text"]
            compared += 1
        else:
            # NeMo's IPATokenizer raises IndexError on text that leaves only spaces; here it is an empty sentence
            assert c["nemo_error"] == "IndexError" and case["config"]["_target_"].endswith("IPATokenizer")
            assert all(i == tok.space for i in tok.encode(c["text"]))
    assert compared >= len(case["cases"]) - 2


def test_the_fixture_covers_what_matters():
    """Heteronyms, ambiguous words, suffixes, hyphens, unchanged spans, unknown characters: in the cases."""
    texts = " ".join(c["text"] for c in CASES["arpabet"]["cases"])
    for piece in ("Read", "live", "John's", "dogs", "well-known", "|HH AH0 L OW1|", "caf\u00e9", "123", "zzz"):
        assert piece in texts
    kinds = {c["config"]["_target_"].rsplit(".", 1)[-1] for c in CASES.values()}
    assert kinds == {tts_text.CHARS, tts_text.ARPABET, tts_text.IPA}


def test_mapping_mismatch_names_the_line():
    tok = _tokenizer(CASES["chars"]["config"])
    lines = tts_text.mapping_lines(tok)
    assert tts_text.check_mapping(tok, "\n".join(lines[:-1])) == (
        f"it has {len(lines) - 1} lines; the model config's tokenizer gives {len(lines)}")
    lines[3] = "3 x"
    assert tts_text.check_mapping(tok, "\n".join(lines)) == "line 4 is '3 x'; the model config's tokenizer gives '2 b'"


@pytest.mark.parametrize("config,message", [
    ({"_target_": "nemo.collections.common.tokenizers.text_to_speech.tts_tokenizers.GermanCharsTokenizer"},
     "is not one servicemaker reproduces"),
    ({"_target_": "my.own.Tokenizer"}, "is not one servicemaker reproduces"),
    ({}, "(none) is not one servicemaker reproduces"),
    ({"_target_": "nemo.collections.common.tokenizers.text_to_speech.tts_tokenizers.EnglishPhonemesTokenizer",
      "g2p": {}}, "needs a phone dictionary"),
    ({"_target_": "nemo.collections.common.tokenizers.text_to_speech.tts_tokenizers.IPATokenizer", "locale": "de-DE",
      "g2p": {"phoneme_dict": "phones.ipa"}}, "en-US only"),
])
def test_unsupported_tokenizers_are_named(config, message):
    g2p = config.get("g2p") or {}
    with pytest.raises(tts_text.TokenizerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tts_text.from_config(config, str(FIXTURES / g2p["phoneme_dict"]) if g2p.get("phoneme_dict") else None)


def test_a_bad_dictionary_line_is_named(tmp_path):
    bad = tmp_path / "bad.dict"
    bad.write_text("HELLO HH AH0 L OW1\n", encoding="latin-1")
    with pytest.raises(tts_text.TokenizerError, match="line 1: expected 'WORD  PHONES'"):
        tts_text.read_cmudict(str(bad))


@pytest.mark.parametrize("text,sentences", [
    ("Hello world. How are you? Fine!", ["Hello world.", "How are you?", "Fine!"]),
    ("Dr. Smith met Mr. Jones at 5 p.m. today.", ["Dr. Smith met Mr. Jones at 5 p.m. today."]),
    ('He said "stop." Then he left.', ['He said "stop."', "Then he left."]),
    ("U.S.A. is big. Yes.", ["U.S.A. is big.", "Yes."]),
    ("Wait... what?", ["Wait...", "what?"]),
    ("   ", []),
    ("", []),
    ("no end", ["no end"]),
    ("3.5 kg. next", ["3.5 kg.", "next"]),
])
def test_sentences(text, sentences):
    assert tts_text.split_sentences(text, 400) == sentences


def test_long_sentences_split_at_punctuation_then_spaces():
    text = ", ".join(["one two three"] * 10)  # 149 characters, commas every 15
    parts = tts_text.split_sentences(text, 40)
    assert all(len(p) <= 40 for p in parts) and all(p.endswith(",") for p in parts[:-1])
    assert " ".join(parts) == text
    word = "x" * 100
    assert [len(p) for p in tts_text.split_sentences(word, 40)] == [40, 40, 20]
    spaced = " ".join(["word"] * 30)
    parts = tts_text.split_sentences(spaced, 30)
    assert all(len(p) <= 30 for p in parts) and " ".join(parts) == spaced
