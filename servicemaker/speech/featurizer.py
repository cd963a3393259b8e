"""NeMo's mel-spectrogram featurizer (``AudioToMelSpectrogramPreprocessor`` in eval mode) as an ONNX graph, and its
fusion in front of a CTC acoustic model, so one graph goes from audio samples to log-probabilities.

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


# ---------------------------------------------------------------------------------------------------------------------
# the acoustic model: its interface, its time stride, and the fused graph

_FLOATS = {1, 10, 11, 16}      # float32, float16, float64, bfloat16
_INTS = {6, 7}                  # int32, int64


@dataclass(frozen=True)
class AcousticInterface:
    """Where a CTC acoustic model takes its features and gives its log-probabilities."""

    features: Any                 # the rank-3 float input [batch, n_mels, frames]
    length: Any | None            # its rank-1 integer input (frames per row), when it has one
    logprobs: Any | None          # the first rank-3 float output [batch, frames', classes]
    encoded_lengths: Any | None   # a rank-1 integer output (frames' per row), when it has one
    problems: tuple[str, ...]


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim]


def _describe(value_info: Any) -> str:
    from onnx import helper

    kind = helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type).name
    return f"{value_info.name} {kind} {_dims(value_info)}"


def acoustic_interface(model: Any) -> AcousticInterface:
    """Find the feature and length inputs and the log-prob and length outputs of ``model``; problems as strings."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    problems: list[str] = []

    def kind(v: Any) -> tuple[int, int]:
        return v.type.tensor_type.elem_type, len(v.type.tensor_type.shape.dim)

    feats = [v for v in inputs if kind(v)[0] in _FLOATS and kind(v)[1] == 3]
    lens = [v for v in inputs if kind(v)[0] in _INTS and kind(v)[1] == 1]
    others = [v for v in inputs if v not in feats and v not in lens]
    if not feats:
        problems.append("the graph has no rank-3 float input [batch, features, frames] for the mel features "
                        f"(inputs: {', '.join(_describe(v) for v in inputs) or 'none'})")
    elif len(feats) > 1:
        problems.append(f"the graph has {len(feats)} rank-3 float inputs ({', '.join(v.name for v in feats)}); "
                        "a CTC acoustic model takes one: the mel features")
    if len(lens) > 1:
        problems.append(f"the graph has {len(lens)} rank-1 integer inputs ({', '.join(v.name for v in lens)}); "
                        "a CTC acoustic model takes at most one: the feature length")
    for v in others:
        problems.append(f"graph input {_describe(v)} is neither the features [batch, features, frames] nor "
                        "their length [batch]")
    outs = list(model.graph.output)
    logits = [v for v in outs if kind(v)[0] in _FLOATS and kind(v)[1] == 3]
    out_lens = [v for v in outs if kind(v)[0] in _INTS and kind(v)[1] == 1]
    if not logits:
        problems.append("the graph has no rank-3 float output [batch, frames, classes] for the log-probabilities "
                        f"(outputs: {', '.join(_describe(v) for v in outs) or 'none'})")
    for v in feats[:1] + logits[:1]:
        dims = _dims(v)
        if isinstance(dims[0], int) and dims[0] > 0:
            problems.append(f"{v.name} has a fixed batch size {dims[0]}; export with a dynamic batch axis")
    if feats:
        frames = _dims(feats[0])[2]
        if isinstance(frames, int) and frames > 0:
            problems.append(f"{feats[0].name} has a fixed number of frames {frames}; export with a dynamic time "
                            "axis")
    named = [v for v in out_lens if "len" in v.name.lower()]
    return AcousticInterface(feats[0] if feats else None, lens[0] if lens else None,
                             logits[0] if logits else None, (named or out_lens or [None])[0], tuple(problems))


def check_acoustic_model(acoustic_model: Any, cfg: FeaturizerConfig) -> list[str]:
    """Why ``acoustic_model`` cannot take the features ``cfg`` makes, as readable strings; empty when it fits."""
    face = acoustic_interface(acoustic_model)
    problems = list(face.problems)
    if face.features is not None:
        want = _dims(face.features)[1]
        if isinstance(want, int) and want > 0 and want != cfg.features:
            problems.append(f"the graph expects {want} features but the preprocessor makes {cfg.features}")
    return problems


