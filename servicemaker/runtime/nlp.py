"""The NLP family's pre/post-processing handlers (Triton Python backend): WordPiece tokenization, label decoding,
word merging, punctuation, QA spans.

svc-deploy copies this file into the version folder of every NLP Python-backend model as ``svc_handlers.py``,
beside ``svc_common.py`` (:mod:`.common`: the handler protocol); it imports only numpy and tokenizers, never
servicemaker.

Word-level outputs of a batch are padded to the longest row with empty strings (and zero scores); clients drop trailing empty strings.

Conventions (documented in docs/deploy.md):
- Words are the whitespace-separated words of the input text; each word takes the label of its first subword.
- Inputs longer than ``max_seq_length`` tokens are truncated; words cut off by truncation get the first label
  (``O``, no punctuation, no capitalization) with score 0.
- QA truncates the question to ``max_query_length`` tokens and the context to what is left of ``max_seq_length``.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

if __package__:  # inside servicemaker
    from . import common
else:  # in a deployed model folder, beside svc_common.py
    import svc_common as common  # type: ignore[no-redef]

Arrays, TensorDecl, Handler = common.Arrays, common.TensorDecl, common.Handler
texts, strings, softmax, flag = common.texts, common.strings, common.softmax, common.flag

ENCODED = (("input_ids", "TYPE_INT64", (-1,)), ("token_type_ids", "TYPE_INT64", (-1,)),
           ("attention_mask", "TYPE_INT64", (-1,)))
WORDS = (("word_ids", "TYPE_INT32", (-1,)), ("words", "TYPE_STRING", (-1,)))


def read_labels(path: str) -> List[str]:
    """One label per line; the line index is the class id. A NeMo label file may hold 'label<TAB>id'."""
    labels = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if line.strip():
                labels.append(line.split("\t")[0].strip())
    if not labels:
        raise ValueError(f"label file {os.path.basename(path)} is empty")
    return labels


def decode(logits: np.ndarray, labels: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """Argmax class ids and their softmax probabilities along the last axis."""
    if logits.shape[-1] != len(labels):
        raise ValueError(f"the network gives {logits.shape[-1]} classes but there are {len(labels)} labels")
    probs = softmax(logits)
    ids = probs.argmax(axis=-1)
    return ids, np.take_along_axis(probs, ids[..., None], axis=-1)[..., 0]


# --- tokenizers ----------------------------------------------------------------------------------------------------

def wordpiece(folder: str, params: Dict[str, str]):
    from tokenizers import BertWordPieceTokenizer

    path = os.path.join(folder, params["vocab"])
    with open(path, encoding="utf-8") as f:
        vocab = {line.rstrip("\r\n") for line in f}
    for special in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"):
        if special not in vocab:
            raise ValueError(f"vocabulary {params['vocab']} has no {special} token")
    return BertWordPieceTokenizer(path, lowercase=flag(params["lower_case"]))


class Tokenize(Handler):
    """TEXT → WordPiece ids over the whitespace-separated words, and each token's word index."""

    INPUTS = (("TEXT", "TYPE_STRING", (1,)),)
    OUTPUTS = ENCODED + WORDS

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        self.max_len = int(params["max_seq_length"])
        self.tok = wordpiece(folder, params)
        self.tok.enable_truncation(self.max_len)
        self.tok.enable_padding(pad_id=self.tok.token_to_id("[PAD]"), pad_token="[PAD]")

    def __call__(self, inputs: Arrays) -> Arrays:
        words = [t.split() for t in texts(inputs["TEXT"])]
        encs = self.tok.encode_batch(words, is_pretokenized=True)
        word_ids = np.array([[-1 if w is None else w for w in e.word_ids] for e in encs], dtype=np.int32)
        return {
            "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
            "word_ids": word_ids.reshape(len(encs), -1),
            "words": strings(words),
        }


