"""A small tritonclient wrapper for the NLP ensembles' client contract (one string per batch row), over HTTP or
gRPC. Used by ``svc-serve --query``, the end-to-end tests and the serving benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

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
    result = client.infer(model, tensors)
    if protocol == "http":
        names = [o["name"] for o in result.get_response()["outputs"]]
    else:
        names = [o.name for o in result.get_response().outputs]
    return {name: result.as_numpy(name) for name in names}


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
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    out: dict[str, list[str]] = {}
    for cfg in sorted(Path(repo).glob("*/config.pbtxt")):
        parsed = text_format.Parse(cfg.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
        if parsed.platform == "ensemble":
            out[parsed.name] = [t.name for t in parsed.input]
    return out
