"""Speech from espeak-ng, deterministically: libespeak-ng of the ``espeakng-loader`` wheel (library and voice data,
no system package) driven through ctypes, resampled with soxr. The speech recognition sample trains on it; the
bundled utterances (``samples/utterances.py``), tests and benchmarks speak with it.
"""

from __future__ import annotations

import atexit
import ctypes
import shutil
import tempfile
import threading

import numpy as np

SAMPLE_RATE = 16000

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3
_RAND_SEED = 1
_espeak_lock = threading.Lock()
_espeak_copy: dict[str, str] = {}


def _espeak_paths() -> tuple[str, bytes]:
    """(a private copy of the wheel's libespeak-ng, its voice data folder).

    The copy (made once per process, removed at exit) is a library instance of our own: loading and unloading it
    never disturbs another user of the wheel's library in this process, nor picks up that user's state.
    """
    try:
        import espeakng_loader
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("speech synthesis needs the 'espeakng-loader' package: pip install espeakng-loader") \
            from exc
    if "path" not in _espeak_copy:
        folder = tempfile.mkdtemp(prefix="servicemaker-espeak-")
        atexit.register(shutil.rmtree, folder, True)
        _espeak_copy["path"] = shutil.copy(espeakng_loader.get_library_path(), folder)
    return _espeak_copy["path"], espeakng_loader.get_data_path().encode()


def _espeak(text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """(int16 samples, sample rate) of ``text``, from libespeak-ng of the ``espeakng-loader`` wheel driven through
    ctypes in synchronous (retrieval) mode.

    espeak-ng keeps state from one utterance to the next that neither ``espeak_Terminate`` nor a new
    ``espeak_Initialize`` resets (its wave generator's statics), and seeds its noise (breath, frication) from the
    clock; libc's ``rand()`` adds more. So each call loads (a private copy of) the library afresh (≈ 5 ms) and seeds
    both generators: the audio is a function of the arguments alone, whatever was spoken before.
    """
    import _ctypes

    library, data = _espeak_paths()
    chunks: list[np.ndarray] = []

    def collect(wav, count, events) -> int:
        if wav and count > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0  # go on

    callback = _SYNTH_CALLBACK(collect)
    libc = ctypes.CDLL(None)
    libc.srand.argtypes = [ctypes.c_uint]
    lib = ctypes.CDLL(library)
    try:
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError("libespeak-ng failed to initialize (espeak_Initialize returned an error)")
        try:
            lib.espeak_SetSynthCallback(callback)
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r} (use e.g. 'en-us' or 'en-us+m3')")
            lib.espeak_SetParameter(_RATE, int(speed), 0)
            lib.espeak_SetParameter(_PITCH, int(pitch), 0)
            lib.espeak_ng_SetRandSeed(_RAND_SEED)
            libc.srand(_RAND_SEED)
            encoded = text.encode("utf-8")
            if lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != 0:
                raise RuntimeError(f"espeak-ng failed to synthesize {text!r}")
        finally:
            lib.espeak_Terminate()
    finally:
        _ctypes.dlclose(lib._handle)
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.int16)), rate


def synthesize(text: str, *, voice: str = "en-us", speed: int = 160, pitch: int = 50,
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speak ``text`` with espeak-ng: float32 mono samples in [-1, 1] at ``sample_rate`` (resampled with soxr).

    ``voice`` is an espeak-ng voice, optionally with a variant (``en-us``, ``en+f2``, ``en-us+m3``); ``speed`` is in
    words per minute (80–450), ``pitch`` 0–100. Deterministic: the same arguments give the same samples, whatever
    was synthesized before. Thread-safe (calls are serialized); it reseeds libc's ``rand()``.
    """
    with _espeak_lock:
        pcm, native = _espeak(text, voice, speed, pitch)
    audio = pcm.astype(np.float32) / 32768.0
    if sample_rate != native:
        import soxr

        audio = soxr.resample(audio, native, sample_rate).astype(np.float32)
    return np.clip(audio, -1.0, 1.0)
