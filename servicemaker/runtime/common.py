"""What every family's Python-backend handlers share: the handler protocol, tensor helpers, the ONNX Runtime
network handler.

svc-deploy copies this file into the version folder of every Python-backend model it writes, as
``svc_common.py``, next to the family's handler module (``svc_handlers.py``: :mod:`.nlp`, :mod:`.asr`) and a small
``model.py`` that turns Triton requests into numpy arrays and back. It imports only numpy (and onnxruntime for the
``onnx`` handler), never servicemaker, so a deployed repository runs without servicemaker installed.

The protocol (see ``templates/python/model.py``):
- ``Handler.__call__(inputs) -> outputs`` maps one request's batch (numpy arrays, first axis the batch; STRING
  tensors are object arrays of ``bytes``) to its outputs.
- ``Handler.batch(requests)`` gets every request Triton hands the model at once; the default calls ``__call__``
  on each, so one bad request fails alone. :class:`Merged` handlers (the ONNX network, the NLP handlers) run the
  work once: the requests whose tensors agree in every axis but the first are concatenated, run in one call and
  split back; when that call fails, each request of the group runs alone, so a bad request still fails alone.
- Handlers with ``SEQUENCE = True`` sit behind Triton's sequence batcher: ``stream(events)`` gets each request
  with its correlation id and START/END flags, and keeps per-sequence state itself.
- ``networks``: set by the glue from the model's ``network_models`` parameter: role → a callable running that
  Triton model (business logic scripting) on a dict of arrays; ``network`` is the only one where there is one.
  Tests set them to in-process runners.
- Handlers with ``DECOUPLED = True`` (Triton's decoupled transaction policy) answer with a stream:
  ``stream_batch(requests, send)`` calls ``send(i, outputs or exception, final)`` for request ``i`` as results are
  ready, ending every request with ``final`` true.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

Arrays = Dict[str, np.ndarray]
#: (name, Triton data type, dims without the batch axis)
TensorDecl = Tuple[str, str, Tuple[int, ...]]
Result = Union[Arrays, Exception]


class StreamEvent(NamedTuple):
    """One request of a sequence: its correlation id, Triton's START/END flags and its input arrays."""

    corrid: int
    start: bool
    end: bool
    inputs: Arrays


def texts(array: np.ndarray) -> List[str]:
    """One string per batch row of a [B] or [B, 1] STRING tensor; bytes that are not UTF-8 fail the request with
    a message naming the row and the offending byte."""
    out = []
    for i, item in enumerate(np.asarray(array, dtype=object).reshape(len(array), -1)[:, 0]):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"text {i} of the request is not valid UTF-8: byte 0x{item[err.start]:02x} at "
                                 f"offset {err.start} ({err.reason}); send the text encoded as UTF-8") from None
        out.append(item if isinstance(item, str) else str(item))
    return out


def strings(rows: Sequence[Sequence[str]]) -> np.ndarray:
    """A [B, N] object array of utf-8 bytes, rows padded with empty strings."""
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), b"", dtype=object)
    for i, row in enumerate(rows):
        for j, s in enumerate(row):
            out[i, j] = s.encode("utf-8")
    return out


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)



def flag(value: str) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def detached(err: Exception) -> Exception:
    """``err`` without its traceback: a failed request's error is kept until every request of the batch is answered,
    and its traceback would keep the failed call's locals (its windows, encodings: hundreds of MB for a text near
    the limits) alive that long."""
    err.__traceback__ = None
    err.__context__ = err.__cause__ = None
    return err


