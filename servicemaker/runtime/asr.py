"""The ASR family's Triton handlers: audio checks and resampling, the acoustic network (all requests of a batch in
one ONNX Runtime call), CTC decoding (NeMo's greedy decoding and word timestamps, or beam search with an n-gram LM),
and the streaming front end and decoder.

svc-deploy copies this file into every ASR Python-backend model folder as ``svc_handlers.py``, beside
``svc_common.py`` (:mod:`.common`). It imports numpy, and lazily soxr, PyYAML, sentencepiece, pyctcdecode, kenlm
and onnxruntime; never servicemaker. Parameters arrive as strings; file parameters name files in the model folder.

Conventions:
- Audio is mono float in [-1, 1], one row per batch item, resampled to ``sample_rate`` with soxr at VHQ quality
  (streams: soxr's streaming resampler, same quality); never clipped or normalized.
- Greedy decoding is NeMo's: argmax per frame up to the row's ``encoded_lengths``, repeats collapsed, blank (the
  last index) dropped; char vocabularies join labels, BPE ones decode pieces with SentencePiece; one whitespace
  before a punctuation mark of the vocabulary is removed. Word timings are NeMo's ``compute_timestamps``: token i
  spans frames [e(i-1), e(i)], e(i) the frame it is first emitted at (the first token starts at e(0) - 1); a word
  spans its first token's start to its last token's end; punctuation takes no time and joins the word before it.
  ms = frame x ``ms_per_timestep``.
- ``decoder_type=flashlight`` (Riva's name) is pyctcdecode's beam search, with KenLM for ``language_model`` (ARPA
  or KenLM binary) and ``decoding_vocab`` as the unigram list (else read from an ARPA file). Riva's flags map to
  pyctcdecode as beam_size -> beam_width, lm_weight -> alpha, word_insertion_score -> beta, beam_threshold ->
  beam_prune_logp = -beam_threshold (beams that far below the best are pruned); alpha and beta act only with a
  language model; the defaults (``DEFAULTS``) are pyctcdecode's, but beam_size 32. Beam word timings are
  pyctcdecode's word frames (first frame, one past the last) x ms_per_timestep; the beam transcript is its text.
- Word outputs of a batch are padded to the longest row with empty strings and 0 ms.
- Streaming is buffered CTC as in NeMo's buffered inference and Riva: chunk i of ``chunk_size`` C seconds is decoded
  from the window [i*C - L, (i+1)*C + R) (left/right padding) clipped to the audio that exists (at the start of a
  stream the window is shorter: no zeros are invented), once its right padding has arrived or the stream ends; only
  the frames starting inside the chunk are kept. All windows of one call run in one network call. State is kept per
  correlation id, dropped at END or after ``idle_timeout_s`` idle; audio older than the next chunk's left padding is
  dropped. If the network fails, the streams of that call get the error and must START again.
  ``ctc_decode_stream`` answers each request with a greedy transcript of the frames so far (cheap) and END with the
  configured decoder over the whole utterance (IS_FINAL true).
"""

from __future__ import annotations

import math
import re
import time
import unicodedata
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

if __package__:  # inside servicemaker
    from . import common
else:  # in a deployed model folder, beside svc_common.py
    import svc_common as common  # type: ignore[no-redef]

Arrays, Handler, StreamEvent, strings = common.Arrays, common.Handler, common.StreamEvent, common.strings
Words = List[Tuple[str, int, int]]  # (word, start ms, end ms)

AUDIO_IN = (("AUDIO_SIGNAL", "TYPE_FP32", (-1,)), ("SAMPLE_RATE", "TYPE_INT32", (1,)))
TEXT_OUT = (("TRANSCRIPT", "TYPE_STRING", (1,)), ("WORDS", "TYPE_STRING", (-1,)),
            ("WORD_START_MS", "TYPE_INT32", (-1,)), ("WORD_END_MS", "TYPE_INT32", (-1,)))
