"""Bundled speech for the compiler: short English utterances (``data/utterances.npz``, synthesized with espeak-ng
by ``samples/utterances.py``) as network feeds — calibration for INT8, samples for the accuracy gate.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

BUNDLED_RATE = 16000
BATCH = 4


@lru_cache(maxsize=1)
def _bundle() -> dict[str, np.ndarray]:
    with resources.files("servicemaker.speech").joinpath("data/utterances.npz").open("rb") as f:
        with np.load(f) as npz:
            return {k: npz[k] for k in npz.files}


def utterances(name: str, sample_rate: int = BUNDLED_RATE) -> list[tuple[str, np.ndarray]]:
    """(text, float32 mono audio at ``sample_rate``) of the ``calibration`` or ``samples`` set."""
    bundle = _bundle()
    out = []
    for key in sorted(k for k in bundle if k.startswith(f"{name}/") and not k.endswith("/text")):
        audio = bundle[key].astype(np.float32) / 32767.0
        if sample_rate != BUNDLED_RATE:
            import soxr

            audio = soxr.resample(audio, BUNDLED_RATE, sample_rate).astype(np.float32)
        out.append((str(bundle[f"{key}/text"]), audio))
    return out


def pad(audios: list[np.ndarray]) -> dict[str, np.ndarray]:
    """One batch of feeds for a fused featurizer + acoustic model: zero-padded audio and the lengths."""
    longest = max(len(a) for a in audios)
    signal = np.zeros((len(audios), longest), dtype=np.float32)
    for i, a in enumerate(audios):
        signal[i, :len(a)] = a
    return {"audio_signal": signal, "length": np.array([len(a) for a in audios], dtype=np.int64)}


def feeds(name: str, sample_rate: int, batch: int = BATCH) -> list[dict[str, np.ndarray]]:
    audios = [a for _, a in utterances(name, sample_rate)]
    return [pad(audios[i:i + batch]) for i in range(0, len(audios), batch)]
