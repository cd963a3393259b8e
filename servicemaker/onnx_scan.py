"""An exported ONNX graph's interface, read without loading its weights, and the tensor signature pipelines check.

:class:`GraphScanner` walks the protobuf wire format of an ONNX ``ModelProto`` as its bytes arrive (``feed``), so a
graph is checked from a stream — an archive member being decompressed, decrypted and copied — and never held in
memory: weights (``raw_data`` and every other field the scan does not read) are counted past, not kept. It reads
``ir_version``, ``opset_import`` and, in ``graph``, the nodes (count, op types, outputs), the initializer names,
the inputs and outputs (name, element type, dims) and the external-data locations of every tensor, and refuses a
file that is empty, truncated, not protobuf (bad varints, wire types, lengths past the end of their message) or
not a usable model (no graph, no nodes, no inputs or outputs, an output nothing produces). Field numbers follow
``onnx/onnx.proto``.

:class:`Signature` is a graph's inputs and outputs as Triton sees them; svc-build makes it from a scan, svc-deploy
from the loaded model (``servicemaker.deploy.graph.signature``), and both check it with :func:`check_fits`.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Collection, Iterator, Mapping

from servicemaker.errors import ValidationError, shown

#: ONNX element type → Triton data type
ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 5: "TYPE_INT16", 6: "TYPE_INT32", 7: "TYPE_INT64",
                  9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16"}
CHUNK = 1 << 20
#: longest name (tensor, op type, dim parameter, ...) the scan keeps; a longer one means a corrupt file
MAX_STRING = 1 << 20
#: deepest nesting of messages (protobuf's own default recursion limit)
MAX_DEPTH = 100
HINT = "re-export the model to ONNX; a file cut short by a copy or an upload fails this way"


# -- signatures -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GraphTensor:
    name: str
    data_type: str
    shape: tuple[int | str, ...]   # ints are fixed sizes, strings are dynamic axes

    @property
    def triton_dims(self) -> tuple[int, ...]:
        """Triton dims: the batch axis dropped, dynamic axes as -1."""
        return tuple(d if isinstance(d, int) else -1 for d in self.shape[1:])


@dataclass(frozen=True)
class Signature:
    inputs: tuple[GraphTensor, ...]
    outputs: tuple[GraphTensor, ...]

    def output(self, name: str) -> GraphTensor | None:
        return next((t for t in self.outputs if t.name == name), None)


def graph_tensor(name: str, elem_type: int, dims: tuple[int | str | None, ...], where: str) -> GraphTensor:
    """A graph input or output as Triton sees it. ``dims``: a dim_value (int), a dim_param (str) or None (neither)
    per axis; an axis without a positive size is dynamic, named by its dim_param or its position."""
    dtype = ONNX_TO_TRITON.get(elem_type)
    if dtype is None:
        raise ValidationError(f"{where}: tensor {name} has ONNX element type {elem_type}, which Triton cannot carry")
    shape = tuple(d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) and d else f"dim{i}")
                  for i, d in enumerate(dims))
    return GraphTensor(name, dtype, shape)


def check_fits(sig: Signature, feeds: Mapping[str, tuple[str, tuple[int, ...]]],
               needs: Mapping[str, tuple[str, tuple[int, ...]]], where: str, producer: str = "tokenizer") -> list[str]:
    """Problems fitting the graph between its producer and consumers.

    ``feeds``: tensors the previous step produces (name → Triton type, dims); every graph input must be one of
    them. ``needs``: graph outputs the next steps read (name → type, dims without batch, -1 = any).
    """
    problems: list[str] = []
    for t in sig.inputs + sig.outputs:
        if not t.shape:
            problems.append(f"{t.name} is a scalar; the graph needs a batch axis")
        elif isinstance(t.shape[0], int):
            problems.append(f"{t.name} has a fixed batch size {t.shape[0]}; export with a dynamic batch axis")
    for t in sig.inputs:
        if t.name not in feeds:
            problems.append(f"graph input {t.name} is not one the {producer} gives ({', '.join(feeds)})")
            continue
        dtype, dims = feeds[t.name]
        if t.data_type != dtype:
            problems.append(f"graph input {t.name} is {t.data_type[5:]}, the {producer} gives {dtype[5:]}")
        elif len(t.shape) != len(dims) + 1:
            problems.append(f"graph input {t.name} has rank {len(t.shape)}, expected {len(dims) + 1}")
    names = {t.name for t in sig.outputs}
    for name, (dtype, dims) in needs.items():
        out = sig.output(name)
        if out is None:
            problems.append(f"graph has no output {name} (it has {', '.join(sorted(names))})")
            continue
        if out.data_type != dtype:
            problems.append(f"graph output {name} is {out.data_type[5:]}, expected {dtype[5:]}")
        elif len(out.shape) != len(dims) + 1:
            problems.append(f"graph output {name} has rank {len(out.shape)}, expected {len(dims) + 1}")
        else:
            for want, got in zip(dims, out.triton_dims):
                if want != -1 and got != -1 and want != got:
                    problems.append(f"graph output {name} has dims {list(out.triton_dims)}, expected {list(dims)}")
                    break
    return problems


# -- what a scan finds ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScannedValue:
    """A graph input or output: ``kind`` is the TypeProto case (tensor, sequence, map, ..., or untyped);
    ``elem_type`` and ``dims`` are read for tensors only (``dims`` None: no shape given)."""

    name: str
    kind: str
    elem_type: int
    dims: tuple[int | str | None, ...] | None


@dataclass(frozen=True)
class GraphScan:
    where: str
    size: int
    ir_version: int
    opsets: dict[str, int]
    inputs: tuple[ScannedValue, ...]      # as listed, initializer-backed ones included
    outputs: tuple[ScannedValue, ...]
    initializers: frozenset[str]
    node_count: int
    op_types: dict[str, int]              # op type (``domain::op`` outside the default domain) → nodes
    external_data: tuple[str, ...]        # locations of tensors stored outside the graph file

    def signature(self) -> Signature:
        """The inputs (initializer-backed ones left out) and outputs as Triton sees them."""
        def tensors(values: tuple[ScannedValue, ...]) -> tuple[GraphTensor, ...]:
            return tuple(graph_tensor(v.name, v.elem_type if v.kind == "tensor" else 0, v.dims or (), self.where)
                         for v in values if v.name not in self.initializers)
        return Signature(tensors(self.inputs), tensors(self.outputs))

    def as_model(self) -> Any:
        """A weightless ``onnx.ModelProto`` holding only the graph's inputs and outputs, for checks written
        against onnx's types (e.g. ``servicemaker.speech.acoustic.acoustic_interface``)."""
        from onnx import TensorProto, helper

        known = set(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}

        def value_info(v: ScannedValue, role: str) -> Any:
            if v.kind != "tensor" or v.elem_type not in known:
                what = ("untyped" if v.kind == "untyped" else f"a {v.kind.replace('_', ' ')}" if v.kind != "tensor"
                        else f"a tensor of unknown element type {v.elem_type}")
                raise ValidationError(f"{self.where}: graph {role} {v.name} is {what}; a network takes and gives "
                                      "tensors", hint=HINT)
            return helper.make_tensor_value_info(v.name, v.elem_type, None if v.dims is None else list(v.dims))

        graph = helper.make_graph([], "interface", [value_info(v, "input") for v in self.inputs
                                                    if v.name not in self.initializers],
                                  [value_info(v, "output") for v in self.outputs])
        return helper.make_model(graph, ir_version=self.ir_version)

    def check_external(self, members: Collection[str] | None) -> None:
        """Refuse external-data locations the graph's package does not hold: ``members`` are the files packed
        beside a ``.onnx.tar``'s graph; None for a plain ``.onnx``, which can hold none."""
        if not self.external_data:
            return
        if members is None:
            raise ValidationError(
                f"{self.where}: the graph keeps tensors in external data ({', '.join(self.external_data)}), which "
                "a plain .onnx artifact cannot carry",
                hint="pack the graph with its data files as <name>.onnx.tar (servicemaker.eff.onnx_tar.pack)")
        from servicemaker.eff.reader import normalize_member_name

        missing = [loc for loc in self.external_data if normalize_member_name(loc, self.where) not in members]
        if missing:
            raise ValidationError(f"{self.where}: the graph's external data {', '.join(missing)} is not in the "
                                  "archive", hint="pack the graph with every data file it names (onnx_tar.pack)")


