"""The NLP family's pre/post-processing handlers (Triton Python backend): WordPiece tokenization over sliding
windows, label decoding, word merging, punctuation, QA spans.

svc-deploy copies this file into the version folder of every NLP Python-backend model as ``svc_handlers.py``,
beside ``svc_common.py`` (:mod:`.common`: the handler protocol); it imports only numpy and tokenizers, never
servicemaker.

Long inputs (documented in docs/deploy.md, "Long inputs"):
- A text longer than one window (``max_seq_length`` tokens, special tokens included) is split into overlapping
  windows whose starts are ``doc_stride`` tokens apart (default: half a window). The windows of all texts of a
  request are the rows of one network batch; ``row_text`` tells each row's text.
- Words are the whitespace-separated words of the input text; each takes the label of its first subword, read in
  the window where that subword has the most context on both sides (BERT's and NeMo's "max context" rule). A word
  the vocabulary has no token for is fed as ``[UNK]``, so every word gets a label.
- Sequence-level outputs (text_classification, intent): ``long_input=truncate`` reads the first window only,
  ``mean`` averages the logits of all windows.
- QA runs NeMo's QA inference: the (truncated) question in every window, the context in ``doc_stride`` windows,
  the best span over all windows among the ``n_best_size`` start/end candidates, and SQuAD 2.0's no-answer rule.
- ``max_request_chars`` bounds each text of a request; the network's ``max_batch_size`` bounds the windows of a
  request (``network_rows``). Beyond either the request fails with an error saying which limit and how to raise it.

Word-level outputs of a batch are padded to the longest row with empty strings (and zero scores); clients drop
trailing empty strings.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

if __package__:  # inside servicemaker
    from . import common
else:  # in a deployed model folder, beside svc_common.py
    import svc_common as common  # type: ignore[no-redef]

Arrays, TensorDecl, Handler, Merged = common.Arrays, common.TensorDecl, common.Handler, common.Merged
texts, strings, softmax, flag = common.texts, common.strings, common.softmax, common.flag

ENCODED = (("input_ids", "TYPE_INT64", (-1,)), ("token_type_ids", "TYPE_INT64", (-1,)),
           ("attention_mask", "TYPE_INT64", (-1,)))
WORDS = (("word_ids", "TYPE_INT32", (-1,)), ("words", "TYPE_STRING", (-1,)))
ROWS = (("row_text", "TYPE_INT32", (1,)),)
#: the default of ``max_request_chars`` (characters per text of a request)
MAX_REQUEST_CHARS = 10_000


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


# --- windows -------------------------------------------------------------------------------------------------------

def windows(n: int, width: int, stride: int) -> List[Tuple[int, int]]:
    """(start, length) windows of at most ``width`` of ``n`` tokens, starts ``stride`` apart, the last one ending at
    the last token (NeMo's and BERT's document spans). An empty sequence has one empty window."""
    out, start = [], 0
    while True:
        length = min(n - start, width)
        out.append((start, length))
        if start + length >= n:
            return out
        start += min(length, stride)


def owners(spans: Sequence[Tuple[int, int]], n: int) -> np.ndarray:
    """For each of ``n`` token positions, the window where it has the most context: the largest
    min(tokens left, tokens right) + 0.01 × window length, the earlier window on a tie."""
    best = np.full(n, -1, dtype=np.int64)
    score = np.full(n, -np.inf)
    pos = np.arange(n)
    for k, (start, length) in enumerate(spans):
        inside = (pos >= start) & (pos < start + length)
        s = np.minimum(pos - start, start + length - 1 - pos) + 0.01 * length
        take = inside & (s > score)
        best[take], score[take] = k, s[take]
    return best


def row_groups(row_text: np.ndarray) -> List[np.ndarray]:
    """The row indices of each text, in text order (rows of one text are consecutive)."""
    rt = np.asarray(row_text).reshape(-1)
    count = int(rt.max()) + 1 if rt.size else 0
    return [np.flatnonzero(rt == t) for t in range(count)]


def check_sizes(items: Sequence[str], limit: int) -> None:
    for i, text in enumerate(items):
        if len(text) > limit:
            raise ValueError(f"text {i} of the request has {len(text)} characters, more than the {limit} this model "
                             "accepts: split it, or rebuild with a larger --tokenizer.max_request_chars")


class Row(NamedTuple):
    ids: List[int]
    types: List[int]
    extra: List[int]        # per token: word index (tokenize) or context position (QA), -1 elsewhere
    text: int               # the index of the row's text in the request
    words: Sequence[str] = ()


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


class _Windowed(Merged):
    """What both tokenizers share: the vocabulary, the window geometry, the request limits, padding of rows, and
    batching: the texts of every request Triton hands the model go through one ``encode_batch`` call, and the rows
    of all of them are padded to the longest row of the batch (never to ``max_seq_length``), then split back per
    request, so the requests of a batch share their width and the network runs them as one batch.

    Subclasses implement ``items`` (one request's validated texts), ``spans`` (the encodings and windows of a flat
    list of texts) and ``build`` (the padded rows of all texts, ``row_text`` indexing the flat list)."""

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        self.max_len = int(params["max_seq_length"])
        self.tok = wordpiece(folder, params)
        self.cls, self.sep, self.pad, self.unk = (self.tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"))
        self.max_chars = int(params.get("max_request_chars") or MAX_REQUEST_CHARS)
        self.rows_cap = int(params.get("network_rows") or 0)

    def stride(self, width: int) -> int:
        return int(self.params.get("doc_stride") or max(1, width // 2))

    def check_rows(self, spans: Sequence[Sequence[Tuple[int, int]]]) -> None:
        """Refuse a request whose texts' windows (``spans`` per text) are more rows than the network takes, before
        any row is built."""
        count = sum(len(s) for s in spans)
        if self.rows_cap and count > self.rows_cap:
            raise ValueError(f"the request needs {count} windows of {self.max_len} tokens but the network takes "
                             f"at most {self.rows_cap} at once: send fewer or shorter texts per request, or rebuild "
                             "with larger --nn.max_batch_size and decoder --<component>.max_batch_size values")

    def __call__(self, inputs: Arrays) -> Arrays:
        return self.merged([inputs])[0]

    def merged(self, requests: List[Arrays]) -> List[Arrays]:
        per_request = [self.items(r) for r in requests]
        flat = [item for items in per_request for item in items]
        encoded, spans_of = self.spans(flat)
        counts = [len(items) for items in per_request]
        starts = np.cumsum([0] + counts)
        for k in range(len(requests)):  # each request's windows are bounded on their own
            self.check_rows(spans_of[starts[k]:starts[k + 1]])
        out = self.build(flat, encoded, spans_of)
        row_text = out["row_text"][:, 0]
        bounds = np.searchsorted(row_text, starts)  # rows are in text order
        return [{name: ((value[bounds[k]:bounds[k + 1]] - starts[k]).astype(value.dtype) if name == "row_text"
                        else value[bounds[k]:bounds[k + 1]]) for name, value in out.items()}
                for k in range(len(requests))]

    def pack(self, rows: List[Row]) -> Arrays:
        """Rows padded to the longest one: ids, types, mask, the per-token ``extra`` (-1 on padding), row_text."""
        width = max(len(r.ids) for r in rows)
        b = len(rows)
        ids = np.full((b, width), self.pad, dtype=np.int64)
        types = np.zeros((b, width), dtype=np.int64)
        mask = np.zeros((b, width), dtype=np.int64)
        extra = np.full((b, width), -1, dtype=np.int64)
        for i, r in enumerate(rows):
            n = len(r.ids)
            ids[i, :n], types[i, :n], mask[i, :n], extra[i, :n] = r.ids, r.types, 1, r.extra
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "extra": extra,
                "row_text": np.array([[r.text] for r in rows], dtype=np.int32)}


def word_tokens(enc, n_words: int, unk: int) -> Tuple[List[int], List[int]]:
    """The token ids of a pre-tokenized encoding and each word's first token index; a word without tokens (the
    normalizer removed all its characters) becomes one [UNK]."""
    per_word: List[List[int]] = [[] for _ in range(n_words)]
    for token, word in zip(enc.ids, enc.word_ids):
        if word is not None and 0 <= word < n_words:
            per_word[word].append(token)
    ids: List[int] = []
    first: List[int] = []
    for tokens in per_word:
        first.append(len(ids))
        ids.extend(tokens or [unk])
    return ids, first


class Tokenize(_Windowed):
    """TEXT → WordPiece ids over the whitespace-separated words in windows; ``word_ids`` marks, for each word, its
    first token in the window where it has the most context; ``words`` holds a text's words in its first row."""

    INPUTS = (("TEXT", "TYPE_STRING", (1,)),)
    OUTPUTS = ENCODED + WORDS + ROWS

    def windowed(self) -> bool:
        """Whether texts longer than one window are split into windows (else cut after the first one)."""
        return True

    def items(self, inputs: Arrays) -> List[str]:
        items = texts(inputs["TEXT"])
        check_sizes(items, self.max_chars)
        return items

    def spans(self, items: List[str]):
        words = [t.split() for t in items]
        encs = self.tok.encode_batch(words, is_pretokenized=True, add_special_tokens=False)
        width = self.max_len - 2
        tokens = [word_tokens(enc, len(ws), self.unk) for ws, enc in zip(words, encs)]
        spans_of = [windows(len(ids), width, self.stride(width)) if self.windowed() else [(0, min(len(ids), width))]
                    for ids, _ in tokens]
        return (words, tokens), spans_of

    def build(self, items: List[str], encoded, spans_of) -> Arrays:
        words, tokens = encoded
        rows: List[Row] = []
        for b, (ws, (ids, first), spans) in enumerate(zip(words, tokens, spans_of)):
            owner = owners(spans, len(ids))
            marks = [[-1] * (length + 2) for _, length in spans]
            for w, g in enumerate(first):
                if owner[g] >= 0:
                    marks[owner[g]][1 + g - spans[owner[g]][0]] = w
            for k, (start, length) in enumerate(spans):
                rows.append(Row([self.cls] + ids[start:start + length] + [self.sep], [0] * (length + 2), marks[k], b,
                                ws if k == 0 else ()))
        out = self.pack(rows)
        out["word_ids"] = out.pop("extra").astype(np.int32)
        out["words"] = strings([r.words for r in rows])
        return out