class Handler:
    """Base: ``INPUTS``/``OUTPUTS`` declare the tensors; ``__call__`` maps a batch of inputs to outputs."""

    INPUTS: Tuple[TensorDecl, ...] = ()
    OUTPUTS: Tuple[TensorDecl, ...] = ()
    #: input tensor → the parameter naming its labels file (svc-deploy checks the counts against the graph)
    LABELS: Dict[str, str] = {}
    #: True for handlers behind Triton's sequence batcher (they implement :meth:`stream`)
    SEQUENCE = False
    #: inputs whose length may differ between the requests of one batch (``allow_ragged_batch``)
    RAGGED: Tuple[str, ...] = ()
    #: inputs a request may leave out (``optional: true``)
    OPTIONAL: Tuple[str, ...] = ()
    #: True for handlers answering each request with a stream of responses (they implement :meth:`stream_batch`)
    DECOUPLED = False

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        self.folder = folder
        self.params = params
        self.network: Optional[Callable[[Arrays], Arrays]] = None
        self.networks: Dict[str, Callable[[Arrays], Arrays]] = {}

    def file(self, key: str) -> str:
        return os.path.join(self.folder, self.params[key])

    def __call__(self, inputs: Arrays) -> Arrays:  # pragma: no cover - abstract
        raise NotImplementedError

    def batch(self, requests: List[Arrays]) -> List[Result]:
        """Every request Triton hands the model at once; an exception stands for that request's error."""
        out: List[Result] = []
        for inputs in requests:
            try:
                out.append(self(inputs))
            except Exception as err:  # noqa: BLE001 - one bad request must not fail the others
                out.append(detached(err))
        return out

    def stream(self, events: List[StreamEvent]) -> List[Result]:  # pragma: no cover - abstract
        raise NotImplementedError

    def stream_batch(self, requests: List[Arrays],
                     send: Callable[[int, Result, bool], None]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def shape_groups(requests: Sequence[Arrays]) -> List[List[int]]:
    """Indices of the requests that can be concatenated along the first axis: same tensor names, dtypes and every
    axis but the first; in request order."""
    groups: Dict[Tuple, List[int]] = {}
    for i, inputs in enumerate(requests):
        key = tuple(sorted((k, np.asarray(v).dtype.str, np.shape(v)[1:]) for k, v in inputs.items()))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def concat(requests: Sequence[Arrays]) -> Arrays:
    """The requests' tensors concatenated along the first axis (see :func:`shape_groups`)."""
    return {k: np.concatenate([np.asarray(r[k]) for r in requests]) for k in requests[0]}


def split(out: Arrays, sizes: Sequence[int]) -> List[Arrays]:
    """A merged call's outputs back per request: consecutive slices of ``sizes`` along the first axis."""
    bounds = np.cumsum([0] + list(sizes))
    return [{k: v[bounds[i]:bounds[i + 1]] for k, v in out.items()} for i in range(len(sizes))]


def rows(inputs: Arrays) -> int:
    return len(next(iter(inputs.values()))) if inputs else 0


class Merged(Handler):
    """A handler whose requests concatenate along the first axis: :meth:`batch` makes one :meth:`merged` call per
    group of requests with equal trailing shapes; when it fails, the group's requests run one by one (the default
    :meth:`Handler.batch`), so an error is still the bad request's alone. ``merged`` concatenates, calls
    ``__call__`` once and splits the outputs by each request's rows; handlers whose outputs are not row-aligned with
    their inputs override it."""

    def batch(self, requests: List[Arrays]) -> List[Result]:
        out: List[Result] = [Exception("unanswered")] * len(requests)
        for group in shape_groups(requests):
            members = [requests[i] for i in group]
            answers: List[Result] = []
            if len(members) > 1:
                try:
                    answers = list(self.merged(members))
                except Exception:  # noqa: BLE001 - which request was bad is found by running them one by one
                    answers = []
            answers = answers or Handler.batch(self, members)
            for i, answer in zip(group, answers):
                out[i] = answer
        return out

    def merged(self, requests: List[Arrays]) -> List[Arrays]:
        return split(self(concat(requests)), [rows(r) for r in requests])


class OnnxNetwork(Merged):
    """Runs ``model.onnx`` with ONNX Runtime; the tensors are the graph's own (declared in config.pbtxt)."""

    def __init__(self, folder: str, params: Dict[str, str]) -> None:
        super().__init__(folder, params)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        threads = int(params.get("intra_op_threads", "0"))
        if threads:
            opts.intra_op_num_threads = threads
        # idle pool threads must not spin: they share the cores with Triton and the other models' processes
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(self.file("model"), opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, inputs: Arrays) -> Arrays:
        results = self.session.run(self.outputs, {name: inputs[name] for name in self.inputs})
        return dict(zip(self.outputs, results))


class OnnxRequests(OnnxNetwork):
    """``model.onnx`` for a graph without a batch axis (``max_batch_size: 0``, e.g. FastPitch's ragged export, whose
    ``batch_lengths`` say where each sentence starts): every request runs alone, as it came."""

    batch = Handler.batch


class Chain(Handler):
    """A pipeline's steps run in-process, in order, as its ensemble would run them as models (svc-deploy's
    ``--serving=fused`` layout): ``chain`` (a parameter, JSON) lists the steps, each with its handler, the
    handler's parameters, the subfolder of its files and the ensemble's tensor maps (handler tensor → pipeline
    tensor). Every request Triton hands the model goes through each step's :meth:`Handler.batch` together; a request
    that fails at a step fails alone and goes no further."""

    def __init__(self, folder: str, params: Dict[str, str],
                 create: Callable[[str, str, Dict[str, str]], Handler]) -> None:
        super().__init__(folder, params)
        self.steps = [(create(s["handler"], os.path.join(folder, s["folder"]), s["params"]), s["inputs"],
                       s["outputs"]) for s in json.loads(params["chain"])]

    def __call__(self, inputs: Arrays) -> Arrays:
        result = self.batch([inputs])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def batch(self, requests: List[Arrays]) -> List[Result]:
        tensors: List[Arrays] = [dict(r) for r in requests]
        results: List[Result] = list(tensors)
        alive = list(range(len(requests)))
        for handler, inputs, outputs in self.steps:
            answers = handler.batch([{key: tensors[i][name] for key, name in inputs.items()} for i in alive])
            still = []
            for i, answer in zip(alive, answers):
                if isinstance(answer, Exception):
                    results[i] = answer
                else:
                    tensors[i].update({name: answer[key] for key, name in outputs.items()})
                    still.append(i)
            alive = still
        return results


def create_from(handlers: Dict[str, Callable[[str, Dict[str, str]], Handler]], name: str, folder: str,
                params: Dict[str, str]) -> Handler:
    if name == "chain":
        return Chain(folder, params, lambda n, f, p: create_from(handlers, n, f, p))
    if name not in handlers:
        raise ValueError(f"unknown handler '{name}'")
    return handlers[name](folder, params)