def _require(face: AcousticInterface) -> None:
    if face.problems:
        raise ValidationError("the graph does not look like a CTC acoustic model", list(face.problems),
                              hint="export the model's encoder and CTC decoder (NeMo: model.export('x.onnx'))")


def time_stride(acoustic_model: Any) -> int:
    """The acoustic model's time subsampling: run it in ONNX Runtime on 64 and 128 frames of zeros and compare the
    frames of its log-probabilities."""
    import onnxruntime as ort
    from onnx import helper

    face = acoustic_interface(acoustic_model)
    _require(face)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(acoustic_model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    n_mels = _dims(face.features)[1]
    n_mels = n_mels if isinstance(n_mels, int) and n_mels > 0 else 80
    shapes = []
    for frames in (64, 128):
        feeds = {face.features.name: np.zeros((1, n_mels, frames), dtype=np.float32)}
        if face.length is not None:
            dtype = helper.tensor_dtype_to_np_dtype(face.length.type.tensor_type.elem_type)
            feeds[face.length.name] = np.array([frames], dtype=dtype)
        try:
            out = session.run([face.logprobs.name], feeds)[0]
        except Exception as err:  # noqa: BLE001 - ONNX Runtime raises its own exception types
            raise ValidationError(f"the acoustic model does not run on {frames} frames of features: {err}",
                                  hint="check the graph with svc-inspect; it must take [batch, features, frames]")
        shapes.append(out.shape)
    grown = [i for i in (1, 2) if shapes[1][i] != shapes[0][i]]
    if not grown or shapes[1][grown[0]] <= shapes[0][grown[0]]:
        raise ValidationError(f"the output {face.logprobs.name} does not grow with the input frames (64 frames → "
                              f"{list(shapes[0])}, 128 → {list(shapes[1])}): not a CTC acoustic model",
                              hint="export the model with a dynamic time axis")
    return max(1, round(64 / (shapes[1][grown[0]] - shapes[0][grown[0]])))


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _same_ops(model: Any, a: int, b: int) -> bool:
    """Every default-domain op of ``model`` has the same definition at opset ``a`` as at ``b``."""
    from onnx import defs

    try:
        return all(defs.get_schema(n.op_type, a, "").since_version == defs.get_schema(n.op_type, b, "").since_version
                   for n in model.graph.node if n.domain in ("", "ai.onnx"))
    except defs.SchemaError:
        return False


def _set_opset(model: Any, version: int) -> Any:
    from onnx import ModelProto, version_converter

    if _opset(model) == version:
        return model
    if _same_ops(model, _opset(model), version):
        copy = ModelProto()
        copy.CopyFrom(model)
        for o in copy.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = version
        return copy
    return version_converter.convert_version(model, version)


def _rename(graph: Any, old: str, new: str) -> None:
    """Rename the tensor ``old`` to ``new`` everywhere in ``graph`` (and the inputs of its subgraphs)."""
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename(sub, old, new)
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        if v.name == old:
            v.name = new
    for t in graph.initializer:
        if t.name == old:
            t.name = new


def _names(graph: Any) -> set[str]:
    names = {n for node in graph.node for n in list(node.input) + list(node.output)}
    return names | {v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info)} | {
        t.name for t in graph.initializer}


