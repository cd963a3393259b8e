"""The TTS family's Triton handlers: the text front end, the synthesizer (FastPitch then HiFi-GAN for every
sentence of every request, one audio per request) and its streaming form (audio chunks as they are vocoded).

svc-deploy copies this file into every TTS Python-backend model folder as ``svc_handlers.py``, beside
``svc_common.py`` (:mod:`.common`), ``svc_tts_text.py`` (:mod:`.tts_text`) and ``svc_tts_normalize.py``
(:mod:`.tts_normalize`). It imports numpy (and the normalizer's num2words or pynini), never servicemaker.

Conventions:
- One TEXT per request. SPEAKER (an id: ``--subvoices`` names them), PACE (speaking rate, 0.25–2.5 as Riva's
  25–250 %; FastPitch divides every duration by it) and PITCH_SHIFT (added to FastPitch's normalized pitch: in the
  voice's pitch standard deviations, −3..3 as Riva's) are optional: 0, 1 and 0 when left out.
- The text is normalized, split into sentences (:func:`.tts_text.split_sentences`), and each sentence tokenized
  as NeMo's tokenizer does; a sentence with nothing but spaces left (only unknown characters) is dropped. A text
  with no sentence left (empty, or only unknown characters) gets empty AUDIO.
- The synthesizers run every sentence of every request of a Triton batch together: FastPitch over as many
  sentences as its batch takes (``sentence_batching=any``: svc-deploy masked NeMo FastPitch's padding leak and
  measured that a sentence in a batch gives what it gives alone; ``equal_symbols``: only sentences of one length
  together; ``single``: one at a time), HiFi-GAN over the spectrogram windows of equal frame count (no padding). So
  each request's audio equals its audio alone.
- A sentence's audio is HiFi-GAN's on its whole spectrogram (``frames × hop`` samples), but past
  ``max_vocoder_frames`` frames (batch) or ``chunk_frames`` (streaming) it is vocoded in chunks, each with
  ``overlap_frames`` frames of context either side that are cut from its audio: chunks meet within a small
  error of the whole sentence's audio (docs/tts.md), and every sentence keeps its exact length.
- Streaming sends, in rounds over the open requests, each one's next chunk: the first chunk needs only the first
  sentence's spectrogram and is ``chunk_frames`` long; the chunks after it double up to ``max_chunk_frames`` (the
  first sentence's from ``chunk_frames``, the others' from the start), since each costs its context twice. Every
  request ends with a final response; a failed request gets its error alone.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

if __package__:  # inside servicemaker
    from . import common, tts_normalize, tts_text
else:  # in a deployed model folder
    import svc_common as common  # type: ignore[no-redef]
    import svc_tts_normalize as tts_normalize  # type: ignore[no-redef]
    import svc_tts_text as tts_text  # type: ignore[no-redef]

Arrays, Handler, Result = common.Arrays, common.Handler, common.Result
GENERATOR, VOCODER = "spectrogram_generator", "vocoder"

TEXT_IN = (("TEXT", "TYPE_STRING", (1,)), ("SPEAKER", "TYPE_INT32", (1,)), ("PACE", "TYPE_FP32", (1,)),
           ("PITCH_SHIFT", "TYPE_FP32", (1,)))
SYMBOLS = (("tokens", "TYPE_INT64", (-1,)), ("sentence_lengths", "TYPE_INT32", (-1,)), ("speaker", "TYPE_INT32", (1,)),
           ("pace", "TYPE_FP32", (1,)), ("pitch_shift", "TYPE_FP32", (1,)))
AUDIO_OUT = (("AUDIO", "TYPE_FP32", (-1,)), ("SAMPLE_RATE", "TYPE_INT32", (1,)))
PACE_RANGE = (0.25, 2.5)
PITCH_RANGE = (-3.0, 3.0)
#: parameter defaults (an absent or empty parameter takes its default)
DEFAULTS = {"max_text_chars": "10000", "max_sentence_chars": "400", "num_speakers": "1", "subvoices": "",
            "text_normalization": "auto", "speaker_input": "false", "overlap_frames": "16", "chunk_frames": "32",
            "max_vocoder_frames": "2048", "generator_max_batch": "8", "vocoder_max_batch": "8",
            "max_chunk_frames": "256",
            "spectrogram_layout": "ragged", "hop_length": "256", "sample_rate": "22050", "sentence_batching": "single",
            "symbol_pad": "0"}


def param(params: Dict[str, str], key: str) -> str:
    return params.get(key) or DEFAULTS[key]


# --- the text front end -----------------------------------------------------------------------------------------------

def speaker_ids(subvoices: str, speakers: int) -> Dict[int, str]:
    """Valid speaker ids → their names (``--subvoices`` 'Female-1:0,Male-1:1', else every id of the model)."""
    named = {}
    for item in (s for s in subvoices.split(",") if s.strip()):
        name, _, ident = item.partition(":")
        named[int(ident)] = name.strip()
    return named or {i: str(i) for i in range(speakers)}


def _scalar(inputs: Arrays, name: str, default: float) -> float:
    if name not in inputs:
        return default
    values = np.asarray(inputs[name]).reshape(-1)
    if values.size != 1:
        raise ValueError(f"{name} has {values.size} values; send one per request")
    value = float(values[0])
    if not np.isfinite(value):
        raise ValueError(f"{name} is {value}; send a finite number")
    return value


class TtsPreprocess(Handler):
    """TEXT (+ SPEAKER, PACE, PITCH_SHIFT) → every sentence's symbol ids, checked request settings."""

    INPUTS = TEXT_IN
    OPTIONAL = ("SPEAKER", "PACE", "PITCH_SHIFT")
    OUTPUTS = SYMBOLS

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        # the --phone_dictionary_file given at svc-build, else the dictionary the model's config names
        phones = next((k for k in ("phone_dictionary_file", "phone_dict") if params.get(k)), None)
        self.tokenizer = tts_text.from_config(json.loads(params["text_tokenizer"]),
                                              self.file(phones) if phones else None,
                                              self.file("heteronyms") if params.get("heteronyms") else None)
        abbreviations = tts_normalize.read_abbreviations(self.file("abbreviations_file")) \
            if params.get("abbreviations_file") else None
        self.normalize = tts_normalize.create(
            param(params, "text_normalization"), abbreviations,
            self.file("wfst_tokenizer_model") if params.get("wfst_tokenizer_model") else None,
            self.file("wfst_verbalizer_model") if params.get("wfst_verbalizer_model") else None)
        self.max_chars = int(param(params, "max_text_chars"))
        self.max_sentence = int(param(params, "max_sentence_chars"))
        self.speakers = speaker_ids(param(params, "subvoices"), int(param(params, "num_speakers")))
        self.speaker_input = common.flag(param(params, "speaker_input"))

    def settings(self, inputs: Arrays) -> Tuple[int, float, float]:
        speaker = _scalar(inputs, "SPEAKER", 0.0)
        if speaker != int(speaker) or int(speaker) not in self.speakers:
            known = ", ".join(f"{i} ({n})" if n != str(i) else str(i) for i, n in sorted(self.speakers.items()))
            raise ValueError(f"SPEAKER {speaker:g} is not a speaker of this voice; send one of {known}")
        pace = _scalar(inputs, "PACE", 1.0)
        if not PACE_RANGE[0] <= pace <= PACE_RANGE[1]:
            raise ValueError(f"PACE {pace:g} is outside {PACE_RANGE[0]:g}..{PACE_RANGE[1]:g} (1 is the voice's own "
                             "speaking rate; 2 speaks twice as fast)")
        shift = _scalar(inputs, "PITCH_SHIFT", 0.0)
        if not PITCH_RANGE[0] <= shift <= PITCH_RANGE[1]:
            raise ValueError(f"PITCH_SHIFT {shift:g} is outside {PITCH_RANGE[0]:g}..{PITCH_RANGE[1]:g} (in the voice's "
                             "pitch standard deviations)")
        return int(speaker), pace, shift

    def sentences(self, text: str) -> List[List[int]]:
        """The symbol ids of each sentence of ``text`` worth synthesizing."""
        if len(text) > self.max_chars:
            raise ValueError(f"TEXT has {len(text)} characters; this voice takes at most {self.max_chars} per request "
                             "(split the text, or rebuild with --preprocessor.max_text_chars)")
        out = []
        for sentence in tts_text.split_sentences(self.normalize(text), self.max_sentence):
            ids = self.tokenizer.encode(sentence)
            if any(i != self.tokenizer.space for i in ids):
                out.append(ids)
        return out

    def __call__(self, inputs: Arrays) -> Arrays:
        texts = common.texts(inputs["TEXT"])
        if len(texts) != 1:
            raise ValueError(f"the request has {len(texts)} TEXT rows; send one text per request")
        speaker, pace, shift = self.settings(inputs)
        rows = self.sentences(texts[0])
        ids = [i for row in rows for i in row]
        return {"tokens": np.asarray(ids, dtype=np.int64).reshape(1, -1),
                "sentence_lengths": np.asarray([len(r) for r in rows], dtype=np.int32).reshape(1, -1),
                "speaker": np.array([[speaker]], dtype=np.int32), "pace": np.array([[pace]], dtype=np.float32),
                "pitch_shift": np.array([[shift]], dtype=np.float32)}


