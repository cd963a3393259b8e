"""NeMo's mel-spectrogram featurizer (``AudioToMelSpectrogramPreprocessor`` in eval mode) as an ONNX graph
(:mod:`.acoustic` fuses it in front of a CTC acoustic model, so one graph goes from audio samples to log-probs).

What the graph computes, per row of a zero-padded batch (``length`` = valid samples of the row):

1. preemphasis ``y[t] = x[t] - preemph * x[t-1]`` (``y[0] = x[0]``), then samples at or beyond ``length`` zeroed
   (NeMo masks after preemphasis, so the sample just past the end does not leak ``-preemph * x[length-1]``);
2. a centred STFT (``n_fft // 2`` zeros each side, NeMo's ``pad_mode="constant"``) as one strided Conv with a fixed
   windowed DFT basis: ``samples // hop + 1`` frames; the window (symmetric, as ``torch.*_window(periodic=False)``)
   sits centred in ``n_fft``, so the Conv kernel only spans the window's ``win_length`` taps;
3. ``|X|^mag_power`` (re² + im², then ``^(mag_power / 2)``), the librosa Slaney mel filterbank as a MatMul, log with
   NeMo's add or clamp guard;
4. valid frames ``(length + 2 * (n_fft // 2) - n_fft) // hop`` (``samples // hop`` for an even ``n_fft``):
   normalization over the valid frames only (``per_feature``: mean and std, N−1, plus 1e-5, per mel band;
   ``all_features``: one mean and std per row), frames beyond the valid length set to ``pad_value``, the time axis
   padded to a multiple of ``pad_to`` when it is set.

Only Conv, MatMul, ReduceSum, Where, Range and elementwise ops: no STFT op, no loops, so ONNX Runtime and TensorRT
both take it. A row gives the same features in any batch as alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from servicemaker.errors import ValidationError

#: NeMo's additive constant for the normalization std
STD_EPS = 1e-5
#: NeMo's own names for "no normalization"
_NO_NORMALIZE = {None, False, "", "NA", "na", "none", "None"}
_NORMALIZE = ("per_feature", "all_features", "none")
_WINDOWS = ("hann", "hamming", "blackman", "bartlett")
#: keys of NeMo's preprocessor that do not change the features at inference (training-only or deprecated no-ops)
_IGNORED_KEYS = {"_target_", "dither", "nb_augmentation_prob", "nb_max_freq", "use_torchaudio", "rng", "use_grads",
                 "max_duration", "stft_conv", "stft_exact_pad"}
_HINT = "change the model's preprocessor settings, or build the featurizer with an override"
_ALIASES = {"nfilt": "features"}
#: the window and hop, in samples and in seconds
_PAIRS = (("n_window_size", "window_size"), ("n_window_stride", "window_stride"))


@dataclass(frozen=True)
class FeaturizerConfig:
    """NeMo's ``AudioToMelSpectrogramPreprocessor`` settings; fields left out take NeMo's defaults.

    ``window_size``/``window_stride`` are seconds; ``n_window_size``/``n_window_stride`` (samples) win when set.
    ``pad_to`` 0 means "no padding" (what ``transcribe()`` runs; NeMo's training default is 16).
    """

    sample_rate: int = 16000
    window_size: float | None = 0.02
    window_stride: float | None = 0.01
    n_window_size: int | None = None
    n_window_stride: int | None = None
    window: str = "hann"
    normalize: str = "per_feature"
    n_fft: int | None = None
    preemph: float | None = 0.97
    features: int = 64
    lowfreq: float = 0.0
    highfreq: float | None = None
    log: bool = True
    log_zero_guard_type: str = "add"
    log_zero_guard_value: float | str = 2 ** -24
    pad_to: int = 0
    frame_splicing: int = 1
    exact_pad: bool = False
    mag_power: float = 2.0
    mel_norm: str | None = "slaney"
    pad_value: float = 0.0

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValidationError("the ASR preprocessor settings are not supported", problems, hint=_HINT)

    @property
    def win_length(self) -> int:
        """Window length in samples (NeMo: ``int(window_size * sample_rate)`` unless ``n_window_size`` is set)."""
        if self.n_window_size:
            return int(self.n_window_size)
        return int(float(self.window_size or 0.0) * self.sample_rate)

    @property
    def hop_length(self) -> int:
        """Hop in samples (NeMo: ``int(window_stride * sample_rate)`` unless ``n_window_stride`` is set)."""
        if self.n_window_stride:
            return int(self.n_window_stride)
        return int(float(self.window_stride or 0.0) * self.sample_rate)

    @property
    def n_fft_(self) -> int:
        """The FFT size: ``n_fft``, or the next power of two of the window length."""
        return int(self.n_fft) if self.n_fft else 2 ** math.ceil(math.log2(self.win_length))

    @property
    def guard(self) -> float:
        """The log zero guard as a number (NeMo allows 'tiny' and 'eps' of float32)."""
        if self.log_zero_guard_value == "tiny":
            return float(np.finfo(np.float32).tiny)
        if self.log_zero_guard_value == "eps":
            return float(np.finfo(np.float32).eps)
        return float(self.log_zero_guard_value)

    def problems(self) -> list[str]:
        """Every setting this graph cannot reproduce, as readable strings."""
        out: list[str] = []
        if self.window not in _WINDOWS:
            out.append(f"window '{self.window}' is not supported (supported: {', '.join(_WINDOWS)})")
        if self.normalize not in _NORMALIZE:
            out.append(f"normalize '{self.normalize}' is not supported (supported: per_feature, all_features, "
                       "none/NA)")
        if self.log_zero_guard_type not in ("add", "clamp"):
            out.append(f"log_zero_guard_type '{self.log_zero_guard_type}' is not supported (supported: add, clamp)")
        if isinstance(self.log_zero_guard_value, str) and self.log_zero_guard_value not in ("tiny", "eps"):
            out.append(f"log_zero_guard_value '{self.log_zero_guard_value}' is neither a number nor tiny/eps")
        if self.exact_pad:
            out.append("exact_pad true (reflect padding, uncentred STFT) is not supported")
        if self.frame_splicing != 1:
            out.append(f"frame_splicing {self.frame_splicing} is not supported (only 1)")
        if self.mel_norm not in ("slaney", None):
            out.append(f"mel_norm '{self.mel_norm}' is not supported (supported: slaney, null)")
        if not isinstance(self.pad_to, int) or isinstance(self.pad_to, bool) or self.pad_to < 0:
            out.append(f"pad_to {self.pad_to!r} is not supported (a frame count >= 0; 'max' is a training setting)")
        if self.sample_rate <= 0 or self.features <= 0:
            out.append("sample_rate and features must be positive")
        if self.mag_power <= 0:
            out.append(f"mag_power {self.mag_power} must be positive")
        if out:
            return out
        if self.win_length <= 0 or self.hop_length <= 0:
            out.append(f"window {self.win_length} and hop {self.hop_length} samples must be positive")
        elif self.n_fft_ < self.win_length:
            out.append(f"n_fft {self.n_fft_} is shorter than the window ({self.win_length} samples)")
        high = self.highfreq or self.sample_rate / 2
        if not 0 <= self.lowfreq < high <= self.sample_rate / 2:
            out.append(f"the mel band {self.lowfreq}..{high} Hz does not fit 0..{self.sample_rate / 2} Hz")
        return out

    @classmethod
    def from_model_config(cls, cfg: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
                          ) -> FeaturizerConfig:
        """The featurizer of a NeMo ASR ``model_config.yaml`` (its ``preprocessor`` section), ``overrides`` winning.

        Accepts NeMo's spellings (``features``/``nfilt``, ``window_size``/``n_window_size``, ...). Raises
        :class:`ValidationError` for a missing section, unknown keys and settings the graph cannot reproduce.
        """
        section = cfg.get("preprocessor")
        if section is None and isinstance(cfg.get("model"), Mapping):
            section = cfg["model"].get("preprocessor")
        if not isinstance(section, Mapping):
            raise ValidationError("the model config has no preprocessor section",
                                  hint="an ASR model_config.yaml holds preprocessor: {_target_: "
                                       "...AudioToMelSpectrogramPreprocessor, ...}")
        target = str(section.get("_target_") or "")
        if target and not target.endswith("AudioToMelSpectrogramPreprocessor"):
            raise ValidationError(f"the preprocessor {target} is not supported",
                                  hint="only NeMo's AudioToMelSpectrogramPreprocessor is built as a graph")
        values = cls._canonical({k: _resolve(v, cfg) for k, v in section.items()})
        changes = cls._canonical(dict(overrides or {}))
        for samples, seconds in _PAIRS:     # an override in samples replaces the section's seconds, and back
            if samples in changes or seconds in changes:
                values.pop(samples, None)
                values.pop(seconds, None)
        values.update(changes)
        # NeMo takes samples or seconds, not both; seconds left at NeMo's default are not a conflict
        rate = int(values.get("sample_rate", 16000))
        for samples, seconds in _PAIRS:
            if not values.get(samples):
                continue
            if values.get(seconds) and int(float(values[seconds]) * rate) != int(values[samples]):
                raise ValidationError(f"the preprocessor sets both {seconds} {values[seconds]} and {samples} "
                                      f"{values[samples]}, which disagree", hint=f"keep only {samples}")
            values[seconds] = None
        return cls._typed(values)

    @classmethod
    def _canonical(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        """``raw`` keyed by field names (NeMo's aliases mapped, inference-free keys dropped); unknown keys refused."""
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        unknown: list[str] = []
        for key, value in raw.items():
            name = _ALIASES.get(key, key)
            if key in _IGNORED_KEYS:
                continue
            if name not in names:
                unknown.append(key)
            elif name in values and values[name] != value:
                raise ValidationError(f"the preprocessor sets {name} twice, differently ({values[name]!r} and "
                                      f"{value!r} as {key})", hint=_HINT)
            else:
                values[name] = value
        if unknown:
            raise ValidationError("the preprocessor has settings this featurizer does not know",
                                  [f"{k}: {raw[k]!r}" for k in sorted(unknown)],
                                  hint="remove them from the preprocessor section if they do not change the "
                                       "features at inference")
        return values

    @classmethod
    def _typed(cls, values: dict[str, Any]) -> FeaturizerConfig:
        """The config of canonical ``values``, NeMo's spellings of "no normalization" and of numbers mapped."""
        normalize = values.get("normalize", "per_feature")
        if not isinstance(normalize, (str, bool, type(None))):
            what = "with fixed_mean/fixed_std" if isinstance(normalize, Mapping) else repr(normalize)
            raise ValidationError(f"normalize {what} is not supported",
                                  hint="export a model that normalizes per_feature, all_features or not at all")
        if normalize in _NO_NORMALIZE:
            values["normalize"] = "none"
        if values.get("mel_norm") in ("None", "none"):
            values["mel_norm"] = None
        for key, kind in (("sample_rate", int), ("features", int), ("frame_splicing", int)):
            if isinstance(values.get(key), float) and float(values[key]).is_integer():
                values[key] = kind(values[key])
        return cls(**values)

    def with_overrides(self, **changes: Any) -> FeaturizerConfig:
        """A copy with ``changes`` (field names) applied, validated again."""
        return replace(self, **changes)


def _resolve(value: Any, cfg: Mapping[str, Any]) -> Any:
    """Resolve a plain OmegaConf reference such as ``${sample_rate}`` or ``${model.sample_rate}`` in ``cfg``."""
    if not (isinstance(value, str) and value.startswith("${") and value.endswith("}")):
        return value
    path = value[2:-1].split(".")
    for root in (cfg, {"model": cfg}):
        node: Any = root
        for part in path:
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            return node
    raise ValidationError(f"the preprocessor setting {value} cannot be resolved in the model config", hint=_HINT)


# ---------------------------------------------------------------------------------------------------------------------
# numpy constants: window, DFT basis, mel filterbank


def window(name: str, length: int) -> np.ndarray:
    """The symmetric window NeMo uses (``torch.<name>_window(length, periodic=False)``), float64."""
    if length == 1:
        return np.ones(1)
    phase = 2 * np.pi * np.arange(length) / (length - 1)
    if name == "hann":
        return 0.5 - 0.5 * np.cos(phase)
    if name == "hamming":
        return 0.54 - 0.46 * np.cos(phase)
    if name == "blackman":
        return 0.42 - 0.5 * np.cos(phase) + 0.08 * np.cos(2 * phase)
    if name == "bartlett":
        return 1 - np.abs(2 * np.arange(length) / (length - 1) - 1)
    raise ValueError(name)


def dft_basis(cfg: FeaturizerConfig) -> np.ndarray:
    """Conv weight ``[2 * (n_fft // 2 + 1), 1, win_length]``: the real then imaginary rows of the windowed DFT,
    restricted to the taps where the (centred, zero-padded to ``n_fft``) window is non-zero."""
    n_fft, win = cfg.n_fft_, cfg.win_length
    left = (n_fft - win) // 2
    taps = np.arange(left, left + win)
    bins = np.arange(n_fft // 2 + 1)
    angle = 2 * np.pi * np.outer(bins, taps) / n_fft
    w = window(cfg.window, win)
    basis = np.concatenate([np.cos(angle) * w, -np.sin(angle) * w])
    return basis[:, None, :].astype(np.float32)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (27 mels per factor 6.4)."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / (200.0 / 3)
    log_region = hz >= 1000.0
    return np.where(log_region, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * (200.0 / 3))


def mel_filterbank(cfg: FeaturizerConfig) -> np.ndarray:
    """``[features, n_fft // 2 + 1]`` triangular Slaney-scale filters (librosa's ``filters.mel`` with ``htk=False``;
    ``mel_norm='slaney'`` scales each to unit area), float32."""
    n_fft = cfg.n_fft_
    high = cfg.highfreq or cfg.sample_rate / 2
    fft_hz = np.linspace(0, cfg.sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(cfg.lowfreq), _hz_to_mel(high), cfg.features + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    bank = np.maximum(0.0, np.minimum(rising, falling))
    if cfg.mel_norm == "slaney":
        bank *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return bank.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# the graph


class _Graph:
    """A tiny builder: named constants and nodes, unique names from a counter."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self._helper, self._numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def const(self, name: str, value: Any, dtype: Any = None) -> str:
        array = np.asarray(value, dtype=dtype)
        self.initializers.append(self._numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        self._count += 1
        name = out or f"{op_type.lower()}_{self._count}"
        self.nodes.append(self._helper.make_node(op_type, list(inputs), [name], name=f"{op_type}_{self._count}",
                                                 **attrs))
        return name


def build_featurizer(cfg: FeaturizerConfig, opset: int = 17) -> Any:
    """The featurizer graph: ``audio_signal`` float32 ``[batch, samples]`` + ``length`` int64 ``[batch]`` →
    ``features`` float32 ``[batch, features, frames]`` + ``features_length`` int64 ``[batch]``."""
    import onnx
    from onnx import TensorProto, helper

    if opset < 13:
        raise ValidationError(f"the featurizer needs ONNX opset 13 or newer, not {opset}")
    g = _Graph()
    n_fft, hop, win = cfg.n_fft_, cfg.hop_length, cfg.win_length
    zero_i = g.const("zero_i64", 0, np.int64)
    one_i = g.const("one_i64", 1, np.int64)
    axis1 = g.const("axis_1", [1], np.int64)

    # valid samples mask [B, S] (Range over the sample axis against each row's length)
    shape = g.op("Shape", "audio_signal")
    n_samples = g.op("Gather", shape, one_i, axis=0)
    sample_idx = g.op("Range", zero_i, n_samples, one_i)
    length_col = g.op("Unsqueeze", "length", axis1)
    sample_ok = g.op("Less", sample_idx, length_col)

    # preemphasis as a 2-tap Conv (y[0] = x[0]), then masked past each row's end
    signal = g.op("Unsqueeze", "audio_signal", axis1)                                     # [B, 1, S]
    if cfg.preemph:
        kernel = g.const("preemph_kernel", [[[-float(cfg.preemph), 1.0]]], np.float32)
        signal = g.op("Conv", signal, kernel, kernel_shape=[2], pads=[1, 0])
    zero_f = g.const("zero_f32", 0.0, np.float32)
    signal = g.op("Where", g.op("Unsqueeze", sample_ok, axis1), signal, zero_f)

    # centred STFT as a strided Conv over the window's taps: samples // hop + 1 frames
    left = n_fft // 2 - (n_fft - win) // 2
    basis = g.const("stft_basis", dft_basis(cfg))
    spec = g.op("Conv", signal, basis, kernel_shape=[win], strides=[hop], pads=[left, win - left])
    squared = g.op("Mul", spec, spec)                                                      # [B, 2F, T]
    n_bins = n_fft // 2 + 1
    real = g.op("Slice", squared, g.const("re_start", [0], np.int64), g.const("re_end", [n_bins], np.int64), axis1)
    imag = g.op("Slice", squared, g.const("im_start", [n_bins], np.int64),
                g.const("im_end", [2 * n_bins], np.int64), axis1)
    power = g.op("Add", real, imag)                                                        # |X|^2
    if cfg.mag_power == 1.0:
        power = g.op("Sqrt", power)
    elif cfg.mag_power != 2.0:
        power = g.op("Pow", power, g.const("half_mag_power", cfg.mag_power / 2, np.float32))
    mel = g.op("MatMul", g.const("mel_filterbank", mel_filterbank(cfg)), power)         # [B, M, T]
    if cfg.log:
        guard = g.const("log_guard", cfg.guard, np.float32)
        mel = g.op("Log", g.op("Add" if cfg.log_zero_guard_type == "add" else "Max", mel, guard))

    # valid frames: (length + 2 * (n_fft // 2) - n_fft) // hop, never negative
    offset = g.const("frames_offset", 2 * (n_fft // 2) - n_fft, np.int64)
    shifted = g.op("Max", g.op("Add", "length", offset), zero_i)
    frames_len = g.op("Div", shifted, g.const("hop", hop, np.int64), out="features_length")
    mel_shape = g.op("Shape", mel)
    n_frames = g.op("Gather", mel_shape, g.const("two_i64", 2, np.int64), axis=0)
    frame_idx = g.op("Range", zero_i, n_frames, one_i)
    frame_ok = g.op("Unsqueeze", g.op("Less", frame_idx, g.op("Unsqueeze", frames_len, axis1)), axis1)  # [B,1,T]

    if cfg.normalize != "none":
        mel = _normalize(g, cfg, mel, frame_ok, frames_len, zero_f)
    pad_value = g.const("pad_value", float(cfg.pad_value), np.float32)
    out_name = None if cfg.pad_to else "features"
    mel = g.op("Where", frame_ok, mel, pad_value, out=out_name)
    if cfg.pad_to:
        pad_to = g.const("pad_to", [cfg.pad_to], np.int64)
        extra = g.op("Mod", g.op("Sub", pad_to, g.op("Mod", g.op("Unsqueeze", n_frames, g.const("axis_0", [0],
                                                                                               np.int64)), pad_to)),
                     pad_to)
        pads = g.op("Concat", g.const("no_pads", [0] * 5, np.int64), extra, axis=0)
        g.op("Pad", mel, pads, pad_value, mode="constant", out="features")

    inputs = [helper.make_tensor_value_info("audio_signal", TensorProto.FLOAT, ["batch", "samples"]),
              helper.make_tensor_value_info("length", TensorProto.INT64, ["batch"])]
    outputs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", cfg.features, "frames"]),
               helper.make_tensor_value_info("features_length", TensorProto.INT64, ["batch"])]
    used = {name for node in g.nodes for name in node.input}
    graph = helper.make_graph(g.nodes, "nemo_mel_featurizer", inputs, outputs,
                              [t for t in g.initializers if t.name in used])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="servicemaker")
    # the oldest IR the opset allows, so older ONNX Runtimes load it too; fuse() raises it to the model's
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    model.doc_string = f"NeMo AudioToMelSpectrogramPreprocessor (eval): {cfg}"
    onnx.checker.check_model(model, full_check=True)
    return model


def _normalize(g: _Graph, cfg: FeaturizerConfig, mel: str, frame_ok: str, frames_len: str, zero_f: str) -> str:
    """(x - mean) / (std + 1e-5) over the valid frames: per mel band, or over the whole row (``all_features``).
    Rows with fewer than two valid frames get std 0 (NeMo: NaN, then 0); rows without any give no NaN here
    (NeMo's are NaN, but every frame of such a row is padding anyway)."""
    one_f = g.const("one_f32", 1.0, np.float32)
    axes = g.const("norm_axes", [2] if cfg.normalize == "per_feature" else [1, 2], np.int64)
    count = g.op("Cast", g.op("Unsqueeze", g.op("Unsqueeze", frames_len, g.const("axis_u1", [1], np.int64)),
                              g.const("axis_u2", [2], np.int64)), to=1)                   # [B, 1, 1] float
    if cfg.normalize == "all_features":
        count = g.op("Mul", count, g.const("n_mels_f32", float(cfg.features), np.float32))
    masked = g.op("Where", frame_ok, mel, zero_f)
    mean = g.op("Div", g.op("ReduceSum", masked, axes, keepdims=1), g.op("Max", count, one_f))
    centred = g.op("Where", frame_ok, g.op("Sub", mel, mean), zero_f)
    sum_sq = g.op("ReduceSum", g.op("Mul", centred, centred), axes, keepdims=1)
    var = g.op("Div", sum_sq, g.op("Max", g.op("Sub", count, one_f), one_f))
    std = g.op("Add", g.op("Sqrt", var), g.const("std_eps", STD_EPS, np.float32))
    return g.op("Div", g.op("Sub", mel, mean), std)