# -- the wire-format walk ---------------------------------------------------------------------------------------------

_I, _S, _SEEN = "int", "str", "seen"   # a varint; a string kept; a length-delimited field only noted, then skipped
#: message → field number → (name, kind, repeated); kind is _I, _S, _SEEN or a message walked into. Fields not
#: listed are skipped by their wire type (raw_data, float_data, doc strings, attribute values, ...).
_SCHEMA: dict[str, dict[int, tuple[str, str, bool]]] = {
    "ModelProto": {1: ("ir_version", _I, False), 7: ("graph", "GraphProto", False),
                   8: ("opset_import", "OperatorSetIdProto", True)},
    "OperatorSetIdProto": {1: ("domain", _S, False), 2: ("version", _I, False)},
    "GraphProto": {1: ("node", "NodeProto", True), 5: ("initializer", "TensorProto", True),
                   15: ("sparse_initializer", "SparseTensorProto", True), 11: ("input", "ValueInfoProto", True),
                   12: ("output", "ValueInfoProto", True)},
    "NodeProto": {2: ("output", _S, True), 4: ("op_type", _S, False), 7: ("domain", _S, False),
                  5: ("attribute", "AttributeProto", True)},
    # attributes hold tensors (Constant values) and subgraphs (If, Loop, Scan), which may use external data
    "AttributeProto": {5: ("t", "TensorProto", False), 6: ("g", "GraphProto", False),
                       10: ("tensors", "TensorProto", True), 11: ("graphs", "GraphProto", True),
                       22: ("sparse_tensor", "SparseTensorProto", False),
                       23: ("sparse_tensors", "SparseTensorProto", True)},
    "TensorProto": {8: ("name", _S, False), 13: ("external_data", "StringStringEntryProto", True),
                    14: ("data_location", _I, False)},
    "SparseTensorProto": {1: ("values", "TensorProto", False), 2: ("indices", "TensorProto", False)},
    "StringStringEntryProto": {1: ("key", _S, False), 2: ("value", _S, False)},
    "ValueInfoProto": {1: ("name", _S, False), 2: ("type", "TypeProto", False)},
    "TypeProto": {1: ("tensor", "TypeProto.Tensor", False), 4: ("sequence", _SEEN, False),
                  5: ("map", _SEEN, False), 7: ("opaque", _SEEN, False), 8: ("sparse_tensor", _SEEN, False),
                  9: ("optional", _SEEN, False)},
    "TypeProto.Tensor": {1: ("elem_type", _I, False), 2: ("shape", "TensorShapeProto", False)},
    "TensorShapeProto": {1: ("dim", "TensorShapeProto.Dimension", True)},
    "TensorShapeProto.Dimension": {1: ("dim_value", _I, False), 2: ("dim_param", _S, False)},
}
_WIRE_NAMES = {0: "a varint", 1: "a 64-bit value", 2: "length-delimited", 5: "a 32-bit value"}
_EXTERNAL = 1   # TensorProto.DataLocation.EXTERNAL
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class _Frame:
    """A message being read: the field of its parent that holds it, where it ends, what was read of it."""

    __slots__ = ("spec", "msg", "end", "acc")

    def __init__(self, spec: tuple[str, str, bool], end: int | None) -> None:
        self.spec, self.msg, self.end, self.acc = spec, spec[1], end, {}


