"""A real, trained speech-recognition sample: a small QuartzNet-style character CTC model trained on speech that
espeak-ng synthesizes, exported the way NeMo exports ``EncDecCTCModel`` and packed as a ``.riva``.

    asr_export(Path("speech_recognition.riva"))   # trains once (≈ 2.5 min, one core), then reads the cache

- **Speech**: :func:`~servicemaker.samples.espeak.synthesize` (espeak-ng from the ``espeakng-loader`` wheel,
  deterministic), resampled to 16 kHz.
- **Data**: random sequences of 1–4 words (digits and a few commands). Training voices, speeds and pitches differ
  from the held-out ones (:func:`held_out_utterances`), so the held-out WER measures generalization.
- **Features**: computed by servicemaker's own featurizer graph (:mod:`servicemaker.speech.featurizer`) in ONNX
  Runtime, so the model is trained on exactly what a deployed pipeline feeds it.
- **Model**: QuartzNet-style time-channel separable convolutions with NeMo's masking (every convolution sees zeros
  beyond a row's valid length), so a row of a padded batch gives the same logprobs as alone.
- **Determinism**: fixed seeds, deterministic algorithms, single-threaded data preparation and training.
  The trained graph, weights and held-out WER are cached under ``$SERVICEMAKER_CACHE`` (default
  ``~/.cache/servicemaker/samples``), keyed by this file's, the synthesizer's and the featurizer's sources and the seed; an export
  reads the same graph bytes whether it trained or not.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from servicemaker.deploy.accuracy import word_error_rate
from servicemaker.samples.espeak import synthesize
from servicemaker.samples.export import binary_artifact, text_artifact, write_export

SEED = 20261121
SAMPLE_RATE = 16000
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
         "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
#: NeMo's English character vocabulary; the CTC blank is the extra last class (index ``len(LABELS)``)
LABELS = [" "] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["'"]
BLANK = len(LABELS)

#: espeak-ng voices (``language+variant``), speeds (words per minute) and pitches (0–100); held-out ones are unseen
TRAIN_VOICES = ("en-us", "en-us+m1", "en-us+m3", "en-us+f2", "en-us+f4", "en-us+klatt", "en+m2", "en+m6",
                "en+f1", "en+f5", "en-029+m8", "en-gb-x-rp+f2")
TRAIN_SPEEDS = (120, 140, 165, 190, 215)
TRAIN_PITCHES = (25, 40, 55, 70, 85)
HELD_OUT_VOICES = ("en-us+m5", "en+f3", "en-us+m7", "en+m4")
HELD_OUT_SPEEDS = (130, 155, 180, 200)
HELD_OUT_PITCHES = (33, 48, 62, 78)
N_TRAIN = 3000
N_HELD_OUT = 300

#: NeMo QuartzNet's preprocessor settings (inference turns dither and pad_to off)
PREPROCESSOR = {
    "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
    "sample_rate": SAMPLE_RATE, "normalize": "per_feature", "window_size": 0.02, "window_stride": 0.01,
    "window": "hann", "features": 64, "n_fft": 512, "frame_splicing": 1, "dither": 1.0e-5, "pad_to": 16,
    "stft_conv": False,
}
#: (kernel, repeats) of the residual blocks, all at CHANNELS; the prologue has kernel 11 and stride 2
BLOCKS = ((13, 2), (15, 2), (17, 2), (21, 2))
#: (kernel, dilation) of the separable epilogue
EPILOGUE_CONV = (15, 2)
CHANNELS = 96
EPILOGUE = 256
STRIDE = 2
EPOCHS = 10
BATCH = 32
#: training runs on one thread: the weights then do not depend on the machine's cores, and a busy machine does not
#: stall it (oversubscribed OpenMP threads spin: 2 threads on 2 busy cores ran 10x slower than 1)
THREADS = 1


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- data --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Utterance:
    text: str
    voice: str
    speed: int
    pitch: int

    def audio(self) -> np.ndarray:
        return synthesize(self.text, voice=self.voice, speed=self.speed, pitch=self.pitch)


def _utterances(n: int, seed: int, voices: Sequence[str], speeds: Sequence[int],
                pitches: Sequence[int]) -> list[Utterance]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
        out.append(Utterance(words, rng.choice(voices), rng.choice(speeds), rng.choice(pitches)))
    return out


def train_utterances(n: int = N_TRAIN, seed: int = SEED) -> list[Utterance]:
    return _utterances(n, seed, TRAIN_VOICES, TRAIN_SPEEDS, TRAIN_PITCHES)


def held_out_set(n: int = N_HELD_OUT) -> list[Utterance]:
    """The held-out utterances: voices, speeds and pitches that training never hears (independent of the seed)."""
    return _utterances(n, SEED + 1, HELD_OUT_VOICES, HELD_OUT_SPEEDS, HELD_OUT_PITCHES)


def held_out_utterances(n: int = 20) -> list[tuple[str, np.ndarray]]:
    """``n`` held-out ``(text, 16 kHz float32 audio)`` pairs, always the same ones (for tests and benchmarks)."""
    return [(u.text, u.audio()) for u in held_out_set(n)]


def model_config() -> dict[str, Any]:
    """``model_config.yaml`` as NeMo writes it for an EncDecCTCModel (the parts that describe this model)."""
    return {
        "target": "nemo.collections.asr.models.ctc_models.EncDecCTCModel",
        "sample_rate": SAMPLE_RATE,
        "labels": list(LABELS),
        "preprocessor": dict(PREPROCESSOR),
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConvASREncoder",
            "feat_in": PREPROCESSOR["features"],
            "activation": "relu",
            "conv_mask": True,
            "description": "QuartzNet-style: separable prologue (kernel 11, stride 2), residual blocks of "
                           f"separable convolutions, separable epilogue (kernel {EPILOGUE_CONV[0]}, dilation "
                           f"{EPILOGUE_CONV[1]}), 1x1 conv",
            "stride": STRIDE,
            "jasper": ([{"filters": CHANNELS, "repeat": 1, "kernel": [11], "stride": [STRIDE], "dilation": [1],
                         "residual": False, "separable": True}]
                       + [{"filters": CHANNELS, "repeat": r, "kernel": [k], "stride": [1], "dilation": [1],
                           "residual": True, "separable": True} for k, r in BLOCKS]
                       + [{"filters": CHANNELS, "repeat": 1, "kernel": [EPILOGUE_CONV[0]], "stride": [1],
                           "dilation": [EPILOGUE_CONV[1]], "residual": False, "separable": True},
                          {"filters": EPILOGUE, "repeat": 1, "kernel": [1], "stride": [1], "dilation": [1],
                           "residual": False, "separable": False}]),
        },
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": EPILOGUE,
                    "num_classes": len(LABELS), "vocabulary": list(LABELS)},
    }


# --- features ----------------------------------------------------------------------------------------------------------

def _featurizer_graph():
    """servicemaker's featurizer of :func:`model_config`, as ``transcribe()`` runs it (no dither, no ``pad_to``)."""
    from servicemaker.speech.featurizer import FeaturizerConfig, build_featurizer

    return build_featurizer(FeaturizerConfig.from_model_config(model_config(), overrides={"pad_to": 0}), opset=17)


