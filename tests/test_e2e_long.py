"""Long inputs end to end in a real Triton server: sliding windows for token-level pipelines, window means for
text classification, QA over a 1,000-word context with doc_stride windows and the no-answer rule, and the request
size limit. The tiny exports have max_seq_length 64, so a 400-word paragraph is a dozen windows."""

from __future__ import annotations

import json
import random
from typing import NamedTuple

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from servicemaker.build import BuildOptions, build
from servicemaker.client import connect, infer
from servicemaker.deploy import DeployOptions, deploy
from servicemaker.keys import ArchiveArg
from servicemaker.samples.export import nlp_export
from servicemaker.samples.models import TINY_WORDS, tiny_vocab
from servicemaker.serve import TritonServer

from test_e2e_triton import Reference, rows, softmax

MAX_SEQ = 64
WIDTH = MAX_SEQ - 2
SINGLE = [w for w in TINY_WORDS if w != "acme"]          # one WordPiece token each
SPLIT = ["xylo", "paris,", "Quiz", "b-52", "hello."]     # several tokens each
ANSWER = "acme"


def paragraph(words: int, seed: int = 7) -> list[str]:
    """``words`` words: the first window's worth are one token each (so the first window can be sent alone as
    exactly the same row), then a mix with multi-token words."""
    rng = random.Random(seed)
    out = [rng.choice(SINGLE) for _ in range(WIDTH)]
    out += [rng.choice(SINGLE + SPLIT) for _ in range(words - WIDTH)]
    return out