# --- synthesis ------------------------------------------------------------------------------------------------------

class Sentence:
    """One sentence of a request: its symbols and settings, then its spectrogram."""

    __slots__ = ("request", "ids", "speaker", "pace", "shift", "spect")

    def __init__(self, request: int, ids: np.ndarray, speaker: int, pace: float, shift: float) -> None:
        self.request, self.ids, self.speaker, self.pace, self.shift = request, ids, speaker, pace, shift
        self.spect: Optional[np.ndarray] = None     # [n_mels, frames]


def sentences_of(request: int, inputs: Arrays) -> List[Sentence]:
    """The preprocessor's tensors of one request as its sentences."""
    tokens = np.asarray(inputs["tokens"], dtype=np.int64).reshape(-1)
    lengths = np.asarray(inputs["sentence_lengths"]).reshape(-1).astype(np.int64)
    if (lengths < 0).any() or int(lengths.sum()) != tokens.size:
        raise ValueError(f"sentence_lengths {lengths.tolist()[:8]} do not add up to the {tokens.size} tokens; send "
                         "the preprocessor's outputs unchanged")
    speaker = int(np.asarray(inputs["speaker"]).reshape(-1)[0])
    pace = float(np.asarray(inputs["pace"]).reshape(-1)[0])
    shift = float(np.asarray(inputs["pitch_shift"]).reshape(-1)[0])
    if not PACE_RANGE[0] <= pace <= PACE_RANGE[1] or not PITCH_RANGE[0] <= shift <= PITCH_RANGE[1]:
        raise ValueError("pace or pitch_shift is out of range; send the preprocessor's outputs unchanged")
    bounds = np.cumsum(np.concatenate([[0], lengths]))
    return [Sentence(request, tokens[bounds[i]:bounds[i + 1]], speaker, pace, shift) for i in range(len(lengths))
            if lengths[i] > 0]