def _varint(buf: Any, i: int, n: int) -> tuple[int, int]:
    """(value, index after it), or (0, -1) when ``buf`` ends inside it; raises _BadVarint past 10 bytes."""
    value = shift = 0
    for k in range(i, min(n, i + 10)):
        b = buf[k]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, k + 1
        shift += 7
    if n - i >= 10:
        raise _BadVarint(i)
    return 0, -1


class _BadVarint(Exception):
    pass


class GraphScanner:
    """Push the bytes of an ONNX model in with :meth:`feed` (any chunking), then :meth:`finish` for the
    :class:`GraphScan`. ``where`` names the artifact in messages; ``size``, when known, catches lengths past the end
    of the file as they are read. Every problem raises one :class:`ValidationError`."""

    def __init__(self, where: str, size: int | None = None) -> None:
        self.where = where
        self.size = size
        self._stack = [_Frame(("", "ModelProto", False), size)]
        self._offset = 0            # of the first byte the next feed brings
        self._carry = b""           # an incomplete field header left by the last feed
        self._skip = 0              # bytes of the current field still to skip
        self._keep: bytearray | None = None
        self._keep_left = 0
        self._field = ("", _S, False)
        self._external: dict[str, None] = {}
        self._summaries = {msg: getattr(self, "_end_" + msg.replace(".", "_"), None) for msg in _SCHEMA}

    # -- feeding --------------------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if not data:
            return
        start = self._offset - len(self._carry)
        buf = self._carry + bytes(data) if self._carry else data
        self._carry = b""
        n, i = len(buf), 0
        while i < n:
            if self._skip:
                take = min(self._skip, n - i)
                i += take
                self._skip -= take
                if not self._skip:
                    self._close(start + i)
            elif self._keep is not None:
                take = min(self._keep_left, n - i)
                self._keep += buf[i:i + take]
                i += take
                self._keep_left -= take
                if not self._keep_left:
                    self._store(self._field, self._keep.decode("utf-8", "replace"))
                    self._keep = None
                    self._close(start + i)
            else:
                try:
                    j = self._header(buf, i, n, start)
                except _BadVarint as bad:
                    self._fail(f"byte {start + bad.args[0]}: a varint longer than 10 bytes inside {self._path()}")
                if j < 0:
                    self._carry = bytes(buf[i:])
                    break
                i = j
        self._offset = start + n

    def _header(self, buf: Any, i: int, n: int, start: int) -> int:
        """Read one field's header (and a varint's value) at ``buf[i]``; the index after it, -1 if incomplete."""
        tag, j = _varint(buf, i, n)
        if j < 0:
            return -1
        number, wire = tag >> 3, tag & 7
        frame = self._stack[-1]
        spec = _SCHEMA[frame.msg].get(number)
        at = start + i
        if number == 0 or wire not in _WIRE_NAMES:
            self._fail(f"byte {at}: {'field number 0' if number == 0 else f'wire type {wire}'} inside "
                       f"{self._path()} is not valid protobuf")
        if spec is not None and wire != (0 if spec[1] == _I else 2):
            self._fail(f"byte {at}: {frame.msg}.{spec[0]} (field {number}) is {_WIRE_NAMES[wire]}, expected "
                       f"{_WIRE_NAMES[0 if spec[1] == _I else 2]}" + (": this is not an ONNX model"
                                                                      if len(self._stack) == 1 else ""))
        if wire == 0:
            value, j = _varint(buf, j, n)
            if j < 0:
                return -1
            self._within(frame, start + j, at, number)
            if spec is not None:
                self._store(spec, value - (1 << 64) if value >= 1 << 63 else value)
            self._close(start + j)
            return j
        if wire in (1, 5):
            self._within(frame, start + j + (8 if wire == 1 else 4), at, number)
            self._skip = 8 if wire == 1 else 4
            return j
        length, j = _varint(buf, j, n)
        if j < 0:
            return -1
        end = start + j + length
        self._within(frame, end, at, number)
        self._field = spec or (str(number), _SEEN, False)
        if spec is None or spec[1] == _SEEN:
            if spec is not None:
                self._store(spec, True)
            self._skip = length
        elif spec[1] == _S:
            if length > MAX_STRING:
                self._fail(f"byte {at}: {frame.msg}.{spec[0]} is a {length}-byte string (over {MAX_STRING})")
            if j + length <= n:
                self._store(spec, bytes(buf[j:j + length]).decode("utf-8", "replace"))
                j += length
            else:
                self._keep, self._keep_left = bytearray(), length
                return j
        else:
            if len(self._stack) >= MAX_DEPTH:
                self._fail(f"byte {at}: messages nested over {MAX_DEPTH} deep")
            self._stack.append(_Frame(spec, end))
        if not self._skip:
            self._close(start + j)
        return j

    def _within(self, frame: _Frame, end: int, at: int, number: int) -> None:
        if frame.end is not None and end > frame.end:
            name = _SCHEMA[frame.msg].get(number, (f"field {number}",))[0]
            if len(self._stack) == 1:
                self._fail(f"truncated: {frame.msg}.{name} at byte {at} runs to byte {end}, past the end of the "
                           f"file ({frame.end} bytes)")
            self._fail(f"byte {at}: {frame.msg}.{name} runs to byte {end}, past the end of the {frame.msg} "
                       f"holding it (byte {frame.end}, in {self._path()})")

    def _store(self, spec: tuple[str, str, bool], value: Any) -> None:
        name, _, repeated = spec
        acc = self._stack[-1].acc
        if repeated:
            acc.setdefault(name, []).append(value)
        elif name == "graph" and name in acc:
            self._fail("the model holds two graphs (ModelProto field 7 twice)")
        else:
            acc[name] = value

    def _close(self, offset: int) -> None:
        """Finish every message that ends at ``offset`` and hand its summary to the message holding it."""
        stack = self._stack
        while len(stack) > 1 and stack[-1].end == offset:
            frame = stack.pop()
            summary = self._summaries[frame.msg]
            self._store(frame.spec, frame.acc if summary is None else summary(frame.acc))

    def _path(self) -> str:
        return " > ".join([self._stack[0].msg] + [f"{f.spec[0]} ({f.msg})" for f in self._stack[1:]])

    def _fail(self, problem: str, violations: list[str] | None = None) -> None:
        raise ValidationError(f"{self.where}: not a usable ONNX model: {problem}", violations, hint=HINT)

    # -- message summaries ------------------------------------------------------------------------------------------
    @staticmethod
    def _end_TensorShapeProto_Dimension(acc: dict) -> int | str | None:
        return acc.get("dim_value", acc.get("dim_param"))

    @staticmethod
    def _end_TypeProto(acc: dict) -> tuple[str, int, tuple | None]:
        if "tensor" in acc:
            shape = acc["tensor"].get("shape")
            return "tensor", acc["tensor"].get("elem_type", 0), None if shape is None else tuple(shape.get("dim", ()))
        return next((k for k in ("sequence", "map", "optional", "sparse_tensor", "opaque") if k in acc), "untyped"), 0, None

    @staticmethod
    def _end_ValueInfoProto(acc: dict) -> ScannedValue:
        kind, elem, dims = acc.get("type", ("untyped", 0, None))
        return ScannedValue(acc.get("name", ""), kind, elem, dims)

    def _end_TensorProto(self, acc: dict) -> str:
        if acc.get("data_location") == _EXTERNAL:
            entries = {e.get("key"): e.get("value", "") for e in acc.get("external_data", ())}
            if not entries.get("location"):
                self._fail(f"tensor {acc.get('name', '')!r} is stored as external data but names no location")
            self._external[entries["location"]] = None
        return acc.get("name", "")

    @staticmethod
    def _end_SparseTensorProto(acc: dict) -> str:
        return acc.get("values", "")

    @staticmethod
    def _end_AttributeProto(acc: dict) -> None:
        return None          # its tensors and subgraphs were checked as they were read

    @staticmethod
    def _end_NodeProto(acc: dict) -> tuple[str, tuple[str, ...]]:
        domain = acc.get("domain", "")
        op = acc.get("op_type", "")
        return (op if domain in ("", "ai.onnx") else f"{domain}::{op}"), tuple(acc.get("output", ()))

    # -- the end ------------------------------------------------------------------------------------------------------
    def finish(self) -> GraphScan:
        end = self._offset
        if end == 0:
            self._fail("the file is empty")
        if self._carry or self._skip or self._keep is not None or len(self._stack) > 1:
            inside = self._path() + ("" if self._keep is None and not self._skip else f" > {self._field[0]}")
            self._fail(f"truncated: the file ends at byte {end} inside {inside}")
        if self.size is not None and end != self.size:
            self._fail(f"truncated: {end} of {self.size} bytes")
        return self._model(self._stack[0].acc, end)

    def _model(self, acc: dict, size: int) -> GraphScan:
        problems = []
        if not acc.get("ir_version"):
            problems.append("it has no ir_version (ModelProto field 1)")
        graph = acc.get("graph")
        if graph is None:
            problems.append("it has no graph (ModelProto field 7)")
            self._fail("this is not an ONNX model", problems)
        opsets = {o.get("domain", ""): o.get("version", 0) for o in acc.get("opset_import", ())}
        nodes = graph.get("node", [])
        inits = frozenset(graph.get("initializer", ())) | frozenset(graph.get("sparse_initializer", ()))
        inputs, outputs = tuple(graph.get("input", ())), tuple(graph.get("output", ()))
        if not opsets:
            problems.append("it imports no operator set (opset_import is empty)")
        elif any("::" not in op for op, _ in nodes) and not ({"", "ai.onnx"} & set(opsets)):
            problems.append("its nodes use the default ONNX domain but opset_import has no version for it")
        if not nodes:
            problems.append("the graph has no nodes")
        if not [v for v in inputs if v.name not in inits]:
            problems.append("the graph has no inputs")
        if not outputs:
            problems.append("the graph has no outputs")
        for role, values in (("input", inputs), ("output", outputs)):
            problems += [f"graph {role} #{k} has no name" for k, v in enumerate(values, 1) if not v.name]
            odd = [f"graph {role} #{k} has a name with control characters: {shown(v.name)}"
                   for k, v in enumerate(values, 1) if _CONTROL.search(v.name)]
            if odd:  # names go into messages and config.pbtxt: refuse before quoting them anywhere
                self._fail("this is not an ONNX model an exporter wrote", odd)
        made = {name for _, outs in nodes for name in outs} | inits | {v.name for v in inputs}
        problems += [f"graph output {v.name} is not produced by any node" for v in outputs
                     if v.name and v.name not in made]
        if problems:
            self._fail("the graph is not complete" if acc.get("ir_version") else "this is not an ONNX model",
                       problems)
        return GraphScan(where=self.where, size=size, ir_version=acc["ir_version"], opsets=opsets, inputs=inputs,
                         outputs=outputs, initializers=inits, node_count=len(nodes),
                         op_types=dict(Counter(op for op, _ in nodes)), external_data=tuple(self._external))