class TokenizeText(Tokenize):
    """Tokenize for sequence-level pipelines: windows only with ``long_input=mean``; with ``truncate`` a text is cut
    after its first window."""

    def windowed(self) -> bool:
        return self.params.get("long_input", "truncate") == "mean"


class TokenizeQA(_Windowed):
    """QUESTION + CONTEXT → [CLS] question [SEP] context window [SEP] rows (NeMo's QA features); each context token's
    character span (else -1) and whether this window is its max-context window; ``context`` carries each text's
    CONTEXT in its first row (every tensor after the tokenizer has one row per window)."""

    INPUTS = (("QUESTION", "TYPE_STRING", (1,)), ("CONTEXT", "TYPE_STRING", (1,)))
    OUTPUTS = ENCODED + (("token_offsets", "TYPE_INT32", (-1, 2)), ("max_context", "TYPE_BOOL", (-1,)),
                         ("context", "TYPE_STRING", (1,))) + ROWS

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        # at least one context token fits in every window
        self.max_query = min(int(params["max_query_length"]), self.max_len - 4)

    def items(self, inputs: Arrays) -> List[Tuple[str, str]]:
        questions, contexts = texts(inputs["QUESTION"]), texts(inputs["CONTEXT"])
        if len(questions) != len(contexts):
            raise ValueError(f"the request has {len(questions)} questions but {len(contexts)} contexts: send one "
                             "CONTEXT per QUESTION")
        check_sizes(questions, self.max_chars)
        check_sizes(contexts, self.max_chars)
        return list(zip(questions, contexts))

    def spans(self, items: List[Tuple[str, str]]):
        questions, contexts = [q for q, _ in items], [c for _, c in items]
        q_encs = self.tok.encode_batch(questions, add_special_tokens=False)
        c_encs = self.tok.encode_batch(contexts, add_special_tokens=False)
        queries = [q.ids[: self.max_query] for q in q_encs]
        context_ids = [c.ids for c in c_encs]  # an Encoding builds a new list on every access: read once
        widths = [self.max_len - len(query) - 3 for query in queries]  # [CLS] question [SEP] ... [SEP]
        spans_of = [windows(len(ids), width, self.stride(width)) for width, ids in zip(widths, context_ids)]
        return (queries, context_ids, c_encs), spans_of

    def build(self, items: List[Tuple[str, str]], encoded, spans_of) -> Arrays:
        queries, context_ids, c_encs = encoded
        contexts = [c for _, c in items]
        rows: List[Row] = []
        meta: List[Tuple[np.ndarray, np.ndarray, int]] = []  # per row: the context's token offsets, owners, window
        for b, (query, ids, spans, c) in enumerate(zip(queries, context_ids, spans_of, c_encs)):
            owner = owners(spans, len(ids))
            char_spans = np.asarray(c.offsets, dtype=np.int32).reshape(-1, 2)
            head = len(query) + 2
            for k, (start, length) in enumerate(spans):
                rows.append(Row([self.cls] + query + [self.sep] + ids[start:start + length] + [self.sep],
                                [0] * head + [1] * (length + 1),
                                [-1] * head + list(range(start, start + length)) + [-1], b,
                                (contexts[b],) if k == 0 else ("",)))
                meta.append((char_spans, owner, k))
        out = self.pack(rows)
        position = out.pop("extra")
        offsets = np.full(position.shape + (2,), -1, dtype=np.int32)
        max_context = np.zeros(position.shape, dtype=bool)
        for i, (char_spans, owner, k) in enumerate(meta):
            cols = np.flatnonzero(position[i] >= 0)
            pos = position[i, cols]
            offsets[i, cols] = char_spans[pos]
            max_context[i, cols] = owner[pos] == k
        out.update(token_offsets=offsets, max_context=max_context, context=strings([r.words for r in rows]))
        return out