def _ort_session(model, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def compute_features(audios: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Log-mel features ``[n_mels, frames]`` of each utterance, by servicemaker's featurizer graph (one at a time,
    single-threaded: exactly what it computes for an unpadded request)."""
    session = _ort_session(_featurizer_graph())
    out = []
    for audio in audios:
        feats, length = session.run(["features", "features_length"],
                                    {"audio_signal": audio[None, :].astype(np.float32),
                                     "length": np.array([audio.shape[0]], np.int64)})
        out.append(np.ascontiguousarray(feats[0, :, : int(length[0])]))
    return out


# --- model -------------------------------------------------------------------------------------------------------------

def _time_mask(lengths: torch.Tensor, frames: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, frames]: 1 on each row's valid frames, 0 beyond."""
    steps = torch.arange(frames, device=lengths.device)
    return (steps[None, :] < lengths[:, None]).unsqueeze(1).to(dtype)


class MaskedConv1d(nn.Conv1d):
    """A Conv1d that zeroes every frame beyond a row's valid length before convolving (NeMo's MaskedConv1d), so
    padding never leaks into valid frames; ``forward(x, lengths) -> (y, new lengths)``."""

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore
        y = super().forward(x * _time_mask(lengths, x.shape[2], x.dtype))
        k, s, p, d = self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0]
        if s == 1 and 2 * p == d * (k - 1):
            return y, lengths
        return y, torch.div(lengths + 2 * p - d * (k - 1) - 1, s, rounding_mode="floor") + 1


