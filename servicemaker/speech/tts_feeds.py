"""Sample inputs for the speech-synthesis networks (calibration and the accuracy gate):

- FastPitch: servicemaker's English sentences (``deploy/data``: ``calibration`` 95, ``samples`` 48, never the same)
  through the model's own tokenizer, as the synthesizers feed them: ragged batches of four sentences (pitch shift 0,
  pace and volume 1), or one sentence per ``[1, T]`` feed for a padded export;
- HiFi-GAN: the bundled speech (``speech/data/utterances.npz``) resampled to the voice's rate, as log-mel
  spectrograms of the vocoder's own ``preprocessor`` settings (NeMo's featurizer graph; a centred STFT stands in
  for ``exact_pad``, which shifts frames by half a hop and does not change what the spectrograms look like).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from servicemaker.errors import ValidationError

Feeds = dict[str, np.ndarray]
RAGGED_BATCH = 4
#: sentences of different lengths whose FastPitch spectrograms batched must equal each alone
LEAK_PROBE = ("Hello there.", "The quick brown fox jumps over the lazy dog, twice.", "Yes.",
              "Speech synthesis turns text into audio.")
#: the largest difference (a spectrogram value) between batched and alone that still counts as equal
LEAK_TOLERANCE = 1e-4


def _symbol_batch(rows: list[list[int]], interface: dict[str, Any], pad: int) -> Feeds:
    """FastPitch feeds for ``rows`` of symbol ids (pitch shift 0, pace and volume 1; padded layouts padded with the
    pad symbol)."""
    names = set(interface["inputs"])
    if interface["layout"] == "ragged":
        text = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
        feed = {"text": text, "pitch": np.zeros(len(text), np.float32), "pace": np.ones(len(text), np.float32),
                "volume": np.ones(len(text), np.float32),
                "batch_lengths": np.cumsum([0] + [len(r) for r in rows]).astype(
                    np.int64 if interface.get("lengths_dtype") == "TYPE_INT64" else np.int32)}
    else:
        width = max(len(r) for r in rows)
        text = np.full((len(rows), width), pad, dtype=np.int64)
        for i, r in enumerate(rows):
            text[i, :len(r)] = r
        feed = {"text": text, "pitch": np.zeros(text.shape, np.float32), "pace": np.ones(text.shape, np.float32),
                "volume": np.ones(text.shape, np.float32)}
    if interface["speaker"]:
        feed["speaker"] = np.zeros(len(rows), np.int64 if interface.get("speaker_dtype") == "TYPE_INT64"
                                   else np.int32)
    return {k: v for k, v in feed.items() if k in names}


def symbol_feeds(name: str, tokenizer: Any, interface: dict[str, Any]) -> list[Feeds]:
    """The bundled sentences ``name`` (``calibration`` or ``samples``) as FastPitch feeds."""
    from servicemaker.deploy import feeds

    rows = [tokenizer.encode(s) for s in feeds.bundled(name)]
    rows = [r for r in rows if r]
    batch = RAGGED_BATCH if interface["layout"] == "ragged" else 1
    return [_symbol_batch(rows[i:i + batch], interface, tokenizer.pad) for i in range(0, len(rows), batch)]


def _featurizer(config: dict[str, Any], rate: int) -> Any:
    from servicemaker.speech.featurizer import FeaturizerConfig, build_featurizer

    section = dict(config.get("preprocessor") or {})
    if not section:
        raise ValidationError("the vocoder's model_config.yaml has no preprocessor section",
                              hint="export HiFi-GAN with NeMo; its config holds the mel settings it was trained on")
    section["_target_"] = "AudioToMelSpectrogramPreprocessor"
    for key in ("exact_pad", "pad_to", "use_grads", "nb_augmentation_prob", "nb_max_freq", "stft_exact_pad"):
        section.pop(key, None)
    section.update(sample_rate=rate, dither=0.0)
    try:
        return build_featurizer(FeaturizerConfig.from_model_config({"preprocessor": section}))
    except ValidationError as err:
        raise ValidationError(f"the vocoder's preprocessor settings cannot be featurized: {err.message}",
                              err.problems, hint="export HiFi-GAN with NeMo's mel preprocessor") from None


def mel_feeds(name: str, config: dict[str, Any], rate: int, interface: dict[str, Any], batch: int = 4
              ) -> list[Feeds]:
    """The bundled utterances ``name`` as HiFi-GAN feeds: ``[batch, n_mels, frames]`` log-mel spectrograms."""
    import onnxruntime as ort

    from servicemaker.speech import audio

    graph = _featurizer(config, rate)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    waves = [a for _, a in audio.utterances(name, rate)]
    out = []
    for start in range(0, len(waves), batch):
        feats = session.run(["features"], audio.pad(waves[start:start + batch]))[0]
        if interface["n_mels"] is not None and feats.shape[1] != interface["n_mels"]:
            raise ValidationError(f"the vocoder's preprocessor makes {feats.shape[1]} mel bands but its graph takes "
                                  f"{interface['n_mels']}", hint="export HiFi-GAN with its own training config")
        out.append({interface["input"]: feats.astype(np.float32)})
    return out


def measure_batching(model: Any, sentences: list[list[int]], interface: dict[str, Any], pad: int) -> str:
    """How FastPitch ``model`` may batch sentences, measured on ``sentences`` (different lengths) with ONNX Runtime:
    ``any`` when each in a batch gives the spectrogram (within :data:`LEAK_TOLERANCE`) and frame count it gives
    alone; else ``equal_symbols`` when sentences of one length do (rows padded only in frames); else ``single``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def run(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        spect, frames = session.run(["spect", "num_frames"], _symbol_batch(rows, interface, pad))
        return spect, frames.reshape(-1)

    def agrees(rows: list[list[int]]) -> bool:
        spect, frames = run(rows)
        for i, row in enumerate(rows):
            one, n = run([row])
            if int(frames[i]) != int(n[0]) or float(np.abs(spect[i, :, :int(n[0])] - one[0, :, :int(n[0])]).max(
                    initial=0.0)) > LEAK_TOLERANCE:
                return False
        return True

    try:
        if len(sentences) > 1 and agrees(sentences):
            return "any"
        same = [sentences[0], list(reversed(sentences[0]))] if sentences else []
        return "equal_symbols" if same and agrees(same) else "single"
    except Exception:  # noqa: BLE001 - a graph that cannot run such a batch runs one sentence at a time
        return "single"
