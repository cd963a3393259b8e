"""A small tritonclient wrapper for the ensembles' client contract, over HTTP or gRPC: one string per batch row
for the NLP ensembles; mono audio (one utterance per request, or a stream of chunks in one sequence) for speech
recognition; one text per request for speech synthesis, answered with its whole audio or (gRPC, the streaming
ensemble) with audio chunks as they are made. Used by ``svc-serve --query/--audio/--say``, the end-to-end tests and
the benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

PROTOCOLS = ("http", "grpc")


def _module(protocol: str):
    if protocol == "http":
        import tritonclient.http as module
    elif protocol == "grpc":
        import tritonclient.grpc as module
    else:
        raise ValueError(f"protocol must be one of {PROTOCOLS}")
    return module


def connect(url: str, protocol: str = "http") -> Any:
    return _module(protocol).InferenceServerClient(url)


def infer(client: Any, model: str, inputs: Mapping[str, Sequence[str]], protocol: str = "http") -> dict[str, np.ndarray]:
    """Send one batched request (row i = the i-th string of every input); every output as a numpy array."""
    module = _module(protocol)
    tensors = []
    for name, values in inputs.items():
        array = np.array([[v.encode("utf-8")] for v in values], dtype=np.object_)
        tensor = module.InferInput(name, list(array.shape), "BYTES")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return _outputs(client.infer(model, tensors), protocol)


def _tensors(module: Any, values: Sequence[tuple[str, np.ndarray, str]]) -> list[Any]:
    """tritonclient inputs of (name, array, Triton data type)."""
    out = []
    for name, array, dtype in values:
        tensor = module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


def _audio_inputs(module: Any, audio: np.ndarray, sample_rate: int) -> list[Any]:
    signal = np.ascontiguousarray(np.asarray(audio, dtype=np.float32).reshape(1, -1))
    return _tensors(module, (("AUDIO_SIGNAL", signal, "FP32"),
                             ("SAMPLE_RATE", np.array([[sample_rate]], dtype=np.int32), "INT32")))


def _outputs(result: Any, protocol: str) -> dict[str, np.ndarray]:
    if protocol == "http":
        names = [o["name"] for o in result.get_response()["outputs"]]
    else:
        names = [o.name for o in result.get_response().outputs]
    return {name: result.as_numpy(name) for name in names}


def transcribe(client: Any, model: str, audio: np.ndarray, sample_rate: int, protocol: str = "http"
               ) -> dict[str, Any]:
    """One utterance through an offline speech_recognition ensemble: TRANSCRIPT, WORDS, WORD_START/END_MS."""
    result = client.infer(model, _audio_inputs(_module(protocol), audio, sample_rate))
    return readable(_outputs(result, protocol))[0]


def transcribe_stream(client: Any, model: str, audio: np.ndarray, sample_rate: int, *, sequence_id: int,
                      chunk_seconds: float = 0.16, protocol: str = "http") -> list[dict[str, Any]]:
    """Send ``audio`` in chunks as one sequence of a streaming ensemble; every response (the last is final)."""
    module = _module(protocol)
    step = max(1, int(round(chunk_seconds * sample_rate)))
    starts = list(range(0, max(len(audio), 1), step))
    answers = []
    for i, start in enumerate(starts):
        result = client.infer(model, _audio_inputs(module, audio[start:start + step], sample_rate),
                              sequence_id=sequence_id, sequence_start=i == 0, sequence_end=i == len(starts) - 1)
        answers.append(readable(_outputs(result, protocol))[0])
    return answers


def _speech_inputs(module: Any, text: str, speaker: int | None, pace: float | None, pitch_shift: float | None
                   ) -> list[Any]:
    values: list[tuple[str, np.ndarray, str]] = [("TEXT", np.array([[text.encode("utf-8")]], dtype=np.object_),
                                                  "BYTES")]
    if speaker is not None:
        values.append(("SPEAKER", np.array([[speaker]], dtype=np.int32), "INT32"))
    if pace is not None:
        values.append(("PACE", np.array([[pace]], dtype=np.float32), "FP32"))
    if pitch_shift is not None:
        values.append(("PITCH_SHIFT", np.array([[pitch_shift]], dtype=np.float32), "FP32"))
    return _tensors(module, values)


def synthesize(client: Any, model: str, text: str, *, speaker: int | None = None, pace: float | None = None,
               pitch_shift: float | None = None, protocol: str = "http") -> tuple[np.ndarray, int]:
    """``text`` through a speech_synthesis ensemble: its mono audio (float32 in [-1, 1]) and sample rate."""
    module = _module(protocol)
    wanted = [module.InferRequestedOutput(name, binary_data=True) if protocol == "http" else
              module.InferRequestedOutput(name) for name in ("AUDIO", "SAMPLE_RATE")]  # audio as bytes, not JSON
    result = client.infer(model, _speech_inputs(module, text, speaker, pace, pitch_shift), outputs=wanted)
    return np.asarray(result.as_numpy("AUDIO"), dtype=np.float32).reshape(-1), int(
        np.asarray(result.as_numpy("SAMPLE_RATE")).reshape(-1)[0])


def synthesize_stream(client: Any, model: str, text: str, *, speaker: int | None = None, pace: float | None = None,
                      pitch_shift: float | None = None, timeout: float = 300.0) -> Iterator[tuple[np.ndarray, int]]:
    """``text`` through a streaming speech_synthesis ensemble (``client``: a gRPC client): each audio chunk and the
    sample rate as it arrives. An error the server answers is raised as tritonclient's InferenceServerException."""
    import queue

    import tritonclient.grpc as grpc

    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer(model, _speech_inputs(grpc, text, speaker, pace, pitch_shift),
                                  enable_empty_final_response=True)
        while True:
            try:
                result, error = answers.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"{model} sent nothing for {timeout:g} s") from None
            if error is not None:
                raise error
            response = result.get_response()
            if response.outputs:
                yield (np.asarray(result.as_numpy("AUDIO"), dtype=np.float32).reshape(-1),
                       int(np.asarray(result.as_numpy("SAMPLE_RATE")).reshape(-1)[0]))
            final = response.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                return
    finally:
        client.stop_stream()


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A PCM WAV file (8/16/32-bit) as float32 mono samples in [-1, 1] and its sample rate."""
    import wave

    with wave.open(str(path), "rb") as f:
        width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
        raw = f.readframes(f.getnframes())
    kinds = {1: (np.uint8, 128.0, 128.0), 2: (np.int16, 0.0, 32768.0), 4: (np.int32, 0.0, 2147483648.0)}
    if width not in kinds:
        raise ValueError(f"{path}: {8 * width}-bit WAV is not supported (use 8, 16 or 32-bit PCM)")
    dtype, offset, scale = kinds[width]
    samples = (np.frombuffer(raw, dtype=dtype).astype(np.float32) - offset) / scale
    return samples.reshape(-1, channels).mean(axis=1).astype(np.float32), rate


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """float samples in [-1, 1] as a 16-bit mono PCM WAV file."""
    import wave

    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())


def readable(outputs: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """One JSON-friendly dict per batch row: strings decoded, word-level padding ('' and its 0 scores) dropped."""
    rows: list[dict[str, Any]] = []
    batch = len(next(iter(outputs.values()))) if outputs else 0
    for b in range(batch):
        row: dict[str, Any] = {}
        width = None
        for name, array in outputs.items():
            if array.dtype == np.object_:
                values = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array[b].reshape(-1)]
                if len(values) > 1 or array.shape[-1] != 1:
                    while values and values[-1] == "":
                        values.pop()
                    width = len(values) if width is None else max(width, len(values))
                row[name] = values if (len(values) != 1 or array.shape[-1] != 1) else values[0]
        for name, array in outputs.items():
            if array.dtype != np.object_:
                values = array[b].reshape(-1).tolist()
                if array.shape[-1] == 1 and len(values) == 1:
                    row[name] = values[0]
                else:
                    row[name] = values[:width] if width is not None and name == "SCORES" else values
        rows.append(dict(sorted(row.items())))
    return rows


def ensembles(repo: str | Path) -> dict[str, list[str]]:
    """The ensembles of a repository and their input names, from their config.pbtxt."""
    return {name: inputs for name, (inputs, _) in ensemble_signatures(repo).items()}


def speech_synthesis_ensembles(repo: str | Path) -> dict[str, bool]:
    """The speech_synthesis entry points of a repository (TEXT in, AUDIO out) → whether each streams (one of its
    steps is decoupled)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    configs = {}
    for cfg in sorted(Path(repo).glob("*/config.pbtxt")):
        parsed = text_format.Parse(cfg.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
        configs[parsed.name] = parsed
    out = {}
    for name, (ins, outs) in ensemble_signatures(repo).items():
        if "TEXT" in ins and "AUDIO" in outs:
            steps = configs[name].ensemble_scheduling.step
            out[name] = any(configs.get(s.model_name) is not None
                            and configs[s.model_name].model_transaction_policy.decoupled for s in steps)
    return out


def ensemble_signatures(repo: str | Path) -> dict[str, tuple[list[str], list[str]]]:
    """The pipelines of a repository — its ensembles, and the models of the fused layout (one Python-backend model
    under the ensemble's name, handler ``chain``) —: (input names, output names) each, from their config.pbtxt."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    out: dict[str, tuple[list[str], list[str]]] = {}
    for cfg in sorted(Path(repo).glob("*/config.pbtxt")):
        parsed = text_format.Parse(cfg.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
        chain = "handler" in parsed.parameters and parsed.parameters["handler"].string_value == "chain"
        if parsed.platform == "ensemble" or chain:
            out[parsed.name] = ([t.name for t in parsed.input], [t.name for t in parsed.output])
    return out