def fuse(featurizer: Any, acoustic_model: Any, stride: int) -> Any:
    """One graph from audio to log-probabilities: ``audio_signal`` float32 ``[B, S]`` and ``length`` int64 ``[B]``
    in; the acoustic model's outputs and ``encoded_lengths`` int64 ``[B]`` (the model's own length output, or
    ``ceil(features_length / stride)``) out. The model's feature input (rank 3) takes ``features``, its length
    input (rank 1, when it has one) ``features_length``. The featurizer's names get the prefix ``featurizer/``.

    The result keeps the acoustic model's opset and IR version: the featurizer is relabelled to the model's opset
    when its ops read the same there (they do from opset 16 on), else the older of the two is converted up
    (``onnx.version_converter``). ``acoustic_model`` itself is left unchanged."""
    import onnx
    from onnx import TensorProto, compose, helper

    if stride < 1:
        raise ValidationError(f"the time stride must be a positive integer, not {stride}")
    face = acoustic_interface(acoustic_model)
    _require(face)
    n_mels = _dims(featurizer.graph.output[0])[1]
    want = _dims(face.features)[1]
    if isinstance(want, int) and want > 0 and isinstance(n_mels, int) and want != n_mels:
        raise ValidationError(f"the graph expects {want} features but the preprocessor makes {n_mels}",
                              hint="the model config's preprocessor must be the one the model was trained with")

    am = onnx.ModelProto()
    am.CopyFrom(acoustic_model)
    feat = compose.add_prefix(featurizer, "featurizer/")
    if _opset(feat) > _opset(am) and not _same_ops(feat, _opset(feat), _opset(am)):
        am = _set_opset(am, _opset(feat))
    feat = _set_opset(feat, _opset(am))
    ir = max(am.ir_version, feat.ir_version)
    am.ir_version = feat.ir_version = ir
    features, frames_len = "featurizer/features", "featurizer/features_length"
    io_map = [(features, face.features.name)]
    if face.features.type.tensor_type.elem_type != TensorProto.FLOAT:
        cast = helper.make_node("Cast", [features], [features + "_cast"], name="featurizer/cast_features",
                                to=face.features.type.tensor_type.elem_type)
        feat.graph.node.append(cast)
        feat.graph.output.append(helper.make_tensor_value_info(features + "_cast", cast.attribute[0].i, None))
        io_map = [(features + "_cast", face.features.name)]
    if face.length is not None:
        source = frames_len
        if face.length.type.tensor_type.elem_type != TensorProto.INT64:
            source = frames_len + "_cast"
            feat.graph.node.append(helper.make_node("Cast", [frames_len], [source], name="featurizer/cast_length",
                                                    to=face.length.type.tensor_type.elem_type))
            feat.graph.output.append(helper.make_tensor_value_info(source, face.length.type.tensor_type.elem_type,
                                                                   ["batch"]))
        io_map.append((source, face.length.name))
    fused = compose.merge_models(feat, am, io_map=io_map, producer_name="servicemaker",
                                 doc_string="NeMo featurizer fused with a CTC acoustic model")
    graph = fused.graph
    keep = [o for o in graph.output if o.name in {v.name for v in am.graph.output}]
    del graph.output[:]
    graph.output.extend(keep)
    # the model's own tensors that carry the names the fused graph gives out move aside
    am_lengths = face.encoded_lengths.name if face.encoded_lengths is not None else None
    for name in ("audio_signal", "length", "encoded_lengths"):
        taken = _names(graph)
        if (name in taken and name != am_lengths) or name == am_lengths != "encoded_lengths":
            fresh = next(f"am/{name}_{i}" for i in range(len(taken) + 1) if f"am/{name}_{i}" not in taken)
            _rename(graph, name, fresh)
            am_lengths = fresh if name == am_lengths else am_lengths
    _rename(graph, "featurizer/audio_signal", "audio_signal")
    _rename(graph, "featurizer/length", "length")
    if face.encoded_lengths is not None:
        old = am_lengths
        if old != "encoded_lengths":
            _rename(graph, old, "encoded_lengths")
        if face.encoded_lengths.type.tensor_type.elem_type != TensorProto.INT64:
            _rename(graph, "encoded_lengths", "am/encoded_lengths")
            graph.node.append(helper.make_node("Cast", ["am/encoded_lengths"], ["encoded_lengths"],
                                               name="fuse/cast_encoded_lengths", to=TensorProto.INT64))
            for o in graph.output:
                if o.name == "am/encoded_lengths":
                    o.CopyFrom(helper.make_tensor_value_info("encoded_lengths", TensorProto.INT64, ["batch"]))
    else:
        graph.initializer.extend([onnx.numpy_helper.from_array(np.array(stride - 1, np.int64), "fuse/stride_m1"),
                                  onnx.numpy_helper.from_array(np.array(stride, np.int64), "fuse/stride")])
        graph.node.append(helper.make_node("Add", [frames_len, "fuse/stride_m1"], ["fuse/frames_rounded_up"],
                                           name="fuse/round_up"))
        graph.node.append(helper.make_node("Div", ["fuse/frames_rounded_up", "fuse/stride"], ["encoded_lengths"],
                                           name="fuse/encoded_lengths"))
        graph.output.append(helper.make_tensor_value_info("encoded_lengths", TensorProto.INT64, ["batch"]))
    fused.ir_version = ir
    onnx.checker.check_model(fused)
    return fused
