"""The network graph: load it (plain ``.onnx`` or ``.onnx.tar`` with external data), read its tensor signature,
check it fits its pipeline, fold constants, save it for a target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from servicemaker.errors import ValidationError
# the signature types and fit check are shared with svc-build, which reads them from a scan of the graph
from servicemaker.onnx_scan import ONNX_TO_TRITON, GraphTensor, Signature, check_fits, graph_tensor

#: graphs at least this big are saved with their weights in ``model.onnx.data`` (protobuf's 2 GiB limit)
EXTERNAL_DATA_BYTES = 1_800_000_000
EXTERNAL_DATA_NAME = "model.onnx.data"


def load(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path), load_external_data=True)
    except Exception as err:  # noqa: BLE001 - onnx raises several types for a bad file
        raise ValidationError(f"the network graph {path.name} is not a readable ONNX model: {err}",
                              hint="re-export the model; check the archive with svc-inspect --verify") from None


def _tensor(value_info: Any, where: str) -> GraphTensor:
    ttype = value_info.type.tensor_type
    return graph_tensor(value_info.name, ttype.elem_type,
                        tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in ttype.shape.dim),
                        where)


def signature(model: Any, where: str) -> Signature:
    initializers = {t.name for t in model.graph.initializer}
    inputs = tuple(_tensor(v, where) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_tensor(v, where) for v in model.graph.output)
    return Signature(inputs, outputs)


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


__all__ = ["EXTERNAL_DATA_BYTES", "EXTERNAL_DATA_NAME", "ONNX_TO_TRITON", "GraphTensor", "Signature", "check_fits",
           "fold_constants", "load", "save", "signature"]