class SeparableConv(nn.Module):
    """Depthwise (masked) over time, then pointwise over channels, then batch norm."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.depthwise = MaskedConv1d(c_in, c_in, kernel, stride=stride, dilation=dilation,
                                      padding=dilation * (kernel // 2), groups=c_in, bias=False)
        self.pointwise = nn.Conv1d(c_in, c_out, 1, bias=False)
        self.norm = nn.BatchNorm1d(c_out)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.depthwise(x, lengths)
        return self.norm(self.pointwise(x)), lengths


class Block(nn.Module):
    """``repeat`` separable convolutions with ReLU; a 1x1 conv + batch norm residual joins before the last ReLU."""

    def __init__(self, channels: int, kernel: int, repeat: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(SeparableConv(channels, channels, kernel) for _ in range(repeat))
        self.residual = nn.Sequential(nn.Conv1d(channels, channels, 1, bias=False), nn.BatchNorm1d(channels))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        y = x
        for i, conv in enumerate(self.convs):
            y, _ = conv(y, lengths)
            if i == len(self.convs) - 1:
                y = y + self.residual(x)
            y = torch.relu(y)
        return y


class QuartzNetCTC(nn.Module):
    """``forward(audio_signal [B, n_mels, T], length [B]) -> logprobs [B, ceil(T/2), len(LABELS)+1]``."""

    def __init__(self, features: int = PREPROCESSOR["features"], classes: int = len(LABELS) + 1) -> None:
        super().__init__()
        self.prologue = SeparableConv(features, CHANNELS, 11, stride=STRIDE)
        self.blocks = nn.ModuleList(Block(CHANNELS, k, r) for k, r in BLOCKS)
        self.epilogue = SeparableConv(CHANNELS, CHANNELS, EPILOGUE_CONV[0], dilation=EPILOGUE_CONV[1])
        self.project = nn.Sequential(nn.Conv1d(CHANNELS, EPILOGUE, 1, bias=False), nn.BatchNorm1d(EPILOGUE))
        self.decoder = nn.Conv1d(EPILOGUE, classes, 1)

    def forward(self, audio_signal: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        x, lengths = self.prologue(audio_signal, length)
        x = torch.relu(x)
        for block in self.blocks:
            x = block(x, lengths)
        x, _ = self.epilogue(x, lengths)
        x = torch.relu(self.project(torch.relu(x)))
        return torch.log_softmax(self.decoder(x).transpose(1, 2), dim=-1)

    @staticmethod
    def output_lengths(length: torch.Tensor) -> torch.Tensor:
        return torch.div(length + STRIDE - 1, STRIDE, rounding_mode="floor")


def export_graph(model: nn.Module) -> bytes:
    """ONNX bytes as NeMo exports a CTC model: torch's TorchScript-based exporter, opset 17, dynamic batch/time."""
    model.eval()
    args = (torch.randn(2, PREPROCESSOR["features"], 40), torch.tensor([40, 27], dtype=torch.int64))
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, buf, input_names=["audio_signal", "length"], output_names=["logprobs"],
                          dynamic_axes={"audio_signal": {0: "batch", 2: "time"}, "length": {0: "batch"},
                                        "logprobs": {0: "batch", 1: "time"}},
                          opset_version=17, dynamo=False)
    return buf.getvalue()


# --- decoding and scoring ----------------------------------------------------------------------------------------------

def greedy_decode(logprobs: np.ndarray) -> str:
    """Greedy CTC: argmax per frame, collapse repeats, drop blanks, join the characters."""
    best = logprobs.argmax(-1)
    chars, prev = [], BLANK
    for idx in best.tolist():
        if idx != prev and idx != BLANK:
            chars.append(LABELS[idx])
        prev = idx
    return " ".join("".join(chars).split())