LOGPROBS = ("logprobs", "TYPE_FP32", (-1, -1))
MIN_RATE, MAX_RATE = 1000, 384000
#: parameter defaults (an absent or empty parameter takes its default); seconds, ms, Hz as named
DEFAULTS = {"sample_rate": "16000", "max_audio_seconds": "60", "ms_per_timestep": "40", "decoder_type": "greedy",
            "beam_size": "32", "beam_threshold": "10", "lm_weight": "0.5", "word_insertion_score": "1.5",
            "chunk_size": "0.16", "left_padding_size": "1.92", "right_padding_size": "1.92", "idle_timeout_s": "60",
            "network_max_batch_size": "8"}


def param(params: Dict[str, str], key: str) -> str:
    return params.get(key) or DEFAULTS[key]


# --- audio ---------------------------------------------------------------------------------------------------------

def check_audio(audio: np.ndarray, rate: int, max_seconds: float, seconds_before: Optional[float] = None) -> None:
    """Refuses what the model cannot take, each with the fix in the message. ``seconds_before``: for a stream,
    the seconds it already holds (a stream's request may be empty)."""
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"SAMPLE_RATE is {rate} Hz; send the audio's sample rate in Hz, between {MIN_RATE} "
                         f"and {MAX_RATE}")
    if audio.size == 0 and seconds_before is None:
        raise ValueError("AUDIO_SIGNAL is empty; send at least one sample of mono audio")
    if not np.isfinite(audio).all():
        raise ValueError("AUDIO_SIGNAL holds NaN or infinite samples; send finite samples in [-1, 1]")
    seconds = (seconds_before or 0.0) + audio.size / rate
    if seconds > max_seconds and seconds_before is None:
        raise ValueError(f"the audio is {seconds:.1f} s long; this model takes at most {max_seconds:g} s; split "
                         "the audio or rebuild with --max_audio_seconds")
    if seconds > max_seconds:
        raise ValueError(f"the stream is {seconds:.1f} s long; this model takes at most {max_seconds:g} s per "
                         "stream; end it and start another, or rebuild with --max_audio_seconds")


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return audio.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(audio.astype(np.float32), rate, target, quality="VHQ").astype(np.float32, copy=False)


def rates(inputs: Arrays, rows: int) -> List[int]:
    rate = np.asarray(inputs["SAMPLE_RATE"]).reshape(-1)
    if rate.size not in (1, rows):
        raise ValueError(f"SAMPLE_RATE has {rate.size} values for {rows} audio rows; send one per row")
    return [int(r) for r in np.broadcast_to(rate, (rows,))]


class AsrAudio(Handler):
    """AUDIO_SIGNAL at SAMPLE_RATE → the model's rate, zero-padded rows, and each row's length."""

    INPUTS = AUDIO_IN
    OUTPUTS = (("audio_signal", "TYPE_FP32", (-1,)), ("length", "TYPE_INT64", (1,)))

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        self.rate = int(param(params, "sample_rate"))
        self.max_seconds = float(param(params, "max_audio_seconds"))

    def __call__(self, inputs: Arrays) -> Arrays:
        audio = np.asarray(inputs["AUDIO_SIGNAL"], dtype=np.float32)
        audio = audio.reshape(len(audio), -1)
        rows = []
        for row, rate in zip(audio, rates(inputs, len(audio))):
            check_audio(row, rate, self.max_seconds)
            rows.append(resample(row, rate, self.rate))
        return {"audio_signal": pad_rows(rows), "length": np.array([[len(r)] for r in rows], dtype=np.int64)}