def windows(frames: int, chunk: int, overlap: int, largest: Optional[int] = None) -> List[Tuple[int, int, int, int]]:
    """(start, end, context start, context end) of each chunk of a ``frames``-frame spectrogram: chunks of
    ``chunk`` frames (doubling up to ``largest`` from one chunk to the next, when given), each vocoded with up to
    ``overlap`` frames of context either side."""
    if frames <= chunk:
        return [(0, frames, 0, frames)]
    out, start, size = [], 0, chunk
    while start < frames:
        end = min(frames, start + size)
        out.append((start, end, max(0, start - overlap), min(frames, end + overlap)))
        start, size = end, min(size * 2, largest) if largest else size
    return out


def _grouped(keys: Sequence[Any], limit: int) -> List[List[int]]:
    """Indices with equal keys, in first-seen order, in groups of at most ``limit``."""
    groups: Dict[Any, List[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return [ids[k:k + limit] for ids in groups.values() for k in range(0, len(ids), max(1, limit))]


class Synthesis:
    """FastPitch and HiFi-GAN over many sentences at once, without padding (see the module's doc)."""

    def __init__(self, params: Dict[str, str], networks: Callable[[], Dict[str, Callable[[Arrays], Arrays]]]) -> None:
        self.networks = networks
        self.layout = param(params, "spectrogram_layout")
        self.inputs = set(param(params, "spectrogram_inputs").split(",")) if params.get("spectrogram_inputs") else \
            {"text", "pitch", "pace", "volume", "batch_lengths"}
        self.speaker_dtype = np.int64 if params.get("speaker_dtype") == "TYPE_INT64" else np.int32
        self.lengths_dtype = np.int64 if params.get("lengths_dtype") == "TYPE_INT64" else np.int32
        self.vocoder_input = params.get("vocoder_input") or "spec"
        self.hop = int(param(params, "hop_length"))
        self.rate = int(param(params, "sample_rate"))
        self.overlap = int(param(params, "overlap_frames"))
        self.generator_batch = int(param(params, "generator_max_batch"))
        self.sentence_batching = param(params, "sentence_batching")
        self.pad = int(param(params, "symbol_pad"))
        self.vocoder_batch = int(param(params, "vocoder_max_batch"))

    def _feeds(self, group: Sequence[Sentence]) -> Arrays:
        if self.layout == "ragged":
            text = np.concatenate([s.ids for s in group])
            feed = {"text": text, "pitch": np.concatenate([np.full(len(s.ids), s.shift, np.float32) for s in group]),
                    "pace": np.concatenate([np.full(len(s.ids), s.pace, np.float32) for s in group]),
                    "volume": np.ones(len(text), np.float32),
                    "batch_lengths": np.cumsum([0] + [len(s.ids) for s in group]).astype(self.lengths_dtype)}
        else:  # padded with the pad symbol, pitch shift 0 and pace 1
            width = max(len(s.ids) for s in group)
            text = np.full((len(group), width), self.pad, dtype=np.int64)
            pitch, pace = np.zeros(text.shape, np.float32), np.ones(text.shape, np.float32)
            for row, s in enumerate(group):
                text[row, :len(s.ids)], pitch[row, :len(s.ids)], pace[row, :len(s.ids)] = s.ids, s.shift, s.pace
            feed = {"text": text, "pitch": pitch, "pace": pace, "volume": np.ones(text.shape, np.float32)}
        feed["speaker"] = np.array([s.speaker for s in group], dtype=self.speaker_dtype)
        return {k: v for k, v in feed.items() if k in self.inputs}

    def spectrograms(self, sentences: Sequence[Sentence]) -> List[Optional[Exception]]:
        """Set each sentence's spectrogram; the error of each sentence that failed (None where it did not)."""
        errors: List[Optional[Exception]] = [None] * len(sentences)
        run = self.networks()[GENERATOR]

        def call(ids: List[int]) -> None:
            group = [sentences[i] for i in ids]
            out = run(self._feeds(group))
            spect, frames = np.asarray(out["spect"]), np.asarray(out["num_frames"]).reshape(-1)
            if spect.ndim != 3 or spect.shape[0] != len(group) or frames.size != len(group):
                raise RuntimeError(f"FastPitch gave spect {spect.shape} and num_frames {frames.shape} for "
                                   f"{len(group)} sentences")
            for s, row, n in zip(group, spect, frames.tolist()):
                s.spect = np.ascontiguousarray(row[:, :max(0, min(int(n), row.shape[1]))], dtype=np.float32)

        keys = {"any": lambda i, s: 0, "equal_symbols": lambda i, s: len(s.ids)}.get(
            self.sentence_batching, lambda i, s: i)
        for ids in _grouped([keys(i, s) for i, s in enumerate(sentences)], self.generator_batch):
            _each(ids, call, errors, "FastPitch")
        return errors

    def vocode(self, jobs: Sequence[Tuple[np.ndarray, int, int]]) -> List[Result]:
        """Audio of each (spectrogram window, first, last frame kept): windows of equal length run together."""
        out: List[Result] = [RuntimeError("not vocoded")] * len(jobs)
        errors: List[Optional[Exception]] = [None] * len(jobs)
        run = self.networks()[VOCODER]

        def call(ids: List[int]) -> None:
            batch = np.stack([jobs[i][0] for i in ids])
            audio = np.asarray(next(iter(run({self.vocoder_input: batch}).values())), dtype=np.float32)
            audio = audio.reshape(len(ids), -1)
            if audio.shape[1] != batch.shape[2] * self.hop:
                raise RuntimeError(f"HiFi-GAN gave {audio.shape[1]} samples for {batch.shape[2]} frames (hop "
                                   f"{self.hop})")
            for i, row in zip(ids, audio):
                _, first, last = jobs[i]
                out[i] = {"audio": row[first * self.hop:last * self.hop]}

        for ids in _grouped([j[0].shape[1] for j in jobs], self.vocoder_batch):
            _each(ids, call, errors, "HiFi-GAN")
        return [err if err is not None else result for err, result in zip(errors, out)]

    def window_jobs(self, spect: np.ndarray, parts: Sequence[Tuple[int, int, int, int]]
                    ) -> List[Tuple[np.ndarray, int, int]]:
        return [(np.ascontiguousarray(spect[:, cs:ce]), s - cs, e - cs) for s, e, cs, ce in parts]

    def audio(self, samples: np.ndarray) -> Arrays:
        return {"AUDIO": np.asarray(samples, dtype=np.float32).reshape(1, -1),
                "SAMPLE_RATE": np.array([[self.rate]], dtype=np.int32)}


def _each(ids: List[int], call: Callable[[List[int]], None], errors: List[Optional[Exception]], what: str) -> None:
    """``call`` on the group; when it fails, on each member alone, so an error is only its own sentence's."""
    try:
        call(ids)
    except Exception as err:  # noqa: BLE001 - which member failed is found by running them one by one
        if len(ids) > 1:
            for i in ids:
                _each([i], call, errors, what)
        else:
            errors[ids[0]] = common.detached(RuntimeError(f"{what} failed on a sentence: {_short(err)}"))


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:300]


class TtsSynthesize(Handler):
    """The sentences of every request → one AUDIO per request (all requests of the batch together)."""

    INPUTS = SYMBOLS
    OUTPUTS = AUDIO_OUT

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        self.synthesis = Synthesis(params, lambda: self.networks)
        self.max_frames = int(param(params, "max_vocoder_frames"))

    def _parse(self, requests: List[Arrays]) -> Tuple[List[Result], List[List[Sentence]]]:
        results: List[Result] = [None] * len(requests)  # type: ignore[list-item]
        parsed: List[List[Sentence]] = []
        for k, inputs in enumerate(requests):
            try:
                parsed.append(sentences_of(k, inputs))
            except Exception as err:  # noqa: BLE001 - a bad request fails alone
                results[k] = common.detached(err)
                parsed.append([])
        return results, parsed

    def batch(self, requests: List[Arrays]) -> List[Result]:
        results, parsed = self._parse(requests)
        every = [s for sentences in parsed for s in sentences]
        for s, err in zip(every, self.synthesis.spectrograms(every)):
            if err is not None and results[s.request] is None:
                results[s.request] = err
        chunk = max(1, self.max_frames - 2 * self.synthesis.overlap)
        jobs, owners = [], []
        for s in every:
            if results[s.request] is None and s.spect is not None and s.spect.shape[1]:
                parts = windows(s.spect.shape[1], self.max_frames, self.synthesis.overlap)
                if len(parts) > 1:
                    parts = windows(s.spect.shape[1], chunk, self.synthesis.overlap)
                jobs += self.synthesis.window_jobs(s.spect, parts)
                owners += [s.request] * len(parts)
        pieces: Dict[int, List[np.ndarray]] = {}
        for owner, answer in zip(owners, self.synthesis.vocode(jobs)):
            if isinstance(answer, Exception):
                results[owner] = results[owner] or answer
            else:
                pieces.setdefault(owner, []).append(answer["audio"])
        for k in range(len(requests)):
            if results[k] is None:
                parts = pieces.get(k, [])
                results[k] = self.synthesis.audio(np.concatenate(parts) if parts else np.zeros(0, np.float32))
        return results

    def __call__(self, inputs: Arrays) -> Arrays:
        result = self.batch([inputs])[0]
        if isinstance(result, Exception):
            raise result
        return result


class _Stream:
    """One streaming request: where its answers go, its sentences, the one being vocoded and its chunks left."""

    def __init__(self, index: int, sentences: List[Sentence], send: Callable[[int, Result, bool], None]) -> None:
        self.index, self.sentences, self.send = index, sentences, send
        self.first = sentences  # the list object while the first sentence is vocoded
        self.parts: List[Tuple[int, int, int, int]] = []

    @property
    def current(self) -> Sentence:
        return self.sentences[0]

    def answer(self, result: Result, final: bool) -> None:
        self.send(self.index, result, final)


class TtsSynthesizeStream(TtsSynthesize):
    """Decoupled: each request's audio as chunks, in rounds over the open requests (see the module's doc). In
    Triton (``stream_batch(..., wait=False)``) the rounds run in a thread of the handler and new requests join the
    next round, so a request arriving while others stream waits one round for its first chunk, not their end."""

    DECOUPLED = True
    #: the glue may hand requests over and return: they join the rounds of the handler's own thread
    CONCURRENT = True

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        self.chunk = int(param(params, "chunk_frames"))
        self.largest = max(self.chunk, int(param(params, "max_chunk_frames")))
        self._lock = threading.Lock()
        self._pending: List[_Stream] = []
        self._worker: Optional[threading.Thread] = None

    def stream_batch(self, requests: List[Arrays], send: Callable[[int, Result, bool], None],
                     wait: bool = True) -> None:
        """Answer ``requests`` through ``send``: before returning (``wait``), or from the rounds thread."""
        results, parsed = self._parse(requests)
        streams: List[_Stream] = []
        for k, sentences in enumerate(parsed):
            if results[k] is not None:
                send(k, results[k], True)
            elif not sentences:
                send(k, self.synthesis.audio(np.zeros(0, np.float32)), True)
            else:
                streams.append(_Stream(k, sentences, send))
        if wait:
            while streams:
                streams = self._round(streams)
            return
        with self._lock:
            self._pending.extend(streams)
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="tts-stream-rounds", daemon=True)
                self._worker.start()

    def _serve(self) -> None:
        """Rounds until no stream is open or waiting; a round that fails as a whole ends its streams with the error."""
        open_: List[_Stream] = []
        while True:
            with self._lock:
                open_ += self._pending
                self._pending = []
                if not open_:
                    self._worker = None
                    return
            try:
                open_ = self._round(open_)
            except Exception as err:  # noqa: BLE001 - every open request gets the error, the thread goes on
                for st in open_:
                    st.answer(common.detached(RuntimeError(f"synthesis failed: {_short(err)}")), True)
                open_ = []

    def _round(self, open_: List[_Stream]) -> List[_Stream]:
        """FastPitch for every stream's next sentence not made yet, then one chunk of each: the streams left."""
        need = [st for st in open_ if st.current.spect is None]
        failed = set()
        for st, err in zip(need, self.synthesis.spectrograms([st.current for st in need])):
            if err is not None:
                st.answer(err, True)
                failed.add(id(st))
            else:
                first = self.chunk if st.sentences is st.first else self.largest
                st.parts = windows(st.current.spect.shape[1], first, self.synthesis.overlap, self.largest)
        open_ = [st for st in open_ if id(st) not in failed]
        jobs = [self.synthesis.window_jobs(st.current.spect, st.parts[:1])[0] for st in open_]
        answers = iter(self.synthesis.vocode([j for j in jobs if j[0].shape[1]]))  # a 0-frame sentence: no audio
        still = []
        for st, job in zip(open_, jobs):
            answer = next(answers) if job[0].shape[1] else {"audio": np.zeros(0, np.float32)}
            if isinstance(answer, Exception):
                st.answer(answer, True)
                continue
            st.parts = st.parts[1:]
            if not st.parts:
                st.sentences = st.sentences[1:]
            last = not st.sentences
            if answer["audio"].size or last:
                st.answer(self.synthesis.audio(answer["audio"]), last)
            if not last:
                still.append(st)
        return still

    def batch(self, requests: List[Arrays]) -> List[Result]:  # pragma: no cover - decoupled models stream
        raise RuntimeError("the streaming synthesizer answers with stream_batch")


HANDLERS: Dict[str, Callable[[str, Dict[str, str]], Handler]] = {
    "tts_preprocess": TtsPreprocess,
    "tts_synthesize": TtsSynthesize,
    "tts_synthesize_stream": TtsSynthesizeStream,
    "onnx": common.OnnxNetwork,
    "onnx_requests": common.OnnxRequests,
}


def create(name: str, folder: str, params: Dict[str, str]) -> Handler:
    return common.create_from(HANDLERS, name, folder, params)