def qa_graph() -> bytes:
    """A QA 'network' built in code: start and end logits are 10 on the token ANSWER and 1 on [CLS], else 0, so the
    span is known and the null score (2) beats every span unless ANSWER is in the context."""
    vocab = tiny_vocab()
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    types = helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["batch", "seq"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", 2])
    const = lambda name, value, dtype=TensorProto.INT64: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=helper.make_tensor(name, dtype, [], [value]))
    nodes = [
        const("answer_id", vocab.index(ANSWER)), const("cls_id", vocab.index("[CLS]")),
        const("ten", 10.0, TensorProto.FLOAT), const("axis", -1),
        helper.make_node("Equal", ["input_ids", "answer_id"], ["is_answer"]),
        helper.make_node("Equal", ["input_ids", "cls_id"], ["is_cls"]),
        helper.make_node("Cast", ["is_answer"], ["answer_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["is_cls"], ["cls_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["token_type_ids"], ["types_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["answer_f", "ten"], ["answer10"]),
        helper.make_node("Add", ["answer10", "cls_f"], ["score"]),
        helper.make_node("Mul", ["types_f", "mask_f"], ["unused"]),  # the graph reads every input
        helper.make_node("Mul", ["unused", "answer_f"], ["zero"]),
        helper.make_node("Sub", ["score", "zero"], ["score2"]),
        helper.make_node("Add", ["score2", "zero"], ["score3"]),
        helper.make_node("Unsqueeze", ["score3", "axis"], ["column"]),
        helper.make_node("Concat", ["column", "column"], ["logits"], axis=-1),
    ]
    graph = helper.make_graph(nodes, "marker_qa", [ids, types, mask], [logits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def long_server(tiny_dir, tiny_rmirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("long")
    export = nlp_export(out / "marker_qa.riva", "QAModel", qa_graph(), vocab="\n".join(tiny_vocab()) + "\n",
                        lm_config=json.dumps({"model_type": "marker"}), labels={}, pretrained_model_name="marker",
                        max_seq_length=128, extra_config={"dataset": {
                            "doc_stride": 64, "max_query_length": 16, "version_2_with_negative": True,
                            "null_score_diff_threshold": 0.0}})
    qa = out / "marker_qa.rmir"
    build(BuildOptions(pipeline="qa", output=ArchiveArg(qa, None), inputs=[ArchiveArg(export, None)],
                       overrides={"nn.max_batch_size": "32", "tokenizer.max_request_chars": "20000"}))
    mean = out / "mean.rmir"
    build(BuildOptions(pipeline="text_classification", output=ArchiveArg(mean, None), domain_name="long",
                       inputs=[ArchiveArg(tiny_dir / "text_classification.riva", None)],
                       overrides={"tokenizer.long_input": "mean"}))
    rmirs = [tiny_rmirs["token_classification"], tiny_rmirs["punctuation"], tiny_rmirs["intent_slot"], qa, mean]
    repo = out / "repo"
    deploy(DeployOptions(rmirs=[ArchiveArg(p, None) for p in rmirs], repo=repo, target="onnxruntime-python"))
    with TritonServer(repo) as srv:
        yield srv


@pytest.fixture(scope="module")
def refs(tiny_dir, tmp_path_factory) -> dict[str, Reference]:
    return {name: Reference(tiny_dir / f"{name}.riva", tmp_path_factory.mktemp(f"long-ref-{name}"))
            for name in ("token_classification", "punctuation", "text_classification", "intent_slot")}


class Row(NamedTuple):
    ids: list[int]
    type_ids: list[int]
    attention_mask: list[int]


def reference_windows(ref: Reference, words: list[str]) -> tuple[list[int], list[int], list[int], list[dict]]:
    """Outside Triton: the words' token ids, each word's first token, the window starts (WIDTH tokens, WIDTH // 2
    apart, the last one reaching the end), and each window run alone through the exported graph."""
    per_word = [ref.tok.encode([w], is_pretokenized=True, add_special_tokens=False).ids or [1] for w in words]
    ids = [t for toks in per_word for t in toks]
    first = list(np.cumsum([0] + [len(t) for t in per_word])[:-1])
    starts = [0]
    while starts[-1] + WIDTH < len(ids):
        starts.append(starts[-1] + WIDTH // 2)
    cls, sep = ref.tok.token_to_id("[CLS]"), ref.tok.token_to_id("[SEP]")
    runs = [ref.run(Row([cls] + ids[s:s + WIDTH] + [sep], [0] * (len(ids[s:s + WIDTH]) + 2),
                        [1] * (len(ids[s:s + WIDTH]) + 2))) for s in starts]
    return ids, first, starts, runs


def reference_window_labels(ref: Reference, words: list[str], output: str, labels: list[str]) -> list[str]:
    """Each word's label computed outside Triton: a word reads its first token in the window where that token has
    the most context (min of the tokens left and right + 0.01 × window length, the earlier window on a tie)."""
    ids, first, starts, runs = reference_windows(ref, words)
    out = []
    for g in first:
        scores = [(min(g - s, min(s + WIDTH, len(ids)) - 1 - g) + 0.01 * (min(s + WIDTH, len(ids)) - s), -k)
                  for k, s in enumerate(starts) if s <= g < s + WIDTH]
        k = -max(scores)[1]
        out.append(labels[int(runs[k][output][1 + g - starts[k]].argmax())])
    return out


def test_token_classification_labels_every_word_of_a_long_paragraph(long_server, refs):
    c = connect(long_server.http_url)
    words = paragraph(400)
    ref = refs["token_classification"]
    out = infer(c, "riva_ner", {"TEXT": [" ".join(words), "hello world"]})
    tokens, labels = rows(out["TOKENS"]), rows(out["LABELS"])
    assert tokens[0] == words and len(labels[0]) == 400 and tokens[1] == ["hello", "world"]
    assert labels[0] == reference_window_labels(ref, words, "logits", ref.labels["class_labels"])
    alone = infer(c, "riva_ner", {"TEXT": [" ".join(words[:WIDTH])]})
    # the words whose labels the first window decides: up to the middle of the overlap with the second window
    decided = WIDTH // 2 + (WIDTH - WIDTH // 2) // 2
    assert rows(alone["LABELS"])[0][:decided] == labels[0][:decided]
    np.testing.assert_allclose(alone["SCORES"][0, :decided], out["SCORES"][0, :decided], atol=1e-5)


def test_punctuation_punctuates_every_word_of_a_long_paragraph(long_server, refs):
    c = connect(long_server.grpc_url, "grpc")
    words = paragraph(400, seed=11)
    ref = refs["punctuation"]
    text = infer(c, "riva_punctuation", {"TEXT": [" ".join(words)]}, "grpc")["PUNCTUATED_TEXT"][0, 0].decode()
    punct = reference_window_labels(ref, words, "punct_logits", ref.labels["punct_labels"])
    capit = reference_window_labels(ref, words, "capit_logits", ref.labels["capit_labels"])
    expected = [(w[0].upper() + w[1:] if k == "U" else w) + ("" if p == "O" else p)
                for w, p, k in zip(words, punct, capit)]
    assert text.split(" ") == expected
    alone = infer(c, "riva_punctuation", {"TEXT": [" ".join(words[:WIDTH])]}, "grpc")["PUNCTUATED_TEXT"][0, 0]
    decided = WIDTH // 2 + (WIDTH - WIDTH // 2) // 2
    assert alone.decode().split(" ")[:decided] == expected[:decided]


def test_intent_slot_slots_every_word_and_reads_the_intent_from_the_first_window(long_server, refs):
    c = connect(long_server.http_url)
    words = paragraph(400, seed=13)
    ref = refs["intent_slot"]
    out = infer(c, "riva_intent_misc", {"TEXT": [" ".join(words)]})
    assert rows(out["TOKENS"])[0] == words
    assert rows(out["SLOTS"])[0] == reference_window_labels(ref, words, "slot_logits", ref.labels["slot_labels"])
    first = reference_windows(ref, words)[3][0]["intent_logits"]   # long_input=truncate: the first window
    assert out["INTENT"][0, 0].decode() == ref.labels["intent_labels"][int(first.argmax())]
    np.testing.assert_allclose(out["INTENT_SCORE"][0, 0], softmax(first).max(), atol=1e-4)


def test_text_classification_mean_of_windows(long_server, refs):
    c = connect(long_server.http_url)
    words = paragraph(150, seed=3)
    ref = refs["text_classification"]
    out = infer(c, "riva_text_classification_long", {"TEXT": [" ".join(words), "will it rain"]})
    _, _, starts, runs = reference_windows(ref, words)
    assert len(starts) > 2
    logits = [run["logits"] for run in runs]
    np.testing.assert_allclose(out["LOGITS"][0], np.mean(logits, axis=0), atol=1e-4)
    np.testing.assert_allclose(out["SCORE"][0, 0], softmax(np.mean(logits, axis=0)).max(), atol=1e-4)
    short = ref.run(ref.words("will it rain")[1])["logits"]
    np.testing.assert_allclose(out["LOGITS"][1], short, atol=1e-4)


def context_with_answer(words: int, at: int | None, seed: int = 5) -> tuple[str, int]:
    rng = random.Random(seed)
    ws = [rng.choice(SINGLE) for _ in range(words)]
    if at is not None:
        ws[at] = "Acme."
    context = "  ".join(ws[:10]) + " " + " ".join(ws[10:])  # some double spaces: offsets must stay exact
    return context, (context.index("Acme.") if at is not None else -1)


def test_qa_finds_an_answer_in_the_last_quarter_of_a_long_context(long_server):
    c = connect(long_server.http_url)
    context, where = context_with_answer(1000, at=870)
    out = infer(c, "riva_qa", {"QUESTION": ["who makes it"], "CONTEXT": [context]})
    start, end = int(out["ANSWER_START"][0, 0]), int(out["ANSWER_END"][0, 0])
    assert (start, end) == (where, where + 4) and context[start:end] == "Acme"
    assert out["ANSWER"][0, 0].decode() == "Acme" and out["SCORE"][0, 0] > 0.99


def test_qa_answers_nothing_when_the_null_score_wins(long_server):
    c = connect(long_server.http_url)
    context, _ = context_with_answer(1000, at=None)
    out = infer(c, "riva_qa", {"QUESTION": ["who makes it", "who makes it"],
                               "CONTEXT": [context, "it is made by acme"]})
    assert out["ANSWER"][0, 0] == b"" and 0 < out["SCORE"][0, 0] <= 1
    assert (int(out["ANSWER_START"][0, 0]), int(out["ANSWER_END"][0, 0])) == (0, 0)
    assert out["ANSWER"][1, 0] == b"acme"   # the other request of the batch still answers


def test_a_request_over_the_size_limit_gets_a_clear_error(long_server):
    c = connect(long_server.http_url)
    with pytest.raises(Exception, match=r"10001 characters, more than the 10000.*max_request_chars"):
        infer(c, "riva_ner", {"TEXT": ["a" * 10_001]})
    with pytest.raises(Exception, match=r"windows of 64 tokens but the network takes at most 64.*max_batch_size"):
        infer(c, "riva_ner", {"TEXT": [" ".join(["the"] * 2500)]})
    assert rows(infer(c, "riva_ner", {"TEXT": ["hello world"]})["TOKENS"]) == [["hello", "world"]]
    assert long_server.ready()
