"""End to end in a real Triton server (nvidia-pytriton's CPU build, loopback, free ports): the five NLP pipelines
deployed with --target onnxruntime-python, queried over HTTP and gRPC in batches, every output compared with a
reference computed outside Triton (ONNX Runtime on the graph as exported + the same WordPiece tokenization)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import BertWordPieceTokenizer

from servicemaker import yamlio
from servicemaker.client import connect, infer
from servicemaker.deploy import DeployOptions, deploy
from servicemaker.eff import EffReader
from servicemaker.keys import ArchiveArg
from servicemaker.serve import TritonServer

from conftest import NLP

TEXTS = ["John lives in London", "will it rain tomorrow in paris", "hello"]
QUESTIONS = ["who lives in london", "what will rain", "who won the game"]
CONTEXTS = ["john lives in london and works at acme", "it will rain tomorrow in paris", "hello world"]
MAX_SEQ = 64


class Reference:
    """The original exported graph and its files, run row by row with no batching or padding."""

    def __init__(self, export: Path, folder: Path) -> None:
        with EffReader(export) as r:
            config = yamlio.load(r.read_text("model_config.yaml"))
            vocab = folder / "vocab.txt"
            vocab.write_bytes(r.read_bytes(config["tokenizer"]["vocab_file"][5:]))
            self.labels = {k.replace("_file", ""): r.read_text(v[5:]).split()
                           for k, v in config["class_labels"].items()}
            self.session = ort.InferenceSession(r.read_bytes("model_graph.onnx"), providers=["CPUExecutionProvider"])
        self.tok = BertWordPieceTokenizer(str(vocab), lowercase=True)
        self.tok.enable_truncation(MAX_SEQ)

    def run(self, enc) -> dict[str, np.ndarray]:
        feed = {"input_ids": np.array([enc.ids], np.int64), "token_type_ids": np.array([enc.type_ids], np.int64),
                "attention_mask": np.array([enc.attention_mask], np.int64)}
        names = [o.name for o in self.session.get_outputs()]
        return {n: v[0] for n, v in zip(names, self.session.run(names, feed))}

    def words(self, text: str):
        words = text.split()
        enc = self.tok.encode(words, is_pretokenized=True)
        first = {}
        for j, w in enumerate(enc.word_ids):
            if w is not None and w not in first:
                first[w] = j
        return words, enc, [first[i] for i in range(len(words))]


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def rows(array) -> list[list[str]]:
    return [[v.decode() for v in row if v != b""] for row in array]


@pytest.fixture(scope="module")
def server(tiny_rmirs, tmp_path_factory):
    first = tmp_path_factory.mktemp("first") / "repo"
    deploy(DeployOptions(rmirs=[ArchiveArg(p, None) for p in tiny_rmirs.values()], repo=first,
                         target="onnxruntime-python"))
    moved = tmp_path_factory.mktemp("moved") / "models"
    shutil.move(str(first), str(moved))  # relative paths only: a moved repository still loads
    with TritonServer(moved) as srv:
        yield srv


@pytest.fixture(scope="module")
def refs(tiny_dir, tmp_path_factory) -> dict[str, Reference]:
    out = {}
    for name in NLP:
        folder = tmp_path_factory.mktemp(f"ref-{name}")
        out[name] = Reference(tiny_dir / f"{name}.riva", folder)
    return out


@pytest.fixture(params=["http", "grpc"])
def client(request, server):
    url = server.http_url if request.param == "http" else server.grpc_url
    return request.param, connect(url, request.param)


def test_text_classification(client, refs):
    protocol, c = client
    out = infer(c, "riva_text_classification_misc", {"TEXT": TEXTS}, protocol)
    ref = refs["text_classification"]
    for b, text in enumerate(TEXTS):
        logits = ref.run(ref.words(text)[1])["logits"]
        np.testing.assert_allclose(out["LOGITS"][b], logits, atol=1e-4)
        assert out["LABEL"][b, 0].decode() == ref.labels["class_labels"][int(np.argmax(logits))]
        np.testing.assert_allclose(out["SCORE"][b, 0], softmax(logits).max(), atol=1e-4)


def test_token_classification(client, refs):
    protocol, c = client
    out = infer(c, "riva_ner", {"TEXT": TEXTS}, protocol)
    ref = refs["token_classification"]
    tokens, labels = rows(out["TOKENS"]), rows(out["LABELS"])
    for b, text in enumerate(TEXTS):
        words, enc, first = ref.words(text)
        logits = ref.run(enc)["logits"][first]
        assert tokens[b] == words
        assert labels[b] == [ref.labels["class_labels"][i] for i in logits.argmax(-1)]
        np.testing.assert_allclose(out["SCORES"][b, : len(words)], softmax(logits).max(-1), atol=1e-4)


def test_intent_slot(client, refs):
    protocol, c = client
    out = infer(c, "riva_intent_misc", {"TEXT": TEXTS}, protocol)
    ref = refs["intent_slot"]
    tokens, slots = rows(out["TOKENS"]), rows(out["SLOTS"])
    for b, text in enumerate(TEXTS):
        words, enc, first = ref.words(text)
        res = ref.run(enc)
        assert out["INTENT"][b, 0].decode() == ref.labels["intent_labels"][int(res["intent_logits"].argmax())]
        np.testing.assert_allclose(out["INTENT_SCORE"][b, 0], softmax(res["intent_logits"]).max(), atol=1e-4)
        assert tokens[b] == words
        assert slots[b] == [ref.labels["slot_labels"][i] for i in res["slot_logits"][first].argmax(-1)]


def test_punctuation(client, refs):
    protocol, c = client
    out = infer(c, "riva_punctuation", {"TEXT": TEXTS}, protocol)
    ref = refs["punctuation"]
    for b, text in enumerate(TEXTS):
        words, enc, first = ref.words(text)
        res = ref.run(enc)
        expected = []
        for w, p, k in zip(words, res["punct_logits"][first].argmax(-1), res["capit_logits"][first].argmax(-1)):
            w = w[0].upper() + w[1:] if ref.labels["capit_labels"][k] == "U" else w
            punct = ref.labels["punct_labels"][p]
            expected.append(w + ("" if punct == "O" else punct))
        assert out["PUNCTUATED_TEXT"][b, 0].decode() == " ".join(expected)


def test_qa(client, refs):
    protocol, c = client
    out = infer(c, "riva_qa", {"QUESTION": QUESTIONS, "CONTEXT": CONTEXTS}, protocol)
    ref = refs["qa"]
    for b, (question, context) in enumerate(zip(QUESTIONS, CONTEXTS)):
        enc = ref.tok.encode(question, context)
        logits = ref.run(enc)["logits"]
        ctx = [j for j, s in enumerate(enc.sequence_ids) if s == 1 and enc.tokens[j] != "[SEP]"]
        best = max(((i, j) for i in ctx for j in ctx if 0 <= j - i < 30),
                   key=lambda ij: logits[ij[0], 0] + logits[ij[1], 1])
        start, end = enc.offsets[best[0]][0], enc.offsets[best[1]][1]
        assert (int(out["ANSWER_START"][b, 0]), int(out["ANSWER_END"][b, 0])) == (start, end)
        assert out["ANSWER"][b, 0].decode() == context[start:end]
        assert 0 < out["SCORE"][b, 0] <= 1  # its n-best probability (tests/test_qa_reference.py checks the value)


def test_bad_request_gets_an_error_not_a_crash(server):
    c = connect(server.http_url)
    with pytest.raises(Exception, match="unexpected inference input|TEXT"):
        infer(c, "riva_text_classification_misc", {"QUESTION": ["x"]})
    assert server.ready()


def test_svc_serve_query_command(tiny_rmirs, tmp_path):
    """The CLI the README's demo uses: start, answer one query as JSON, stop."""
    import json
    import subprocess
    import sys

    repo = tmp_path / "repo"
    deploy(DeployOptions(rmirs=[ArchiveArg(tiny_rmirs["text_classification"], None)], repo=repo,
                         target="onnxruntime-python"))
    exe = Path(sys.executable).parent / "svc-serve"
    run = subprocess.run([str(exe), str(repo), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
                          "--query", "will it rain tomorrow"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)["riva_text_classification_misc"]
    assert answer["LABEL"] in {"weather", "music", "sports"} and len(answer["LOGITS"]) == 3
    assert "Triton stopped." in run.stderr


def test_empty_text_gets_empty_words(server):
    c = connect(server.http_url)
    out = infer(c, "riva_ner", {"TEXT": ["", "hello"]})
    assert rows(out["TOKENS"]) == [[], ["hello"]]
    qa = infer(c, "riva_qa", {"QUESTION": ["who"], "CONTEXT": [""]})
    assert qa["ANSWER"][0, 0] == b"" and qa["SCORE"][0, 0] == 0.0