# --- label decoding ------------------------------------------------------------------------------------------------

class _PerText(Merged):
    """A decoder of rows into one answer per text (``row_text`` says which text each row is): the requests of a
    batch are decoded in one call, their ``row_text`` offset by the texts before them; each output goes back per
    request by rows or by texts, whichever its first axis counts."""

    def merged(self, requests: List[Arrays]) -> List[Arrays]:
        rows = [common.rows(r) for r in requests]
        counts = [len(row_groups(r["row_text"])) for r in requests]
        offsets = np.cumsum([0] + counts)[:-1]
        merged = common.concat([{**r, "row_text": (np.asarray(r["row_text"]) + off).astype(np.int32)}
                                for r, off in zip(requests, offsets)])
        out = self(merged)
        by_rows = common.split({k: v for k, v in out.items() if len(v) == sum(rows)}, rows)
        by_texts = common.split({k: v for k, v in out.items() if len(v) != sum(rows)}, counts)
        return [{**a, **b} for a, b in zip(by_rows, by_texts)]


class Classify(_PerText):
    """Sequence logits → LABEL (from the labels file, else the class index), SCORE (softmax), LOGITS; a text's
    windows (``long_input=mean``) are averaged."""

    INPUTS = (("logits", "TYPE_FP32", (-1,)),) + ROWS
    OUTPUTS = (("LABEL", "TYPE_STRING", (1,)), ("SCORE", "TYPE_FP32", (1,)), ("LOGITS", "TYPE_FP32", (-1,)))
    LABELS = {"logits": "labels"}

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        self.labels = read_labels(self.file("labels")) if params.get("labels") else None

    def __call__(self, inputs: Arrays) -> Arrays:
        logits = per_text(inputs["logits"].astype(np.float32), inputs["row_text"], "mean")
        labels = self.labels or [str(i) for i in range(logits.shape[-1])]
        ids, scores = decode(logits, labels)
        return {"LABEL": strings([[labels[i]] for i in ids]), "SCORE": scores.reshape(-1, 1), "LOGITS": logits}


