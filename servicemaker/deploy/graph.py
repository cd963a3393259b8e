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


def _tensor_of(vtype: Any) -> Any:
    """The tensor type an optional (of a tensor) holds; None for any other type."""
    if vtype.WhichOneof("value") == "optional_type":
        inner = vtype.optional_type.elem_type
        return inner if inner.WhichOneof("value") == "tensor_type" else None
    return None


def remove_optionals(model: Any) -> int:
    """Replace ONNX optionals wrapping a tensor the graph always has by that tensor (in place); the values and nodes
    changed. NeMo 3.0's ragged FastPitch export carries its ``volume`` input through the batching loop as an optional
    (``volume`` may be absent in NeMo), and leaves that loop value untyped (NeMo issue 9104: ONNX Runtime refuses it,
    "Invalid tensor data type 0"); TensorRT and onnx-graphsurgeon take no optionals at all. Here ``volume`` is a
    required input: ``Optional(x)`` becomes ``x``, ``OptionalGetElement(x)`` an Identity, ``OptionalHasElement`` a
    true constant (an ``If`` on it is replaced by its then-branch), and every optional loop value the tensor it
    carries."""
    import onnx
    from onnx import helper

    changed = 0
    known: dict[str, Any] = {}   # value name -> its tensor type, once its optional is gone

    def retype(value: Any, fallback: Any = None) -> None:
        """An optional value becomes the tensor it holds (``fallback``'s type where it does not say which)."""
        nonlocal changed
        if value.type.WhichOneof("value") != "optional_type":
            return
        inner = _tensor_of(value.type)
        if inner is None or inner.tensor_type.elem_type == 0:
            inner = fallback
        if inner is not None and inner.WhichOneof("value") == "tensor_type" and inner.tensor_type.elem_type:
            value.type.CopyFrom(inner)
            known[value.name] = value.type
            changed += 1

    def walk(graph: Any) -> None:
        nonlocal changed
        for value in list(graph.input) + list(graph.value_info):
            retype(value)
        nodes = []
        constant: dict[str, bool] = {}   # what an OptionalHasElement made constant answers, through Not and Cast
        for node in graph.node:
            if node.op_type in ("Not", "Identity") or (node.op_type == "Cast" and any(
                    a.name == "to" and a.i == onnx.TensorProto.BOOL for a in node.attribute)):
                if node.input and node.input[0] in constant:
                    constant[node.output[0]] = constant[node.input[0]] != (node.op_type == "Not")
            if node.op_type == "If" and node.input[0] in constant:  # the branch taken, inlined
                taken = "then_branch" if constant[node.input[0]] else "else_branch"
                branch = next(a.g for a in node.attribute if a.name == taken)
                walk(branch)
                nodes.extend(branch.node)
                nodes.extend(helper.make_node("Identity", [src.name], [dst], name=f"{node.name}/{dst}")
                             for src, dst in zip(branch.output, node.output))
                changed += 1
                continue
            if node.op_type == "Optional" and len(node.input) == 1:
                nodes.append(helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name))
                changed += 1
                continue
            if node.op_type == "OptionalGetElement":
                nodes.append(helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name))
                changed += 1
                continue
            if node.op_type == "OptionalHasElement":
                nodes.append(helper.make_node("Constant", [], [node.output[0]], name=node.name,
                                              value=helper.make_tensor(f"{node.name}_true", onnx.TensorProto.BOOL,
                                                                       [], [True])))
                constant[node.output[0]] = True
                changed += 1
                continue
            if node.op_type == "Loop":
                body = next(a.g for a in node.attribute if a.name == "body")
                for i, value in enumerate(body.input[2:]):
                    retype(value)
                for i, value in enumerate(body.output[1:]):
                    carried = body.input[i + 2].type if i + 2 < len(body.input) else None
                    retype(value, carried if carried is not None and carried.WhichOneof("value") == "tensor_type"
                           else None)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                    if node.op_type == "If":  # branch output k is the If's output k
                        for k, value in enumerate(attr.g.output):
                            retype(value, known.get(node.output[k]) if k < len(node.output) else None)
            nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
        for value in graph.output:
            retype(value, known.get(value.name))

    walk(model.graph)
    return changed


def fold_constants(model: Any) -> Any:
    """Constant-fold and clean up the graph (onnx-graphsurgeon, evaluating with ONNX Runtime)."""
    import onnx_graphsurgeon as gs
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # its optimizer's notes on the folded subgraphs are not for the user
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
           "fold_constants", "load", "remove_optionals", "save", "signature"]