class TokenizeQA(Handler):
    """QUESTION + CONTEXT → [CLS] question [SEP] context [SEP], and each context token's char span (else -1)."""

    INPUTS = (("QUESTION", "TYPE_STRING", (1,)), ("CONTEXT", "TYPE_STRING", (1,)))
    OUTPUTS = ENCODED + (("token_offsets", "TYPE_INT32", (-1, 2)),)

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        self.max_len = int(params["max_seq_length"])
        self.max_query = int(params["max_query_length"])
        self.tok = wordpiece(folder, params)
        self.pad = self.tok.token_to_id("[PAD]")

    def _question(self, question: str) -> str:
        enc = self.tok.encode(question, add_special_tokens=False)
        if len(enc.ids) <= self.max_query:
            return question
        return question[: enc.offsets[self.max_query][0]]

    def __call__(self, inputs: Arrays) -> Arrays:
        self.tok.enable_truncation(self.max_len, strategy="only_second")
        encs = [self.tok.encode(self._question(q), c)
                for q, c in zip(texts(inputs["QUESTION"]), texts(inputs["CONTEXT"]))]
        width = max(len(e.ids) for e in encs)
        b = len(encs)
        ids = np.full((b, width), self.pad, dtype=np.int64)
        types = np.zeros((b, width), dtype=np.int64)
        mask = np.zeros((b, width), dtype=np.int64)
        offsets = np.full((b, width, 2), -1, dtype=np.int32)
        for i, e in enumerate(encs):
            n = len(e.ids)
            ids[i, :n], types[i, :n], mask[i, :n] = e.ids, e.type_ids, e.attention_mask
            for j, (seq, span) in enumerate(zip(e.sequence_ids, e.offsets)):
                if seq == 1 and e.special_tokens_mask[j] == 0:
                    offsets[i, j] = span
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "token_offsets": offsets}


# --- label decoding ------------------------------------------------------------------------------------------------

class Classify(Handler):
    """Sequence logits → LABEL (from the labels file, else the class index), SCORE (softmax), LOGITS."""

    INPUTS = (("logits", "TYPE_FP32", (-1,)),)
    OUTPUTS = (("LABEL", "TYPE_STRING", (1,)), ("SCORE", "TYPE_FP32", (1,)), ("LOGITS", "TYPE_FP32", (-1,)))
    LABELS = {"logits": "labels"}

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        self.labels = read_labels(self.file("labels")) if params.get("labels") else None

    def __call__(self, inputs: Arrays) -> Arrays:
        logits = inputs["logits"].astype(np.float32)
        labels = self.labels or [str(i) for i in range(logits.shape[-1])]
        ids, scores = decode(logits, labels)
        return {"LABEL": strings([[labels[i]] for i in ids]), "SCORE": scores.reshape(-1, 1), "LOGITS": logits}


class LabelTokens(Handler):
    """Token logits → each token's label and softmax score."""

    INPUTS = (("logits", "TYPE_FP32", (-1, -1)),)
    OUTPUTS = (("token_labels", "TYPE_STRING", (-1,)), ("token_scores", "TYPE_FP32", (-1,)))
    LABELS = {"logits": "labels"}

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        self.labels = read_labels(self.file("labels"))

    def __call__(self, inputs: Arrays) -> Arrays:
        ids, scores = decode(inputs["logits"], self.labels)
        return {"token_labels": strings([[self.labels[i] for i in row] for row in ids]), "token_scores": scores}


class IntentSlots(Handler):
    """Intent logits → INTENT, INTENT_SCORE; slot logits → each token's slot label."""

    INPUTS = (("intent_logits", "TYPE_FP32", (-1,)), ("slot_logits", "TYPE_FP32", (-1, -1)))
    OUTPUTS = (("INTENT", "TYPE_STRING", (1,)), ("INTENT_SCORE", "TYPE_FP32", (1,)),
               ("slot_labels", "TYPE_STRING", (-1,)))
    LABELS = {"intent_logits": "intent_labels", "slot_logits": "slot_labels"}

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        self.intents = read_labels(self.file("intent_labels"))
        self.slots = read_labels(self.file("slot_labels"))

    def __call__(self, inputs: Arrays) -> Arrays:
        intent, score = decode(inputs["intent_logits"], self.intents)
        slots, _ = decode(inputs["slot_logits"], self.slots)
        return {"INTENT": strings([[self.intents[i]] for i in intent]), "INTENT_SCORE": score.reshape(-1, 1),
                "slot_labels": strings([[self.slots[i] for i in row] for row in slots])}