# -- streams ------------------------------------------------------------------------------------------------------------

def scan_stream(stream: BinaryIO, where: str, size: int | None = None) -> GraphScan:
    """Scan a whole ONNX model read from ``stream`` in chunks."""
    scanner = GraphScanner(where, size)
    with _integrity_first(stream):
        while chunk := stream.read(CHUNK):
            scanner.feed(chunk)
    return scanner.finish()


@contextmanager
def _integrity_first(stream: BinaryIO) -> Iterator[None]:
    """On a scan error, read ``stream`` to its end before raising it: an archive stream checks its sha256 there, and
    a wrong key or a corrupt copy (which also garble the graph) is the truer explanation."""
    try:
        yield
    except ValidationError:
        while stream.read(CHUNK):
            pass
        raise


class ScanningReader(io.RawIOBase):
    """``stream`` read through unchanged, every byte fed to ``scanner``: a graph checked while it is copied."""

    def __init__(self, stream: BinaryIO, scanner: GraphScanner) -> None:
        super().__init__()
        self._stream = stream
        self.scanner = scanner

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        with _integrity_first(self._stream):
            self.scanner.feed(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def scan_onnx_tar(stream: BinaryIO, where: str, limits: Any = None) -> GraphScan:
    """Check a streamed ``.onnx.tar`` (the archive reader's member checks) and scan the graph at its root as it
    passes; every external-data location the graph names must be a member."""
    from servicemaker.eff import onnx_tar
    from servicemaker.eff.limits import DEFAULT_LIMITS

    names: list[str] = []
    found: GraphScan | None = None
    with _integrity_first(stream):
        for tf, info, name in onnx_tar._iter_safe(stream, where, limits or DEFAULT_LIMITS):
            names.append(name)
            if found is None and name.endswith(".onnx") and "/" not in name:
                found = scan_stream(tf.extractfile(info), f"{where}: {name}", info.size)
    onnx_tar._graph_of(names, where)
    assert found is not None
    found.check_external(set(names))
    return found


__all__ = ["GraphScan", "GraphScanner", "GraphTensor", "ONNX_TO_TRITON", "ScannedValue", "ScanningReader",
           "Signature", "check_fits", "graph_tensor", "scan_onnx_tar", "scan_stream"]