def per_text(logits: np.ndarray, row_text: np.ndarray, how: str) -> np.ndarray:
    """One row of sequence logits per text: its first window's (``truncate``) or the mean of its windows'."""
    groups = row_groups(row_text)
    if how == "mean":
        return np.stack([logits[g].mean(axis=0) for g in groups]) if groups else logits[:0]
    return logits[[g[0] for g in groups]]


class LabelTokens(Merged):
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


class IntentSlots(_PerText):
    """Intent logits → INTENT, INTENT_SCORE per text (``long_input``: first window or mean); slot logits → each
    token's slot label."""

    INPUTS = (("intent_logits", "TYPE_FP32", (-1,)), ("slot_logits", "TYPE_FP32", (-1, -1))) + ROWS
    OUTPUTS = (("INTENT", "TYPE_STRING", (1,)), ("INTENT_SCORE", "TYPE_FP32", (1,)),
               ("slot_labels", "TYPE_STRING", (-1,)))
    LABELS = {"intent_logits": "intent_labels", "slot_logits": "slot_labels"}

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        self.intents = read_labels(self.file("intent_labels"))
        self.slots = read_labels(self.file("slot_labels"))
        self.long_input = params.get("long_input", "truncate")

    def __call__(self, inputs: Arrays) -> Arrays:
        logits = per_text(inputs["intent_logits"].astype(np.float32), inputs["row_text"], self.long_input)
        intent, score = decode(logits, self.intents)
        slots, _ = decode(inputs["slot_logits"], self.slots)
        return {"INTENT": strings([[self.intents[i]] for i in intent]), "INTENT_SCORE": score.reshape(-1, 1),
                "slot_labels": strings([[self.slots[i] for i in row] for row in slots])}