def transcribe(graph: bytes, features: Sequence[np.ndarray]) -> list[str]:
    """Greedy transcripts of ``features`` (each ``[n_mels, frames]``) by the exported graph in ONNX Runtime."""
    session = _ort_session(graph)
    out = []
    for f in features:
        (logprobs,) = session.run(["logprobs"], {"audio_signal": f[None].astype(np.float32),
                                                 "length": np.array([f.shape[1]], np.int64)})
        out.append(greedy_decode(logprobs[0]))
    return out


# --- training ----------------------------------------------------------------------------------------------------------

@dataclass
class TrainedAsr:
    """The trained sample: its torch model (eval mode), exported graph, config and held-out WER."""

    model: QuartzNetCTC
    graph: bytes
    config: dict[str, Any]
    wer: float
    held_out: int
    train_seconds: float
    parameters: int
    seed: int
    cached: bool = False


def _encode(text: str) -> list[int]:
    return [LABELS.index(c) for c in text]


def _batches(lengths: Sequence[int], batch: int, gen: torch.Generator) -> list[list[int]]:
    """Utterances sorted by length and cut into batches (little padding), in a seeded random order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    chunks = [order[i:i + batch] for i in range(0, len(order), batch)]
    return [chunks[i] for i in torch.randperm(len(chunks), generator=gen).tolist()]


def _spec_augment(x: torch.Tensor, lengths: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Two frequency masks (≤ 8 bands) and two time masks (≤ 10 frames) per row, drawn from ``gen``."""
    x = x.clone()
    n_mels = x.shape[1]
    for b in range(x.shape[0]):
        for _ in range(2):
            w = int(torch.randint(0, 9, (1,), generator=gen))
            f0 = int(torch.randint(0, n_mels - w + 1, (1,), generator=gen))
            x[b, f0:f0 + w, :] = 0.0
            w = int(torch.randint(0, 11, (1,), generator=gen))
            t0 = int(torch.randint(0, max(1, int(lengths[b]) - w + 1), (1,), generator=gen))
            x[b, :, t0:t0 + w] = 0.0
    return x