def pad_rows(rows: Sequence[np.ndarray]) -> np.ndarray:
    out = np.zeros((len(rows), max((len(r) for r in rows), default=0)), dtype=np.float32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


# --- the acoustic network --------------------------------------------------------------------------------------------

def network_rows(inputs: Arrays) -> Tuple[np.ndarray, np.ndarray]:
    audio = np.asarray(inputs["audio_signal"], dtype=np.float32)
    if audio.ndim != 2:
        raise ValueError(f"audio_signal has shape {audio.shape}; send [batch, samples]")
    length = np.asarray(inputs["length"]).reshape(-1).astype(np.int64)
    if len(length) != len(audio) or (length < 1).any() or (length > audio.shape[1]).any():
        raise ValueError(f"length {length.tolist()} does not fit audio_signal of shape {audio.shape}; send each "
                         "row's sample count")
    return audio, length


class AsrNetwork(common.OnnxNetwork):
    """The fused featurizer + acoustic model; all requests of a Triton batch run in one ``session.run``."""

    #: inputs whose length differs between requests of one batch (``allow_ragged_batch`` in config.pbtxt)
    RAGGED = ("audio_signal",)

    def batch(self, requests: List[Arrays]) -> List[common.Result]:
        results: List[common.Result] = [ValueError("not run")] * len(requests)
        taken: List[Tuple[int, np.ndarray, np.ndarray]] = []
        for i, inputs in enumerate(requests):
            try:
                taken.append((i, *network_rows(inputs)))
            except Exception as err:  # noqa: BLE001 - a bad request fails alone
                results[i] = common.detached(err)
        if not taken:
            return results
        audio = pad_rows([row for _, a, _ in taken for row in a])
        try:
            out = self({"audio_signal": audio, "length": np.concatenate([n for _, _, n in taken])})
        except Exception as err:  # noqa: BLE001 - then find the request that fails: each runs alone
            for i, _, _ in taken:
                results[i] = err if len(taken) == 1 else self.batch([requests[i]])[0]
            return results
        start = 0
        for i, a, _ in taken:
            part = {name: value[start:start + len(a)] for name, value in out.items()}
            if "encoded_lengths" in part and "logprobs" in part:
                part["logprobs"] = part["logprobs"][:, :int(part["encoded_lengths"].max(initial=0))]
            results[i], start = part, start + len(a)
        return results


# --- vocabulary and decoding -----------------------------------------------------------------------------------------

def punctuation(vocabulary: Sequence[str]) -> set:
    """NeMo's punctuation set: punctuation characters of the labels that are not special or word-start pieces."""
    special = re.compile(r"^(\[.*\]|<.*>|##.*|▁.*|\s*)$")
    return {c for label in vocabulary if not special.match(label) for c in label
            if unicodedata.category(c).startswith("P")}


class Vocabulary:
    """Labels from NeMo's model_config.yaml (``decoder.vocabulary``), and SentencePiece for BPE models."""

    def __init__(self, labels: Sequence[str], tokenizer_model: Optional[str] = None) -> None:
        self.labels = list(labels)
        self.blank = len(self.labels)
        self.punct = punctuation(self.labels)
        self.sp = None
        if tokenizer_model:
            import sentencepiece as spm

            self.sp = spm.SentencePieceProcessor(model_file=tokenizer_model)
            if self.sp.get_piece_size() != len(self.labels):
                raise ValueError(f"the tokenizer has {self.sp.get_piece_size()} pieces but decoder.vocabulary "
                                 f"has {len(self.labels)}")
        space = re.escape("".join(sorted(self.punct)))
        self.space_before_punct = re.compile(rf"\s(?=[{space}])") if self.punct else None

    @classmethod
    def load(cls, config: str, tokenizer_model: Optional[str] = None) -> Vocabulary:
        import yaml

        with open(config, encoding="utf-8") as f:
            labels = ((yaml.safe_load(f) or {}).get("decoder") or {}).get("vocabulary")
        if not labels:
            raise ValueError("model_config has no decoder.vocabulary")
        return cls([str(x) for x in labels], tokenizer_model)

    def piece(self, token: int) -> str:
        return self.sp.id_to_piece(token) if self.sp else self.labels[token]

    def join(self, pieces: Sequence[str]) -> str:
        return self.sp.decode_pieces(list(pieces)) if self.sp else "".join(pieces)

    def text(self, tokens: Sequence[int]) -> str:
        text = self.join([self.piece(t) for t in tokens])
        return self.space_before_punct.sub("", text) if self.space_before_punct else text


def collapse(labels: np.ndarray, blank: int) -> Tuple[List[int], List[int]]:
    """CTC collapse of per-frame labels: the tokens and the frame each is first emitted at."""
    labels = np.asarray(labels)
    keep = (labels != blank) & np.concatenate(([True], labels[1:] != labels[:-1]))
    frames = np.flatnonzero(keep)
    return labels[frames].tolist(), frames.tolist()


def nemo_words(vocab: Vocabulary, tokens: Sequence[int], frames: Sequence[int]) -> List[Tuple[str, int, int]]:
    """Words and their frame offsets exactly as NeMo's compute_timestamps derives them (see the module docstring)."""
    if not tokens:
        return []
    pieces = [vocab.piece(t) for t in tokens]
    texts = [vocab.join([p]) for p in pieces]
    ends = list(frames)
    starts = [max(0, frames[0] - 1)] + ends[:-1]
    for i in range(1, len(texts)):
        if texts[i] and texts[i][0] in vocab.punct:  # punctuation marks take no time
            ends[i] = starts[i]
    following: List[Optional[str]] = [None] * len(texts)  # the next text that is neither empty nor a space
    for i in range(len(texts) - 2, -1, -1):
        nxt = texts[i + 1]
        following[i] = nxt if nxt and nxt != " " else following[i + 1]
    words: List[list] = []
    built: List[str] = []
    first = 0
    for i, (piece, text) in enumerate(zip(pieces, texts)):
        is_punct = text in vocab.punct and text != " "
        starts_word = text == " " and following[i] not in vocab.punct
        if vocab.sp is not None:
            starts_word = starts_word or piece != text
        if starts_word and not is_punct:
            if built:
                words.append([vocab.join(built), starts[first], ends[i - 1]])
            built = [piece] if text != " " else []
            first = i if text != " " else first
        elif is_punct and not built and words:
            last = words[-1]
            last[0], last[2] = last[0].removesuffix(" ") + text, ends[i]
        elif is_punct and built:
            if built[-1] in (" ", "_", "▁"):
                built.pop()
            built.append(piece)
        else:
            first = i if not built else first
            built.append(piece)
    if built:
        words.append([vocab.join(built), starts[first], ends[-1]])
    if words:
        words[0][1] = starts[0]
    return [tuple(w) for w in words]


def to_ms(frame: float, ms_per_timestep: float) -> int:
    return math.floor(frame * ms_per_timestep + 0.5)


class Decoder:
    """Greedy (NeMo's) or beam search (pyctcdecode + KenLM) over one row of log-probs [T, V+1]."""

    def __init__(self, folder_file: Callable[[str], str], params: Dict[str, str]) -> None:
        tok = params.get("tokenizer_model")
        self.vocab = Vocabulary.load(folder_file("model_config"), folder_file("tokenizer_model") if tok else None)
        self.ms = float(param(params, "ms_per_timestep"))
        kind = param(params, "decoder_type")
        if kind not in ("greedy", "flashlight"):
            raise ValueError(f"decoder_type '{kind}' is unknown; use greedy or flashlight")
        self.beam = self.beam_decoder(folder_file, params) if kind == "flashlight" else None
        self.beam_width = int(param(params, "beam_size"))
        self.prune = -float(param(params, "beam_threshold"))

    def beam_decoder(self, folder_file: Callable[[str], str], params: Dict[str, str]):
        from pyctcdecode import build_ctcdecoder
        from pyctcdecode.language_model import load_unigram_set_from_arpa

        lm = folder_file("language_model") if params.get("language_model") else None
        unigrams = None
        if params.get("decoding_vocab"):
            with open(folder_file("decoding_vocab"), encoding="utf-8") as f:
                unigrams = [w.strip() for w in f if w.strip()]
        if lm:
            import kenlm  # noqa: F401 - pyctcdecode needs it for the language model; fail here, clearly

            with open(lm, "rb") as f:
                if unigrams is None and f.read(4096).lstrip().startswith(b"\\data\\"):
                    unigrams = sorted(load_unigram_set_from_arpa(lm))
        return build_ctcdecoder(self.vocab.labels + [""], kenlm_model_path=lm, unigrams=unigrams,
                                alpha=float(param(params, "lm_weight")),
                                beta=float(param(params, "word_insertion_score")))

    def check(self, logprobs: np.ndarray) -> None:
        if logprobs.ndim != 3 or logprobs.shape[-1] != self.vocab.blank + 1:
            raise ValueError(f"logprobs has shape {logprobs.shape}; this model's vocabulary needs [batch, frames, "
                             f"{self.vocab.blank + 1}] ({self.vocab.blank} labels and the blank)")

    def greedy(self, labels: np.ndarray) -> Tuple[str, Words]:
        tokens, frames = collapse(labels, self.vocab.blank)
        words = nemo_words(self.vocab, tokens, frames)
        return self.vocab.text(tokens), [(w, to_ms(s, self.ms), to_ms(e, self.ms)) for w, s, e in words]

    def decode(self, logprobs: np.ndarray) -> Tuple[str, Words]:
        """One row [T, V+1], cut to its length: beam search when configured, else greedy."""
        if self.beam is None or len(logprobs) == 0:
            return self.greedy(np.argmax(logprobs, axis=-1))
        best = self.beam.decode_beams(np.asarray(logprobs, dtype=np.float32), beam_width=self.beam_width,
                                      beam_prune_logp=self.prune)[0]
        return best[0], [(w, to_ms(s, self.ms), to_ms(e, self.ms)) for w, (s, e) in best[2]]


def text_outputs(results: Sequence[Tuple[str, Words]]) -> Arrays:
    width = max((len(w) for _, w in results), default=0)
    starts = np.zeros((len(results), width), dtype=np.int32)
    ends = np.zeros((len(results), width), dtype=np.int32)
    for b, (_, words) in enumerate(results):
        starts[b, :len(words)] = [s for _, s, _ in words]
        ends[b, :len(words)] = [e for _, _, e in words]
    return {"TRANSCRIPT": strings([[t] for t, _ in results]), "WORDS": strings([[w for w, _, _ in ws]
                                                                               for _, ws in results]),
            "WORD_START_MS": starts, "WORD_END_MS": ends}


class CtcDecode(Handler):
    """logprobs + encoded_lengths → transcript and word timings, per row."""

    INPUTS = (LOGPROBS, ("encoded_lengths", "TYPE_INT64", (1,)))
    OUTPUTS = TEXT_OUT

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        self.decoder = Decoder(self.file, params)

    def __call__(self, inputs: Arrays) -> Arrays:
        logprobs = np.asarray(inputs["logprobs"], dtype=np.float32)
        self.decoder.check(logprobs)
        lengths = np.asarray(inputs["encoded_lengths"]).reshape(-1)
        if len(lengths) != len(logprobs) or (lengths < 0).any() or (lengths > logprobs.shape[1]).any():
            raise ValueError(f"encoded_lengths {lengths.tolist()} does not fit logprobs of shape {logprobs.shape}; "
                             "send each row's frame count")
        return text_outputs([self.decoder.decode(lp[:n]) for lp, n in zip(logprobs, lengths.tolist())])


# --- streaming ------------------------------------------------------------------------------------------------------

class Sequences:
    """Per-stream state keyed by correlation id; START (re)creates it, idle states are evicted."""

    def __init__(self, idle_timeout_s: float) -> None:
        self.idle = idle_timeout_s
        self.states: Dict[int, list] = {}  # corrid -> [state, last seen]
        self.clock: Callable[[], float] = time.monotonic

    def evict(self) -> None:
        now = self.clock()
        for corrid in [c for c, (_, seen) in self.states.items() if now - seen > self.idle]:
            del self.states[corrid]

    def get(self, event: StreamEvent, make: Callable[[], object]):
        if event.start:
            self.states[event.corrid] = [make(), 0.0]
        elif event.corrid not in self.states:
            raise ValueError(f"sequence {event.corrid} was not started: send START first")
        entry = self.states[event.corrid]
        entry[1] = self.clock()
        return entry[0]

    def drop(self, corrid: int) -> None:
        self.states.pop(corrid, None)


class AudioStream:
    """One stream's audio at the model's rate: samples [offset, total) kept, chunks before ``next`` done."""

    def __init__(self) -> None:
        self.audio, self.offset, self.next = np.zeros(0, np.float32), 0, 0
        self.rate: Optional[int] = None  # the client's
        self.seconds, self.resampler = 0.0, None

    @property
    def total(self) -> int:
        return self.offset + len(self.audio)


class AsrStream(Handler):
    """Streaming front end: audio requests → the log-prob frames of the chunks each request completes."""

    SEQUENCE = True
    INPUTS = AUDIO_IN
    OUTPUTS = (LOGPROBS,)

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        self.rate = int(param(params, "sample_rate"))
        chunk, left, right = (round(float(param(params, k)) * self.rate)
                              for k in ("chunk_size", "left_padding_size", "right_padding_size"))
        self.chunk, self.left, self.right = max(1, chunk), left, right  # in samples
        self.hop = float(param(params, "ms_per_timestep")) * self.rate / 1000.0  # samples per frame
        self.max_seconds = float(param(params, "max_audio_seconds"))
        self.sequences = Sequences(float(param(params, "idle_timeout_s")))
        self.max_batch = max(1, int(param(params, "network_max_batch_size")))
        self.classes = 0

    def _append(self, st: AudioStream, event: StreamEvent) -> None:
        audio = np.asarray(event.inputs["AUDIO_SIGNAL"], dtype=np.float32).reshape(-1)
        rate = rates(event.inputs, 1)[0]
        check_audio(audio, rate, self.max_seconds, st.seconds)
        if st.rate is not None and rate != st.rate:
            raise ValueError(f"SAMPLE_RATE changed from {st.rate} to {rate} Hz within the stream; send the whole "
                             "stream at one rate")
        if st.rate is None and rate != self.rate:
            import soxr

            st.resampler = soxr.ResampleStream(rate, self.rate, 1, dtype="float32", quality="VHQ")
        st.rate, st.seconds = rate, st.seconds + audio.size / rate
        if st.resampler is not None:
            audio = st.resampler.resample_chunk(audio, last=event.end)
        st.audio = np.concatenate([st.audio, audio.astype(np.float32, copy=False)])

    def _plan(self, st: AudioStream, end: bool) -> List[Tuple[np.ndarray, Tuple[int, int, int]]]:
        """The chunks now ready: (window audio, (window start, chunk start, chunk end) in samples); then drops
        the audio no chunk needs any more."""
        plans = []
        while (st.next + 1) * self.chunk + self.right <= st.total or (end and st.next * self.chunk < st.total):
            cs = st.next * self.chunk
            ce = min(cs + self.chunk, st.total)
            ws, we = max(0, cs - self.left), min(st.total, ce + self.right)
            plans.append((st.audio[ws - st.offset:we - st.offset].copy(), (ws, cs, ce)))
            st.next += 1
        keep = max(0, st.next * self.chunk - self.left)  # left context of the next chunk
        if keep > st.offset:
            st.audio, st.offset = st.audio[keep - st.offset:], keep
        return plans

    def _frames(self, ws: int, cs: int, ce: int) -> Tuple[int, int]:
        """Frames k of a window starting at ws whose start time ws + k*hop lies in [cs, ce)."""
        return math.ceil((cs - ws) / self.hop - 1e-9), math.ceil((ce - ws) / self.hop - 1e-9)

    def stream(self, events: List[StreamEvent]) -> List[common.Result]:
        self.sequences.evict()
        results: List[common.Result] = [ValueError("not run")] * len(events)
        windows: List[Tuple[int, np.ndarray, Tuple[int, int, int]]] = []  # (event, audio, (ws, cs, ce))
        for i, ev in enumerate(events):
            try:
                st = self.sequences.get(ev, AudioStream)
                self._append(st, ev)
                windows += [(i, audio, span) for audio, span in self._plan(st, ev.end)]
                results[i] = {}
            except Exception as err:  # noqa: BLE001 - a bad request fails alone
                results[i] = common.detached(err)
        frames: Dict[int, List[np.ndarray]] = {i: [] for i in range(len(events))}
        for first in range(0, len(windows), self.max_batch):  # at most the network's max_batch_size per call
            part = windows[first:first + self.max_batch]
            try:
                out = self.network({"audio_signal": pad_rows([a for _, a, _ in part]),
                                    "length": np.array([len(a) for _, a, _ in part], dtype=np.int64)})
                logprobs, lengths = out["logprobs"], np.asarray(out["encoded_lengths"]).reshape(-1)
                self.classes = logprobs.shape[-1]
                for n, (i, _, (ws, cs, ce)) in enumerate(part):
                    lo, hi = self._frames(ws, cs, ce)
                    frames[i].append(logprobs[n, lo:min(hi, lengths[n])])
            except Exception as err:  # noqa: BLE001 - these streams lost frames: they must start again
                for i, _, _ in part:
                    results[i] = common.detached(err)
                    self.sequences.drop(events[i].corrid)
        for i, ev in enumerate(events):
            if isinstance(results[i], dict):
                got = frames[i] or [np.zeros((0, self.classes), np.float32)]
                results[i] = {"logprobs": np.concatenate(got).astype(np.float32)[None]}
            if ev.end:
                self.sequences.drop(ev.corrid)
        return results


class CtcDecodeStream(Handler):
    """Streaming decoder: each request's frames are appended; partial greedy transcripts, a final one at END."""

    SEQUENCE = True
    INPUTS = (LOGPROBS,)
    OUTPUTS = TEXT_OUT + (("IS_FINAL", "TYPE_BOOL", (1,)),)

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        self.decoder = Decoder(self.file, params)
        self.sequences = Sequences(float(param(params, "idle_timeout_s")))

    def _one(self, ev: StreamEvent) -> Arrays:
        width = self.decoder.vocab.blank + 1
        st = self.sequences.get(ev, lambda: {"logprobs": [np.zeros((0, width), np.float32)],
                                             "labels": [np.zeros(0, np.int64)]})
        logprobs = np.asarray(ev.inputs["logprobs"], dtype=np.float32)
        if logprobs.size:  # 0 frames may come as [1, 0, 0]
            self.decoder.check(logprobs)
            st["labels"].append(np.argmax(logprobs[0], axis=-1))
            if self.decoder.beam is not None:  # only beam search needs the frames themselves
                st["logprobs"].append(logprobs[0])
        if ev.end and self.decoder.beam is not None:
            result = self.decoder.decode(np.concatenate(st["logprobs"]))
        else:
            result = self.decoder.greedy(np.concatenate(st["labels"]))
        return dict(text_outputs([result]), IS_FINAL=np.array([[ev.end]], dtype=bool))

    def stream(self, events: List[StreamEvent]) -> List[common.Result]:
        self.sequences.evict()
        results: List[common.Result] = []
        for ev in events:
            try:
                results.append(self._one(ev))
            except Exception as err:  # noqa: BLE001 - a bad request fails alone
                results.append(common.detached(err))
            if ev.end:
                self.sequences.drop(ev.corrid)
        return results


HANDLERS: Dict[str, Callable[[str, Dict[str, str]], Handler]] = {
    "asr_audio": AsrAudio,
    "asr_network": AsrNetwork,
    "ctc_decode": CtcDecode,
    "asr_stream": AsrStream,
    "ctc_decode_stream": CtcDecodeStream,
    "onnx": common.OnnxNetwork,
}


def create(name: str, folder: str, params: Dict[str, str]) -> Handler:
    return common.create_from(HANDLERS, name, folder, params)