class PunctLabels(Merged):
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

def row_words(words: np.ndarray) -> List[str]:
    return [w.decode("utf-8") if isinstance(w, bytes) else str(w) for w in words if w not in (b"", "")]


def word_positions(inputs: Arrays) -> List[Tuple[List[str], List[Tuple[int, int]]]]:
    """Per text: its words and, for each, the (row, token) whose label it takes, (-1, -1) when a truncated text
    has no token for it."""
    out = []
    word_ids = inputs["word_ids"]
    for rows in row_groups(inputs["row_text"]):
        words = row_words(inputs["words"][rows[0]])
        where = [(-1, -1)] * len(words)
        for r in rows:
            for j in np.flatnonzero(word_ids[r] >= 0):
                w = int(word_ids[r, j])
                if w < len(words):
                    where[w] = (int(r), int(j))
        out.append((words, where))
    return out


def labels_at(inputs: Arrays, tensor: str, where: Sequence[Tuple[int, int]], default: str) -> List[str]:
    return [inputs[tensor][r][j].decode("utf-8") if r >= 0 else default for r, j in where]


class NerWords(Handler):
    """Token labels → TOKENS (input words), LABELS, SCORES, the first subword deciding."""

    INPUTS = (("token_labels", "TYPE_STRING", (-1,)), ("token_scores", "TYPE_FP32", (-1,))) + WORDS + ROWS
    OUTPUTS = (("TOKENS", "TYPE_STRING", (-1,)), ("LABELS", "TYPE_STRING", (-1,)), ("SCORES", "TYPE_FP32", (-1,)))

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        self.default = params.get("default_label", "O")

    def __call__(self, inputs: Arrays) -> Arrays:
        texts_ = word_positions(inputs)
        width = max((len(words) for words, _ in texts_), default=0)
        scores = np.zeros((len(texts_), width), dtype=np.float32)
        for b, (_, where) in enumerate(texts_):
            for k, (r, j) in enumerate(where):
                scores[b, k] = inputs["token_scores"][r][j] if r >= 0 else 0.0
        return {"TOKENS": strings([words for words, _ in texts_]),
                "LABELS": strings([labels_at(inputs, "token_labels", where, self.default) for _, where in texts_]),
                "SCORES": scores}


class SlotWords(Handler):
    """Token slot labels → TOKENS (input words) and SLOTS."""

    INPUTS = (("slot_labels", "TYPE_STRING", (-1,)),) + WORDS + ROWS
    OUTPUTS = (("TOKENS", "TYPE_STRING", (-1,)), ("SLOTS", "TYPE_STRING", (-1,)))

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        self.default = params.get("default_label", "O")

    def __call__(self, inputs: Arrays) -> Arrays:
        texts_ = word_positions(inputs)
        return {"TOKENS": strings([words for words, _ in texts_]),
                "SLOTS": strings([labels_at(inputs, "slot_labels", where, self.default) for _, where in texts_])}


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

    INPUTS = (("punct_labels", "TYPE_STRING", (-1,)), ("capit_labels", "TYPE_STRING", (-1,))) + WORDS + ROWS
    OUTPUTS = (("PUNCTUATED_TEXT", "TYPE_STRING", (1,)),)

    def __call__(self, inputs: Arrays) -> Arrays:
        return {"PUNCTUATED_TEXT": strings([[punctuate(words, labels_at(inputs, "punct_labels", where, "O"),
                                                       labels_at(inputs, "capit_labels", where, "O"))]
                                            for words, where in word_positions(inputs)])}


# --- QA ------------------------------------------------------------------------------------------------------------

class Span(NamedTuple):
    score: float            # start logit + end logit
    start_logit: float
    end_logit: float
    begin: int              # character offsets in the context; -1 for the null answer
    end: int