def _pad(features: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([f.shape[1] for f in features], dtype=torch.int64)
    x = torch.zeros(len(features), features[0].shape[0], int(lengths.max()))
    for i, f in enumerate(features):
        x[i, :, : f.shape[1]] = torch.from_numpy(f)
    return x, lengths


@contextmanager
def _deterministic_torch(threads: int) -> Iterator[None]:
    """Deterministic algorithms and a fixed thread count for the block, restored afterwards."""
    import torch.utils.deterministic as det

    prev = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    det.fill_uninitialized_memory = False  # a debugging aid that costs half the step time here; nothing reads it
    try:
        yield
    finally:
        torch.set_num_threads(prev[0])
        torch.use_deterministic_algorithms(prev[1])
        det.fill_uninitialized_memory = prev[2]


def _fit(model: QuartzNetCTC, features: list[np.ndarray], texts: list[str], seed: int, epochs: int,
         log: Callable[[str], None]) -> None:
    gen = torch.Generator().manual_seed(seed)
    lengths = [f.shape[1] for f in features]
    targets = [torch.tensor(_encode(t), dtype=torch.int64) for t in texts]
    steps = epochs * math.ceil(len(features) / BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    ctc = nn.CTCLoss(blank=BLANK, zero_infinity=True)
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        total, count = 0.0, 0
        for idx in _batches(lengths, BATCH, gen):
            x, x_len = _pad([features[i] for i in idx])
            x = _spec_augment(x, x_len, gen)
            logprobs = model(x, x_len)
            y = torch.cat([targets[i] for i in idx])
            y_len = torch.tensor([len(targets[i]) for i in idx], dtype=torch.int64)
            loss = ctc(logprobs.transpose(0, 1), y, model.output_lengths(x_len), y_len)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        log(f"  epoch {epoch + 1}/{epochs}: CTC loss {total / count:.3f} ({time.perf_counter() - started:.0f} s)")
    model.eval()


def train_asr_sample(seed: int = SEED, *, epochs: int = EPOCHS, use_cache: bool = True,
                     log: Callable[[str], None] = _log) -> TrainedAsr:
    """Train (or read from the cache) the sample ASR model, and score its exported graph on the held-out set."""
    key = cache_key(seed, epochs)
    if use_cache:
        hit = _load_cached(key)
        if hit is not None:
            log(f"Using the trained ASR sample from {_cache_root() / key} (held-out WER {hit.wer:.1%})")
            return hit
    started = time.perf_counter()
    train = train_utterances(N_TRAIN, seed)
    held = held_out_set(N_HELD_OUT)
    log(f"Synthesizing {len(train)} training and {len(held)} held-out utterances with espeak-ng ...")
    train_audio = [u.audio() for u in train]
    held_audio = [u.audio() for u in held]
    log(f"Computing features with servicemaker's featurizer graph ({time.perf_counter() - started:.0f} s) ...")
    train_feats = compute_features(train_audio)
    held_feats = compute_features(held_audio)
    with _deterministic_torch(THREADS):
        torch.manual_seed(seed)
        model = QuartzNetCTC()
        params = sum(p.numel() for p in model.parameters())
        log(f"Training a QuartzNet-style CTC model ({params / 1e3:.0f} k parameters) for {epochs} epochs "
            f"({time.perf_counter() - started:.0f} s) ...")
        _fit(model, train_feats, [u.text for u in train], seed, epochs, log)
        graph = export_graph(model)
    wer = word_error_rate([u.text for u in held], transcribe(graph, held_feats))
    seconds = time.perf_counter() - started
    log(f"Finished training in {seconds:.1f} s; held-out WER {wer:.1%} ({len(held)} utterances, unseen voices)")
    result = TrainedAsr(model, graph, model_config(), wer, len(held), seconds, params, seed)
    if use_cache:
        _store_cached(key, result)
    return result


# --- cache -------------------------------------------------------------------------------------------------------------

def _cache_root() -> Path:
    env = os.environ.get("SERVICEMAKER_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "servicemaker" / "samples"


def cache_key(seed: int = SEED, epochs: int = EPOCHS) -> str:
    """``asr-<hash>`` of this file's, the synthesizer's and the featurizer's sources, the seed and the epochs."""
    from servicemaker.speech import featurizer

    h = hashlib.sha256()
    from servicemaker.samples import espeak

    for source in (Path(__file__), Path(espeak.__file__), Path(featurizer.__file__)):
        h.update(source.read_bytes())
    h.update(f"seed={seed} epochs={epochs} torch={torch.__version__}".encode())
    return f"asr-{h.hexdigest()[:16]}"


def _store_cached(key: str, result: TrainedAsr) -> None:
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        (tmp / "model_graph.onnx").write_bytes(result.graph)
        torch.save(result.model.state_dict(), tmp / "weights.pt")
        meta = {"wer": result.wer, "held_out": result.held_out, "train_seconds": result.train_seconds,
                "parameters": result.parameters, "seed": result.seed}
        (tmp / "result.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.rename(tmp, root / key)
        except OSError:  # another process stored it first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_cached(key: str) -> TrainedAsr | None:
    folder = _cache_root() / key
    try:
        meta = json.loads((folder / "result.json").read_text())
        graph = (folder / "model_graph.onnx").read_bytes()
        model = QuartzNetCTC()
        model.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
    except (OSError, ValueError, RuntimeError, KeyError):
        return None
    return TrainedAsr(model.eval(), graph, model_config(), meta["wer"], meta["held_out"], meta["train_seconds"],
                      meta["parameters"], meta["seed"], cached=True)


# --- export ------------------------------------------------------------------------------------------------------------

def asr_export(out: str | Path, *, seed: int = SEED, trained: TrainedAsr | None = None, **write_kw: Any) -> Path:
    """Write the trained sample as a NeMo EncDecCTCModel ``.riva`` (``model_graph.onnx`` + ``model_config.yaml``),
    training it first unless the cache has it. ``write_kw`` goes to :func:`write_export` (``key=``, ...)."""
    trained = trained or train_asr_sample(seed)
    config = yaml.safe_dump(trained.config, sort_keys=False)
    path = write_export(out, "nemo.collections.asr.models.EncDecCTCModel",
                        [binary_artifact("model_graph.onnx", trained.graph, "acoustic model", onnx=True),
                         text_artifact("model_config.yaml", config, "model config")], **write_kw)
    _log(f"ASR sample {path.name}: held-out WER {trained.wer:.1%} ({trained.held_out} utterances of unseen voices, "
         "speeds and pitches)")
    return path