class PunctLabels(Handler):
    """Punctuation and capitalization logits → each token's two labels."""

    INPUTS = (("punct_logits", "TYPE_FP32", (-1, -1)), ("capit_logits", "TYPE_FP32", (-1, -1)))
    OUTPUTS = (("punct_labels", "TYPE_STRING", (-1,)), ("capit_labels", "TYPE_STRING", (-1,)))
    LABELS = {"punct_logits": "punct_labels", "capit_logits": "capit_labels"}

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        self.punct = read_labels(self.file("punct_labels"))
        self.capit = read_labels(self.file("capit_labels"))

    def __call__(self, inputs: Arrays) -> Arrays:
        punct, _ = decode(inputs["punct_logits"], self.punct)
        capit, _ = decode(inputs["capit_logits"], self.capit)
        return {"punct_labels": strings([[self.punct[i] for i in row] for row in punct]),
                "capit_labels": strings([[self.capit[i] for i in row] for row in capit])}


# --- word-level merging --------------------------------------------------------------------------------------------

def first_subwords(word_ids: np.ndarray, n_words: int) -> List[int]:
    """For each word, the index of its first token, or -1 when truncation dropped it."""
    first = [-1] * n_words
    for j, w in enumerate(word_ids):
        if 0 <= w < n_words and first[w] < 0:
            first[w] = j
    return first


def row_words(words: np.ndarray) -> List[str]:
    return [w.decode("utf-8") if isinstance(w, bytes) else str(w) for w in words if w not in (b"", "")]


def per_word(inputs: Arrays, tensor: str, default: str) -> List[List[Tuple[str, str, int]]]:
    """Rows of (word, label of its first subword, token index or -1)."""
    rows = []
    for b in range(len(inputs["words"])):
        words = row_words(inputs["words"][b])
        labels = inputs[tensor][b]
        rows.append([(w, (labels[j].decode("utf-8") if j >= 0 else default), j)
                     for w, j in zip(words, first_subwords(inputs["word_ids"][b], len(words)))])
    return rows


class NerWords(Handler):
    """Token labels → TOKENS (input words), LABELS, SCORES, the first subword deciding."""

    INPUTS = (("token_labels", "TYPE_STRING", (-1,)), ("token_scores", "TYPE_FP32", (-1,))) + WORDS
    OUTPUTS = (("TOKENS", "TYPE_STRING", (-1,)), ("LABELS", "TYPE_STRING", (-1,)), ("SCORES", "TYPE_FP32", (-1,)))

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        self.default = params.get("default_label", "O")

    def __call__(self, inputs: Arrays) -> Arrays:
        rows = per_word(inputs, "token_labels", self.default)
        width = max((len(r) for r in rows), default=0)
        scores = np.zeros((len(rows), width), dtype=np.float32)
        for b, row in enumerate(rows):
            for k, (_, _, j) in enumerate(row):
                scores[b, k] = inputs["token_scores"][b][j] if j >= 0 else 0.0
        return {"TOKENS": strings([[w for w, _, _ in r] for r in rows]),
                "LABELS": strings([[lab for _, lab, _ in r] for r in rows]), "SCORES": scores}


class SlotWords(Handler):
    """Token slot labels → TOKENS (input words) and SLOTS."""

    INPUTS = (("slot_labels", "TYPE_STRING", (-1,)),) + WORDS
    OUTPUTS = (("TOKENS", "TYPE_STRING", (-1,)), ("SLOTS", "TYPE_STRING", (-1,)))

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        self.default = params.get("default_label", "O")

    def __call__(self, inputs: Arrays) -> Arrays:
        rows = per_word(inputs, "slot_labels", self.default)
        return {"TOKENS": strings([[w for w, _, _ in r] for r in rows]),
                "SLOTS": strings([[lab for _, lab, _ in r] for r in rows])}


def punctuate(words: Sequence[str], punct: Sequence[str], capit: Sequence[str]) -> str:
    """Apply per-word labels: capitalization label 'U' upper-cases the first letter, a punctuation label other
    than 'O' is appended to the word."""
    out = []
    for word, p, c in zip(words, punct, capit):
        if c.upper() == "U" and word:
            word = word[0].upper() + word[1:]
        if p != "O":
            word += p
        out.append(word)
    return " ".join(out)