def top(logits: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` largest values, the earlier index first on a tie."""
    return np.argsort(-logits, kind="stable")[:n]


class QASpan(Handler):
    """Start/end logits of a context's windows → ANSWER, SCORE, ANSWER_START/ANSWER_END character offsets, as
    NeMo's QA inference decides: candidates are the ``n_best_size`` best start and end tokens of each window, a
    start only in its max-context window, ``end - start < max_answer_length``; the best start+end logit wins. With
    ``version_2_with_negative`` the null answer (the [CLS] logits of the window where they are lowest) is chosen
    when its score beats the best span's by more than ``null_score_diff_threshold``. SCORE is the answer's softmax
    probability over the n-best list (null answer included)."""

    INPUTS = (("logits", "TYPE_FP32", (-1, 2)), ("token_offsets", "TYPE_INT32", (-1, 2)),
              ("max_context", "TYPE_BOOL", (-1,)), ("attention_mask", "TYPE_INT64", (-1,)),
              ("context", "TYPE_STRING", (1,))) + ROWS
    OUTPUTS = (("ANSWER", "TYPE_STRING", (1,)), ("SCORE", "TYPE_FP32", (1,)), ("ANSWER_START", "TYPE_INT32", (1,)),
               ("ANSWER_END", "TYPE_INT32", (1,)))

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        self.max_answer = int(params["max_answer_length"])
        self.n_best = int(params.get("n_best_size") or 20)
        self.with_null = flag(params.get("version_2_with_negative", "false"))
        self.threshold = float(params.get("null_score_diff_threshold") or 0.0)

    def candidates(self, inputs: Arrays, rows: np.ndarray) -> Tuple[List[Span], Optional[Span]]:
        spans: List[Span] = []
        null: Optional[Span] = None
        for r in rows:
            n = int(inputs["attention_mask"][r].sum())
            start, end = inputs["logits"][r, :n, 0].astype(np.float64), inputs["logits"][r, :n, 1].astype(np.float64)
            offsets, max_context = inputs["token_offsets"][r], inputs["max_context"][r]
            if n and (null is None or start[0] + end[0] < null.score):
                null = Span(float(start[0] + end[0]), float(start[0]), float(end[0]), -1, -1)
            for i in top(start, self.n_best):
                if offsets[i, 0] < 0 or not max_context[i]:
                    continue
                for j in top(end, self.n_best):
                    if offsets[j, 0] < 0 or j < i or j - i + 1 > self.max_answer:
                        continue
                    spans.append(Span(float(start[i] + end[j]), float(start[i]), float(end[j]),
                                      int(offsets[i, 0]), int(offsets[j, 1])))
        return spans, null

    def answer(self, context: str, spans: List[Span], null: Optional[Span]) -> Tuple[str, float, int, int]:
        prelim = sorted(spans + ([null] if self.with_null and null is not None else []),
                        key=lambda s: s.score, reverse=True)
        nbest: List[Tuple[str, Span]] = []
        seen = set()
        for span in prelim:
            if len(nbest) >= self.n_best:
                break
            text = context[span.begin:span.end] if span.begin >= 0 else ""
            key = " ".join(text.split())  # answers equal up to spacing are one answer, as NeMo's re-spaced text
            if key in seen:
                continue
            seen.add(key)
            nbest.append((text, span))
        if self.with_null and null is not None and "" not in seen:
            nbest.append(("", null))
        if not nbest:
            return "", 0.0, 0, 0
        probs = softmax(np.array([s.score for _, s in nbest]))
        best = next((k for k, (text, s) in enumerate(nbest) if s.begin >= 0), None)
        if best is None or (self.with_null and null is not None
                            and null.score - nbest[best][1].score > self.threshold):
            k = next(k for k, (_, s) in enumerate(nbest) if s.begin < 0) if self.with_null and null else -1
            return "", float(probs[k]) if k >= 0 else 0.0, 0, 0
        text, span = nbest[best]
        return text, float(probs[best]), span.begin, span.end

    def __call__(self, inputs: Arrays) -> Arrays:
        groups = row_groups(inputs["row_text"])
        contexts = [texts(inputs["context"][rows[:1]])[0] for rows in groups]
        answers = [self.answer(context, *self.candidates(inputs, rows)) for context, rows in zip(contexts, groups)]
        return {"ANSWER": strings([[a] for a, _, _, _ in answers]),
                "SCORE": np.array([s for _, s, _, _ in answers], dtype=np.float32).reshape(-1, 1),
                "ANSWER_START": np.array([a for _, _, a, _ in answers], dtype=np.int32).reshape(-1, 1),
                "ANSWER_END": np.array([z for _, _, _, z in answers], dtype=np.int32).reshape(-1, 1)}


HANDLERS: Dict[str, Callable[[str, Dict[str, str]], Handler]] = {
    "tokenize": Tokenize,
    "tokenize_text": TokenizeText,
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
