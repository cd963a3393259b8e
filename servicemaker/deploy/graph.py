"""The network graph: load it (plain ``.onnx`` or ``.onnx.tar`` with external data), read its tensor signature,
check it fits its pipeline, fold constants, save it for a target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from servicemaker.errors import ValidationError

#: ONNX element type → Triton data type
ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 5: "TYPE_INT16", 6: "TYPE_INT32", 7: "TYPE_INT64",
                  9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16"}
#: graphs at least this big are saved with their weights in ``model.onnx.data`` (protobuf's 2 GiB limit)
EXTERNAL_DATA_BYTES = 1_800_000_000
EXTERNAL_DATA_NAME = "model.onnx.data"


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


def load(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path), load_external_data=True)
    except Exception as err:  # noqa: BLE001 - onnx raises several types for a bad file
        raise ValidationError(f"the network graph {path.name} is not a readable ONNX model: {err}",
                              hint="re-export the model; check the archive with svc-inspect --verify") from None


def _tensor(value_info: Any, where: str) -> GraphTensor:
    ttype = value_info.type.tensor_type
    dtype = ONNX_TO_TRITON.get(ttype.elem_type)
    if dtype is None:
        raise ValidationError(f"{where}: tensor {value_info.name} has ONNX element type {ttype.elem_type}, which "
                              "Triton cannot carry")
    shape: list[int | str] = []
    for i, d in enumerate(ttype.shape.dim):
        shape.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or f"dim{i}"))
    return GraphTensor(value_info.name, dtype, tuple(shape))


def signature(model: Any, where: str) -> Signature:
    initializers = {t.name for t in model.graph.initializer}
    inputs = tuple(_tensor(v, where) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_tensor(v, where) for v in model.graph.output)
    return Signature(inputs, outputs)


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


def fold_constants(model: Any) -> Any:
    """Constant-fold and clean up the graph (onnx-graphsurgeon, evaluating with ONNX Runtime)."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup(remove_unused_graph_inputs=False).toposort()
    folded = gs.export_onnx(graph)
    folded.ir_version = model.ir_version
    del folded.opset_import[:]
    folded.opset_import.extend(model.opset_import)
    return folded


def save(model: Any, path: Path) -> list[Path]:
    """Write ``model`` to ``path`` (weights to ``model.onnx.data`` beside it when too big); the files written."""
    import onnx

    if model.ByteSize() >= EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=EXTERNAL_DATA_NAME, size_threshold=1024)
        return [path, path.parent / EXTERNAL_DATA_NAME]
    onnx.save_model(model, str(path))
    return [path]