class PunctWords(Handler):
    """Token punctuation/capitalization labels → PUNCTUATED_TEXT."""

    INPUTS = (("punct_labels", "TYPE_STRING", (-1,)), ("capit_labels", "TYPE_STRING", (-1,))) + WORDS
    OUTPUTS = (("PUNCTUATED_TEXT", "TYPE_STRING", (1,)),)

    def __call__(self, inputs: Arrays) -> Arrays:
        punct = per_word(inputs, "punct_labels", "O")
        capit = per_word(inputs, "capit_labels", "O")
        return {"PUNCTUATED_TEXT": strings([[punctuate([w for w, _, _ in p], [lab for _, lab, _ in p],
                                                       [lab for _, lab, _ in c])] for p, c in zip(punct, capit)])}


# --- QA ------------------------------------------------------------------------------------------------------------

def best_span(start: np.ndarray, end: np.ndarray, in_context: np.ndarray, max_len: int) -> Tuple[int, int, float]:
    """The (start, end) token pair inside the context with the highest start+end logit, end - start < max_len.
    The score is the product of start and end softmax probabilities over the context tokens."""
    idx = np.flatnonzero(in_context)
    if idx.size == 0:
        return -1, -1, 0.0
    s, e = start[idx].astype(np.float64), end[idx].astype(np.float64)
    total = s[:, None] + e[None, :]
    pos = idx[None, :] - idx[:, None]
    total[(pos < 0) | (pos >= max_len)] = -np.inf
    i, j = np.unravel_index(int(np.argmax(total)), total.shape)
    ps, pe = softmax(s), softmax(e)
    return int(idx[i]), int(idx[j]), float(ps[i] * pe[j])


class QASpan(Handler):
    """Start/end logits → ANSWER text, SCORE, ANSWER_START/ANSWER_END character offsets in CONTEXT."""

    INPUTS = (("logits", "TYPE_FP32", (-1, 2)), ("token_offsets", "TYPE_INT32", (-1, 2)),
              ("CONTEXT", "TYPE_STRING", (1,)))
    OUTPUTS = (("ANSWER", "TYPE_STRING", (1,)), ("SCORE", "TYPE_FP32", (1,)), ("ANSWER_START", "TYPE_INT32", (1,)),
               ("ANSWER_END", "TYPE_INT32", (1,)))

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        self.max_answer = int(params["max_answer_length"])

    def __call__(self, inputs: Arrays) -> Arrays:
        contexts = texts(inputs["CONTEXT"])
        answers, scores, starts, ends = [], [], [], []
        for b, context in enumerate(contexts):
            logits, offsets = inputs["logits"][b], inputs["token_offsets"][b]
            n = min(len(logits), len(offsets))
            i, j, score = best_span(logits[:n, 0], logits[:n, 1], offsets[:n, 0] >= 0, self.max_answer)
            a, z = (int(offsets[i, 0]), int(offsets[j, 1])) if i >= 0 else (0, 0)
            answers.append([context[a:z]])
            scores.append(score)
            starts.append(a)
            ends.append(z)
        return {"ANSWER": strings(answers), "SCORE": np.array(scores, dtype=np.float32).reshape(-1, 1),
                "ANSWER_START": np.array(starts, dtype=np.int32).reshape(-1, 1),
                "ANSWER_END": np.array(ends, dtype=np.int32).reshape(-1, 1)}


HANDLERS: Dict[str, Callable[[str, Dict[str, str]], Handler]] = {
    "tokenize": Tokenize,
    "tokenize_qa": TokenizeQA,
    "classify": Classify,
    "label_tokens": LabelTokens,
    "intent_slots": IntentSlots,
    "punct_labels": PunctLabels,
    "ner_words": NerWords,
    "slot_words": SlotWords,
    "punct_words": PunctWords,
    "qa_span": QASpan,
    "onnx": common.OnnxNetwork,
}


def create(name: str, folder: str, params: Dict[str, str]) -> Handler:
    return common.create_from(HANDLERS, name, folder, params)
